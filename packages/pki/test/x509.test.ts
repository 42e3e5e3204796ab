import { X509Certificate } from 'node:crypto';
import { InvalidInputError } from '@keywarden/core';
import {
  KEY_PAIR_ALGORITHMS,
  createCsr,
  issueCertificate,
  readCsr,
  serialOf,
  toPem,
  type KeyPairAlgorithm,
} from '../src/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openssl, setup, tempDir, x509Text } from './_setup.js';

let env: Awaited<ReturnType<typeof setup>>;
let tmp: ReturnType<typeof tempDir>;
beforeAll(async () => {
  env = await setup();
  tmp = tempDir();
});
afterAll(async () => {
  await env.close();
  tmp.remove();
});

const DAY = 86_400_000;

describe.each(KEY_PAIR_ALGORITHMS.map((a) => [a] as [KeyPairAlgorithm]))('%s', (algorithm) => {
  it('a CSR verifies with openssl req -verify and readCsr; the CA and the leaf verify with node:crypto and openssl verify -x509_strict', async () => {
    const { pairs } = env;
    await pairs.create(`ca-${algorithm}`, { algorithm });
    await pairs.create(`leaf-${algorithm}`, { algorithm });
    const caSigner = await pairs.signer(`ca-${algorithm}`);
    const leafSigner = await pairs.signer(`leaf-${algorithm}`);

    const csr = await createCsr(leafSigner, {
      subject: { commonName: 'api.example.test', organization: 'Example', country: 'DE' },
      dnsNames: ['api.example.test', '*.api.example.test'],
      ipAddresses: ['10.0.0.7', '2001:db8::1'],
    });
    const csrPath = tmp.file(`${algorithm}.csr.pem`, toPem(csr, 'CERTIFICATE REQUEST'));
    const req = openssl('req', '-in', csrPath, '-noout', '-verify');
    expect(req.output).toMatch(/verify OK/i);
    expect(req.status).toBe(0);
    const info = readCsr(csr);
    expect(info.algorithm).toBe(algorithm);
    expect(info.subject).toEqual({ commonName: 'api.example.test', organization: 'Example', country: 'DE' });
    expect(info.dnsNames).toEqual(['api.example.test', '*.api.example.test']);
    expect(info.ipAddresses).toEqual(['10.0.0.7', '2001:db8:0:0:0:0:0:1']);

    const now = new Date();
    const caDer = await issueCertificate(
      { signer: caSigner },
      {
        subject: { commonName: `Test Root ${algorithm}`, organization: 'Example' },
        publicKey: caSigner.publicKey,
        profile: 'ca',
        pathLength: 0,
        notBefore: now,
        notAfter: new Date(now.getTime() + 365 * DAY),
      },
    );
    const leafDer = await issueCertificate(
      { signer: caSigner, certificate: caDer },
      {
        subject: info.subject,
        publicKey: info.publicKey,
        profile: 'server',
        dnsNames: info.dnsNames,
        ipAddresses: info.ipAddresses,
        notAfter: new Date(now.getTime() + 30 * DAY),
      },
    );

    // Independent implementation 1: node:crypto (OpenSSL underneath, but none of our code).
    const ca = new X509Certificate(caDer);
    const leaf = new X509Certificate(leafDer);
    expect(ca.ca).toBe(true);
    expect(leaf.ca).toBe(false);
    expect(ca.verify(ca.publicKey)).toBe(true);
    expect(leaf.verify(ca.publicKey)).toBe(true);
    expect(leaf.checkIssued(ca)).toBe(true);
    expect(leaf.checkHost('api.example.test')).toBe('api.example.test');
    expect(leaf.checkHost('x.api.example.test')).toBe('*.api.example.test');
    expect(leaf.checkHost('other.example.test')).toBeUndefined();
    expect(leaf.checkIP('10.0.0.7')).toBe('10.0.0.7');
    expect(leaf.serialNumber.toLowerCase()).toBe(serialOf(leafDer));
    expect(leaf.keyUsage ?? []).toContain('1.3.6.1.5.5.7.3.1');

    // Independent implementation 2: the openssl CLI, strict about X.509 structure.
    const caPath = tmp.file(`${algorithm}.ca.pem`, toPem(caDer, 'CERTIFICATE'));
    const leafPath = tmp.file(`${algorithm}.leaf.pem`, toPem(leafDer, 'CERTIFICATE'));
    const v = openssl('verify', '-x509_strict', '-purpose', 'sslserver', '-CAfile', caPath, leafPath);
    expect(v.output).toContain(': OK');
    expect(v.status).toBe(0);
    const caText = x509Text(caPath);
    expect(caText).toMatch(/Basic Constraints: critical\s+CA:TRUE, pathlen:0/);
    expect(caText).toMatch(/Key Usage: critical\s+Digital Signature, Certificate Sign, CRL Sign/);
    const leafText = x509Text(leafPath);
    expect(leafText).toMatch(/Basic Constraints: critical\s+CA:FALSE/);
    expect(leafText).toMatch(/Key Usage: critical\s+Digital Signature/);
    expect(leafText).toMatch(/Extended Key Usage:\s+TLS Web Server Authentication/);
    expect(leafText).toMatch(
      /DNS:api\.example\.test, DNS:\*\.api\.example\.test, IP Address:10\.0\.0\.7, IP Address:2001:DB8:0:0:0:0:0:1/,
    );
    // AKI of the leaf = SKI of the CA.
    const caSki = /Subject Key Identifier:\s+([0-9A-F:]+)/.exec(caText)?.[1];
    expect(caSki).toBeDefined();
    expect(leafText).toContain(caSki);

    // A flipped bit in the signature is caught by both.
    const bad = Uint8Array.from(leafDer);
    bad[bad.length - 3] = (bad[bad.length - 3] ?? 0) ^ 0x01;
    expect(new X509Certificate(bad).verify(ca.publicKey)).toBe(false);
    const badPath = tmp.file(`${algorithm}.bad.pem`, toPem(bad, 'CERTIFICATE'));
    expect(openssl('verify', '-CAfile', caPath, badPath).status).not.toBe(0);
  });
});

describe('requests', () => {
  it('readCsr refuses a request whose signature does not verify (proof of possession)', async () => {
    await env.pairs.create('pop', { algorithm: 'ECDSA-P256' });
    const csr = await createCsr(await env.pairs.signer('pop'), { subject: { commonName: 'pop' } });
    expect(readCsr(csr).subject.commonName).toBe('pop');
    const bad = Uint8Array.from(csr);
    bad[bad.length - 2] = (bad[bad.length - 2] ?? 0) ^ 0x01;
    expect(() => readCsr(bad)).toThrow(/signature does not verify/);
    expect(() => readCsr(new Uint8Array([0x30, 0x03, 0x02, 0x01, 0x00]))).toThrow(InvalidInputError);
  });

  it('a self-signed certificate must be a CA for the signer’s own key; an issuer certificate must match the signer', async () => {
    await env.pairs.create('ss-a', { algorithm: 'ECDSA-P256' });
    await env.pairs.create('ss-b', { algorithm: 'ECDSA-P256' });
    const a = await env.pairs.signer('ss-a');
    const b = await env.pairs.signer('ss-b');
    const notAfter = new Date(Date.now() + DAY);
    await expect(
      issueCertificate(
        { signer: a },
        { subject: { commonName: 'x' }, publicKey: a.publicKey, profile: 'server', notAfter },
      ),
    ).rejects.toThrow(/only a CA certificate can be self-signed/);
    await expect(
      issueCertificate(
        { signer: a },
        { subject: { commonName: 'x' }, publicKey: b.publicKey, profile: 'ca', notAfter },
      ),
    ).rejects.toThrow(/own public key/);
    const caA = await issueCertificate(
      { signer: a },
      { subject: { commonName: 'a' }, publicKey: a.publicKey, profile: 'ca', notAfter },
    );
    await expect(
      issueCertificate(
        { signer: b, certificate: caA },
        { subject: { commonName: 'x' }, publicKey: b.publicKey, profile: 'client', notAfter },
      ),
    ).rejects.toThrow(/not for the signer/);
  });

  it('refuses to sign under a certificate that cannot issue: a leaf, or a CA whose pathLenConstraint is 0 for a CA below it', async () => {
    await env.pairs.create('iss-ca', { algorithm: 'ECDSA-P256' });
    await env.pairs.create('iss-leaf', { algorithm: 'ECDSA-P256' });
    const ca = await env.pairs.signer('iss-ca');
    const leaf = await env.pairs.signer('iss-leaf');
    const notAfter = new Date(Date.now() + DAY);
    const caCert = await issueCertificate(
      { signer: ca },
      { subject: { commonName: 'ca' }, publicKey: ca.publicKey, profile: 'ca', pathLength: 0, notAfter },
    );
    const leafCert = await issueCertificate(
      { signer: ca, certificate: caCert },
      { subject: { commonName: 'leaf' }, publicKey: leaf.publicKey, profile: 'client', notAfter },
    );
    await expect(
      issueCertificate(
        { signer: leaf, certificate: leafCert },
        { subject: { commonName: 'x' }, publicKey: ca.publicKey, profile: 'server', notAfter },
      ),
    ).rejects.toThrow(/not a CA certificate/);
    await expect(
      issueCertificate(
        { signer: ca, certificate: caCert },
        { subject: { commonName: 'sub' }, publicKey: leaf.publicKey, profile: 'ca', notAfter },
      ),
    ).rejects.toThrow(/pathLenConstraint is 0/);
  });
});

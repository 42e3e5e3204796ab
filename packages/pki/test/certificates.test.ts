/**
 * Certificates held by key pairs (src/certificates.ts): certificates made by OpenSSL for a key pair
 * kept here are imported (and refused for any other key), issued ones are recorded, and a leaf
 * renews with a new key pair version, the old certificate revoked as superseded when asked.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { InvalidInputError, KeyNotFoundError } from '@keywarden/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CertificateAuthority, Certificates, createCsr, fromPem, publicKeyOf, serialOf, toPem } from '../src/index.js';
import { openssl, setup, tempDir } from './_setup.js';

let env: Awaited<ReturnType<typeof setup>>;
let tmp: ReturnType<typeof tempDir>;
let certs: Certificates;
let opensslCa: { cert: string; key: string };

beforeAll(async () => {
  env = await setup();
  tmp = tempDir();
  certs = new Certificates({ keywarden: env.kw, keyPairs: env.pairs });
  // A CA that is nothing but openssl: its key and certificate are openssl's files.
  const key = `${tmp.dir}/openssl-ca.key`;
  const cert = `${tmp.dir}/openssl-ca.pem`;
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-keyout',
      key,
      '-out',
      cert,
    ].concat(['-days', '30', '-subj', '/CN=OpenSSL CA']),
    { timeout: 20_000, stdio: 'pipe' },
  );
  opensslCa = { cert, key };
});
afterAll(async () => {
  await env.close();
  tmp.remove();
});

describe('Certificates', () => {
  it('a certificate made by openssl (x509 -req over a request of the key pair) is imported to the matching version', async () => {
    await env.pairs.create('web', { algorithm: 'ECDSA-P256' });
    const csr = await createCsr(await env.pairs.signer('web'), {
      subject: { commonName: 'web.example.test' },
      dnsNames: ['web.example.test'],
    });
    const csrPath = tmp.file('web.csr', toPem(csr, 'CERTIFICATE REQUEST'));
    const ext = tmp.file('web.ext', 'subjectAltName=DNS:web.example.test\nextendedKeyUsage=serverAuth\n');
    const certPath = `${tmp.dir}/web.pem`;
    const r = openssl(
      'x509',
      '-req',
      '-in',
      csrPath,
      '-CA',
      opensslCa.cert,
      '-CAkey',
      opensslCa.key,
      '-CAcreateserial',
      '-days',
      '10',
      '-extfile',
      ext,
      '-out',
      certPath,
    );
    expect(r.status, r.output).toBe(0);
    const der = fromPem(readFileSync(certPath), 'CERTIFICATE');
    const held = await certs.add('web', der);
    expect(held).toMatchObject({
      keyPair: 'web',
      keyVersion: 1,
      source: 'imported',
      profile: 'server',
      subject: { commonName: 'web.example.test' },
      dnsNames: ['web.example.test'],
      serialNumber: serialOf(der),
    });
    expect(held.issuer).toMatch(/CN=OpenSSL CA/);
    expect(
      Buffer.from(publicKeyOf(der)).equals(Buffer.from((await env.pairs.get('web')).versions[0]?.publicKey ?? [])),
    );
    // Adding it again changes nothing.
    await certs.add('web', der);
    expect(await certs.list('web')).toHaveLength(1);
  });

  it('a certificate for another key (openssl req -x509 with its own key) is refused, typed', async () => {
    const der = fromPem(readFileSync(opensslCa.cert), 'CERTIFICATE');
    await expect(certs.add('web', der)).rejects.toThrow(InvalidInputError);
    await expect(certs.add('web', der)).rejects.toThrow(
      "pki: the certificate's public key is not the public key of any version of key pair web",
    );
    await expect(certs.add('web', new Uint8Array([0x30, 0x03, 1, 2, 3]))).rejects.toThrow(
      'pki: not a DER X.509 certificate',
    );
    await expect(certs.add('nobody', der)).rejects.toThrow(KeyNotFoundError);
    await expect(certs.latest('nobody')).rejects.toThrow(KeyNotFoundError);
    expect(() => fromPem('no pem here', 'CERTIFICATE')).toThrow('pki: no PEM CERTIFICATE block');
  });

  it('renew: a new key pair version and certificate with the same subject and names; the previous one revoked as superseded (openssl verify -crl_check)', async () => {
    const ca = await CertificateAuthority.create(env.kw, env.pairs, 'renew-ca', {
      subject: { commonName: 'Renew CA' },
      algorithm: 'ECDSA-P256',
      validityDays: 60,
    });
    await env.pairs.create('api', { algorithm: 'ECDSA-P256' });
    const csr = await createCsr(await env.pairs.signer('api'), {
      subject: { commonName: 'api.example.test' },
      dnsNames: ['api.example.test'],
      ipAddresses: ['192.0.2.7'],
    });
    const first = await ca.issue({ csr, profile: 'server-client', validityDays: 20 });
    expect(await certs.recordIssued(first, ca.name)).toBe('api');
    const renewed = await certs.renew('api', { ca, validityDays: 20, revokePrevious: true });
    expect(renewed).toMatchObject({
      keyVersion: 2,
      source: 'issued',
      ca: 'renew-ca',
      profile: 'server-client',
      subject: { commonName: 'api.example.test' },
      dnsNames: ['api.example.test'],
      ipAddresses: ['192.0.2.7'],
    });
    expect((await env.pairs.get('api')).primaryVersion).toBe(2);
    expect(await ca.revoked()).toEqual([serialOf(first)]);
    const caPath = tmp.file('renew-ca.pem', toPem(await ca.certificate(), 'CERTIFICATE'));
    const crlPath = tmp.file('renew.crl', toPem(await ca.crl({ nextUpdateHours: 1 }), 'X509 CRL'));
    const newPath = tmp.file('api-2.pem', toPem(renewed.certificate, 'CERTIFICATE'));
    const oldPath = tmp.file('api-1.pem', toPem(first, 'CERTIFICATE'));
    const ok = openssl('verify', '-crl_check', '-CAfile', caPath, '-CRLfile', crlPath, newPath);
    expect(ok.status, ok.output).toBe(0);
    const revoked = openssl('verify', '-crl_check', '-CAfile', caPath, '-CRLfile', crlPath, oldPath);
    expect(revoked.status).not.toBe(0);
    expect(revoked.output).toMatch(/certificate revoked/);
    // A CA's own certificate is not renewed here.
    await certs.add('renew-ca', await ca.certificate());
    await expect(certs.renew('renew-ca', { ca, validityDays: 1 })).rejects.toThrow(/renew a CA with/);
  });
});

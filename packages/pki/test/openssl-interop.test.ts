import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CertificateAuthority, publicKeyOf, readCsr, serialOf, subjectOf, toPem, validityOf } from '../src/index.js';
import { openssl, setup, tempDir } from './_setup.js';

let env: Awaited<ReturnType<typeof setup>>;
let tmp: ReturnType<typeof tempDir>;
let ca: CertificateAuthority;
let caPath: string;
beforeAll(async () => {
  env = await setup();
  tmp = tempDir();
  ca = await CertificateAuthority.create(env.kw, env.pairs, 'interop-ca', {
    subject: { commonName: 'Interop CA', country: 'DE' },
    algorithm: 'ECDSA-P384',
    validityDays: 30,
  });
  caPath = tmp.file('ca.pem', toPem(await ca.certificate(), 'CERTIFICATE'));
});
afterAll(async () => {
  await env.close();
  tmp.remove();
});

const pem2der = (pem: string): Uint8Array =>
  new Uint8Array(Buffer.from(pem.replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, ''), 'base64'));

const KEYS: Array<[string, string[]]> = [
  ['ECDSA-P256', ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256']],
  ['ECDSA-P384', ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-384']],
  ['RSA-2048', ['-newkey', 'rsa:2048']],
  ['Ed25519', ['-newkey', 'ed25519']],
];

describe.each(KEYS)('a request made by openssl (%s)', (algorithm, keyArgs) => {
  it('is read (proof of possession checked), issued, and the certificate works with the key openssl holds', async () => {
    const key = `${tmp.dir}/${algorithm}.key`;
    const csrPem = execFileSync(
      'openssl',
      [
        'req',
        '-new',
        ...keyArgs,
        '-nodes',
        '-keyout',
        key,
        '-subj',
        `/O=Interop/CN=${algorithm.toLowerCase()}.interop.test`,
        '-addext',
        `subjectAltName=DNS:${algorithm.toLowerCase()}.interop.test,IP:192.0.2.1`,
      ],
      { encoding: 'utf8', timeout: 20_000 },
    );
    const info = readCsr(pem2der(csrPem));
    expect(info.algorithm).toBe(algorithm);
    expect(info.subject).toEqual({ commonName: `${algorithm.toLowerCase()}.interop.test`, organization: 'Interop' });
    expect(info.dnsNames).toEqual([`${algorithm.toLowerCase()}.interop.test`]);
    expect(info.ipAddresses).toEqual(['192.0.2.1']);

    const der = await ca.issue({ csr: pem2der(csrPem), profile: 'server-client', validityDays: 7 });
    const certPath = tmp.file(`${algorithm}.pem`, toPem(der, 'CERTIFICATE'));
    const v = openssl('verify', '-x509_strict', '-purpose', 'sslclient', '-CAfile', caPath, certPath);
    expect(v.output).toContain(': OK');
    // The certificate is for openssl's key: x509 -noout -pubkey equals pkey -pubout of the key file.
    const certKey = execFileSync('openssl', ['x509', '-in', certPath, '-noout', '-pubkey'], { encoding: 'utf8' });
    const ownKey = execFileSync('openssl', ['pkey', '-in', key, '-pubout'], { encoding: 'utf8' });
    expect(certKey).toBe(ownKey);
    // Valid now (openssl's clock, not ours).
    expect(openssl('x509', '-in', certPath, '-noout', '-checkend', '0').status).toBe(0);

    // A request whose signature was altered is refused.
    const bad = pem2der(csrPem);
    bad[bad.length - 4] = (bad[bad.length - 4] ?? 0) ^ 0x01;
    expect(() => readCsr(bad)).toThrow(/does not verify|not a DER/);
  });
});

describe('a certificate made by openssl', () => {
  it('is parsed: subject, serial and public key as openssl and node:crypto report them', () => {
    const key = `${tmp.dir}/self.key`;
    const crt = `${tmp.dir}/self.crt`;
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
        crt,
        '-days',
        '2',
        '-subj',
        '/C=DE/O=Example/OU=Ops/CN=openssl-made',
      ],
      { timeout: 20_000 },
    );
    const der = pem2der(readFileSync(crt, 'utf8'));
    expect(subjectOf(der)).toEqual({
      commonName: 'openssl-made',
      organization: 'Example',
      organizationalUnit: 'Ops',
      country: 'DE',
    });
    const node = new X509Certificate(der);
    expect(BigInt(`0x${serialOf(der)}`)).toBe(BigInt(`0x${node.serialNumber}`));
    const spki = publicKeyOf(der);
    expect(validityOf(der).notAfter.getTime()).toBe(new Date(node.validTo).getTime());
    expect(Buffer.from(spki).equals(node.publicKey.export({ type: 'spki', format: 'der' }))).toBe(true);
  });
});

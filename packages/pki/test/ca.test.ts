import { X509Certificate } from 'node:crypto';
import { KeyNotFoundError } from '@keywarden/core';
import { CertificateAuthority, createCsr, serialOf, toPem } from '../src/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openssl, setup, tempDir } from './_setup.js';

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

async function request(name: string, commonName: string): Promise<Uint8Array> {
  try {
    await env.pairs.get(name);
  } catch (err) {
    if (!KeyNotFoundError.isInstance(err)) throw err;
    await env.pairs.create(name, { algorithm: 'ECDSA-P256' });
  }
  return createCsr(await env.pairs.signer(name), { subject: { commonName }, dnsNames: [commonName] });
}

describe('CertificateAuthority', () => {
  it('revoke + CRL: openssl crl verifies the CRL; openssl verify -crl_check refuses the revoked leaf and accepts the other', async () => {
    const ca = await CertificateAuthority.create(env.kw, env.pairs, 'crl-ca', {
      subject: { commonName: 'CRL Test CA' },
      algorithm: 'ECDSA-P384',
      validityDays: 365,
    });
    const caPath = tmp.file('crl-ca.pem', toPem(await ca.certificate(), 'CERTIFICATE'));
    const good = await ca.issue({ csr: await request('svc-good', 'good.test'), profile: 'server', validityDays: 30 });
    const bad = await ca.issue({ csr: await request('svc-bad', 'bad.test'), profile: 'client', validityDays: 30 });
    await ca.revoke(serialOf(bad), { reason: 'keyCompromise' });
    await expect(ca.revoke('00ff')).rejects.toThrow(KeyNotFoundError);
    expect(await ca.revoked()).toEqual([serialOf(bad)]);

    const crl1 = await ca.crl({ nextUpdateHours: 24 });
    const crl2 = await ca.crl({ nextUpdateHours: 24 });
    const crlPath = tmp.file('crl.pem', toPem(crl2, 'X509 CRL'));
    const c = openssl('crl', '-in', crlPath, '-CAfile', caPath, '-noout', '-text');
    expect(c.output).toMatch(/verify OK/);
    expect(c.output).toMatch(/X509v3 CRL Number:\s+2/);
    expect(c.output).toContain(`Serial Number: ${serialOf(bad).toUpperCase()}`);
    expect(c.output).toMatch(/Key Compromise/);
    expect(crl1).not.toEqual(crl2);

    const goodPath = tmp.file('good.pem', toPem(good, 'CERTIFICATE'));
    const badPath = tmp.file('bad.pem', toPem(bad, 'CERTIFICATE'));
    const ok = openssl('verify', '-crl_check', '-CAfile', caPath, '-CRLfile', crlPath, goodPath);
    expect(ok.output).toContain(': OK');
    const revoked = openssl('verify', '-crl_check', '-CAfile', caPath, '-CRLfile', crlPath, badPath);
    expect(revoked.status).not.toBe(0);
    expect(revoked.output).toMatch(/certificate revoked/);

    // A CRL signed by another CA's key does not verify against this CA.
    const other = await CertificateAuthority.create(env.kw, env.pairs, 'other-ca', {
      subject: { commonName: 'CRL Test CA' },
      algorithm: 'ECDSA-P384',
      validityDays: 365,
    });
    const foreign = tmp.file('foreign.pem', toPem(await other.crl({ nextUpdateHours: 1 }), 'X509 CRL'));
    expect(openssl('crl', '-in', foreign, '-CAfile', caPath, '-noout').output).not.toMatch(/verify OK/);
  });

  it('renewal: a new CA key and certificate; leaves of the old key still verify against the old certificate (overlap), new leaves only against the new one', async () => {
    const ca = await CertificateAuthority.create(env.kw, env.pairs, 'renew-ca', {
      subject: { commonName: 'Renew CA', organization: 'Example' },
      algorithm: 'ECDSA-P256',
      validityDays: 365,
    });
    const oldCa = await ca.certificate();
    const oldLeaf = await ca.issue({ csr: await request('svc-r', 'r.test'), profile: 'server', validityDays: 30 });
    const newCa = await ca.renew({ validityDays: 365 });
    expect(await ca.certificates()).toEqual([oldCa, newCa]);
    expect((await env.pairs.get('renew-ca')).primaryVersion).toBe(2);
    expect(new X509Certificate(newCa).subject).toBe(new X509Certificate(oldCa).subject);
    expect(new X509Certificate(newCa).publicKey.equals(new X509Certificate(oldCa).publicKey)).toBe(false);

    // The leaf renews too: a new version of its key pair, a new certificate; the old one stays valid until it expires.
    await env.pairs.rotate('svc-r');
    const newLeaf = await ca.issue({ csr: await request('svc-r', 'r.test'), profile: 'server', validityDays: 30 });
    const o = new X509Certificate(oldLeaf);
    const n = new X509Certificate(newLeaf);
    expect(o.publicKey.equals(n.publicKey)).toBe(false);
    expect(o.verify(new X509Certificate(oldCa).publicKey)).toBe(true);
    expect(n.verify(new X509Certificate(newCa).publicKey)).toBe(true);
    expect(n.verify(new X509Certificate(oldCa).publicKey)).toBe(false);

    const bundle = tmp.file('bundle.pem', toPem(oldCa, 'CERTIFICATE') + toPem(newCa, 'CERTIFICATE'));
    const onlyNew = tmp.file('new-ca.pem', toPem(newCa, 'CERTIFICATE'));
    const oldPath = tmp.file('old-leaf.pem', toPem(oldLeaf, 'CERTIFICATE'));
    const newPath = tmp.file('new-leaf.pem', toPem(newLeaf, 'CERTIFICATE'));
    expect(openssl('verify', '-CAfile', bundle, oldPath, newPath).status).toBe(0);
    expect(openssl('verify', '-CAfile', onlyNew, newPath).status).toBe(0);
    expect(openssl('verify', '-CAfile', onlyNew, oldPath).status).not.toBe(0);

    // Revoking the old leaf lands on the CRL signed by the old key (it names that key in its AKI).
    await ca.revoke(serialOf(oldLeaf), { reason: 'superseded' });
    const oldCrl = tmp.file('old.crl.pem', toPem(await ca.crl({ nextUpdateHours: 24, keyVersion: 1 }), 'X509 CRL'));
    const oldCaPath = tmp.file('old-ca.pem', toPem(oldCa, 'CERTIFICATE'));
    expect(openssl('crl', '-in', oldCrl, '-CAfile', oldCaPath, '-noout').output).toMatch(/verify OK/);
    const refused = openssl('verify', '-crl_check', '-CAfile', oldCaPath, '-CRLfile', oldCrl, oldPath);
    expect(refused.output).toMatch(/certificate revoked/);
    const newCrl = await ca.crl({ nextUpdateHours: 24 });
    expect(openssl('crl', '-in', tmp.file('new.crl.pem', toPem(newCrl, 'X509 CRL')), '-noout', '-text').output).toMatch(
      /No Revoked Certificates/,
    );
  });

  it('an intermediate CA issued by a root verifies as a chain (openssl verify -untrusted)', async () => {
    const root = await CertificateAuthority.create(env.kw, env.pairs, 'chain-root', {
      subject: { commonName: 'Chain Root' },
      algorithm: 'RSA-2048',
      validityDays: 3650,
      pathLength: 1,
    });
    const inter = await CertificateAuthority.create(env.kw, env.pairs, 'chain-inter', {
      subject: { commonName: 'Chain Intermediate' },
      algorithm: 'ECDSA-P256',
      validityDays: 365,
      pathLength: 0,
      parent: root,
    });
    const leaf = await inter.issue({
      csr: await request('svc-chain', 'chain.test'),
      profile: 'server-client',
      validityDays: 10,
    });
    const rootPath = tmp.file('chain-root.pem', toPem(await root.certificate(), 'CERTIFICATE'));
    const interPath = tmp.file('chain-inter.pem', toPem(await inter.certificate(), 'CERTIFICATE'));
    const leafPath = tmp.file('chain-leaf.pem', toPem(leaf, 'CERTIFICATE'));
    const v = openssl('verify', '-x509_strict', '-CAfile', rootPath, '-untrusted', interPath, leafPath);
    expect(v.output).toContain(': OK');
    expect(openssl('verify', '-CAfile', rootPath, leafPath).status).not.toBe(0);
    // The leaf never outlives its issuer; the intermediate is on the root's book, so the root can revoke it.
    expect(
      new X509Certificate(await inter.certificate()).checkIssued(new X509Certificate(await root.certificate())),
    ).toBe(true);
    await root.revoke(serialOf(await inter.certificate()), { reason: 'cACompromise' });
    const crlPath = tmp.file('chain.crl.pem', toPem(await root.crl({ nextUpdateHours: 1 }), 'X509 CRL'));
    const refused = openssl(
      'verify',
      '-crl_check_all',
      '-CAfile',
      rootPath,
      '-CRLfile',
      crlPath,
      '-CRLfile',
      tmp.file('inter.crl.pem', toPem(await inter.crl({ nextUpdateHours: 1 }), 'X509 CRL')),
      '-untrusted',
      interPath,
      leafPath,
    );
    expect(refused.output).toMatch(/certificate revoked/);
  });
});

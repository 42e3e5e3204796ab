import { X509Certificate, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Keywarden, SoftwareRoot } from '@keywarden/core';
import { SqliteKeyStore } from '@keywarden/store-sqlite';
import { afterAll, describe, expect, it } from 'vitest';
import { CertificateAuthority, KeyPairs, createCsr } from '../src/index.js';

const dir = mkdtempSync(join(tmpdir(), 'keywarden-pki-sqlite-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function open(path: string, unsealKey: Uint8Array, init: boolean) {
  const store = SqliteKeyStore.open(path);
  const root = init
    ? await SoftwareRoot.initialize(store, { unsealKey: Uint8Array.from(unsealKey) })
    : await SoftwareRoot.load(store);
  if (!init) await root.unseal(Uint8Array.from(unsealKey));
  const kw = new Keywarden({ store, root });
  return {
    kw,
    pairs: new KeyPairs({ keywarden: kw }),
    async close() {
      await kw.close();
      await root.close();
      await store.close();
    },
  };
}

describe('on the SQLite store', () => {
  it('a CA and its key pair survive closing and reopening the store file; the private key is not in the file in the clear', async () => {
    const path = join(dir, 'keys.db');
    const unsealKey = new Uint8Array(randomBytes(32));
    const first = await open(path, unsealKey, true);
    await first.kw.createKey('pki');
    const ca = await CertificateAuthority.create(first.kw, first.pairs, 'disk-ca', {
      subject: { commonName: 'Disk CA' },
      algorithm: 'RSA-2048',
      validityDays: 10,
    });
    const caDer = await ca.certificate();
    const record = JSON.parse(new TextDecoder().decode(await first.kw.store.getMeta('pki/keypair/disk-ca')));
    const stored = Buffer.from(record.versions[0].privateKey, 'base64');
    await first.close();

    // No PKCS#8 private key (RSA: version 0 then the rsaEncryption OID) anywhere in the file.
    const file = readFileSync(path);
    const rsaPkcs8Prefix = Buffer.from('020100300d06092a864886f70d0101010500', 'hex');
    expect(file.includes(rsaPkcs8Prefix)).toBe(false);
    expect(stored.length).toBeGreaterThan(1000);
    expect(stored.includes(rsaPkcs8Prefix)).toBe(false);

    const second = await open(path, unsealKey, false);
    try {
      const reopened = await CertificateAuthority.open(second.kw, second.pairs, 'disk-ca');
      expect(await reopened.certificate()).toEqual(caDer);
      await second.pairs.create('disk-leaf', { algorithm: 'ECDSA-P256' });
      const csr = await createCsr(await second.pairs.signer('disk-leaf'), { subject: { commonName: 'disk.test' } });
      const leaf = new X509Certificate(await reopened.issue({ csr, profile: 'server', validityDays: 1 }));
      expect(leaf.verify(new X509Certificate(caDer).publicKey)).toBe(true);
      expect(await second.pairs.list()).toEqual(['disk-ca', 'disk-leaf']);
    } finally {
      await second.close();
    }
  });
});

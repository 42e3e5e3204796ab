/**
 * The compare-and-swap path of the pki records (docs/pki.md §3.1): on a key store that has
 * `swapMeta` but not `updateMeta` (here the memory store with its updateMeta hidden), concurrent
 * rotations, issues, certificate adds, revocations and CRLs in one process interleave at every
 * await between the read and the swap; lost swaps are re-applied, so every change lands. (With
 * swapMeta hidden too — plain read then write — the same test loses updates.)
 */
import { randomBytes } from 'node:crypto';
import { Keywarden, type KeyStore, MemoryKeyStore, SoftwareRoot } from '@keywarden/core';
import { describe, expect, it } from 'vitest';
import { CertificateAuthority, Certificates, createCsr, KeyPairs } from '../src/index.js';

/**
 * The real memory store, without updateMeta (a store that only has compare-and-swap), whose
 * getMeta yields to the event loop before answering, as a store on a disk or a network does: so
 * that concurrent read-change-write sequences in one process really interleave.
 */
function swapOnly(store: MemoryKeyStore): KeyStore {
  return new Proxy(store, {
    get(target, prop) {
      if (prop === 'updateMeta') return undefined;
      if (prop === 'getMeta') {
        return async (name: string) => {
          const value = await target.getMeta(name);
          await new Promise((resolve) => setImmediate(resolve));
          return value;
        };
      }
      const value = Reflect.get(target, prop, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  }) as KeyStore;
}

describe('pki records on a store with only swapMeta', () => {
  it('concurrent rotate / issue / add / revoke / crl on one key pair and CA lose no update', async () => {
    const memory = new MemoryKeyStore();
    const store = swapOnly(memory);
    expect(store.updateMeta).toBeUndefined();
    expect(typeof store.swapMeta).toBe('function');
    const root = await SoftwareRoot.initialize(store, { unsealKey: new Uint8Array(randomBytes(32)) });
    const kw = new Keywarden({ store, root });
    try {
      await kw.createKey('pki');
      const pairs = new KeyPairs({ keywarden: kw });
      const certs = new Certificates({ keywarden: kw, keyPairs: pairs });
      const ca = await CertificateAuthority.create(kw, pairs, 'ca', {
        subject: { commonName: 'Swap CA' },
        algorithm: 'ECDSA-P256',
        validityDays: 5,
      });
      await pairs.create('shared', { algorithm: 'ECDSA-P256' });
      const lanes = 6;
      const results = await Promise.all(
        Array.from({ length: lanes }, async (_, lane) => {
          await pairs.create(`own-${lane}`, { algorithm: 'ECDSA-P256' });
          const { primaryVersion: version } = await pairs.rotate('shared');
          const csr = await createCsr(await pairs.signer('shared', version), {
            subject: { commonName: `lane-${lane}` },
          });
          const der = await ca.issue({ csr, profile: 'client', validityDays: 1 });
          const held = await certs.add('shared', der, { source: 'issued', ca: 'ca' });
          await ca.revoke(held.serialNumber);
          await ca.crl({ nextUpdateHours: 1 });
          return { version, serial: held.serialNumber };
        }),
      );
      const info = await pairs.get('shared');
      expect(results.map((r) => r.version).sort((a, b) => a - b)).toEqual(
        Array.from({ length: lanes }, (_, i) => i + 2),
      );
      expect(info.versions.map((v) => v.version)).toEqual(Array.from({ length: lanes + 1 }, (_, i) => i + 1));
      for (const v of info.versions) expect((await pairs.signer('shared', v.version)).publicKey).toEqual(v.publicKey);
      const serials = results.map((r) => r.serial).sort();
      expect((await certs.list('shared')).map((c) => c.serialNumber).sort()).toEqual(serials);
      expect((await ca.revoked()).sort()).toEqual(serials);
      const record = JSON.parse(new TextDecoder().decode(await store.getMeta('pki/ca/ca')));
      expect(record.issued).toHaveLength(lanes);
      expect(record.crlNumber).toBe(lanes);
      expect(await pairs.list()).toEqual(
        ['ca', 'shared', ...Array.from({ length: lanes }, (_, i) => `own-${i}`)].sort(),
      );
    } finally {
      await kw.close();
      await root.close();
      await memory.close();
    }
  });
});

/**
 * KeyPairs with storage "root" on the software root (core's sealed-key-pairs.ts: the private key
 * sealed in the root's own store records, the handle a non-secret id): signatures verify against
 * the recorded SPKI, the key pairs survive root rotation and rekey, destroy erases them in the
 * root, and a root without the capability is a typed error before anything is written. The
 * PKCS#11 and TPM roots' key pairs are tested against SoftHSM2 and swtpm in their packages.
 */
import { randomBytes, verify } from 'node:crypto';
import {
  checkedRoot,
  InvalidInputError,
  KeyDestroyedError,
  KeyNotFoundError,
  Keywarden,
  keyPairMetaName,
  MemoryKeyStore,
  type RootOfTrust,
  rewrapUnderNewRoot,
  SoftwareRoot,
  UnsupportedCapabilityError,
} from '@keywarden/core';
import { afterEach, describe, expect, it } from 'vitest';
import { type KeyPairAlgorithm, KeyPairs, type KeyPairStorage } from '../src/index.js';
import { setup } from './_setup.js';

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

const HASH: Record<string, string | null> = {
  'ECDSA-P256': 'sha256',
  'ECDSA-P384': 'sha384',
  'RSA-2048': 'sha256',
  'RSA-3072': 'sha384',
  Ed25519: null,
};

async function signsAs(pairs: KeyPairs, name: string, algorithm: KeyPairAlgorithm, spki: Uint8Array): Promise<void> {
  const data = new Uint8Array(randomBytes(64));
  const sig = await (await pairs.signer(name)).sign(data);
  const key = { key: Buffer.from(spki), format: 'der' as const, type: 'spki' as const };
  expect(verify(HASH[algorithm] ?? null, data, key, sig), `${name} (${algorithm})`).toBe(true);
}

/** A Keywarden on the store's root as a process would open it: loaded, unsealed. */
async function reopened(store: MemoryKeyStore, unsealKey: Uint8Array): Promise<{ kw: Keywarden; pairs: KeyPairs }> {
  const root = await SoftwareRoot.load(store);
  await root.unseal(Uint8Array.from(unsealKey));
  const kw = new Keywarden({ store, root, ownsRoot: true });
  cleanups.push(() => kw.close());
  return { kw, pairs: new KeyPairs({ keywarden: kw, storage: 'root' }) };
}

describe('key pairs held in the software root (storage "root")', () => {
  it('each algorithm: the private key is a sealed record of the root, not an envelope; signatures verify against the SPKI', async () => {
    const env = await setup();
    cleanups.push(env.close);
    const pairs = new KeyPairs({ keywarden: env.kw, storage: 'root' });
    for (const algorithm of ['ECDSA-P256', 'ECDSA-P384', 'RSA-2048', 'Ed25519'] as const) {
      const info = await pairs.create(`in-root-${algorithm}`, { algorithm });
      expect(info.storage).toBe('root');
      const spki = info.versions[0]?.publicKey as Uint8Array;
      await signsAs(pairs, info.name, algorithm, spki);
      const stored = JSON.parse(
        Buffer.from((await env.store.getMeta(`pki/keypair/${info.name}`)) as Uint8Array).toString('utf8'),
      ) as { versions: Array<{ handle: string }> };
      const handle = Buffer.from(stored.versions[0]?.handle as string, 'base64');
      expect(handle.toString('utf8')).toMatch(/^kp_/);
      expect(await env.store.getMeta(keyPairMetaName(handle))).toBeDefined();
    }
  });

  it('root rotation and rekey: the key pairs sign through a Keywarden on the new root, against the same SPKI, and rotate in it', async () => {
    const env = await setup();
    cleanups.push(env.close);
    const pairs = new KeyPairs({ keywarden: env.kw, storage: 'root' });
    const info = await pairs.create('follows', { algorithm: 'ECDSA-P256' });
    const spki = info.versions[0]?.publicKey as Uint8Array;

    const next = await SoftwareRoot.createForRotation({
      unsealKey: Uint8Array.from(env.unsealKey),
      unseal: env.root.document.unseal,
    });
    cleanups.push(() => next.root.close());
    await rewrapUnderNewRoot(env.store, env.root, next.root);
    const afterRotation = await reopened(env.store, env.unsealKey);
    expect(afterRotation.kw.root.describe().id).not.toBe(env.root.describe().id);
    await signsAs(afterRotation.pairs, 'follows', 'ECDSA-P256', spki);
    const rotated = await afterRotation.pairs.rotate('follows');
    expect(rotated.primaryVersion).toBe(2);
    await signsAs(afterRotation.pairs, 'follows', 'ECDSA-P256', rotated.versions[1]?.publicKey as Uint8Array);

    const newKey = new Uint8Array(randomBytes(32));
    await (afterRotation.kw.root as SoftwareRoot).reseal(env.store, Uint8Array.from(newKey), { method: 'key' });
    const afterRekey = await reopened(env.store, newKey);
    await signsAs(afterRekey.pairs, 'follows', 'ECDSA-P256', rotated.versions[1]?.publicKey as Uint8Array);
    const v1 = await afterRekey.pairs.signer('follows', 1);
    expect(Buffer.from(v1.publicKey).equals(Buffer.from(spki))).toBe(true);
  });

  it('destroying a version destroys the key pair in the root: its record is a destroyed marker and the signer refuses', async () => {
    const env = await setup();
    cleanups.push(env.close);
    const pairs = new KeyPairs({ keywarden: env.kw, storage: 'root' });
    await pairs.create('gone', { algorithm: 'Ed25519' });
    const stored = JSON.parse(
      Buffer.from((await env.store.getMeta('pki/keypair/gone')) as Uint8Array).toString('utf8'),
    ) as { versions: Array<{ handle: string }> };
    const handle = Buffer.from(stored.versions[0]?.handle as string, 'base64');
    await pairs.rotate('gone');
    await pairs.disable('gone', 1);
    await pairs.destroy('gone', 1);
    const marker = JSON.parse(
      Buffer.from((await env.store.getMeta(keyPairMetaName(handle))) as Uint8Array).toString('utf8'),
    );
    expect(marker.state).toBe('destroyed');
    expect(marker.sealedPrivateKey).toBeUndefined();
    await expect(pairs.signer('gone', 1)).rejects.toThrow(KeyDestroyedError);
    const root = checkedRoot(env.kw.root);
    await expect(root.keyPairs?.sign(handle, new Uint8Array(1))).rejects.toThrow(KeyDestroyedError);
  });

  it('storage "root" on a root without key pairs is an UnsupportedCapabilityError, and nothing is recorded', async () => {
    const store = new MemoryKeyStore();
    const inner = await SoftwareRoot.initialize(store, { unsealKey: new Uint8Array(randomBytes(32)) });
    const bare: RootOfTrust = {
      describe: () => inner.describe(),
      wrapKey: (m, a) => inner.wrapKey(m, a),
      unwrapKey: (w, a) => inner.unwrapKey(w, a),
      close: () => inner.close(),
    };
    const kw = new Keywarden({ store, root: bare, ownsRoot: true });
    cleanups.push(() => kw.close());
    await kw.createKey('pki');
    const pairs = new KeyPairs({ keywarden: kw, storage: 'root' });
    await expect(pairs.create('in-root', { algorithm: 'ECDSA-P256' })).rejects.toThrow(UnsupportedCapabilityError);
    await expect(
      new KeyPairs({ keywarden: kw }).create('in-root', { algorithm: 'ECDSA-P256', storage: 'root' }),
    ).rejects.toThrow(/software root cannot hold key pairs/);
    await expect(pairs.get('in-root')).rejects.toThrow(KeyNotFoundError);
    expect(await pairs.list()).not.toContain('in-root');
  });

  it('an unknown storage is an InvalidInputError; the default is "kek"', async () => {
    const env = await setup();
    cleanups.push(env.close);
    expect(() => new KeyPairs({ keywarden: env.kw, storage: 'disk' as KeyPairStorage })).toThrow(InvalidInputError);
    const info = await new KeyPairs({ keywarden: env.kw }).create('in-kek', { algorithm: 'ECDSA-P256' });
    expect(info.storage).toBe('kek');
  });
});

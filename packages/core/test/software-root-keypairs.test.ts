/**
 * The software root's key pairs (sealed-key-pairs.ts): sealed in the store under the key-pair key,
 * bound to their id, algorithm, label and public key; destroyed for good; carried by root rotation
 * (including a rotation stopped before or after its commit) and rekey. The root conformance suite
 * (@keywarden/testkit, packages/testkit/test and packages/store-sqlite/test) checks the contract
 * itself; this file checks what is particular to the software root.
 */
import { randomBytes, verify } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  checkedRoot,
  destroyRoot,
  finishKeyPairKeyMove,
  KEY_PAIR_KEY_META_NAME,
  KEY_PAIR_KEY_NEXT_META_NAME,
  type KeyPairRoot,
  keyPairMetaName,
  kekAad,
  MemoryKeyStore,
  requireKeyPairs,
  rewrapUnderNewRoot,
  type RootKeyPairAlgorithm,
  SoftwareRoot,
  stageKeyPairKeyMove,
} from '../src/index.js';

const HASH: Record<RootKeyPairAlgorithm, string | null> = {
  'ECDSA-P256': 'sha256',
  'ECDSA-P384': 'sha384',
  'RSA-2048': 'sha256',
  'RSA-3072': 'sha384',
  Ed25519: null,
};

function verifies(algorithm: RootKeyPairAlgorithm, spki: Uint8Array, data: Uint8Array, sig: Uint8Array): boolean {
  const key = { key: Buffer.from(spki), format: 'der' as const, type: 'spki' as const };
  return verify(
    HASH[algorithm],
    data,
    algorithm.startsWith('ECDSA') ? { ...key, dsaEncoding: 'ieee-p1363' } : key,
    sig,
  );
}

async function fresh() {
  const store = new MemoryKeyStore();
  const unsealKey = new Uint8Array(randomBytes(32));
  const root = await SoftwareRoot.initialize(store, { unsealKey: Uint8Array.from(unsealKey) });
  return { store, unsealKey, root, keyPairs: requireKeyPairs(checkedRoot(root)) };
}

async function reopen(store: MemoryKeyStore, unsealKey: Uint8Array): Promise<{ root: SoftwareRoot; k: KeyPairRoot }> {
  const root = await SoftwareRoot.load(store);
  await root.unseal(Uint8Array.from(unsealKey));
  return { root, k: requireKeyPairs(checkedRoot(root)) };
}

async function codeOf(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
    return undefined;
  } catch (err) {
    return (err as { code?: string }).code ?? String(err);
  }
}

function readJson(bytes: Uint8Array | undefined): Record<string, unknown> {
  return JSON.parse(Buffer.from(bytes as Uint8Array).toString('utf8')) as Record<string, unknown>;
}

const data = new Uint8Array(randomBytes(80));

describe('software root key pairs: at rest', () => {
  it('the store holds the key pair record and the key-pair key; neither parses as a private key, and the handle is the id', async () => {
    const { store, root, keyPairs } = await fresh();
    const pair = await keyPairs.generate('ECDSA-P256', 'kw-kp/at-rest/v1');
    expect(Buffer.from(pair.handle).toString('utf8')).toMatch(/^kp_[A-Za-z0-9_-]{22}$/);
    const record = readJson(await store.getMeta(keyPairMetaName(pair.handle)));
    expect(record).toMatchObject({ v: 1, algorithm: 'ECDSA-P256', state: 'active', label: 'kw-kp/at-rest/v1' });
    expect(Buffer.from(String(record.publicKey), 'base64url').equals(Buffer.from(pair.publicKey))).toBe(true);
    expect(await store.getMeta(KEY_PAIR_KEY_META_NAME)).toBeDefined();
    await root.close();
  });

  it('a sealed private key moved into another record (or under another id, algorithm or label) does not open: DecryptionError', async () => {
    const { store, root, keyPairs } = await fresh();
    const a = await keyPairs.generate('ECDSA-P256', 'kw-kp/a/v1');
    const b = await keyPairs.generate('ECDSA-P256', 'kw-kp/b/v1');
    const ra = readJson(await store.getMeta(keyPairMetaName(a.handle)));
    const rb = readJson(await store.getMeta(keyPairMetaName(b.handle)));
    const put = (r: Record<string, unknown>) =>
      store.putMeta(keyPairMetaName(b.handle), new TextEncoder().encode(JSON.stringify(r)));
    // A's sealed key (and nonce) in B's record.
    await put({ ...rb, nonce: ra.nonce, sealedPrivateKey: ra.sealedPrivateKey });
    expect(await codeOf(keyPairs.sign(b.handle, data))).toBe('KW_DECRYPT');
    // A's whole record under B's name: the id inside must match the handle.
    await put({ ...ra });
    expect(await codeOf(keyPairs.sign(b.handle, data))).toBe('KW_FORMAT');
    await put({ ...ra, id: rb.id });
    expect(await codeOf(keyPairs.sign(b.handle, data))).toBe('KW_DECRYPT');
    // B's own record with another label or public key.
    await put({ ...rb, label: 'kw-kp/other/v1' });
    expect(await codeOf(keyPairs.sign(b.handle, data))).toBe('KW_DECRYPT');
    await put({ ...rb, publicKey: ra.publicKey });
    expect(await codeOf(keyPairs.sign(b.handle, data))).toBe('KW_DECRYPT');
    await put({ ...rb, algorithm: 'ECDSA-P384' });
    expect(await codeOf(keyPairs.sign(b.handle, data))).toBe('KW_DECRYPT');
    await put(rb);
    expect(verifies('ECDSA-P256', b.publicKey, data, await keyPairs.sign(b.handle, data))).toBe(true);
    await root.close();
  });

  it('the key-pair key wrap is not a KEK wrap: the root refuses it under any KEK associated data', async () => {
    const { store, root, keyPairs } = await fresh();
    await keyPairs.generate('Ed25519', 'kw-kp/kpk/v1');
    const doc = readJson(await store.getMeta(KEY_PAIR_KEY_META_NAME));
    const wrapped = new Uint8Array(Buffer.from(String(doc.wrapped), 'base64url'));
    expect(await codeOf(root.unwrapKey(wrapped, kekAad('kek_x', 1)))).toBe('KW_DECRYPT');
    expect(await codeOf(root.unwrapKey(wrapped, new Uint8Array(0)))).toBe('KW_DECRYPT');
    await root.close();
  });

  it('destroy overwrites the record with a destroyed marker (no sealed key left), idempotently; a handle never made is KeyNotFoundError', async () => {
    const { store, root, keyPairs } = await fresh();
    const pair = await keyPairs.generate('ECDSA-P384', 'kw-kp/destroy/v1');
    await keyPairs.destroy(pair.handle);
    const marker = readJson(await store.getMeta(keyPairMetaName(pair.handle)));
    expect(marker).toMatchObject({ state: 'destroyed', algorithm: 'ECDSA-P384' });
    expect(marker.sealedPrivateKey).toBeUndefined();
    expect(marker.nonce).toBeUndefined();
    await keyPairs.destroy(pair.handle);
    expect(await codeOf(keyPairs.sign(pair.handle, data))).toBe('KW_KEY_DESTROYED');
    const never = new TextEncoder().encode(`kp_${Buffer.from(randomBytes(16)).toString('base64url')}`);
    expect(await codeOf(keyPairs.sign(never, data))).toBe('KW_KEY_NOT_FOUND');
    await root.close();
  });

  it('destroying the root crypto-shreds every key pair: the store cannot give them back', async () => {
    const { store, unsealKey, root, keyPairs } = await fresh();
    const pair = await keyPairs.generate('ECDSA-P256', 'kw-kp/shred/v1');
    expect(await store.getMeta(KEY_PAIR_KEY_META_NAME)).toBeDefined();
    await destroyRoot(store, { root, unsealKey: Uint8Array.from(unsealKey) });
    expect(await codeOf(keyPairs.sign(pair.handle, data))).toBe('KW_KEYSTORE_SEALED');
    // Hygiene: the key-pair key's wrap is gone from the store too.
    expect(await store.getMeta(KEY_PAIR_KEY_META_NAME)).toBeUndefined();
    expect(await codeOf(SoftwareRoot.load(store))).toBe('KW_ROOT_DESTROYED');
  });

  it('a root made for a rotation without a store has no key pairs', async () => {
    const created = await SoftwareRoot.createForRotation({
      unsealKey: new Uint8Array(randomBytes(32)),
      unseal: { method: 'key' },
    });
    expect(created.root.keyPairs).toBeUndefined();
    await created.root.close();
  });
});

describe('software root key pairs follow the root', () => {
  it('root rotation: after rewrapUnderNewRoot every key pair signs under the new root, verifying against its old SPKI', async () => {
    const { store, unsealKey, root, keyPairs } = await fresh();
    const pairs = await Promise.all(
      (['ECDSA-P256', 'Ed25519', 'RSA-2048'] as const).map(async (a) => ({
        a,
        pair: await keyPairs.generate(a, `kw-kp/${a}/v1`),
      })),
    );
    for (let i = 0; i < 2; i++) {
      const from = await reopen(store, unsealKey);
      const next = await SoftwareRoot.createForRotation({
        unsealKey: Uint8Array.from(unsealKey),
        unseal: { method: 'key' },
        store,
      });
      await rewrapUnderNewRoot(store, from.root, next.root);
      expect(await store.getMeta(KEY_PAIR_KEY_NEXT_META_NAME)).toBeUndefined();
      expect(readJson(await store.getMeta(KEY_PAIR_KEY_META_NAME)).rootId).toBe(next.root.describe().id);
      // The root made for the rotation, and the root loaded from the store, both sign.
      const fromNew = requireKeyPairs(checkedRoot(next.root));
      const loaded = await reopen(store, unsealKey);
      for (const { a, pair } of pairs) {
        expect(verifies(a, pair.publicKey, data, await fromNew.sign(pair.handle, data)), a).toBe(true);
        expect(verifies(a, pair.publicKey, data, await loaded.k.sign(pair.handle, data)), a).toBe(true);
      }
      // The old root no longer opens the key-pair key.
      expect(await codeOf(from.k.sign(pairs[0]?.pair.handle as Uint8Array, data))).toBe('KW_KEY_STATE');
      await Promise.all([from.root.close(), next.root.close(), loaded.root.close()]);
    }
    await root.close();
  });

  it('root rotation stopped after staging, before its commit: the old root keeps its key pairs; the next rotation carries them', async () => {
    const { store, unsealKey, root, keyPairs } = await fresh();
    const pair = await keyPairs.generate('ECDSA-P256', 'kw-kp/stop-before/v1');
    const abandoned = await SoftwareRoot.createForRotation({
      unsealKey: Uint8Array.from(unsealKey),
      unseal: { method: 'key' },
    });
    expect(await stageKeyPairKeyMove(store, root, abandoned.root)).toBe(true);
    await abandoned.root.close();
    // No commit: the old root still signs.
    const old = await reopen(store, unsealKey);
    expect(verifies('ECDSA-P256', pair.publicKey, data, await old.k.sign(pair.handle, data))).toBe(true);
    const next = await SoftwareRoot.createForRotation({
      unsealKey: Uint8Array.from(unsealKey),
      unseal: { method: 'key' },
    });
    await rewrapUnderNewRoot(store, old.root, next.root);
    const loaded = await reopen(store, unsealKey);
    expect(verifies('ECDSA-P256', pair.publicKey, data, await loaded.k.sign(pair.handle, data))).toBe(true);
    await Promise.all([root.close(), old.root.close(), next.root.close(), loaded.root.close()]);
  });

  it('root rotation stopped after its commit, before promoting the key-pair key: the new root signs with the staged key, and a second rotation keeps it', async () => {
    const { store, unsealKey, root, keyPairs } = await fresh();
    const pair = await keyPairs.generate('RSA-2048', 'kw-kp/stop-after/v1');
    const next = await SoftwareRoot.createForRotation({
      unsealKey: Uint8Array.from(unsealKey),
      unseal: { method: 'key' },
    });
    // What rewrapUnderNewRoot does, minus the promotion: stage, then the one transaction.
    expect(await stageKeyPairKeyMove(store, root, next.root)).toBe(true);
    await store.replaceRoot({
      versions: [],
      meta: checkedRoot(next.root).storeRecord() as { name: string; value: Uint8Array },
      at: new Date(),
    });
    expect(readJson(await store.getMeta(KEY_PAIR_KEY_META_NAME)).rootId).toBe(root.describe().id);
    const loaded = await reopen(store, unsealKey);
    expect(verifies('RSA-2048', pair.publicKey, data, await loaded.k.sign(pair.handle, data))).toBe(true);
    // A rotation abandoned from there (staged, never committed) must not overwrite the staged key
    // the current root depends on: staging promotes it first.
    const abandoned = await SoftwareRoot.createForRotation({
      unsealKey: Uint8Array.from(unsealKey),
      unseal: { method: 'key' },
    });
    expect(await stageKeyPairKeyMove(store, loaded.root, abandoned.root)).toBe(true);
    await abandoned.root.close();
    const still = await reopen(store, unsealKey);
    expect(verifies('RSA-2048', pair.publicKey, data, await still.k.sign(pair.handle, data))).toBe(true);
    await still.root.close();
    // A second rotation from there moves the key on.
    const third = await SoftwareRoot.createForRotation({
      unsealKey: Uint8Array.from(unsealKey),
      unseal: { method: 'key' },
    });
    await rewrapUnderNewRoot(store, loaded.root, third.root);
    const last = await reopen(store, unsealKey);
    expect(verifies('RSA-2048', pair.publicKey, data, await last.k.sign(pair.handle, data))).toBe(true);
    await finishKeyPairKeyMove(store, last.root); // harmless when nothing is staged
    await Promise.all([root.close(), next.root.close(), loaded.root.close(), third.root.close(), last.root.close()]);
  });

  it('a first key pair made by a root that a rotation replaced meanwhile is refused (ConflictError) and left destroyed', async () => {
    const { store, unsealKey, root } = await fresh();
    const stale = await reopen(store, unsealKey);
    const next = await SoftwareRoot.createForRotation({
      unsealKey: Uint8Array.from(unsealKey),
      unseal: { method: 'key' },
    });
    await rewrapUnderNewRoot(store, root, next.root);
    expect(await codeOf(stale.k.generate('ECDSA-P256', 'kw-kp/stale/v1'))).toBe('KW_CONFLICT');
    await Promise.all([root.close(), stale.root.close(), next.root.close()]);
  });

  it('rekey (reseal under a new unseal key): key pairs sign with the root opened by the new key', async () => {
    const { store, root, keyPairs } = await fresh();
    const pair = await keyPairs.generate('ECDSA-P384', 'kw-kp/rekey/v1');
    const newKey = new Uint8Array(randomBytes(32));
    await root.reseal(store, Uint8Array.from(newKey), { method: 'key' });
    const loaded = await reopen(store, newKey);
    expect(verifies('ECDSA-P384', pair.publicKey, data, await loaded.k.sign(pair.handle, data))).toBe(true);
    await Promise.all([root.close(), loaded.root.close()]);
  });

  it('two roots of one store making its first key pairs at once agree on one key-pair key: every pair signs through either', async () => {
    const { store, unsealKey, root } = await fresh();
    const other = await reopen(store, unsealKey);
    const mine = requireKeyPairs(checkedRoot(root));
    const made = await Promise.all(
      Array.from({ length: 6 }, (_, i) => (i % 2 === 0 ? mine : other.k).generate('ECDSA-P256', `kw-kp/race-${i}/v1`)),
    );
    for (const pair of made) {
      for (const k of [mine, other.k]) {
        expect(verifies('ECDSA-P256', pair.publicKey, data, await k.sign(pair.handle, data))).toBe(true);
      }
    }
    await Promise.all([root.close(), other.root.close()]);
  });

  it('a sealed root makes no key pair and signs nothing; the first generate while sealed writes nothing', async () => {
    const { store, root, keyPairs } = await fresh();
    await root.seal();
    expect(await codeOf(keyPairs.generate('ECDSA-P256', 'kw-kp/sealed/v1'))).toBe('KW_KEYSTORE_SEALED');
    expect(await store.getMeta(KEY_PAIR_KEY_META_NAME)).toBeUndefined();
    await root.close();
  });
});

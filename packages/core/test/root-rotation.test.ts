import { createHmac, hkdfSync, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  DecryptionError,
  decodeSealedRoot,
  destroyRoot,
  encodeSealedRoot,
  InvalidInputError,
  KeyCompromisedError,
  KeyDestroyedError,
  KeyStateError,
  KeyStoreError,
  KeystoreSealedError,
  Keywarden,
  kekAad,
  MemoryKeyStore,
  ROOT_META_NAME,
  type RootUpdate,
  rewrapUnderNewRoot,
  SoftwareRoot,
  decodeRootTombstone,
  encodeRootTombstone,
  makeRootTombstone,
  ROOT_DESTROYED_MESSAGE,
  ROOT_DESTRUCTION_INTERRUPTED_MESSAGE,
  ROOT_MISSING_MESSAGE,
  ROOT_TOMBSTONE_META_NAME,
  RootDestroyedError,
  RootMissingError,
  type RootTombstone,
  readRootState,
  StoreCorruptError,
  UnsealError,
  verifyRootTombstone,
} from '../src/index.js';

const text = new TextEncoder();
const CONTEXT = { table: 'orders' };

/** A snapshot of what rotation may touch: keys, every version, and the sealed root. */
async function snapshot(store: MemoryKeyStore) {
  const keys = await store.listKeys();
  return {
    keys,
    versions: await Promise.all(keys.map((k) => store.listVersions(k.id))),
    root: Array.from((await store.getMeta(ROOT_META_NAME)) ?? []),
  };
}

/**
 * A store with a development-mode root and two keys:
 *  - orders: v1 (destroyed after encrypting under it), v2 (disabled), v3 (compromised), v4 (primary);
 *  - users: v1.
 * One envelope per version, encrypted while that version was primary.
 */
async function fixture(store = new MemoryKeyStore()) {
  const unsealKey = new Uint8Array(randomBytes(32));
  const root = await SoftwareRoot.initialize(store, { unsealKey });
  const kw = new Keywarden({ store, root });
  const orders = await kw.createKey('orders');
  const envelopes = new Map<string, Uint8Array>();
  envelopes.set('orders v1', await kw.encrypt(text.encode('orders v1'), { key: 'orders', context: CONTEXT }));
  for (const v of [2, 3, 4]) {
    await kw.rotateKey('orders');
    envelopes.set(`orders v${v}`, await kw.encrypt(text.encode(`orders v${v}`), { key: 'orders', context: CONTEXT }));
  }
  await kw.createKey('users');
  envelopes.set('users v1', await kw.encrypt(text.encode('users v1'), { key: 'users', context: CONTEXT }));
  const dataKey = await kw.generateDataKey('users', CONTEXT);
  const at = new Date();
  await store.setVersionState(orders.id, 1, 'destroyed', at);
  await store.setVersionState(orders.id, 2, 'disabled', at);
  await store.setVersionState(orders.id, 3, 'compromised', at);
  kw.clearCache();
  return { store, unsealKey, root, kw, ordersId: orders.id, envelopes, dataKey };
}

/** A new root for `root`, sealed under the same unseal key and description; its meta record. */
async function newRootFor(root: SoftwareRoot, unsealKey: Uint8Array) {
  const { root: next, document } = await SoftwareRoot.createForRotation({ unsealKey, unseal: root.document.unseal });
  return { next, document, meta: { name: ROOT_META_NAME, value: encodeSealedRoot(document) } };
}

/** A Keywarden on the root as stored now, unsealed with `unsealKey`. */
async function fromStore(store: MemoryKeyStore, unsealKey: Uint8Array): Promise<Keywarden> {
  const root = await SoftwareRoot.load(store);
  await root.unseal(unsealKey);
  return new Keywarden({ store, root });
}

async function decrypts(kw: Keywarden, envelope: Uint8Array): Promise<string> {
  return new TextDecoder().decode(await kw.decrypt(envelope, { key: ['orders', 'users'], context: CONTEXT }));
}

describe('SoftwareRoot.createForRotation', () => {
  it('makes a new root key and a new root id, sealed under the given unseal key and description, and writes nothing', async () => {
    const store = new MemoryKeyStore();
    const unsealKey = new Uint8Array(randomBytes(32));
    const unseal = { method: 'shamir' as const, shareSetId: 'ss_AAAAAAAAAAAAAAAA', threshold: 2, shares: 3 };
    const old = await SoftwareRoot.initialize(store, { unsealKey, unseal });
    const before = await snapshot(store);
    const { root, document } = await SoftwareRoot.createForRotation({ unsealKey, unseal });
    expect(await snapshot(store)).toStrictEqual(before);
    expect(root.isSealed()).toBe(false);
    expect(document.rootId).toMatch(/^root_[A-Za-z0-9_-]{22}$/);
    expect(document.rootId).not.toBe(old.describe().id);
    expect(root.describe().id).toBe(document.rootId);
    expect(document.unseal).toEqual(unseal);
    // A different root key: what one wraps, the other cannot unwrap.
    const wrapped = await root.wrapKey(new Uint8Array(32).fill(9), text.encode('aad'));
    await expect(old.unwrapKey(wrapped, text.encode('aad'))).rejects.toSatisfy(DecryptionError.isInstance);
    // The document loads and opens with the same unseal key.
    const scratch = new MemoryKeyStore();
    await scratch.putMeta(ROOT_META_NAME, encodeSealedRoot(document));
    const loaded = await SoftwareRoot.load(scratch);
    await loaded.unseal(unsealKey);
    expect(await loaded.unwrapKey(wrapped, text.encode('aad'))).toEqual(new Uint8Array(32).fill(9));
  });

  it('refuses a bad unseal key or a malformed unseal description before making anything', async () => {
    await expect(
      SoftwareRoot.createForRotation({ unsealKey: new Uint8Array(16), unseal: { method: 'key' } }),
    ).rejects.toSatisfy(InvalidInputError.isInstance);
    await expect(
      SoftwareRoot.createForRotation({
        unsealKey: new Uint8Array(randomBytes(32)),
        unseal: { method: 'shamir', shareSetId: 'ss_x', threshold: 'two' as unknown as number, shares: 3 },
      }),
    ).rejects.toThrow(/^root: /);
  });
});

describe('rewrapUnderNewRoot', () => {
  it('moves every live version to the new root in one write; every data key made before still unwraps on the new root, loaded from the store with the same unseal key', async () => {
    const f = await fixture();
    const before = await snapshot(f.store);
    const oldId = f.root.describe().id;
    const { next, document, meta } = await newRootFor(f.root, f.unsealKey);
    const at = new Date(Date.UTC(2025, 6, 1, 12, 0, 0, 5));
    const result = await rewrapUnderNewRoot(f.store, f.root, next, meta, at);
    expect(result).toEqual({ rewrapped: 4, skippedDestroyed: 1 });

    // The stored document names the new root; every live version too; destroyed stays destroyed.
    const stored = decodeSealedRoot((await f.store.getMeta(ROOT_META_NAME))!);
    expect(stored).toEqual(document);
    expect(stored.rootId).not.toBe(oldId);
    const after = await snapshot(f.store);
    expect(after.keys).toStrictEqual(before.keys);
    for (const [i, versions] of after.versions.entries()) {
      for (const [j, v] of versions.entries()) {
        const old = before.versions[i]![j]!;
        expect(v.state).toBe(old.state);
        expect(v.createdAt).toEqual(old.createdAt);
        if (v.state === 'destroyed') {
          expect(v).toStrictEqual(old);
          continue;
        }
        expect(v.rootId).toBe(stored.rootId);
        expect(v.updatedAt).toEqual(at);
        expect(Buffer.from(v.wrappedMaterial).equals(Buffer.from(old.wrappedMaterial))).toBe(false);
        // The old root can no longer unwrap what is stored.
        await expect(f.root.unwrapKey(v.wrappedMaterial, kekAad(v.keyId, v.version))).rejects.toSatisfy(
          DecryptionError.isInstance,
        );
      }
    }

    // A Keywarden on the new root, as a restarted process would load it: same unseal key.
    const kw = await fromStore(f.store, f.unsealKey);
    expect(kw.root.describe().id).toBe(stored.rootId);
    expect(await decrypts(kw, f.envelopes.get('orders v4')!)).toBe('orders v4');
    expect(await decrypts(kw, f.envelopes.get('users v1')!)).toBe('users v1');
    expect(await kw.decryptDataKey(f.dataKey.wrapped, CONTEXT, { key: 'users' })).toEqual(f.dataKey.plaintext);
    // The states still rule: destroyed, disabled and compromised versions are refused as before.
    const refusedAs = { 1: KeyDestroyedError, 2: KeyStateError, 3: KeyCompromisedError } as const;
    for (const v of [1, 2, 3] as const) {
      await expect(kw.decrypt(f.envelopes.get(`orders v${v}`)!, { key: 'orders', context: CONTEXT })).rejects.toSatisfy(
        refusedAs[v].isInstance,
      );
    }
    // Re-enabling the disabled version shows its material survived the move.
    await f.store.setVersionState(f.ordersId, 2, 'enabled', new Date());
    expect(await decrypts(kw, f.envelopes.get('orders v2')!)).toBe('orders v2');
    // New keys and rotations land under the new root.
    const created = await kw.createKey('after-rotation');
    expect(created.versions[0]?.rootId).toBe(stored.rootId);
    expect((await kw.rotateKey('orders')).versions.at(-1)?.rootId).toBe(stored.rootId);
  });

  it('a Keywarden still on the old root does not keep working silently: once its cache is cleared it refuses every version (wrapped by another root)', async () => {
    const f = await fixture();
    expect(await decrypts(f.kw, f.envelopes.get('orders v4')!)).toBe('orders v4'); // warm cache
    const { next, meta } = await newRootFor(f.root, f.unsealKey);
    await rewrapUnderNewRoot(f.store, f.root, next, meta);
    f.kw.clearCache();
    const err = await f.kw
      .decrypt(f.envelopes.get('orders v4')!, { key: 'orders', context: CONTEXT })
      .catch((e: Error) => e);
    expect(KeyStateError.isInstance(err)).toBe(true);
    expect((err as Error).message).toMatch(/^root: key kek_\S+ v4 was wrapped by another root \(root_\S+\)$/);
    await f.kw.seal();
    await expect(f.kw.decrypt(f.envelopes.get('users v1')!, { key: 'users', context: CONTEXT })).rejects.toSatisfy(
      KeystoreSealedError.isInstance,
    );
  });

  it('a failing replaceRoot leaves the old root fully working: the same document, the same wraps, everything decrypts', async () => {
    class FailingStore extends MemoryKeyStore {
      override async replaceRoot(_update: RootUpdate): Promise<void> {
        throw new KeyStoreError('keystore: replaceRoot failed (injected)');
      }
    }
    const f = await fixture(new FailingStore());
    const before = await snapshot(f.store);
    const { next, meta } = await newRootFor(f.root, f.unsealKey);
    await expect(rewrapUnderNewRoot(f.store, f.root, next, meta)).rejects.toThrow(
      'keystore: replaceRoot failed (injected)',
    );
    expect(await snapshot(f.store)).toStrictEqual(before);
    const kw = await fromStore(f.store, f.unsealKey);
    expect(kw.root.describe().id).toBe(f.root.describe().id);
    expect(await decrypts(kw, f.envelopes.get('orders v4')!)).toBe('orders v4');
    expect(await decrypts(kw, f.envelopes.get('users v1')!)).toBe('users v1');
    expect(await decrypts(f.kw, f.envelopes.get('orders v4')!)).toBe('orders v4');
  });

  it('a version added by another process during the rotation makes the store refuse it; nothing changes and the new version works on the old root', async () => {
    let racer: Keywarden | undefined;
    class RacingStore extends MemoryKeyStore {
      override async replaceRoot(update: RootUpdate): Promise<void> {
        await racer?.rotateKey('users'); // v2, wrapped by the old root, not in the update
        return super.replaceRoot(update);
      }
    }
    const f = await fixture(new RacingStore());
    racer = f.kw;
    const { next, meta } = await newRootFor(f.root, f.unsealKey);
    const err = await rewrapUnderNewRoot(f.store, f.root, next, meta).catch((e: Error) => e);
    expect(KeyStateError.isInstance(err)).toBe(true);
    expect((err as Error).message).toMatch(/^keystore: replaceRoot: key "kek_\S+" v2 is not in the update/);
    racer = undefined;
    const kw = await fromStore(f.store, f.unsealKey);
    expect(kw.root.describe().id).toBe(f.root.describe().id);
    const fresh = await kw.encrypt(text.encode('v2'), { key: 'users', context: CONTEXT });
    expect(await decrypts(kw, fresh)).toBe('v2');
    // Run again: now every version moves.
    expect((await rewrapUnderNewRoot(f.store, f.root, next, meta)).rewrapped).toBe(5);
  });

  it('refuses, changing nothing: a version wrapped by another root, the same root as new root, a sealed new root', async () => {
    const f = await fixture();
    const before = await snapshot(f.store);
    const { next, meta } = await newRootFor(f.root, f.unsealKey);

    // Pretend a version belongs to a third root: rotation must not guess.
    const users = (await f.store.getKey('users'))!;
    const foreign = new MemoryKeyStore();
    for (const k of await f.store.listKeys()) {
      const versions = await f.store.listVersions(k.id);
      const [first, ...rest] = versions.map((v) => (k.id === users.id ? { ...v, rootId: 'root_elsewhere' } : v));
      await foreign.createKey({ ...k, primaryVersion: first!.version }, first!);
      for (const v of rest) await foreign.addVersion(v, false);
    }
    await foreign.putMeta(ROOT_META_NAME, (await f.store.getMeta(ROOT_META_NAME))!);
    const foreignBefore = await snapshot(foreign);
    const err = await rewrapUnderNewRoot(foreign, f.root, next, meta).catch((e: Error) => e);
    expect(KeyStateError.isInstance(err)).toBe(true);
    expect((err as Error).message).toBe(
      `root: key ${users.id} v1 is wrapped by root root_elsewhere, not by the root being rotated (${f.root.describe().id}); nothing was changed`,
    );
    expect(await snapshot(foreign)).toStrictEqual(foreignBefore);

    await expect(rewrapUnderNewRoot(f.store, f.root, f.root, meta)).rejects.toSatisfy(InvalidInputError.isInstance);
    await next.seal();
    await expect(rewrapUnderNewRoot(f.store, f.root, next, meta)).rejects.toSatisfy(KeystoreSealedError.isInstance);
    expect(await snapshot(f.store)).toStrictEqual(before);
  });

  it('a store without keys: only the root record changes', async () => {
    const store = new MemoryKeyStore();
    const unsealKey = new Uint8Array(randomBytes(32));
    const root = await SoftwareRoot.initialize(store, { unsealKey });
    const { next, meta } = await newRootFor(root, unsealKey);
    expect(await rewrapUnderNewRoot(store, root, next, meta)).toEqual({ rewrapped: 0, skippedDestroyed: 0 });
    expect((await SoftwareRoot.load(store)).describe().id).toBe(next.describe().id);
  });
});

describe('destroyRoot', () => {
  const NOW = new Date(Date.UTC(2025, 6, 2));

  it('writes a tombstone, deletes the sealed root, then destroys every version: load fails with RootDestroyedError, nothing decrypts', async () => {
    const f = await fixture();
    const rootId = f.root.describe().id;
    expect(await destroyRoot(f.store, { unsealKey: f.unsealKey, now: NOW })).toEqual({
      destroyed: 4,
      alreadyDestroyed: 1,
    });
    expect(await f.store.getMeta(ROOT_META_NAME)).toBeUndefined();
    const state = await readRootState(f.store);
    expect(state.state).toBe('destroyed');
    const tombstone = (state as { tombstone: RootTombstone }).tombstone;
    expect(tombstone).toMatchObject({ format: 1, kind: 'root-tombstone', rootId, destroyedAt: NOW.toISOString() });
    expect(tombstone.unseal).toEqual({ method: 'key' });
    verifyRootTombstone(tombstone, f.unsealKey);
    const err = await SoftwareRoot.load(f.store).catch((e: Error) => e);
    expect(RootDestroyedError.isInstance(err)).toBe(true);
    expect((err as Error).message).toBe(ROOT_DESTROYED_MESSAGE);
    for (const k of await f.store.listKeys()) {
      for (const v of await f.store.listVersions(k.id)) {
        expect(v.state).toBe('destroyed');
        expect(v.wrappedMaterial).toHaveLength(0);
      }
    }
    // The old process, once its cache is gone, cannot decrypt anything either.
    f.kw.clearCache();
    await expect(f.kw.decryptDataKey(f.dataKey.wrapped, CONTEXT, { key: 'users' })).rejects.toSatisfy(
      KeyDestroyedError.isInstance,
    );
    await expect(f.kw.decrypt(f.envelopes.get('orders v4')!, { key: 'orders', context: CONTEXT })).rejects.toSatisfy(
      KeyDestroyedError.isInstance,
    );
  });

  it('requires the consent: a wrong unseal key is an UnsealError and changes nothing', async () => {
    const f = await fixture();
    const before = await snapshot(f.store);
    const err = await destroyRoot(f.store, { unsealKey: new Uint8Array(randomBytes(32)) }).catch((e: Error) => e);
    expect(UnsealError.isInstance(err)).toBe(true);
    expect(await snapshot(f.store)).toStrictEqual(before);
    expect(await f.store.getMeta(ROOT_TOMBSTONE_META_NAME)).toBeUndefined();
  });

  it('is idempotent: a second call (after an interruption) finishes erasing with the same consent, and refuses another key', async () => {
    const f = await fixture();
    // Interrupted after step 2: the tombstone is written and the root gone; the versions still hold material.
    const doc = (await SoftwareRoot.load(f.store)).document;
    await f.store.putMeta(ROOT_TOMBSTONE_META_NAME, encodeRootTombstone(makeRootTombstone(doc, f.unsealKey, NOW)));
    await f.store.deleteMeta(ROOT_META_NAME);
    const err = await destroyRoot(f.store, { unsealKey: new Uint8Array(randomBytes(32)) }).catch((e: Error) => e);
    expect(UnsealError.isInstance(err)).toBe(true);
    expect((await f.store.listVersions(f.ordersId)).filter((v) => v.state !== 'destroyed')).toHaveLength(3);
    expect(await destroyRoot(f.store, { unsealKey: f.unsealKey })).toEqual({ destroyed: 4, alreadyDestroyed: 1 });
    expect(await destroyRoot(f.store, { unsealKey: f.unsealKey })).toEqual({ destroyed: 0, alreadyDestroyed: 5 });
  });

  it('interrupted after the tombstone, before the root was deleted: the root may no longer be loaded, and a second call finishes', async () => {
    const f = await fixture();
    const doc = (await SoftwareRoot.load(f.store)).document;
    await f.store.putMeta(ROOT_TOMBSTONE_META_NAME, encodeRootTombstone(makeRootTombstone(doc, f.unsealKey, NOW)));
    const err = await SoftwareRoot.load(f.store).catch((e: Error) => e);
    expect(RootDestroyedError.isInstance(err)).toBe(true);
    expect((err as Error).message).toBe(ROOT_DESTRUCTION_INTERRUPTED_MESSAGE);
    expect((await readRootState(f.store)).state).toBe('present');
    expect(await destroyRoot(f.store, { unsealKey: f.unsealKey })).toEqual({ destroyed: 4, alreadyDestroyed: 1 });
    expect((await readRootState(f.store)).state).toBe('destroyed');
  });

  it('never reads "not found" as "destroyed": a store with neither root nor tombstone is RootMissingError, and destroy changes nothing', async () => {
    const f = await fixture();
    // What a damaged index looks like from above: the sealed root is not found, and nothing says why.
    await f.store.deleteMeta(ROOT_META_NAME);
    const before = await snapshot(f.store);
    expect((await readRootState(f.store)).state).toBe('missing');
    for (const attempt of [() => SoftwareRoot.load(f.store), () => destroyRoot(f.store, { unsealKey: f.unsealKey })]) {
      const err = await attempt().catch((e: Error) => e);
      expect(RootMissingError.isInstance(err)).toBe(true);
      expect((err as Error).message).toBe(ROOT_MISSING_MESSAGE);
    }
    expect(await snapshot(f.store)).toStrictEqual(before);
  });

  it('the tombstone MAC is exactly format.md §12.1: HMAC-SHA256(HKDF-SHA256(unseal key, "", info), domain ‖ canonical JSON), recomputed independently', () => {
    const unsealKey = new Uint8Array(32).map((_, i) => i);
    const doc = {
      rootId: 'root_AAAAAAAAAAAAAAAAAAAAAA',
      unseal: { method: 'shamir', shareSetId: 'ss_BBBBBBBBBBBBBBBB', threshold: 2, shares: 3 },
    } as unknown as Parameters<typeof makeRootTombstone>[0];
    const t = makeRootTombstone(doc, unsealKey, new Date(Date.UTC(2026, 10, 29, 12, 0, 0)));
    // Sorted keys, no whitespace, nested objects sorted too; "mac" left out.
    const canonical =
      '{"destroyedAt":"2026-11-29T12:00:00.000Z","format":1,"kind":"root-tombstone","rootId":"root_AAAAAAAAAAAAAAAAAAAAAA",' +
      '"unseal":{"method":"shamir","shareSetId":"ss_BBBBBBBBBBBBBBBB","shares":3,"threshold":2}}';
    const key = Buffer.from(
      hkdfSync('sha256', unsealKey, new Uint8Array(0), 'keywarden/software-root/tombstone-key/v1', 32),
    );
    const mac = createHmac('sha256', key).update('keywarden/software-root/tombstone/v1').update(canonical).digest();
    expect(t.mac).toBe(mac.toString('base64url'));
    expect(JSON.parse(new TextDecoder().decode(encodeRootTombstone(t)))).toEqual({
      ...JSON.parse(canonical),
      mac: t.mac,
    });
  });

  it('a tombstone is authenticated: changing any field, or the MAC, makes the consent check fail', async () => {
    const f = await fixture();
    const doc = (await SoftwareRoot.load(f.store)).document;
    const t = makeRootTombstone(doc, f.unsealKey, NOW);
    verifyRootTombstone(decodeRootTombstone(encodeRootTombstone(t)), f.unsealKey);
    const altered: RootTombstone[] = [
      { ...t, rootId: 'root_AAAAAAAAAAAAAAAAAAAAAA' },
      { ...t, destroyedAt: new Date(0).toISOString() },
      { ...t, unseal: { method: 'shamir', shareSetId: 'x', threshold: 2, shares: 3 } },
      { ...t, mac: t.mac.replace(/^./, (c) => (c === 'A' ? 'B' : 'A')) },
    ];
    for (const a of altered) {
      expect(() => verifyRootTombstone(a, f.unsealKey)).toThrow(/does not match the record of this root destruction/);
    }
    for (const bad of ['{', '{"format":1}', JSON.stringify({ ...t, mac: 'AA' })]) {
      expect(() => decodeRootTombstone(new TextEncoder().encode(bad))).toSatisfy((fn: () => unknown) => {
        try {
          fn();
          return false;
        } catch (err) {
          return StoreCorruptError.isInstance(err);
        }
      });
    }
  });
});

import { describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import {
  DecryptionError,
  InvalidInputError,
  KeyExistsError,
  KeyMaterialError,
  KeyNotFoundError,
  KeyStateError,
  KeystoreSealedError,
  Keywarden,
  MemoryKeyStore,
  SoftwareRoot,
  UnexpectedKeyError,
  WeakKeyMaterialError,
  kekAad,
  parseWrappedKey,
  type RootOfTrust,
} from '../src/index.js';

async function setup(options: { ttlMs?: number; maxEntries?: number } = {}) {
  const store = new MemoryKeyStore();
  const unsealKey = new Uint8Array(randomBytes(32));
  const root = await SoftwareRoot.initialize(store, { unsealKey });
  const kw = new Keywarden({ store, root, cache: options });
  return { store, root, kw, unsealKey };
}

/** Counts store reads, to check the hot path does not touch the store. */
function countReads(store: MemoryKeyStore) {
  const counts = { getKey: 0, getVersion: 0 };
  const getKey = store.getKey.bind(store);
  const getVersion = store.getVersion.bind(store);
  store.getKey = async (x) => {
    counts.getKey++;
    return getKey(x);
  };
  store.getVersion = async (k, v) => {
    counts.getVersion++;
    return getVersion(k, v);
  };
  return counts;
}

describe('Keywarden key management', () => {
  it('createKey makes an immutable random id, version 1 primary, and keeps the scope', async () => {
    const { kw } = await setup();
    const info = await kw.createKey('billing/tenant-a', {
      scope: { environment: 'prod', tenant: 'a', purpose: 'pii' },
    });
    expect(info.id).toMatch(/^kek_[A-Za-z0-9_-]{22}$/);
    expect(info.primaryVersion).toBe(1);
    expect(info.scope).toEqual({ environment: 'prod', tenant: 'a', purpose: 'pii' });
    expect(info.versions.map((v) => v.state)).toEqual(['enabled']);
    expect(await kw.getKey(info.id)).toEqual(await kw.getKey('billing/tenant-a'));
    const other = await kw.createKey('billing/tenant-b');
    expect(other.id).not.toBe(info.id);
    expect((await kw.listKeys()).map((k) => k.name).sort()).toEqual(['billing/tenant-a', 'billing/tenant-b']);
  });

  it('stores KEK material only wrapped by the root, bound to key id and version', async () => {
    const { kw, store, root } = await setup();
    const info = await kw.createKey('k');
    const rec = (await store.getVersion(info.id, 1))!;
    expect(rec.rootId).toBe(root.describe().id);
    const material = await root.unwrapKey(rec.wrappedMaterial, kekAad(info.id, 1));
    expect(material.length).toBe(32);
    await expect(root.unwrapKey(rec.wrappedMaterial, kekAad(info.id, 2))).rejects.toSatisfy(DecryptionError.isInstance);
  });

  it('refuses duplicate names, bad names and unknown scope fields', async () => {
    const { kw } = await setup();
    await kw.createKey('k');
    await expect(kw.createKey('k')).rejects.toSatisfy(KeyExistsError.isInstance);
    for (const bad of ['', ' k', 'kek_abc', 'a'.repeat(129), 'x\ny']) {
      await expect(kw.createKey(bad)).rejects.toSatisfy(InvalidInputError.isInstance);
    }
    await expect(kw.createKey('s', { scope: { owner: 'me' } as never })).rejects.toSatisfy(
      InvalidInputError.isInstance,
    );
    await expect(kw.getKey('missing')).rejects.toSatisfy(KeyNotFoundError.isInstance);
  });

  it('importKey accepts strong material and refuses weak material', async () => {
    const { kw } = await setup();
    const strong = new Uint8Array(randomBytes(32));
    const info = await kw.importKey('byok', strong);
    const dk = await kw.generateDataKey('byok');
    expect(dk.keyId).toBe(info.id);
    await expect(kw.importKey('weak1', new Uint8Array(32))).rejects.toSatisfy(WeakKeyMaterialError.isInstance);
    await expect(kw.importKey('weak2', new Uint8Array(16).fill(3))).rejects.toSatisfy(WeakKeyMaterialError.isInstance);
    await expect(kw.importKey('weak3', new TextEncoder().encode('correct-horse-battery-staple-123'))).rejects.toSatisfy(
      WeakKeyMaterialError.isInstance,
    );
  });
});

describe('Keywarden data keys', () => {
  it('generateDataKey returns a 32-byte DEK whose wrapped form names the key and primary version', async () => {
    const { kw } = await setup();
    const info = await kw.createKey('k');
    const dk = await kw.generateDataKey('k', { tenant: 'a' });
    expect(dk.plaintext.length).toBe(32);
    expect(dk.keyId).toBe(info.id);
    expect(dk.version).toBe(1);
    const parsed = parseWrappedKey(dk.wrapped);
    expect(parsed.keyId).toBe(info.id);
    expect(parsed.version).toBe(1);
    expect(await kw.decryptDataKey(dk.wrapped, { tenant: 'a' }, { key: 'k' })).toEqual(dk.plaintext);
  });

  it('a wrapped DEK never unwraps under another context, key or version', async () => {
    const { kw, store } = await setup();
    await kw.createKey('a');
    const b = await kw.createKey('b');
    const dk = await kw.generateDataKey('a', { tenant: 'a' });
    await expect(kw.decryptDataKey(dk.wrapped, { tenant: 'b' }, { key: 'a' })).rejects.toSatisfy(
      DecryptionError.isInstance,
    );
    await expect(kw.decryptDataKey(dk.wrapped, undefined, { key: 'a' })).rejects.toSatisfy(DecryptionError.isInstance);
    await expect(kw.decryptDataKey(dk.wrapped, { tenant: 'a', x: '' }, { key: 'a' })).rejects.toSatisfy(
      DecryptionError.isInstance,
    );
    // Re-point the wrapped key at key b (same length id): the AEAD check fails, not a look-up.
    const forged = dk.wrapped.slice();
    const idA = new TextEncoder().encode(parseWrappedKey(dk.wrapped).keyId);
    forged.set(new TextEncoder().encode(b.id), 6);
    expect(forged.subarray(6, 6 + idA.length)).not.toEqual(idA);
    await expect(kw.decryptDataKey(forged, { tenant: 'a' }, { anyKeyInStore: true })).rejects.toSatisfy(
      DecryptionError.isInstance,
    );
    // Re-point at version 2 of key a after a rotation.
    await kw.rotateKey('a');
    const v2 = forged.slice();
    v2.set(idA, 6);
    new DataView(v2.buffer).setUint32(6 + idA.length, 2);
    await expect(kw.decryptDataKey(v2, { tenant: 'a' }, { key: 'a' })).rejects.toSatisfy(DecryptionError.isInstance);
    expect(await store.getVersion(parseWrappedKey(dk.wrapped).keyId, 2)).toBeDefined();
  });

  it('hot path: after the first use, generate and decrypt touch neither the store nor the root', async () => {
    const { kw, store, root } = await setup();
    await kw.createKey('k');
    const reads = countReads(store);
    let rootCalls = 0;
    const unwrap = root.unwrapKey.bind(root);
    root.unwrapKey = async (w, a) => {
      rootCalls++;
      return unwrap(w, a);
    };
    const first = await kw.generateDataKey('k');
    expect(reads.getKey + reads.getVersion).toBe(2);
    expect(rootCalls).toBe(1);
    for (let i = 0; i < 50; i++) {
      const dk = await kw.generateDataKey('k');
      await kw.decryptDataKey(dk.wrapped, undefined, { key: 'k' });
    }
    await kw.decryptDataKey(first.wrapped, undefined, { key: 'k' });
    expect(reads.getKey + reads.getVersion).toBe(2);
    expect(rootCalls).toBe(1);
  });

  it('the cache is bounded: the least recently used KEK version is evicted and reloaded', async () => {
    const { kw, store } = await setup({ maxEntries: 2 });
    for (const n of ['a', 'b', 'c']) await kw.createKey(n);
    const reads = countReads(store);
    const wa = await kw.generateDataKey('a');
    await kw.generateDataKey('b');
    await kw.generateDataKey('c'); // evicts a
    expect(reads.getVersion).toBe(3);
    await kw.decryptDataKey(wa.wrapped, undefined, { key: 'a' });
    expect(reads.getVersion).toBe(4);
  });

  it('a hit makes a KEK version the most recently used: the one evicted is the least recently used, not the least recently loaded', async () => {
    const { kw, store } = await setup({ maxEntries: 2 });
    for (const n of ['a', 'b', 'c']) await kw.createKey(n);
    const reads = countReads(store);
    const wa = await kw.generateDataKey('a');
    const wb = await kw.generateDataKey('b');
    await kw.generateDataKey('b'); // already the most recent
    await kw.generateDataKey('a'); // a is now the most recent
    await kw.generateDataKey('a');
    expect(reads.getVersion).toBe(2);
    await kw.generateDataKey('c'); // evicts b
    expect(reads.getVersion).toBe(3);
    await kw.decryptDataKey(wa.wrapped, undefined, { key: 'a' }); // still cached
    expect(reads.getVersion).toBe(3);
    await kw.decryptDataKey(wb.wrapped, undefined, { key: 'b' }); // reloaded, evicts c
    expect(reads.getVersion).toBe(4);
    await kw.generateDataKey('a');
    expect(reads.getVersion).toBe(4);
  });

  it('rotation keeps old versions usable and wraps new data keys under the new primary', async () => {
    const { kw } = await setup();
    await kw.createKey('k');
    const before = await kw.generateDataKey('k');
    const rotated = await kw.rotateKey('k');
    expect(rotated.primaryVersion).toBe(2);
    expect(rotated.versions.map((v) => [v.version, v.state])).toEqual([
      [1, 'enabled'],
      [2, 'enabled'],
    ]);
    const after = await kw.generateDataKey('k');
    expect(after.version).toBe(2);
    expect(await kw.decryptDataKey(before.wrapped, undefined, { key: 'k' })).toEqual(before.plaintext);
    expect(await kw.decryptDataKey(after.wrapped, undefined, { key: 'k' })).toEqual(after.plaintext);
  });

  it('a disabled version is refused once the cache no longer holds it', async () => {
    const { kw, store } = await setup();
    const info = await kw.createKey('k');
    const dk = await kw.generateDataKey('k');
    await store.setVersionState(info.id, 1, 'disabled', new Date());
    kw.clearCache();
    await expect(kw.decryptDataKey(dk.wrapped, undefined, { key: 'k' })).rejects.toSatisfy(KeyStateError.isInstance);
    await expect(kw.generateDataKey('k')).rejects.toSatisfy(KeyStateError.isInstance);
  });

  it('seal wipes the cache and refuses key operations until the root is unsealed', async () => {
    const { kw, root, unsealKey } = await setup();
    await kw.createKey('k');
    const dk = await kw.generateDataKey('k');
    await kw.seal();
    await expect(kw.decryptDataKey(dk.wrapped, undefined, { key: 'k' })).rejects.toSatisfy(
      KeystoreSealedError.isInstance,
    );
    await expect(kw.generateDataKey('k')).rejects.toSatisfy(KeystoreSealedError.isInstance);
    await expect(kw.createKey('k2')).rejects.toSatisfy(KeystoreSealedError.isInstance);
    await root.unseal(unsealKey);
    expect(await kw.decryptDataKey(dk.wrapped, undefined, { key: 'k' })).toEqual(dk.plaintext);
  });

  it('a process reopening the store starts sealed and works after unseal', async () => {
    const { kw, store, unsealKey } = await setup();
    await kw.createKey('k');
    const envelope = await kw.encrypt(new TextEncoder().encode('hello'), { key: 'k', context: { a: '1' } });
    const root2 = await SoftwareRoot.load(store);
    const kw2 = new Keywarden({ store, root: root2 });
    await expect(kw2.decrypt(envelope, { key: 'k', context: { a: '1' } })).rejects.toSatisfy(
      KeystoreSealedError.isInstance,
    );
    await root2.unseal(unsealKey);
    expect(new TextDecoder().decode(await kw2.decrypt(envelope, { key: 'k', context: { a: '1' } }))).toBe('hello');
  });

  it('unknown keys give KeyNotFoundError; close refuses further use', async () => {
    const { kw } = await setup();
    await expect(kw.generateDataKey('nope')).rejects.toSatisfy(KeyNotFoundError.isInstance);
    await kw.createKey('k');
    await kw.close();
    await expect(kw.generateDataKey('k')).rejects.toThrow(/closed/);
  });

  it('concurrent first uses of one KEK version unwrap it once', async () => {
    const { kw, root } = await setup();
    await kw.createKey('k');
    let rootCalls = 0;
    const unwrap = root.unwrapKey.bind(root);
    root.unwrapKey = async (w, a) => {
      rootCalls++;
      return unwrap(w, a);
    };
    kw.clearCache();
    const dks = await Promise.all(Array.from({ length: 20 }, () => kw.generateDataKey('k')));
    expect(new Set(dks.map((d) => d.keyId)).size).toBe(1);
    expect(rootCalls).toBe(1);
  });

  it('a KEK load in flight when clearCache() runs serves its callers but does not put the key back into the cache', async () => {
    const { kw, root } = await setup();
    await kw.createKey('k');
    const gate = holdUnwraps(root);
    const first = kw.generateDataKey('k');
    await gate.reached();
    kw.clearCache();
    gate.release();
    const dk = await first;
    expect(await kw.decryptDataKey(dk.wrapped, undefined, { key: 'k' })).toEqual(dk.plaintext);
    // Not cached: the next use unwraps again.
    expect(gate.calls()).toBe(2);
  });

  it('a KEK load in flight when seal() runs is refused and not cached; after unseal the key is loaded again', async () => {
    const { kw, root, unsealKey } = await setup();
    await kw.createKey('k');
    const gate = holdUnwraps(root);
    const first = kw.generateDataKey('k');
    await gate.reached();
    await kw.seal();
    gate.release();
    await expect(first).rejects.toSatisfy(KeystoreSealedError.isInstance);
    await root.unseal(unsealKey);
    const dk = await kw.generateDataKey('k');
    expect(gate.calls()).toBe(2);
    expect(await kw.decryptDataKey(dk.wrapped, undefined, { key: 'k' })).toEqual(dk.plaintext);
  });

  it('backstop: all-zero KEK material is refused before any wrap or unwrap (KeyMaterialError)', async () => {
    const { kw, root, store } = await setup();
    await kw.createKey('k');
    const dk = await kw.generateDataKey('k');
    // A faulty root that hands back zeros instead of the KEK.
    const zeroing: RootOfTrust = {
      describe: () => root.describe(),
      wrapKey: (m, a) => root.wrapKey(m, a),
      unwrapKey: async () => new Uint8Array(32),
      close: () => root.close(),
    };
    const faulty = new Keywarden({ store, root: zeroing });
    await expect(faulty.generateDataKey('k')).rejects.toSatisfy(KeyMaterialError.isInstance);
    await expect(faulty.decryptDataKey(dk.wrapped, undefined, { key: 'k' })).rejects.toSatisfy(
      KeyMaterialError.isInstance,
    );
  });
});

/**
 * Hold the root's KEK unwraps: each one really unwraps, then waits for release(), so a test can
 * run clearCache() or seal() while a load is in flight. Counts the unwraps.
 */
function holdUnwraps(root: SoftwareRoot) {
  let calls = 0;
  let release!: () => void;
  const released = new Promise<void>((r) => {
    release = r;
  });
  let reached!: () => void;
  const reachedP = new Promise<void>((r) => {
    reached = r;
  });
  const unwrap = root.unwrapKey.bind(root);
  root.unwrapKey = async (w, a) => {
    calls++;
    const material = await unwrap(w, a);
    reached();
    await released;
    return material;
  };
  return { reached: () => reachedP, release, calls: () => calls };
}

describe('decryption takes the expected key (confused deputy across tenants)', () => {
  async function tenants() {
    const s = await setup();
    const victim = await s.kw.createKey('tenant-victim');
    const attacker = await s.kw.createKey('tenant-attacker');
    const context = { tenant: 'victim', table: 'invoices' };
    const text = new TextEncoder().encode('victim invoice');
    // The attacker may use its own KEK, and writes the victim's context into an envelope.
    const forged = await s.kw.encrypt(new TextEncoder().encode('forged'), { key: 'tenant-attacker', context });
    const genuine = await s.kw.encrypt(text, { key: 'tenant-victim', context });
    return { ...s, victim, attacker, context, text, forged, genuine };
  }

  it("an envelope under another tenant's KEK with the victim's context is refused (UnexpectedKeyError), naming only its key id", async () => {
    const t = await tenants();
    const err = await t.kw.decrypt(t.forged, { key: 'tenant-victim', context: t.context }).catch((e: unknown) => e);
    expect(UnexpectedKeyError.isInstance(err)).toBe(true);
    expect((err as Error).message).toBe(
      `keywarden: the data key is wrapped under ${t.attacker.id}, which is not the expected key`,
    );
    expect((err as Error).message).not.toMatch(/tenant-attacker/);
    expect(await t.kw.decrypt(t.genuine, { key: 'tenant-victim', context: t.context })).toEqual(t.text);
  });

  it('the stream and decryptDataKey refuse it too', async () => {
    const t = await tenants();
    const { Readable } = await import('node:stream');
    const { pipeline } = await import('node:stream/promises');
    const stream = t.kw.createDecryptStream({ key: 'tenant-victim', context: t.context });
    const err = await pipeline(Readable.from([Buffer.from(t.forged)]), stream, async (src) => {
      for await (const _ of src) {
        // drain
      }
    }).catch((e: unknown) => e);
    expect(UnexpectedKeyError.isInstance(err)).toBe(true);
    const dk = await t.kw.generateDataKey('tenant-attacker', t.context);
    await expect(t.kw.decryptDataKey(dk.wrapped, t.context, { key: 'tenant-victim' })).rejects.toSatisfy(
      UnexpectedKeyError.isInstance,
    );
  });

  it('data under an unexpected key is refused before that KEK is loaded', async () => {
    const t = await tenants();
    const kw = new Keywarden({ store: t.store, root: t.root });
    let unwraps = 0;
    const unwrap = t.root.unwrapKey.bind(t.root);
    t.root.unwrapKey = async (w, a) => {
      unwraps++;
      return unwrap(w, a);
    };
    await expect(kw.decrypt(t.forged, { key: 'tenant-victim', context: t.context })).rejects.toSatisfy(
      UnexpectedKeyError.isInstance,
    );
    expect(unwraps).toBe(0);
  });

  it('no expected key at all is an InvalidInputError: the key is the default path, not an option', async () => {
    const t = await tenants();
    for (const options of [
      { context: t.context },
      {},
      { key: [], context: t.context },
      { key: '', context: t.context },
    ]) {
      await expect(t.kw.decrypt(t.genuine, options)).rejects.toSatisfy(InvalidInputError.isInstance);
    }
    await expect(t.kw.decrypt(t.genuine, undefined as never)).rejects.toSatisfy(InvalidInputError.isInstance);
    expect(() => t.kw.createDecryptStream({ context: t.context })).toThrow(InvalidInputError);
    const dk = await t.kw.generateDataKey('tenant-victim', t.context);
    await expect(t.kw.decryptDataKey(dk.wrapped, t.context, undefined as never)).rejects.toSatisfy(
      InvalidInputError.isInstance,
    );
    // Both at once is ambiguous, and anyKeyInStore must be the boolean true.
    await expect(
      t.kw.decrypt(t.genuine, { key: 'tenant-victim', anyKeyInStore: true, context: t.context }),
    ).rejects.toSatisfy(InvalidInputError.isInstance);
    await expect(t.kw.decrypt(t.genuine, { anyKeyInStore: 'yes' as never, context: t.context })).rejects.toSatisfy(
      InvalidInputError.isInstance,
    );
  });

  it('the expected key may be a name, an id, or an allow-list of names and ids', async () => {
    const t = await tenants();
    const open = (key: string | string[]) => t.kw.decrypt(t.genuine, { key, context: t.context });
    expect(await open('tenant-victim')).toEqual(t.text);
    expect(await open(t.victim.id)).toEqual(t.text);
    expect(await open(['tenant-victim'])).toEqual(t.text);
    expect(await open([t.attacker.id, t.victim.id])).toEqual(t.text);
    expect(await open(['tenant-attacker', 'tenant-victim'])).toEqual(t.text);
    await expect(open([t.attacker.id])).rejects.toSatisfy(UnexpectedKeyError.isInstance);
    await expect(open('no-such-key')).rejects.toSatisfy(KeyNotFoundError.isInstance);
  });

  it('anyKeyInStore: true (tools only) accepts data under any KEK of this store', async () => {
    const t = await tenants();
    expect(new TextDecoder().decode(await t.kw.decrypt(t.forged, { anyKeyInStore: true, context: t.context }))).toBe(
      'forged',
    );
    expect(await t.kw.decrypt(t.genuine, { anyKeyInStore: true, context: t.context })).toEqual(t.text);
  });

  it('hot path: checking the expected name touches neither the store nor the root once it is cached', async () => {
    const t = await tenants();
    const kw = new Keywarden({ store: t.store, root: t.root });
    await kw.decrypt(t.genuine, { key: 'tenant-victim', context: t.context });
    const reads = countReads(t.store);
    for (let i = 0; i < 20; i++) await kw.decrypt(t.genuine, { key: 'tenant-victim', context: t.context });
    expect(reads.getKey + reads.getVersion).toBe(0);
  });
});

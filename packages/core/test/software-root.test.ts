import { describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import {
  DecryptionError,
  FormatError,
  KeyStoreError,
  KeystoreSealedError,
  MemoryKeyStore,
  ROOT_META_NAME,
  SoftwareRoot,
  UnsealError,
  type RootOfTrust,
  WeakKeyMaterialError,
  decodeSealedRoot,
  decodeUnsealKey,
  encodeSealedRoot,
  encodeUnsealKey,
} from '../src/index.js';

const aad = new TextEncoder().encode('test aad');

function unsealKey(): Uint8Array {
  return new Uint8Array(randomBytes(32));
}

describe('SoftwareRoot', () => {
  it('initialize stores a sealed document with no plaintext root and returns an unsealed root', async () => {
    const store = new MemoryKeyStore();
    const key = unsealKey();
    const root = await SoftwareRoot.initialize(store, { unsealKey: key });
    expect(root.isSealed()).toBe(false);
    const doc = decodeSealedRoot((await store.getMeta(ROOT_META_NAME))!);
    expect(doc.kind).toBe('software');
    expect(doc.unseal).toEqual({ method: 'key' });
    expect(root.describe().id).toBe(doc.rootId);
    expect(root.describe().label).toMatch(/development mode/);
  });

  it('wraps and unwraps key material bound to the associated data', async () => {
    const store = new MemoryKeyStore();
    const root = await SoftwareRoot.initialize(store, { unsealKey: unsealKey() });
    const material = new Uint8Array(randomBytes(32));
    const wrapped = await root.wrapKey(material, aad);
    expect(await root.unwrapKey(wrapped, aad)).toEqual(material);
    await expect(root.unwrapKey(wrapped, new TextEncoder().encode('other'))).rejects.toSatisfy(
      DecryptionError.isInstance,
    );
    for (let i = 0; i < wrapped.length; i++) {
      const bad = wrapped.slice();
      bad[i]! ^= 0x01;
      await expect(root.unwrapKey(bad, aad)).rejects.toThrow();
    }
  });

  it('loads sealed, refuses use until unsealed, and unseals with the right key only', async () => {
    const store = new MemoryKeyStore();
    const key = unsealKey();
    const first = await SoftwareRoot.initialize(store, { unsealKey: key });
    const wrapped = await first.wrapKey(new Uint8Array(32).fill(7), aad);
    await first.close();

    const root = await SoftwareRoot.load(store);
    expect(root.isSealed()).toBe(true);
    await expect(root.unwrapKey(wrapped, aad)).rejects.toSatisfy(KeystoreSealedError.isInstance);
    await expect(root.unseal(unsealKey())).rejects.toSatisfy(UnsealError.isInstance);
    expect(root.isSealed()).toBe(true);
    await root.unseal(key);
    expect(await root.unwrapKey(wrapped, aad)).toEqual(new Uint8Array(32).fill(7));
    // already unsealed: a wrong key is still refused, the right one accepted
    await expect(root.unseal(unsealKey())).rejects.toSatisfy(UnsealError.isInstance);
    await root.unseal(key);
    await root.seal();
    await expect(root.unwrapKey(wrapped, aad)).rejects.toSatisfy(KeystoreSealedError.isInstance);
  });

  it('a second root cannot unwrap what the first wrapped (root id bound)', async () => {
    const a = await SoftwareRoot.initialize(new MemoryKeyStore(), { unsealKey: unsealKey() });
    const b = await SoftwareRoot.initialize(new MemoryKeyStore(), { unsealKey: unsealKey() });
    const wrapped = await a.wrapKey(new Uint8Array(randomBytes(32)), aad);
    await expect(b.unwrapKey(wrapped, aad)).rejects.toSatisfy(DecryptionError.isInstance);
  });

  it('refuses to initialize a store that already has a root', async () => {
    const store = new MemoryKeyStore();
    await SoftwareRoot.initialize(store, { unsealKey: unsealKey() });
    await expect(SoftwareRoot.initialize(store, { unsealKey: unsealKey() })).rejects.toSatisfy(
      KeyStoreError.isInstance,
    );
  });

  it('a sealed document edited to another unseal method or root id no longer unseals', async () => {
    const store = new MemoryKeyStore();
    const key = unsealKey();
    await SoftwareRoot.initialize(store, { unsealKey: key });
    const doc = decodeSealedRoot((await store.getMeta(ROOT_META_NAME))!);
    const edited = { ...doc, unseal: { method: 'shamir' as const, shareSetId: 'x', threshold: 1, shares: 1 } };
    await store.putMeta(ROOT_META_NAME, encodeSealedRoot(edited));
    const root = await SoftwareRoot.load(store);
    await expect(root.unseal(key)).rejects.toSatisfy(UnsealError.isInstance);
  });

  it('reseal moves the root under a new unseal key and the old key stops working', async () => {
    const store = new MemoryKeyStore();
    const oldKey = unsealKey();
    const newKey = unsealKey();
    const root = await SoftwareRoot.initialize(store, { unsealKey: oldKey });
    const wrapped = await root.wrapKey(new Uint8Array(32).fill(9), aad);
    await root.reseal(store, newKey, { method: 'key' });
    const reloaded = await SoftwareRoot.load(store);
    await expect(reloaded.unseal(oldKey)).rejects.toSatisfy(UnsealError.isInstance);
    await reloaded.unseal(newKey);
    expect(await reloaded.unwrapKey(wrapped, aad)).toEqual(new Uint8Array(32).fill(9));
  });

  it('decodeSealedRoot refuses malformed documents with FormatError', () => {
    const bad = [
      'not json',
      JSON.stringify({ format: 2 }),
      JSON.stringify({ format: 1, kind: 'pkcs11' }),
      JSON.stringify({ format: 1, kind: 'software', rootId: 'nope' }),
    ];
    for (const text of bad) expect(() => decodeSealedRoot(new TextEncoder().encode(text))).toThrow(FormatError);
  });

  it('unseal key text form round-trips and errors never echo the input', () => {
    const key = unsealKey();
    expect(decodeUnsealKey(encodeUnsealKey(key))).toEqual(key);
    const secretish = 'keywarden-unseal-key:v1:AAAA';
    try {
      decodeUnsealKey(secretish);
      expect.unreachable();
    } catch (err) {
      expect((err as Error).message).not.toContain('AAAA');
    }
    expect(() => decodeUnsealKey('hunter2')).toThrow(/not a Keywarden unseal key/);
  });
});

describe('SoftwareRoot: weak unseal keys (the same check as imported KEKs, weak-key.ts)', () => {
  const weak: Array<[string, Uint8Array]> = [
    ['all zeros', new Uint8Array(32)],
    ['a repeated byte', new Uint8Array(32).fill(0x41)],
    ['an ASCII password', new TextEncoder().encode('correct horse battery staple!!!!')],
    ['a counter', Uint8Array.from({ length: 32 }, (_, i) => i)],
  ];

  for (const [what, key] of weak) {
    it(`initialize refuses ${what} as a new unseal key with WeakKeyMaterialError and writes nothing`, async () => {
      const store = new MemoryKeyStore();
      await expect(SoftwareRoot.initialize(store, { unsealKey: key })).rejects.toSatisfy(
        WeakKeyMaterialError.isInstance,
      );
      expect(await store.getMeta(ROOT_META_NAME)).toBeUndefined();
    });
  }

  it('createForRotation and reseal (rekey) refuse a weak new unseal key; the stored root is unchanged', async () => {
    const store = new MemoryKeyStore();
    const root = await SoftwareRoot.initialize(store, { unsealKey: unsealKey() });
    const before = await store.getMeta(ROOT_META_NAME);
    await expect(
      SoftwareRoot.createForRotation({ unsealKey: new Uint8Array(32), unseal: { method: 'key' } }),
    ).rejects.toSatisfy(WeakKeyMaterialError.isInstance);
    await expect(root.reseal(store, new Uint8Array(32).fill(7), { method: 'key' })).rejects.toSatisfy(
      WeakKeyMaterialError.isInstance,
    );
    expect(Array.from((await store.getMeta(ROOT_META_NAME))!)).toEqual(Array.from(before!));
  });

  it('the message names the reason and never the key', async () => {
    const key = new TextEncoder().encode('correct horse battery staple!!!!');
    let message = '';
    try {
      await SoftwareRoot.initialize(new MemoryKeyStore(), { unsealKey: key });
    } catch (e) {
      message = (e as Error).message;
    }
    expect(message).toMatch(/^weak-key: unseal key refused/);
    expect(message).not.toContain('horse');
  });

  it('describes its unsealing secret for split knowledge: a 32-byte unseal key', async () => {
    const root = await SoftwareRoot.initialize(new MemoryKeyStore(), { unsealKey: unsealKey() });
    expect(root.unsealSecret()).toEqual({
      kind: 'unseal-key',
      minBytes: 32,
      maxBytes: 32,
      label: 'software root unseal key (32 bytes)',
    });
    expect(root.sealable).toBe(root);
    expect(root.destroyable).toBe(root);
    expect((root as RootOfTrust).kekInRoot).toBeUndefined();
  });
});

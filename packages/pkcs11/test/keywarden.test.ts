/**
 * Keywarden end to end on the PKCS#11 root, through core's registry (`openRoot('pkcs11:…')`), in
 * both KEK modes, against the SoftHSM2 token the harness started.
 */
import {
  DecryptionError,
  destroyRoot,
  isKekInRootRecord,
  Keywarden,
  KeywardenError,
  KeystoreSealedError,
  MemoryKeyStore,
  openRoot,
  type RootOfTrust,
} from '@keywarden/core';
import { afterAll, describe, expect, it } from 'vitest';
import '../src/index.js';
import { Pkcs11Root } from '../src/index.js';
import { pin, rootUri, uniqueLabel, unavailable } from './_hsm.js';
import { RawToken } from './_raw.js';

const KEK_IN_ROOT_MAGIC_BYTES = 5;

describe.skipIf(unavailable)('Keywarden on a PKCS#11 root (SoftHSM2)', () => {
  const raw = unavailable ? undefined : new RawToken();
  afterAll(() => raw?.close());

  it('KEK in the HSM and KEK in memory: data keys and envelopes round-trip, survive closing and reopening the root, and refuse another context', async () => {
    const store = new MemoryKeyStore();
    const object = uniqueLabel('kw-e2e');
    const root = await openRoot(rootUri(object), { store, create: true });
    const kw = new Keywarden({ store, root });
    const hsmKey = await kw.createKey('orders', { kekMode: 'root' });
    const memKey = await kw.createKey('sessions', { kekMode: 'memory' });
    const hsmRecord = (await store.getVersion(hsmKey.id, 1))!;
    const memRecord = (await store.getVersion(memKey.id, 1))!;
    expect(isKekInRootRecord(hsmRecord.wrappedMaterial)).toBe(true);
    expect(isKekInRootRecord(memRecord.wrappedMaterial)).toBe(false);

    const ctx = { tenant: 'acme' };
    const a = await kw.generateDataKey('orders', ctx);
    const b = await kw.generateDataKey('sessions', ctx);
    const env = await kw.encrypt(new TextEncoder().encode('in the token'), { key: 'orders', context: ctx });
    await kw.close();
    await root.close();

    const again = await openRoot(rootUri(object), { store });
    const kw2 = new Keywarden({ store, root: again });
    expect(Array.from(await kw2.decryptDataKey(a.wrapped, ctx, { key: 'orders' }))).toEqual(Array.from(a.plaintext));
    expect(Array.from(await kw2.decryptDataKey(b.wrapped, ctx, { key: 'sessions' }))).toEqual(Array.from(b.plaintext));
    expect(new TextDecoder().decode(await kw2.decrypt(env, { key: 'orders', context: ctx }))).toBe('in the token');
    await expect(kw2.decryptDataKey(a.wrapped, { tenant: 'other' }, { key: 'orders' })).rejects.toSatisfy(
      DecryptionError.isInstance,
    );
    await expect(kw2.decryptDataKey(b.wrapped, { tenant: 'other' }, { key: 'sessions' })).rejects.toSatisfy(
      DecryptionError.isInstance,
    );

    // Rotation in the HSM mode makes a second KEK object; both versions keep opening.
    await kw2.rotateKey('orders');
    const c = await kw2.generateDataKey('orders', ctx);
    expect(c.version).toBe(2);
    const ref2 = (await store.getVersion(hsmKey.id, 2))!.wrappedMaterial.subarray(KEK_IN_ROOT_MAGIC_BYTES);
    expect(raw!.find({ id: ref2, label: `kw-kek/${hsmKey.id}/v2` })).toHaveLength(1);
    expect(Array.from(await kw2.decryptDataKey(a.wrapped, ctx, { key: 'orders' }))).toEqual(Array.from(a.plaintext));
    await kw2.close();
    await again.close();
  });

  it('opened without a PIN the root is sealed: nothing is served until unseal(PIN) logs in', async () => {
    const store = new MemoryKeyStore();
    const object = uniqueLabel('kw-sealed');
    const first = await openRoot(rootUri(object), { store, create: true });
    const kw = new Keywarden({ store, root: first });
    await kw.createKey('k', { kekMode: 'root' });
    const dk = await kw.generateDataKey('k');
    await kw.close();
    await first.close();

    const root = await openRoot(rootUri(object, false), { store });
    expect(root.sealable?.isSealed()).toBe(true);
    const kw2 = new Keywarden({ store, root });
    await expect(kw2.decryptDataKey(dk.wrapped, undefined, { key: 'k' })).rejects.toSatisfy(
      KeystoreSealedError.isInstance,
    );
    await root.sealable!.unseal(pin());
    expect(Array.from(await kw2.decryptDataKey(dk.wrapped, undefined, { key: 'k' }))).toEqual(Array.from(dk.plaintext));
    await kw2.close();
    await root.close();
  });

  it('destroyRoot: C_DestroyObject removes the root object and every KEK object it made from the token, and the store reads as destroyed', async () => {
    const store = new MemoryKeyStore();
    const object = uniqueLabel('kw-destroy');
    const root = (await openRoot(rootUri(object), { store, create: true })) as Pkcs11Root;
    const kw = new Keywarden({ store, root });
    const k = await kw.createKey('k', { kekMode: 'root' });
    await kw.rotateKey('k');
    await kw.close();
    const rootId = Buffer.from(root.record.id, 'base64url');
    const refs = [1, 2].map(async (v) => (await store.getVersion(k.id, v))!.wrappedMaterial.slice(5));
    const [r1, r2] = await Promise.all(refs);
    expect(raw!.find({ id: rootId, label: object })).toHaveLength(1);
    expect(raw!.find({ id: r1 })).toHaveLength(1);
    expect(raw!.find({ id: r2 })).toHaveLength(1);

    const result = await destroyRoot(store, { root, unsealKey: pin() });
    expect(result.destroyed).toBe(2);
    expect(raw!.find({ id: rootId })).toHaveLength(0);
    expect(raw!.find({ label: object })).toHaveLength(0);
    expect(raw!.find({ id: r1 })).toHaveLength(0);
    expect(raw!.find({ id: r2 })).toHaveLength(0);
    await root.close();
    await expect(openRoot(rootUri(object), { store })).rejects.toSatisfy((e: unknown) =>
      KeywardenError.isInstance(e, 'KW_ROOT_DESTROYED'),
    );
  });

  it('destroyRoot without an opened root: the registry finds the PKCS#11 record, and a wrong PIN changes nothing while the right one destroys the objects', async () => {
    const store = new MemoryKeyStore();
    const object = uniqueLabel('kw-destroy-recorded');
    const root = (await openRoot(rootUri(object), { store, create: true })) as Pkcs11Root;
    const kw = new Keywarden({ store, root });
    await kw.createKey('k', { kekMode: 'root' });
    await kw.close();
    const rootId = Buffer.from(root.record.id, 'base64url');
    await root.close();
    await expect(destroyRoot(store, { unsealKey: new TextEncoder().encode('not-the-pin') })).rejects.toSatisfy(
      (e: unknown) => KeywardenError.isInstance(e, 'KW_UNSEAL'),
    );
    expect(raw!.find({ id: rootId, label: object })).toHaveLength(1);
    expect(await store.getMeta('pkcs11-root-tombstone')).toBeUndefined();
    const result = await destroyRoot(store, { unsealKey: pin() });
    expect(result.destroyed).toBe(1);
    expect(raw!.find({ id: rootId })).toHaveLength(0);
    expect(await store.getMeta('root')).toBeUndefined();
    expect(await store.getMeta('pkcs11-root-tombstone')).toBeDefined();
  });

  it('the root and KEK objects are AES-256 token objects, private, sensitive, never extractable, without wrap or unwrap usage', async () => {
    const store = new MemoryKeyStore();
    const object = uniqueLabel('kw-attrs');
    const root = (await openRoot(rootUri(object), { store, create: true })) as Pkcs11Root;
    const kw = new Keywarden({ store, root });
    const k = await kw.createKey('k', { kekMode: 'root' });
    const ref = (await store.getVersion(k.id, 1))!.wrappedMaterial.slice(5);
    for (const handle of [...raw!.find({ label: object }), ...raw!.find({ id: ref })]) {
      expect(raw!.attributes(handle)).toEqual({
        CKA_TOKEN: true,
        CKA_PRIVATE: true,
        CKA_SENSITIVE: true,
        CKA_EXTRACTABLE: false,
        CKA_NEVER_EXTRACTABLE: true,
        CKA_WRAP: false,
        CKA_UNWRAP: false,
      });
    }
    await kw.close();
    await root.close();
  });

  it('a root URI without a module, or naming no token, is refused with InvalidInputError; another token label is RootUnavailableError naming the call and CKR_TOKEN_NOT_PRESENT', async () => {
    const store = new MemoryKeyStore();
    await expect(
      Pkcs11Root.open('pkcs11:token=keywarden;object=x', { store, create: true, secret: pin(), env: {} }),
    ).rejects.toSatisfy((e: unknown) => KeywardenError.isInstance(e, 'KW_BAD_INPUT'));
    await expect(openRoot(rootUri('x').replace(/token=[^;]+/, 'serial=1'), { store, create: true })).rejects.toSatisfy(
      (e: unknown) => KeywardenError.isInstance(e, 'KW_BAD_INPUT'),
    );
    const err = await openRoot(rootUri('x').replace(/token=[^;]+/, 'token=no-such-token'), {
      store,
      create: true,
    }).catch((e: unknown) => e as Error & { fn?: string; ckr?: string });
    expect(KeywardenError.isInstance(err, 'KW_ROOT_UNAVAILABLE')).toBe(true);
    expect((err as { ckr?: string }).ckr).toBe('CKR_TOKEN_NOT_PRESENT');
    expect((err as Error).message).toBe('pkcs11: C_GetSlotList: CKR_TOKEN_NOT_PRESENT (no token with the label)');
    expect(await store.getMeta('root')).toBeUndefined();
  });

  it('the root refuses to make a second root in a store that has one, and a reference to a KEK of another root', async () => {
    const { root, store } = await (async () => {
      const store = new MemoryKeyStore();
      const root = (await openRoot(rootUri(uniqueLabel()), { store, create: true })) as RootOfTrust;
      return { root, store };
    })();
    await expect(openRoot(rootUri(uniqueLabel()), { store, create: true })).rejects.toSatisfy((e: unknown) =>
      KeywardenError.isInstance(e, 'KW_STORE'),
    );
    const other = await openRoot(rootUri(uniqueLabel()), { store: new MemoryKeyStore(), create: true });
    const ref = await other.kekInRoot!.createKek(new TextEncoder().encode('x'));
    const sealed = await other.kekInRoot!.sealDataKey(
      ref,
      new TextEncoder().encode('x'),
      new Uint8Array(32).fill(7),
      new Uint8Array(1),
    );
    await expect(
      root.kekInRoot!.openDataKey(ref, new TextEncoder().encode('x'), sealed.nonce, sealed.sealed, new Uint8Array(1)),
    ).rejects.toSatisfy(DecryptionError.isInstance);
    await other.close();
    await root.close();
  });
});

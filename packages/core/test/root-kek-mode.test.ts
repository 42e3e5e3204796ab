/**
 * KEK mode "root" (root.ts KekInRoot): the KEK is made and kept inside the root and every data-key
 * wrap and unwrap is a root call. The root here is a small in-test root that genuinely holds its
 * KEKs in a private Map and does XAES-256-GCM (suite 0x02) inside; the software root wraps nothing
 * for it. Its only window is the log of associated data it was asked to bind (non-secret), which
 * lets the test check that Keywarden gives the root exactly docs/format.md §2's AAD.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { xaesOpen, xaesSeal } from '../src/_xaes.js';
import {
  ClosedError,
  DecryptionError,
  encodeContext,
  isKekInRootRecord,
  type KekInRoot,
  KeystoreSealedError,
  KeyStateError,
  Keywarden,
  kekAad,
  MemoryKeyStore,
  parseWrappedKey,
  type RootDescription,
  type RootOfTrust,
  rewrapUnderNewRoot,
  SoftwareRoot,
  UnsupportedCapabilityError,
} from '../src/index.js';

class XaesKekRoot implements RootOfTrust, KekInRoot {
  readonly kekInRoot: KekInRoot = this;
  readonly suite = 0x02 as const;
  readonly aadLog: Uint8Array[] = [];
  readonly #keks = new Map<string, { key: Uint8Array; kekAad: string }>();
  readonly #rootKey = new Uint8Array(randomBytes(32));
  readonly #id = `xaesroot_${randomBytes(6).toString('hex')}`;
  sealed = false;
  calls = 0;

  describe(): RootDescription {
    return { kind: 'xaes-test', id: this.#id, label: 'in-test root holding KEKs', wrapAlgorithm: 'XAES-256-GCM' };
  }
  async wrapKey(material: Uint8Array, aad: Uint8Array): Promise<Uint8Array> {
    this.#check();
    const nonce = new Uint8Array(randomBytes(24));
    return Uint8Array.from([...nonce, ...xaesSeal(this.#rootKey, nonce, material, aad)]);
  }
  async unwrapKey(wrapped: Uint8Array, aad: Uint8Array): Promise<Uint8Array> {
    this.#check();
    return xaesOpen(this.#rootKey, wrapped.subarray(0, 24), wrapped.subarray(24), aad, 'root');
  }
  async createKek(aad: Uint8Array): Promise<Uint8Array> {
    this.#check();
    const ref = new Uint8Array(randomBytes(12));
    this.#keks.set(Buffer.from(ref).toString('hex'), {
      key: new Uint8Array(randomBytes(32)),
      kekAad: Buffer.from(aad).toString('hex'),
    });
    return ref;
  }
  async sealDataKey(ref: Uint8Array, aad: Uint8Array, dek: Uint8Array, dataAad: Uint8Array) {
    this.#check();
    this.calls++;
    this.aadLog.push(dataAad.slice());
    const key = this.#kek(ref, aad);
    if (!key) throw new DecryptionError('data key');
    const nonce = new Uint8Array(randomBytes(24));
    return { nonce, sealed: xaesSeal(key, nonce, dek, dataAad) };
  }
  async openDataKey(ref: Uint8Array, aad: Uint8Array, nonce: Uint8Array, sealed: Uint8Array, dataAad: Uint8Array) {
    this.#check();
    this.calls++;
    const key = this.#kek(ref, aad);
    if (!key) throw new DecryptionError('data key');
    return xaesOpen(key, nonce, sealed, dataAad, 'data key');
  }
  /** Whether `bytes` occur anywhere in a KEK this root holds (for the "never in the store" check). */
  holdsKeyBytes(bytes: Uint8Array): boolean {
    const hay = Buffer.from(bytes);
    return [...this.#keks.values()].some((k) => hay.includes(Buffer.from(k.key.subarray(0, 16))));
  }
  async close(): Promise<void> {
    this.sealed = true;
  }
  #kek(ref: Uint8Array, aad: Uint8Array): Uint8Array | undefined {
    const k = this.#keks.get(Buffer.from(ref).toString('hex'));
    return k && k.kekAad === Buffer.from(aad).toString('hex') ? k.key : undefined;
  }
  #check(): void {
    if (this.sealed) throw new KeystoreSealedError('root: xaes-test root is sealed');
  }
}

describe('KEK mode "root"', () => {
  it('a root that can hold KEKs gets them by default; every data-key wrap and unwrap is a root call, with exactly format.md §2 associated data', async () => {
    const store = new MemoryKeyStore();
    const root = new XaesKekRoot();
    const kw = new Keywarden({ store, root });
    const info = await kw.createKey('orders');
    const record = (await store.getVersion(info.id, 1))!;
    expect(isKekInRootRecord(record.wrappedMaterial)).toBe(true);
    expect(root.holdsKeyBytes(record.wrappedMaterial)).toBe(false);

    const ctx = { tenant: 'acme' };
    const dk = await kw.generateDataKey('orders', ctx);
    const parsed = parseWrappedKey(dk.wrapped);
    expect(parsed).toMatchObject({ keyId: info.id, version: 1, suite: 0x02 });
    expect(Array.from(root.aadLog.at(-1)!)).toEqual([...parsed.header, ...encodeContext(ctx)]);
    const before = root.calls;
    for (let i = 0; i < 3; i++) {
      expect(Array.from(await kw.decryptDataKey(dk.wrapped, ctx, { key: 'orders' }))).toEqual(Array.from(dk.plaintext));
    }
    expect(root.calls - before).toBe(3); // never served from a cached KEK: the KEK is not here
    await expect(kw.decryptDataKey(dk.wrapped, { tenant: 'other' }, { key: 'orders' })).rejects.toSatisfy(
      DecryptionError.isInstance,
    );

    const envelope = await kw.encrypt(new TextEncoder().encode('hello'), { key: 'orders', context: ctx });
    expect(new TextDecoder().decode(await kw.decrypt(envelope, { key: 'orders', context: ctx }))).toBe('hello');
  });

  it('rotation keeps the mode; old versions still open; a data key moved to another version’s reference does not', async () => {
    const store = new MemoryKeyStore();
    const root = new XaesKekRoot();
    const kw = new Keywarden({ store, root });
    const { id } = await kw.createKey('k');
    const old = await kw.generateDataKey('k');
    await kw.rotateKey('k');
    expect(isKekInRootRecord((await store.getVersion(id, 2))!.wrappedMaterial)).toBe(true);
    const now = await kw.generateDataKey('k');
    expect(now.version).toBe(2);
    expect(Array.from(await kw.decryptDataKey(old.wrapped, undefined, { key: 'k' }))).toEqual(
      Array.from(old.plaintext),
    );
    // Swap the stored references of v1 and v2: the root refuses (each KEK is bound to its version).
    const v1 = (await store.getVersion(id, 1))!;
    const v2 = (await store.getVersion(id, 2))!;
    const swapped = new MemoryKeyStore();
    await swapped.createKey(
      { ...(await store.getKey(id))!, primaryVersion: 1 },
      { ...v1, wrappedMaterial: v2.wrappedMaterial },
    );
    const kw2 = new Keywarden({ store: swapped, root });
    await expect(kw2.decryptDataKey(old.wrapped, undefined, { key: 'k' })).rejects.toSatisfy(
      DecryptionError.isInstance,
    );
  });

  it('memory mode on the same root stays available per key; a root without the capability refuses kekMode "root" with UnsupportedCapabilityError', async () => {
    const store = new MemoryKeyStore();
    const root = new XaesKekRoot();
    const kw = new Keywarden({ store, root });
    const { id } = await kw.createKey('mem', { kekMode: 'memory' });
    expect(isKekInRootRecord((await store.getVersion(id, 1))!.wrappedMaterial)).toBe(false);
    const dk = await kw.generateDataKey('mem');
    const calls = root.calls;
    await kw.decryptDataKey(dk.wrapped, undefined, { key: 'mem' });
    expect(root.calls).toBe(calls);

    const s = new MemoryKeyStore();
    const software = await SoftwareRoot.initialize(s, { unsealKey: new Uint8Array(randomBytes(32)) });
    const kws = new Keywarden({ store: s, root: software });
    await expect(kws.createKey('k', { kekMode: 'root' })).rejects.toSatisfy(UnsupportedCapabilityError.isInstance);
    expect(await s.listKeys()).toEqual([]);
  });

  it('a store whose record names a KEK in the root, opened with a root that cannot hold KEKs, is refused with UnsupportedCapabilityError', async () => {
    const store = new MemoryKeyStore();
    const root = new XaesKekRoot();
    const kw = new Keywarden({ store, root });
    await kw.createKey('k');
    const dk = await kw.generateDataKey('k');
    const other = {
      ...root,
      describe: () => root.describe(),
      wrapKey: root.wrapKey.bind(root),
      unwrapKey: root.unwrapKey.bind(root),
      close: root.close.bind(root),
      kekInRoot: undefined,
    };
    const kwNo = new Keywarden({ store, root: other as RootOfTrust });
    await expect(kwNo.decryptDataKey(dk.wrapped, undefined, { key: 'k' })).rejects.toSatisfy(
      UnsupportedCapabilityError.isInstance,
    );
  });

  it('a KEK held in the root cannot be moved to another root: root rotation refuses and changes nothing', async () => {
    const store = new MemoryKeyStore();
    const root = new XaesKekRoot();
    const kw = new Keywarden({ store, root });
    const { id } = await kw.createKey('k');
    const next = new XaesKekRoot();
    await expect(rewrapUnderNewRoot(store, root, next, { name: 'x', value: new Uint8Array(1) })).rejects.toSatisfy(
      KeyStateError.isInstance,
    );
    expect(await store.getMeta('x')).toBeUndefined();
    expect((await store.getVersion(id, 1))!.rootId).toBe(root.describe().id);
    expect(kekAad(id, 1).length).toBeGreaterThan(0);
  });

  it('a sealed or closed root serves no data key in KEK mode "root"', async () => {
    const store = new MemoryKeyStore();
    const root = new XaesKekRoot();
    const kw = new Keywarden({ store, root });
    await kw.createKey('k');
    const dk = await kw.generateDataKey('k');
    root.sealed = true;
    await expect(kw.decryptDataKey(dk.wrapped, undefined, { key: 'k' })).rejects.toSatisfy(
      KeystoreSealedError.isInstance,
    );
    await kw.close();
    await expect(kw.generateDataKey('k')).rejects.toSatisfy(ClosedError.isInstance);
  });
});

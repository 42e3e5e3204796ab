/**
 * Destroying a KEK version held inside the root (KEK mode "root"): the root's destroyKek
 * capability destroys the key object, then the store record goes (issue 10: "through the root's
 * destroy capability in hardware"). The in-test root genuinely holds its KEKs in a private Map.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { xaesOpen, xaesSeal } from '../src/_xaes.js';
import {
  DecryptionError,
  type KekInRoot,
  KeyDestroyedError,
  Keywarden,
  kekAad,
  MemoryKeyStore,
  type RootDescription,
  type RootOfTrust,
} from '../src/index.js';

class HsmLikeRoot implements RootOfTrust, KekInRoot {
  readonly kekInRoot: KekInRoot = this;
  readonly suite = 0x02 as const;
  readonly keks = new Map<string, { key: Uint8Array; kekAad: string }>();
  readonly destroyed: Array<{ ref: string; kekAad: string }> = [];
  readonly #rootKey = new Uint8Array(randomBytes(32));
  readonly #id = `hsmlike_${randomBytes(6).toString('hex')}`;
  constructor(readonly canDestroy: boolean) {
    if (!canDestroy) (this as { destroyKek?: unknown }).destroyKek = undefined;
  }
  describe(): RootDescription {
    return { kind: 'hsm-like-test', id: this.#id, label: 'in-test root holding KEKs', wrapAlgorithm: 'XAES-256-GCM' };
  }
  async wrapKey(material: Uint8Array, aad: Uint8Array): Promise<Uint8Array> {
    const nonce = new Uint8Array(randomBytes(24));
    return Uint8Array.from([...nonce, ...xaesSeal(this.#rootKey, nonce, material, aad)]);
  }
  async unwrapKey(wrapped: Uint8Array, aad: Uint8Array): Promise<Uint8Array> {
    return xaesOpen(this.#rootKey, wrapped.subarray(0, 24), wrapped.subarray(24), aad, 'root');
  }
  async createKek(aad: Uint8Array): Promise<Uint8Array> {
    const ref = new Uint8Array(randomBytes(12));
    this.keks.set(hex(ref), { key: new Uint8Array(randomBytes(32)), kekAad: hex(aad) });
    return ref;
  }
  async sealDataKey(ref: Uint8Array, aad: Uint8Array, dek: Uint8Array, dataAad: Uint8Array) {
    const key = this.#kek(ref, aad);
    const nonce = new Uint8Array(randomBytes(24));
    return { nonce, sealed: xaesSeal(key, nonce, dek, dataAad) };
  }
  async openDataKey(ref: Uint8Array, aad: Uint8Array, nonce: Uint8Array, sealed: Uint8Array, dataAad: Uint8Array) {
    return xaesOpen(this.#kek(ref, aad), nonce, sealed, dataAad, 'data key');
  }
  async destroyKek(ref: Uint8Array, aad: Uint8Array): Promise<void> {
    const k = this.keks.get(hex(ref));
    if (!k || k.kekAad !== hex(aad)) throw new DecryptionError('root: no such KEK');
    k.key.fill(0);
    this.keks.delete(hex(ref));
    this.destroyed.push({ ref: hex(ref), kekAad: hex(aad) });
  }
  async close(): Promise<void> {}
  #kek(ref: Uint8Array, aad: Uint8Array): Uint8Array {
    const k = this.keks.get(hex(ref));
    if (!k || k.kekAad !== hex(aad)) throw new DecryptionError('data key');
    return k.key;
  }
}

function hex(b: Uint8Array): string {
  return Buffer.from(b).toString('hex');
}

describe('destroying a KEK held in the root', () => {
  it("destroyVersion asks the root to destroy the version's KEK (its reference and exactly its KEK AAD), then erases the record", async () => {
    const store = new MemoryKeyStore();
    const root = new HsmLikeRoot(true);
    const kw = new Keywarden({ store, root });
    const info = await kw.createKey('orders');
    const dk = await kw.generateDataKey('orders');
    await kw.rotateKey('orders');
    expect(root.keks.size).toBe(2);
    await kw.disableVersion('orders', 1);
    await kw.destroyVersion('orders', 1, { force: true });
    expect(root.destroyed).toEqual([{ ref: expect.any(String), kekAad: hex(kekAad(info.id, 1)) }]);
    expect(root.keks.size).toBe(1);
    expect((await store.getVersion(info.id, 1))?.wrappedMaterial).toHaveLength(0);
    await expect(kw.decryptDataKey(dk.wrapped, undefined, { key: 'orders' })).rejects.toSatisfy(
      KeyDestroyedError.isInstance,
    );
    // The primary's KEK is untouched.
    const now = await kw.generateDataKey('orders');
    expect(await kw.decryptDataKey(now.wrapped, undefined, { key: 'orders' })).toEqual(now.plaintext);
  });

  it('a refused destroy (still enabled) never reaches the root', async () => {
    const root = new HsmLikeRoot(true);
    const kw = new Keywarden({ store: new MemoryKeyStore(), root });
    await kw.createKey('orders');
    await kw.rotateKey('orders');
    await expect(kw.destroyVersion('orders', 1, { force: true })).rejects.toThrow(/disable it first/);
    expect(root.destroyed).toEqual([]);
  });

  it('a root without destroyKek: the store record (its only reference) is erased all the same', async () => {
    const store = new MemoryKeyStore();
    const root = new HsmLikeRoot(false);
    const kw = new Keywarden({ store, root });
    const info = await kw.createKey('orders');
    await kw.rotateKey('orders');
    await kw.disableVersion('orders', 1);
    await kw.destroyVersion('orders', 1, { force: true });
    expect((await store.getVersion(info.id, 1))?.state).toBe('destroyed');
  });
});

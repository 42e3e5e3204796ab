/**
 * A small root that genuinely holds its keys — an HSM in miniature, for the root conformance suite
 * and Keywarden's KEK mode "root" (root.ts `KekInRoot`). A `Token` keeps a root key and the KEKs in
 * private fields that no API returns; `MapKekRoot` is a session on it: it logs in with a PIN
 * (sealable), wraps KEK material under the root key (memory mode), makes KEKs inside the token and
 * seals data keys with them (suite 0x01, AES-256-GCM, the token drawing the IV as an HSM's
 * CKM_AES_GCM may), gives random bytes, and destroys the token's keys. Not a mock: every answer is
 * computed by real AES-256-GCM under keys that stay inside the token.
 */
import { randomBytes } from 'node:crypto';
import {
  ClosedError,
  constantTimeEqual,
  DecryptionError,
  type Destroyable,
  FormatError,
  gcmOpen,
  gcmSeal,
  InvalidInputError,
  type KekInRoot,
  type KeyStore,
  KeystoreSealedError,
  type RandomSource,
  type RootDescription,
  type RootOfTrust,
  RootDestroyedError,
  type Sealable,
  type UnsealSecretDescription,
  UnsealError,
  wipe,
} from '@keywarden/core';

const RECORD = 'map-kek-root';

function fresh(n: number): Uint8Array {
  return new Uint8Array(randomBytes(n));
}

/** The device: its keys never leave it. */
export class Token {
  readonly id = `maproot_${Buffer.from(fresh(8)).toString('hex')}`;
  readonly #pin: Uint8Array;
  #rootKey: Uint8Array | undefined = fresh(32);
  readonly #keks = new Map<string, { key: Uint8Array; kekAad: Uint8Array }>();

  constructor(pin: Uint8Array) {
    this.#pin = pin.slice();
  }

  get destroyed(): boolean {
    return this.#rootKey === undefined;
  }

  checkPin(pin: Uint8Array): boolean {
    return pin.length === this.#pin.length && constantTimeEqual(pin, this.#pin);
  }

  rootSeal(material: Uint8Array, aad: Uint8Array): Uint8Array {
    const nonce = fresh(12);
    return Uint8Array.from([...nonce, ...gcmSeal(this.#live(), nonce, material, aad)]);
  }

  rootOpen(blob: Uint8Array, aad: Uint8Array): Uint8Array {
    if (blob.length < 12 + 16 + 16 || blob.length > 12 + 64 + 16)
      throw new FormatError('map-kek: wrapped key has an invalid length');
    return gcmOpen(this.#live(), blob.subarray(0, 12), blob.subarray(12), aad, 'root');
  }

  createKek(kekAad: Uint8Array): Uint8Array {
    this.#live();
    const ref = fresh(16);
    this.#keks.set(Buffer.from(ref).toString('hex'), { key: fresh(32), kekAad: kekAad.slice() });
    return ref;
  }

  kekFor(ref: Uint8Array, kekAad: Uint8Array): Uint8Array | undefined {
    this.#live();
    const k = this.#keks.get(Buffer.from(ref).toString('hex'));
    if (!k || k.kekAad.length !== kekAad.length || !constantTimeEqual(k.kekAad, kekAad)) return undefined;
    return k.key;
  }

  destroyAll(): void {
    wipe(this.#rootKey);
    this.#rootKey = undefined;
    for (const k of this.#keks.values()) wipe(k.key);
    this.#keks.clear();
  }

  #live(): Uint8Array {
    if (!this.#rootKey) throw new RootDestroyedError('root: the map-kek token was destroyed');
    return this.#rootKey;
  }
}

export class MapKekRoot implements RootOfTrust, Sealable, Destroyable, KekInRoot {
  readonly sealable: Sealable = this;
  readonly destroyable: Destroyable = this;
  readonly kekInRoot: KekInRoot = this;
  readonly random: RandomSource = { randomBytes: async (n: number) => this.#use(() => fresh(n)) };
  readonly suite = 0x01 as const;
  readonly #token: Token;
  #loggedIn = false;
  #closed = false;
  readonly #listeners = new Set<() => void>();

  constructor(token: Token) {
    this.#token = token;
  }

  /** A new token whose record goes into `store`, logged in. */
  static async create(store: KeyStore, pin: Uint8Array): Promise<{ root: MapKekRoot; token: Token }> {
    const token = new Token(pin);
    await store.putMeta(RECORD, new TextEncoder().encode(JSON.stringify({ kind: 'map-kek', id: token.id })));
    const root = new MapKekRoot(token);
    await root.unseal(pin);
    return { root, token };
  }

  /** A new session on `token` (sealed), refused once the token is destroyed. */
  static open(token: Token): MapKekRoot {
    if (token.destroyed) throw new RootDestroyedError('root: the map-kek token was destroyed');
    return new MapKekRoot(token);
  }

  describe(): RootDescription {
    return {
      kind: 'map-kek',
      id: this.#token.id,
      label: 'in-test token (keys in a private map)',
      wrapAlgorithm: 'AES-256-GCM',
    };
  }

  async wrapKey(material: Uint8Array, aad: Uint8Array): Promise<Uint8Array> {
    return this.#use(() => this.#token.rootSeal(material, aad));
  }

  async unwrapKey(wrapped: Uint8Array, aad: Uint8Array): Promise<Uint8Array> {
    return this.#use(() => this.#token.rootOpen(wrapped, aad));
  }

  isSealed(): boolean {
    return !this.#loggedIn;
  }

  async seal(): Promise<void> {
    this.#loggedIn = false;
    for (const l of [...this.#listeners]) l();
  }

  async unseal(secret: Uint8Array): Promise<void> {
    if (this.#closed) throw new ClosedError('root: map-kek session is closed');
    if (!this.#token.checkPin(secret)) throw new UnsealError('root: map-kek: wrong PIN');
    this.#loggedIn = true;
  }

  unsealSecret(): UnsealSecretDescription {
    return { kind: 'user-pin', minBytes: 4, maxBytes: 64, label: 'map-kek token user PIN' };
  }

  onSeal(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  async destroy(store: KeyStore, consent: Uint8Array, _now: Date): Promise<void> {
    if (!this.#token.destroyed) {
      if (!this.#token.checkPin(consent)) throw new UnsealError('root: map-kek: wrong PIN; nothing was destroyed');
      this.#token.destroyAll();
    }
    await store.deleteMeta(RECORD);
    await this.seal();
  }

  async createKek(kekAad: Uint8Array): Promise<Uint8Array> {
    return this.#use(() => this.#token.createKek(kekAad));
  }

  async sealDataKey(ref: Uint8Array, kekAad: Uint8Array, dek: Uint8Array, aad: Uint8Array) {
    return this.#use(() => {
      const key = this.#token.kekFor(ref, kekAad);
      if (!key) throw new InvalidInputError('root: map-kek: no such KEK in the token');
      const nonce = fresh(12);
      return { nonce, sealed: gcmSeal(key, nonce, dek, aad) };
    });
  }

  async openDataKey(ref: Uint8Array, kekAad: Uint8Array, nonce: Uint8Array, sealed: Uint8Array, aad: Uint8Array) {
    return this.#use(() => {
      const key = this.#token.kekFor(ref, kekAad);
      if (!key) throw new DecryptionError('data key');
      return gcmOpen(key, nonce, sealed, aad, 'data key');
    });
  }

  async close(): Promise<void> {
    await this.seal();
    this.#closed = true;
    this.#listeners.clear();
  }

  #use<T>(fn: () => T): T {
    if (this.#closed) throw new ClosedError('root: map-kek session is closed');
    if (!this.#loggedIn) throw new KeystoreSealedError('root: map-kek: not logged in (sealed)');
    return fn();
  }
}

/**
 * The software root of trust: a 256-bit AES key that wraps KEK material, itself never written in
 * plaintext. At rest it is wrapped by an unseal key that the caller supplies:
 *  - development mode: a key file or the KEYWARDEN_UNSEAL_KEY environment variable (this protects
 *    nothing against someone holding both the file and the store — docs/threat-model.md);
 *  - split knowledge: an unseal key recombined from a quorum of Shamir shares (docs/split-knowledge.md).
 *
 * The sealed root is a small JSON document kept in the key store's meta table under "root"
 * (docs/format.md §12). It opens sealed; `unseal()` recovers the root key into memory, `seal()`
 * wipes it.
 *
 * Key pairs (`keyPairs`, root.ts KeyPairRoot; sealed-key-pairs.ts, docs/format.md §13): ECDSA
 * P-256/P-384, RSA-2048/3072 and Ed25519 made with node:crypto. The PKCS#8 private key is never
 * stored in clear: it is sealed with AES-256-GCM under a key-pair key (KPK), with associated data
 * binding a purpose label, the key pair's id, algorithm, label and SPKI hash; the KPK is wrapped by
 * this root's `wrapKey` (associated data "keywarden/root-key-pairs/key/v1", never a KEK's) in meta
 * "root-key-pairs/key". Why a KPK and not the root's wrap directly: an RSA-3072 PKCS#8 (~1.8 KB)
 * is far beyond the 16..64 bytes a root wraps, and one small wrap per store is the only thing a
 * root rotation must move (staged before its transaction, promoted after: crash-safe), while the
 * key pair records never change. The handle is the non-secret id; the record is meta
 * "root-key-pair/<id>", which `destroy(handle)` overwrites with a destroyed marker. A sealed root
 * unwraps no KPK, so it signs and generates nothing (KeystoreSealedError). Rekey leaves the root
 * key, so everything here, as it is. The private key is decrypted only to be imported as a
 * KeyObject, and the buffer is wiped at once.
 */
import { concatBytes, fromBase64Url, toBase64Url, u32be, u8, utf8, wipe } from './_bytes.js';
import { AES256_KEY_BYTES, GCM_NONCE_BYTES, gcmOpen, gcmSeal } from './aead.js';
import {
  ClosedError,
  DecryptionError,
  FormatError,
  InvalidInputError,
  KeystoreSealedError,
  KeyStoreError,
  RootDestroyedError,
  RootMissingError,
  UnsealError,
} from './errors.js';
import type { KeyStore } from './keystore.js';
import { MemoryKeyStore } from './memory-store.js';
import { nodeRandom, type RandomSource } from './random.js';
import {
  type Destroyable,
  type KeyPairRoot,
  ROOT_MISSING_MESSAGE,
  type RootDescription,
  type RootOfTrust,
  type Sealable,
  type UnsealSecretDescription,
} from './root.js';
import { SealedKeyPairs } from './sealed-key-pairs.js';
import { encodeRootTombstone, makeRootTombstone, readRootState, verifyRootTombstone } from './root-tombstone.js';
import { assertStrongKeyMaterial } from './weak-key.js';

export const ROOT_META_NAME = 'root';
/** Written by a root destruction before the sealed root is deleted (root-tombstone.ts). */
export const ROOT_TOMBSTONE_META_NAME = 'root-tombstone';
export const ROOT_DESTROYED_MESSAGE = 'root: the root of this key store was destroyed: nothing in it can be unwrapped';
export const ROOT_DESTRUCTION_INTERRUPTED_MESSAGE =
  'root: the destruction of this root was started and not finished: the root may no longer be used; run the destruction again to finish it';
/** Generic (root.ts); re-exported here where it was first defined. */
export { ROOT_MISSING_MESSAGE } from './root.js';
export const UNSEAL_KEY_BYTES = 32;
const WRAP_FORMAT = 0x01;
const WRAP_DOMAIN = utf8.encode('keywarden/software-root/kek-wrap/v1');
const SEAL_DOMAIN = utf8.encode('keywarden/software-root/seal/v1');

/** How the unseal key is held. */
export type UnsealMethod =
  | { method: 'key' }
  | { method: 'shamir'; shareSetId: string; threshold: number; shares: number };

/** The sealed root as stored (docs/format.md §12). Contains no secret in plaintext. */
export interface SealedRootDocument {
  format: 1;
  kind: 'software';
  rootId: string;
  createdAt: string;
  unseal: UnsealMethod;
  wrapAlgorithm: 'AES-256-GCM';
  /** base64url, 12 bytes */
  nonce: string;
  /** base64url, AES-256-GCM(unsealKey, rootKey) ciphertext ‖ tag (48 bytes) */
  wrappedRoot: string;
}

/** Deterministic JSON (sorted keys) so the associated data is reproducible. @internal */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/** Everything but the nonce and ciphertext is bound as associated data: changing the unseal
 * method, the root id or the share-set id in the stored document makes unseal fail. */
function sealAad(doc: SealedRootDocument): Uint8Array {
  const { nonce: _n, wrappedRoot: _w, ...bound } = doc;
  return concatBytes(SEAL_DOMAIN, utf8.encode(canonicalJson(bound)));
}

export function encodeSealedRoot(doc: SealedRootDocument): Uint8Array {
  return utf8.encode(JSON.stringify(doc));
}

export function decodeSealedRoot(bytes: Uint8Array): SealedRootDocument {
  let doc: unknown;
  try {
    doc = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    throw new FormatError('root: sealed root document is not valid JSON');
  }
  const d = doc as Partial<SealedRootDocument>;
  if (typeof d !== 'object' || d === null) throw new FormatError('root: sealed root document is malformed');
  if (d.format !== 1) throw new FormatError(`root: unsupported sealed root format ${String(d.format)}`);
  if (d.kind !== 'software') throw new FormatError('root: sealed root is not a software root');
  if (typeof d.rootId !== 'string' || !/^root_[A-Za-z0-9_-]{22}$/.test(d.rootId)) {
    throw new FormatError('root: sealed root has an invalid root id');
  }
  if (d.wrapAlgorithm !== 'AES-256-GCM') throw new FormatError('root: unsupported root wrap algorithm');
  if (typeof d.createdAt !== 'string') throw new FormatError('root: sealed root has no creation time');
  const u = d.unseal as UnsealMethod | undefined;
  if (!u || (u.method !== 'key' && u.method !== 'shamir')) throw new FormatError('root: unknown unseal method');
  if (u.method === 'shamir') {
    if (typeof u.shareSetId !== 'string' || !Number.isInteger(u.threshold) || !Number.isInteger(u.shares)) {
      throw new FormatError('root: malformed share-set description');
    }
  }
  if (typeof d.nonce !== 'string' || typeof d.wrappedRoot !== 'string')
    throw new FormatError('root: sealed root is incomplete');
  if (fromBase64Url(d.nonce, 'root: nonce').length !== GCM_NONCE_BYTES) throw new FormatError('root: bad nonce length');
  if (fromBase64Url(d.wrappedRoot, 'root: wrapped root').length !== AES256_KEY_BYTES + 16) {
    throw new FormatError('root: bad wrapped root length');
  }
  return d as SealedRootDocument;
}

function checkUnsealKey(unsealKey: Uint8Array): void {
  if (!(unsealKey instanceof Uint8Array) || unsealKey.length !== UNSEAL_KEY_BYTES) {
    throw new InvalidInputError(`root: unseal key must be ${UNSEAL_KEY_BYTES} bytes`);
  }
}

/**
 * A NEW unseal key (initialize, rotation, reseal) must also be strong: the same check as imported
 * KEKs (weak-key.ts), so an all-zero key or a password typed as 32 ASCII bytes is refused
 * (WeakKeyMaterialError) before it seals anything. Opening an existing root does not re-check it.
 */
function checkNewUnsealKey(unsealKey: Uint8Array): void {
  checkUnsealKey(unsealKey);
  assertStrongKeyMaterial(unsealKey, { expectedLength: UNSEAL_KEY_BYTES, what: 'unseal key' });
}

const UNSEAL_SECRET: UnsealSecretDescription = {
  kind: 'unseal-key',
  minBytes: UNSEAL_KEY_BYTES,
  maxBytes: UNSEAL_KEY_BYTES,
  label: `software root unseal key (${UNSEAL_KEY_BYTES} bytes)`,
};

function sealRootKey(
  rootKey: Uint8Array,
  unsealKey: Uint8Array,
  meta: Omit<SealedRootDocument, 'nonce' | 'wrappedRoot'>,
  nonce: Uint8Array,
): SealedRootDocument {
  const draft: SealedRootDocument = { ...meta, nonce: toBase64Url(nonce), wrappedRoot: '' };
  const sealed = gcmSeal(unsealKey, nonce, rootKey, sealAad(draft));
  return { ...draft, wrappedRoot: toBase64Url(sealed) };
}

export class SoftwareRoot implements RootOfTrust, Sealable, Destroyable {
  readonly random: RandomSource;
  readonly sealable: Sealable = this;
  readonly destroyable: Destroyable = this;
  /**
   * Signing key pairs sealed in the root's store (sealed-key-pairs.ts): present on a root opened
   * from or initialized in a store (`load`, `initialize`), and on a root made for a rotation when
   * given the store (`createForRotation({ store })`); absent otherwise.
   */
  readonly keyPairs?: KeyPairRoot;
  #doc: SealedRootDocument;
  #rootKey: Uint8Array | undefined;
  #closed = false;
  readonly #sealListeners = new Set<() => void>();

  private constructor(doc: SealedRootDocument, random: RandomSource, store?: KeyStore) {
    this.#doc = doc;
    this.random = random;
    if (store) {
      this.keyPairs = new SealedKeyPairs(store, this, random, async () => {
        const bytes = await store.getMeta(ROOT_META_NAME);
        return bytes !== undefined && decodeSealedRoot(bytes).rootId === this.#doc.rootId;
      });
    }
  }

  /**
   * Create a new root key from the CSPRNG, seal it under `unsealKey`, store the sealed document in
   * `store` (meta "root"), and return the root unsealed. Refuses when the store already has a root.
   */
  static async initialize(
    store: KeyStore,
    options: { unsealKey: Uint8Array; unseal?: UnsealMethod; random?: RandomSource; now?: Date },
  ): Promise<SoftwareRoot> {
    checkNewUnsealKey(options.unsealKey);
    if (await store.getMeta(ROOT_META_NAME)) throw new KeyStoreError('root: this key store already has a root');
    if (await store.getMeta(ROOT_TOMBSTONE_META_NAME)) throw new RootDestroyedError(ROOT_DESTROYED_MESSAGE);
    const created = await SoftwareRoot.#create(options);
    // The same root, knowing its store (for its key pairs).
    const root = new SoftwareRoot(created.#doc, created.random, store);
    root.#rootKey = created.#rootKey;
    created.#rootKey = undefined;
    try {
      await store.putMeta(ROOT_META_NAME, encodeSealedRoot(root.#doc));
    } catch (err) {
      await root.close();
      throw err;
    }
    return root;
  }

  /**
   * A new root for a root rotation (root-rotation.ts): a new root key and a new root id from the
   * CSPRNG, sealed under `unsealKey` with the unseal description `unseal`, returned unsealed with
   * its sealed document — and written NOWHERE. The caller writes the document in the same
   * transaction that moves every KEK version to the new root (`rewrapUnderNewRoot` →
   * `KeyStore.replaceRoot`), so a crash never leaves the new root without the new wraps.
   *
   * Sealing under the same unseal key and the same unseal description (same share-set id, M and N)
   * keeps the unseal secret valid: the development-mode key file, or the custodians' shares.
   */
  static async createForRotation(options: {
    unsealKey: Uint8Array;
    unseal: UnsealMethod;
    random?: RandomSource;
    now?: Date;
    /** The store being rotated: the new root then has `keyPairs` there (the store's key pairs
     * follow the rotation, sealed-key-pairs.ts); it signs with them once the rotation committed. */
    store?: KeyStore;
  }): Promise<{ root: SoftwareRoot; document: SealedRootDocument }> {
    checkNewUnsealKey(options.unsealKey);
    const created = await SoftwareRoot.#create(options);
    if (!options.store) return { root: created, document: created.document };
    const root = new SoftwareRoot(created.#doc, created.random, options.store);
    root.#rootKey = created.#rootKey;
    created.#rootKey = undefined;
    return { root, document: root.document };
  }

  /** A new root key and root id from the CSPRNG, sealed under the unseal key; unsealed, not stored. */
  static async #create(options: {
    unsealKey: Uint8Array;
    unseal?: UnsealMethod;
    random?: RandomSource;
    now?: Date;
  }): Promise<SoftwareRoot> {
    const random = options.random ?? nodeRandom;
    const rootKey = await random.randomBytes(AES256_KEY_BYTES);
    try {
      const idBytes = await random.randomBytes(16);
      const nonce = await random.randomBytes(GCM_NONCE_BYTES);
      const doc = sealRootKey(
        rootKey,
        options.unsealKey,
        {
          format: 1,
          kind: 'software',
          rootId: `root_${toBase64Url(idBytes)}`,
          createdAt: (options.now ?? new Date()).toISOString(),
          unseal: structuredClone(options.unseal ?? { method: 'key' }),
          wrapAlgorithm: 'AES-256-GCM',
        },
        nonce,
      );
      // The document must load again (SoftwareRoot.load): refuse a malformed unseal description
      // here, before it can be written, rather than leave a store whose root cannot be read.
      decodeSealedRoot(encodeSealedRoot(doc));
      const root = new SoftwareRoot(doc, random);
      root.#rootKey = rootKey;
      return root;
    } catch (err) {
      wipe(rootKey);
      throw err;
    }
  }

  /** Load the sealed root from a store. It starts sealed. */
  static async load(store: KeyStore, options: { random?: RandomSource } = {}): Promise<SoftwareRoot> {
    const bytes = await store.getMeta(ROOT_META_NAME);
    // Never infer "destroyed" from "not found": a destruction leaves a tombstone (root-tombstone.ts).
    if (await store.getMeta(ROOT_TOMBSTONE_META_NAME)) {
      throw new RootDestroyedError(bytes ? ROOT_DESTRUCTION_INTERRUPTED_MESSAGE : ROOT_DESTROYED_MESSAGE);
    }
    if (!bytes) throw new RootMissingError(ROOT_MISSING_MESSAGE);
    return new SoftwareRoot(decodeSealedRoot(bytes), options.random ?? nodeRandom, store);
  }

  /** Root-record hook: meta "root" holds the sealed document (written by a root rotation). */
  storeRecord(): { name: string; value: Uint8Array } {
    return { name: ROOT_META_NAME, value: encodeSealedRoot(this.#doc) };
  }

  /** The stored document (non-secret): unseal method, share-set id, root id. */
  get document(): SealedRootDocument {
    return structuredClone(this.#doc);
  }

  describe(): RootDescription {
    return {
      kind: 'software',
      id: this.#doc.rootId,
      label:
        this.#doc.unseal.method === 'key'
          ? 'software root (development mode: unseal key file or environment variable)'
          : `software root (split knowledge: ${this.#doc.unseal.threshold} of ${this.#doc.unseal.shares} shares)`,
      wrapAlgorithm: 'AES-256-GCM',
    };
  }

  isSealed(): boolean {
    return this.#rootKey === undefined;
  }

  /** Recover the root key with the unseal key. A wrong key is an UnsealError; nothing else is said. */
  async unseal(unsealKey: Uint8Array): Promise<void> {
    this.#checkOpen();
    checkUnsealKey(unsealKey);
    const nonce = fromBase64Url(this.#doc.nonce, 'root: nonce');
    const sealed = fromBase64Url(this.#doc.wrappedRoot, 'root: wrapped root');
    let rootKey: Uint8Array;
    try {
      rootKey = gcmOpen(unsealKey, nonce, sealed, sealAad(this.#doc), 'root');
    } catch (err) {
      if (DecryptionError.isInstance(err)) throw new UnsealError('root: unseal failed (wrong unseal key or shares)');
      throw err;
    }
    // Always checked, even when already unsealed: a wrong key must never look accepted.
    if (this.#rootKey) wipe(rootKey);
    else this.#rootKey = rootKey;
  }

  /** Wipe the root key. Subscribers (onSeal: the KEK caches of key managers) are told at once,
   * before this returns, so no KEK they cached serves another call. */
  async seal(): Promise<void> {
    wipe(this.#rootKey);
    this.#rootKey = undefined;
    for (const listener of [...this.#sealListeners]) listener();
  }

  onSeal(listener: () => void): () => void {
    this.#sealListeners.add(listener);
    return () => {
      this.#sealListeners.delete(listener);
    };
  }

  unsealSecret(): UnsealSecretDescription {
    return { ...UNSEAL_SECRET };
  }

  /**
   * Destroyable: write the tombstone, then delete this root's sealed record from `store`
   * (root-tombstone.ts). `consent` is the unseal key; the store's root must be this root.
   * A wrong consent changes nothing; once the record is gone the root is sealed. Generic code
   * (root-rotation.ts destroyRoot) erases the wraps after.
   */
  async destroy(store: KeyStore, consent: Uint8Array, now: Date): Promise<void> {
    await destroySoftwareRootRecord(store, consent, now, this.#doc.rootId);
    await this.seal();
  }

  /**
   * Re-wrap the (unsealed) root key under a new unseal key and persist it: used by rekey. The old
   * unseal key (or old share set) stops working once the store write commits.
   */
  async reseal(store: KeyStore, newUnsealKey: Uint8Array, unseal: UnsealMethod): Promise<SealedRootDocument> {
    const rootKey = this.#requireKey();
    checkNewUnsealKey(newUnsealKey);
    const nonce = await this.random.randomBytes(GCM_NONCE_BYTES);
    const { nonce: _n, wrappedRoot: _w, ...meta } = this.#doc;
    const doc = sealRootKey(rootKey, newUnsealKey, { ...meta, unseal }, nonce);
    await store.putMeta(ROOT_META_NAME, encodeSealedRoot(doc));
    this.#doc = doc;
    return structuredClone(doc);
  }

  /** Wire: 0x01 ‖ nonce(12) ‖ ciphertext ‖ tag. AAD: domain ‖ root id ‖ caller's aad. */
  async wrapKey(material: Uint8Array, aad: Uint8Array): Promise<Uint8Array> {
    const key = this.#requireKey();
    const nonce = await this.random.randomBytes(GCM_NONCE_BYTES);
    return concatBytes(u8(WRAP_FORMAT), nonce, gcmSeal(key, nonce, material, this.#wrapAad(aad)));
  }

  async unwrapKey(wrapped: Uint8Array, aad: Uint8Array): Promise<Uint8Array> {
    const key = this.#requireKey();
    if (!(wrapped instanceof Uint8Array) || wrapped.length < 1 + GCM_NONCE_BYTES + 16 || wrapped.length > 1024) {
      throw new FormatError('root: wrapped key has an invalid length');
    }
    if (wrapped[0] !== WRAP_FORMAT) throw new FormatError(`root: unsupported wrapped key format ${wrapped[0]}`);
    const nonce = wrapped.subarray(1, 1 + GCM_NONCE_BYTES);
    return gcmOpen(key, nonce, wrapped.subarray(1 + GCM_NONCE_BYTES), this.#wrapAad(aad), 'root');
  }

  async close(): Promise<void> {
    await this.seal();
    this.#closed = true;
    this.#sealListeners.clear();
  }

  /** KEK wrap AAD (docs/format.md §11): domain ‖ u32 len(rootId) ‖ rootId ‖ kekAad. */
  #wrapAad(aad: Uint8Array): Uint8Array {
    const id = utf8.encode(this.#doc.rootId);
    return concatBytes(WRAP_DOMAIN, u32be(id.length), id, aad);
  }

  #checkOpen(): void {
    if (this.#closed) throw new ClosedError('root: software root is closed');
  }

  #requireKey(): Uint8Array {
    this.#checkOpen();
    if (!this.#rootKey) throw new KeystoreSealedError('root: the root is sealed; unseal it first');
    return this.#rootKey;
  }
}

/**
 * The software root's own part of a root destruction, on whatever root record `store` holds
 * (steps 1 and 2 of root-rotation.ts `destroyRoot`): check the consent (the unseal key must open
 * the sealed root, or match the tombstone of an interrupted destruction), write the tombstone,
 * delete the sealed root. Idempotent. `expectRootId`: refuse a store whose root is another one.
 * A store with neither root nor tombstone is damaged: RootMissingError, nothing changes.
 */
export async function destroySoftwareRootRecord(
  store: KeyStore,
  consent: Uint8Array,
  now: Date,
  expectRootId?: string,
): Promise<void> {
  const state = await readRootState(store);
  if (state.state === 'missing') throw new RootMissingError(ROOT_MISSING_MESSAGE);
  const rootId = state.state === 'present' ? state.document.rootId : state.tombstone.rootId;
  if (expectRootId !== undefined && rootId !== expectRootId) {
    throw new InvalidInputError(
      `root: the key store's root is ${rootId}, not this root (${expectRootId}); nothing was changed`,
    );
  }
  if (state.state === 'present') {
    await checkUnsealKeyOpens(state.document, consent);
    const tombstone = makeRootTombstone(state.document, consent, now);
    await store.putMeta(ROOT_TOMBSTONE_META_NAME, encodeRootTombstone(tombstone));
    await store.deleteMeta(ROOT_META_NAME);
  } else {
    verifyRootTombstone(state.tombstone, consent);
  }
}

/** UnsealError unless `unsealKey` opens `doc`; a private in-memory copy, nothing in use is touched. */
async function checkUnsealKeyOpens(doc: SealedRootDocument, unsealKey: Uint8Array): Promise<void> {
  const scratch = new MemoryKeyStore();
  await scratch.putMeta(ROOT_META_NAME, encodeSealedRoot(doc));
  const probe = await SoftwareRoot.load(scratch);
  try {
    await probe.unseal(unsealKey);
  } finally {
    await probe.close();
    await scratch.close();
  }
}

/** Text form of an unseal key for a key file or KEYWARDEN_UNSEAL_KEY (development mode). */
const UNSEAL_KEY_PREFIX = 'keywarden-unseal-key:v1:';

export function encodeUnsealKey(key: Uint8Array): string {
  checkUnsealKey(key);
  return UNSEAL_KEY_PREFIX + toBase64Url(key);
}

/** Parse the text form; errors never echo the input. */
export function decodeUnsealKey(text: string): Uint8Array {
  const t = text.trim();
  if (!t.startsWith(UNSEAL_KEY_PREFIX)) throw new InvalidInputError('root: not a Keywarden unseal key');
  let key: Uint8Array;
  try {
    key = fromBase64Url(t.slice(UNSEAL_KEY_PREFIX.length), 'root: unseal key');
  } catch {
    throw new InvalidInputError('root: unseal key is not valid base64url');
  }
  if (key.length !== UNSEAL_KEY_BYTES) throw new InvalidInputError('root: unseal key has the wrong length');
  return key;
}

/**
 * Roots of trust as small capabilities (house style §2). Every root can wrap and unwrap key
 * material binding associated data, and describe itself; everything else is an optional
 * capability, and asking a root for one it lacks is a typed UnsupportedCapabilityError, never a
 * silent no-op:
 *
 *   capability     property      what it is                                      software  PKCS#11   TPM
 *   wrap/unwrap    (required)    KEK material wrapped under a key in the root    yes       yes       yes
 *   describe       (required)    kind (an open string), stable id, label         yes       yes       yes
 *   random         `random`      the root's CSPRNG                               node      C_Gen…    GetRandom
 *   seal/unseal    `sealable`    lock, and unlock with a secret that split       unseal    user PIN  auth value
 *                                knowledge can split (`unsealSecret()`)          key
 *   destroy        `destroyable` destroy the root key and the root's own record  tombstone C_Destroy… evict
 *   KEK in root    `kekInRoot`   KEKs made and kept inside the root: every DEK   —         yes       —
 *                                wrap/unwrap is a root call
 *   key pairs      `keyPairs`    signing key pairs born and kept in the root:    sealed    yes       yes
 *                                generate → handle + SPKI, sign, destroy         in store
 *
 * The software root's key pairs (sealed-key-pairs.ts, docs/format.md §13): made with node:crypto,
 * the PKCS#8 private key sealed with AES-256-GCM under a key-pair key that the root wraps, in a
 * record of the root's own in the key store; the handle is a non-secret id. They are never in the
 * clear at rest, follow root rotation (the key-pair key moves with the root) and rekey (the root
 * key does not change), and die with the root; unlike an HSM's, the private key is in process
 * memory while it signs.
 *
 * Backends implement `RootOfTrust` (the hooks). Generic code never calls a backend directly: it
 * goes through `checkedRoot(backend)`, the public wrapper that enforces, once and for every
 * backend, what each must honour (ESDK style: each check below is labelled "Precondition" or
 * "Postcondition", and test/root.test.ts names its tests with the same text):
 *  - wrapped blobs are 1..MAX_ROOT_WRAPPED_BYTES on both sides: an oversize blob is refused before
 *    the backend sees it, an oversize result is refused before anyone stores it (Tink's bound on
 *    the wrapped key);
 *  - key material is MIN_ROOT_MATERIAL_BYTES..MAX_ROOT_MATERIAL_BYTES going in and coming out;
 *  - the root's id never changes (it is recorded with every KEK version it wraps);
 *  - data keys sealed by a KEK held in the root are exactly the lengths of their suite.
 */
import { wipe } from './_bytes.js';
import type { WrapSuite } from './data-key.js';
import { FormatError, InvalidInputError, RootContractError, UnsupportedCapabilityError } from './errors.js';
import type { KeyStore } from './keystore.js';
import type { RandomSource } from './random.js';

/**
 * What kind of root: "software", "pkcs11", "tpm", or any backend's own name. An open string
 * (lower-case letters, digits, "-"), so a new backend needs no change here.
 */
export type RootKind = string;

export interface RootDescription {
  kind: RootKind;
  /** Stable identifier of this root (recorded with every KEK version it wraps). */
  id: string;
  /** Human-readable, non-secret description ("software root (development mode)", token label…). */
  label: string;
  /** Algorithm used to wrap KEK material, e.g. "AES-256-GCM". */
  wrapAlgorithm: string;
}

/** Capability (required): wrap and unwrap key material under the root key, binding `aad`. */
export interface KeyWrapper {
  /** Returns an opaque blob of at most MAX_ROOT_WRAPPED_BYTES; the root key never leaves the root. */
  wrapKey(material: Uint8Array, aad: Uint8Array): Promise<Uint8Array>;
  /** Throws DecryptionError('root') when the blob or aad does not authenticate. */
  unwrapKey(wrapped: Uint8Array, aad: Uint8Array): Promise<Uint8Array>;
}

/**
 * The secret that unlocks a sealable root, described without it: what split knowledge splits into
 * shares (docs/split-knowledge.md). The software root's is its 32-byte unseal key; an HSM's, the
 * user PIN; a TPM's, the auth value of the root object.
 */
export interface UnsealSecretDescription {
  /** "unseal-key", "user-pin", "auth-value", … */
  kind: string;
  /** Accepted lengths in bytes (inclusive). */
  minBytes: number;
  maxBytes: number;
  /** Non-secret, for prompts and ceremonies ("software root unseal key (32 bytes)"). */
  label: string;
}

/** Capability: the root can be sealed (key wiped from memory, or the token logged out) and unsealed. */
export interface Sealable {
  isSealed(): boolean;
  /** Lock the root. When it resolves, the root serves no wrap or unwrap until unsealed again. */
  seal(): Promise<void>;
  /** Unlock with the secret `unsealSecret()` describes. A wrong secret is an UnsealError. The
   * caller wipes `secret`. */
  unseal(secret: Uint8Array): Promise<void>;
  unsealSecret(): UnsealSecretDescription;
  /**
   * Optional: `listener` runs synchronously whenever the root is sealed, however it is sealed
   * (directly on the root, or through a key manager). Key managers that cache KEKs unwrapped by
   * this root subscribe, so that sealing the root wipes their caches at once. Returns the
   * unsubscribe function. A root without it is polled (`isSealed()`) on every call instead.
   */
  onSeal?(listener: () => void): () => void;
}

/** Capability: destroy the root, which crypto-shreds everything it ever wrapped. */
export interface Destroyable {
  /**
   * Destroy the root key and the root's own record in `store`: once this resolves, nothing the
   * root wrapped can be unwrapped again from this store. `consent` is the unlocking secret
   * (`Sealable.unsealSecret()`), checked before anything changes (UnsealError); the caller wipes
   * it. Idempotent: run again with the same consent to finish an interrupted destruction.
   * Generic code (root-rotation.ts `destroyRoot`) then erases the KEK versions' wraps.
   */
  destroy(store: KeyStore, consent: Uint8Array, now: Date): Promise<void>;
}

/**
 * Capability: KEKs held inside the root (an HSM's non-extractable AES key objects). A KEK version
 * is made by the root and never leaves it; the key store keeps only the root's non-secret
 * reference to it, and every data-key wrap and unwrap is a root call. Slower than a KEK cached in
 * process memory, and the KEK is never in it. The wrapped data key keeps docs/format.md §2's
 * layout: Keywarden builds the header and the associated data, the root seals the DEK and picks the
 * nonce (an HSM may insist on generating the GCM IV itself).
 */
export interface KekInRoot {
  /** The data-key suite the root seals with (docs/format.md §2): 0x02 XAES-256-GCM (24-byte
   * nonce) or 0x01 AES-256-GCM (12-byte nonce; the root then owns SP 800-38D §8.3's IV budget). */
  readonly suite: WrapSuite;
  /** Make a new KEK inside the root for the version `kekAad` names (keywarden.ts `kekAad`); return
   * the root's reference to it: non-secret, 1..MAX_ROOT_WRAPPED_BYTES (a handle id, a label). */
  createKek(kekAad: Uint8Array): Promise<Uint8Array>;
  /** AEAD-seal the 32-byte `dek` with associated data `aad` under the KEK `ref`. Returns the
   * nonce the root drew (its suite's length) and ciphertext ‖ tag (48 bytes). */
  sealDataKey(
    ref: Uint8Array,
    kekAad: Uint8Array,
    dek: Uint8Array,
    aad: Uint8Array,
  ): Promise<{ nonce: Uint8Array; sealed: Uint8Array }>;
  /** The inverse. DecryptionError('data key') when anything fails to authenticate, including a
   * `ref` that is not the KEK of the version `kekAad` names. */
  openDataKey(
    ref: Uint8Array,
    kekAad: Uint8Array,
    nonce: Uint8Array,
    sealed: Uint8Array,
    aad: Uint8Array,
  ): Promise<Uint8Array>;
  /** Optional: destroy one KEK inside the root. */
  destroyKek?(ref: Uint8Array, kekAad: Uint8Array): Promise<void>;
}

/** Signing key pair algorithms (RFC 5480 curves, RFC 8017 RSA, RFC 8410 Ed25519); the hash is
 * SHA-256 for ECDSA-P256 and RSA-2048, SHA-384 for ECDSA-P384 and RSA-3072. */
export type RootKeyPairAlgorithm = 'ECDSA-P256' | 'ECDSA-P384' | 'RSA-2048' | 'RSA-3072' | 'Ed25519';

export const ROOT_KEY_PAIR_ALGORITHMS: readonly RootKeyPairAlgorithm[] = Object.freeze([
  'ECDSA-P256',
  'ECDSA-P384',
  'RSA-2048',
  'RSA-3072',
  'Ed25519',
]);

/** A key pair made in a root: the root's non-secret reference to the private key, and the public key. */
export interface RootKeyPair {
  /** 1..MAX_ROOT_WRAPPED_BYTES, non-secret (an object id, a TPM public ‖ private blob). */
  handle: Uint8Array;
  /** SubjectPublicKeyInfo, DER (RFC 5280 §4.1.2.7). */
  publicKey: Uint8Array;
}

/**
 * Capability: signing key pairs generated inside the root (an HSM's C_GenerateKeyPair with the
 * private key sensitive and never extractable; a TPM's unrestricted signing key). The private key
 * never leaves the root; Keywarden stores the handle and the public key.
 */
export interface KeyPairRoot {
  /** The algorithms this root can generate. */
  readonly algorithms: readonly RootKeyPairAlgorithm[];
  /** Make a key pair. `label` (1..128 printable ASCII, non-secret) names it on the device, e.g.
   * "kw-kp/<name>/v<version>". */
  generate(algorithm: RootKeyPairAlgorithm, label: string): Promise<RootKeyPair>;
  /**
   * Hash `data` with the algorithm's hash and sign it. The signature is returned as WebCrypto
   * returns it: ECDSA as r ‖ s (IEEE P1363, each half the curve's byte length), RSA as PKCS#1
   * v1.5 (RFC 8017 §8.2), Ed25519 as 64 bytes. KeyDestroyedError once `destroy(handle)` ran;
   * KeystoreSealedError while the root is sealed.
   */
  sign(handle: Uint8Array, data: Uint8Array): Promise<Uint8Array>;
  /** Destroy the private (and public) key objects. Idempotent. */
  destroy(handle: Uint8Array): Promise<void>;
  /**
   * Optional: the SPKI of a key pair this root holds (KeyDestroyedError once destroyed; a handle
   * it did not make is refused). Lets a caller that recorded another root id tell a key pair that
   * moved with a root rotation (the software root's) from one held by another root.
   */
  publicKey?(handle: Uint8Array): Promise<Uint8Array>;
}

/** A backend: the required hooks and whichever capabilities it has. */
export interface RootOfTrust extends KeyWrapper {
  describe(): RootDescription;
  /** Present when the root has its own CSPRNG (HSM, TPM, node:crypto for the software root). */
  readonly random?: RandomSource;
  /** Present when the root can be sealed and unsealed. */
  readonly sealable?: Sealable;
  /** Present when the root can be destroyed. */
  readonly destroyable?: Destroyable;
  /** Present when the root can hold KEKs itself. */
  readonly kekInRoot?: KekInRoot;
  /** Present when the root can hold signing key pairs. */
  readonly keyPairs?: KeyPairRoot;
  /**
   * Optional root-record hook: the non-secret record this root keeps in the key store (meta name
   * and value; for the software root, "root" and its sealed document). A root rotation writes it
   * in the same transaction as the new wraps, so generic code never builds a backend's record.
   */
  storeRecord?(): { name: string; value: Uint8Array } | undefined;
  /** Release handles and wipe any key material held in memory. */
  close(): Promise<void>;
}

/** A store with neither a root record nor the record of a destruction: damage, never "destroyed". */
export const ROOT_MISSING_MESSAGE =
  'root: this key store has no root and no record of a root destruction: it is damaged or was never initialized, not destroyed; nothing was changed (check it, e.g. PRAGMA integrity_check and REINDEX for SQLite, or restore it from a backup)';

/** Bound on a wrapped blob (and a KEK-in-root reference), checked on both sides of every backend.
 * Generous for a TPM's sealed public ‖ private pair or an RSA-4096 wrap; far below anything that
 * could exhaust memory. */
export const MAX_ROOT_WRAPPED_BYTES = 4096;
/** Key material a root wraps: 16..64 bytes (Keywarden's KEKs are 32). */
export const MIN_ROOT_MATERIAL_BYTES = 16;
export const MAX_ROOT_MATERIAL_BYTES = 64;
/** Stored form of a KEK version held in the root: "KWKR" ‖ 0x01 ‖ the root's reference. No
 * backend's wrap may begin so (checked below), so a stored record is never ambiguous. */
export const KEK_IN_ROOT_MAGIC = Uint8Array.of(0x4b, 0x57, 0x4b, 0x52, 0x01);
const DEK_BYTES = 32;
const SEALED_DEK_BYTES = 48;
const SUITE_NONCE_BYTES: Record<number, number> = { 1: 12, 2: 24 };
const KIND_RE = /^[a-z][a-z0-9-]{0,31}$/;

export function requireRandom(root: RootOfTrust): RandomSource {
  if (!root.random) throw missing(root, 'has no random-source capability');
  return root.random;
}

export function requireSealable(root: RootOfTrust): Sealable {
  if (!root.sealable) throw missing(root, 'cannot be sealed');
  return root.sealable;
}

export function requireDestroyable(root: RootOfTrust): Destroyable {
  if (!root.destroyable) throw missing(root, 'cannot be destroyed through Keywarden (destroy it on the device)');
  return root.destroyable;
}

export function requireKekInRoot(root: RootOfTrust): KekInRoot {
  if (!root.kekInRoot) throw missing(root, 'cannot hold KEKs itself (KEK mode "root")');
  return root.kekInRoot;
}

export function requireKeyPairs(root: RootOfTrust): KeyPairRoot {
  if (!root.keyPairs) throw missing(root, 'cannot hold key pairs itself');
  return root.keyPairs;
}

function missing(root: RootOfTrust, what: string): UnsupportedCapabilityError {
  return new UnsupportedCapabilityError(`root: ${root.describe().kind} root ${what}`);
}

/** True when a stored KEK version record is a reference to a KEK held in the root. */
export function isKekInRootRecord(stored: Uint8Array): boolean {
  if (stored.length <= KEK_IN_ROOT_MAGIC.length) return false;
  for (let i = 0; i < KEK_IN_ROOT_MAGIC.length; i++) if (stored[i] !== KEK_IN_ROOT_MAGIC[i]) return false;
  return true;
}

function isBytes(value: unknown): value is Uint8Array {
  return value instanceof Uint8Array;
}

function checkDescription(d: RootDescription | undefined): RootDescription {
  // Postcondition: describe() gives a kind (lower-case token), an id (1..128 printable ASCII), a label and a wrap algorithm.
  if (
    typeof d !== 'object' ||
    d === null ||
    typeof d.kind !== 'string' ||
    !KIND_RE.test(d.kind) ||
    typeof d.id !== 'string' ||
    !/^[\x21-\x7e]{1,128}$/.test(d.id) ||
    typeof d.label !== 'string' ||
    typeof d.wrapAlgorithm !== 'string'
  ) {
    throw new RootContractError(
      'root: describe() must give a kind (lower-case letters, digits, -), an id of 1..128 printable characters, a label and a wrap algorithm',
    );
  }
  return d;
}

/**
 * The checked public face of a backend. `backend` is the object that was checked; capabilities
 * the backend lacks are undefined here too (use the require* helpers for a typed error).
 */
export class CheckedRoot implements RootOfTrust {
  readonly backend: RootOfTrust;
  readonly random?: RandomSource;
  readonly sealable?: Sealable;
  readonly destroyable?: Destroyable;
  readonly kekInRoot?: KekInRoot;
  readonly keyPairs?: KeyPairRoot;
  readonly #id: string;
  readonly #kind: string;
  readonly #listeners = new Set<() => void>();

  constructor(backend: RootOfTrust) {
    // Precondition: the backend implements the required hooks (wrapKey, unwrapKey, describe, close).
    if (
      typeof backend !== 'object' ||
      backend === null ||
      typeof backend.wrapKey !== 'function' ||
      typeof backend.unwrapKey !== 'function' ||
      typeof backend.describe !== 'function' ||
      typeof backend.close !== 'function'
    ) {
      throw new InvalidInputError('root: a root must implement wrapKey, unwrapKey, describe and close');
    }
    this.backend = backend;
    const d = checkDescription(backend.describe());
    this.#id = d.id;
    this.#kind = d.kind;
    if (backend.random) this.random = this.#checkedRandom(backend.random);
    if (backend.sealable) this.sealable = this.#checkedSealable(backend.sealable);
    if (backend.destroyable) this.destroyable = this.#checkedDestroyable(backend.destroyable);
    if (backend.kekInRoot) this.kekInRoot = this.#checkedKekInRoot(backend.kekInRoot);
    if (backend.keyPairs) this.keyPairs = this.#checkedKeyPairs(backend.keyPairs);
  }

  /** The id recorded when the root was checked; describe() must keep giving it. */
  get id(): string {
    return this.#id;
  }

  describe(): RootDescription {
    const d = checkDescription(this.backend.describe());
    this.#checkStableId(d.id);
    return d;
  }

  async wrapKey(material: Uint8Array, aad: Uint8Array): Promise<Uint8Array> {
    // Precondition: the material is MIN_ROOT_MATERIAL_BYTES..MAX_ROOT_MATERIAL_BYTES bytes.
    checkMaterialIn(material);
    // Precondition: the associated data is a Uint8Array.
    if (!isBytes(aad)) throw new InvalidInputError('root: associated data must be a Uint8Array');
    const wrapped = await this.backend.wrapKey(material, aad);
    // Postcondition: the wrapped blob is 1..MAX_ROOT_WRAPPED_BYTES bytes.
    checkBlobOut(wrapped, 'wrapKey');
    // Postcondition: a wrap never begins like a KEK-in-root record.
    if (isKekInRootRecord(wrapped)) {
      throw new RootContractError('root: wrapKey returned a blob that begins like a KEK-in-root record');
    }
    // Postcondition: the root's id did not change.
    this.#checkStableId(this.backend.describe().id);
    return wrapped;
  }

  async unwrapKey(wrapped: Uint8Array, aad: Uint8Array): Promise<Uint8Array> {
    // Precondition: the wrapped blob is 1..MAX_ROOT_WRAPPED_BYTES bytes (refused before the backend sees it).
    checkBlobIn(wrapped);
    // Precondition: the associated data is a Uint8Array.
    if (!isBytes(aad)) throw new InvalidInputError('root: associated data must be a Uint8Array');
    const material = await this.backend.unwrapKey(wrapped, aad);
    // Postcondition: the unwrapped material is MIN_ROOT_MATERIAL_BYTES..MAX_ROOT_MATERIAL_BYTES bytes.
    checkMaterialOut(material, 'unwrapKey');
    try {
      // Postcondition: the root's id did not change.
      this.#checkStableId(this.backend.describe().id);
    } catch (err) {
      wipe(material);
      throw err;
    }
    return material;
  }

  async close(): Promise<void> {
    await this.backend.close();
  }

  /** The backend's own store record, checked; undefined when the backend keeps none. */
  storeRecord(): { name: string; value: Uint8Array } | undefined {
    const record = this.backend.storeRecord?.();
    if (record === undefined) return undefined;
    // Postcondition: a store record has a name of 1..64 characters and a value of at most 64 KiB.
    if (
      typeof record !== 'object' ||
      record === null ||
      typeof record.name !== 'string' ||
      !/^[\x21-\x7e]{1,64}$/.test(record.name) ||
      !isBytes(record.value) ||
      record.value.length > 65_536
    ) {
      throw new RootContractError(`root: the ${this.#kind} root's store record is malformed`);
    }
    return record;
  }

  /**
   * `listener` runs synchronously whenever the root is sealed: through this wrapper, or directly
   * on the backend when the backend reports it (Sealable.onSeal). `watchesDirectSeal` says whether
   * a seal called directly on the backend is seen; when false, poll `isSealed()`.
   */
  onSeal(listener: () => void): { unsubscribe: () => void; watchesDirectSeal: boolean } {
    const direct = this.backend.sealable?.onSeal;
    if (direct) return { unsubscribe: direct.call(this.backend.sealable, listener), watchesDirectSeal: true };
    this.#listeners.add(listener);
    return { unsubscribe: () => this.#listeners.delete(listener), watchesDirectSeal: false };
  }

  #checkStableId(id: string): void {
    if (id !== this.#id) {
      throw new RootContractError(
        `root: the ${this.#kind} root's id changed (was ${this.#id}); a root's id must be stable`,
      );
    }
  }

  #checkedRandom(random: RandomSource): RandomSource {
    return {
      randomBytes: async (length: number) => {
        const out = await random.randomBytes(length);
        // Postcondition: the random source returns exactly the requested number of bytes.
        if (!isBytes(out) || out.length !== length) {
          throw new RootContractError(
            `root: the ${this.#kind} root's random source returned the wrong number of bytes`,
          );
        }
        return out;
      },
    };
  }

  #checkedSealable(s: Sealable): Sealable {
    const notify = (): void => {
      for (const l of [...this.#listeners]) l();
    };
    return {
      isSealed: () => s.isSealed(),
      seal: async () => {
        const pending = s.seal();
        // Listeners run before anything else can: no cached KEK outlives the call.
        if (!s.onSeal) notify();
        await pending;
        // Postcondition: after seal() the root reports itself sealed.
        if (!s.isSealed())
          throw new RootContractError(`root: the ${this.#kind} root still reports unsealed after seal()`);
      },
      unseal: async (secret: Uint8Array) => {
        const d = s.unsealSecret();
        // Precondition: the unsealing secret is a Uint8Array of the length the root describes.
        if (!isBytes(secret) || secret.length < d.minBytes || secret.length > d.maxBytes) {
          throw new InvalidInputError(
            `root: the ${d.kind} must be ${d.minBytes === d.maxBytes ? d.minBytes : `${d.minBytes}..${d.maxBytes}`} bytes`,
          );
        }
        await s.unseal(secret);
      },
      unsealSecret: () => s.unsealSecret(),
      onSeal: (listener: () => void) => this.onSeal(listener).unsubscribe,
    };
  }

  #checkedDestroyable(d: Destroyable): Destroyable {
    return {
      destroy: async (store: KeyStore, consent: Uint8Array, now: Date) => {
        // Precondition: the consent is a Uint8Array and the time a valid Date.
        if (!isBytes(consent)) throw new InvalidInputError('root: the consent to destroy must be a Uint8Array');
        if (!(now instanceof Date) || Number.isNaN(now.getTime())) throw new InvalidInputError('root: invalid time');
        await d.destroy(store, consent, now);
      },
    };
  }

  #checkedKekInRoot(k: KekInRoot): KekInRoot {
    const suite = k.suite;
    const nonceBytes = SUITE_NONCE_BYTES[suite];
    // Precondition: the KEK-in-root suite is a data-key suite this version knows (0x01, 0x02).
    if (nonceBytes === undefined) {
      throw new RootContractError(`root: the ${this.#kind} root declares unknown data-key suite ${String(suite)}`);
    }
    const kind = this.#kind;
    return {
      suite,
      createKek: async (kekAad: Uint8Array) => {
        const ref = await k.createKek(kekAad);
        // Postcondition: a KEK reference is 1..MAX_ROOT_WRAPPED_BYTES bytes.
        checkBlobOut(ref, 'createKek');
        return ref;
      },
      sealDataKey: async (ref, kekAad, dek, aad) => {
        // Precondition: the KEK reference is 1..MAX_ROOT_WRAPPED_BYTES bytes.
        checkBlobIn(ref);
        // Precondition: the data key is 32 bytes.
        if (!isBytes(dek) || dek.length !== DEK_BYTES) throw new InvalidInputError('root: a data key is 32 bytes');
        const out = await k.sealDataKey(ref, kekAad, dek, aad);
        // Postcondition: a sealed data key is its suite's nonce and 48 bytes of ciphertext ‖ tag.
        if (
          typeof out !== 'object' ||
          out === null ||
          !isBytes(out.nonce) ||
          out.nonce.length !== nonceBytes ||
          !isBytes(out.sealed) ||
          out.sealed.length !== SEALED_DEK_BYTES
        ) {
          throw new RootContractError(
            `root: the ${kind} root sealed a data key into the wrong lengths (suite ${suite}: ${nonceBytes}-byte nonce, ${SEALED_DEK_BYTES}-byte ciphertext)`,
          );
        }
        return out;
      },
      openDataKey: async (ref, kekAad, nonce, sealed, aad) => {
        // Precondition: the KEK reference is 1..MAX_ROOT_WRAPPED_BYTES bytes.
        checkBlobIn(ref);
        // Precondition: the nonce and ciphertext have the suite's lengths (refused before the backend sees them).
        if (!isBytes(nonce) || nonce.length !== nonceBytes || !isBytes(sealed) || sealed.length !== SEALED_DEK_BYTES) {
          throw new FormatError('root: sealed data key has an invalid length');
        }
        const dek = await k.openDataKey(ref, kekAad, nonce, sealed, aad);
        // Postcondition: an opened data key is 32 bytes.
        if (!isBytes(dek) || dek.length !== DEK_BYTES) {
          if (isBytes(dek)) wipe(dek);
          throw new RootContractError(`root: the ${kind} root opened a data key of the wrong length`);
        }
        return dek;
      },
      ...(k.destroyKek
        ? {
            destroyKek: async (ref: Uint8Array, kekAad: Uint8Array) => {
              checkBlobIn(ref);
              await k.destroyKek?.(ref, kekAad);
            },
          }
        : {}),
    };
  }

  #checkedKeyPairs(k: KeyPairRoot): KeyPairRoot {
    const kind = this.#kind;
    const algorithms = Object.freeze([...k.algorithms]);
    // Precondition: the root declares only algorithms this version knows.
    for (const a of algorithms) {
      if (!ROOT_KEY_PAIR_ALGORITHMS.includes(a)) {
        throw new RootContractError(`root: the ${kind} root declares unknown key pair algorithm ${String(a)}`);
      }
    }
    return {
      algorithms,
      generate: async (algorithm, label) => {
        // Precondition: the algorithm is one the root declares.
        if (!algorithms.includes(algorithm)) {
          throw new UnsupportedCapabilityError(
            `root: the ${kind} root cannot make ${String(algorithm)} key pairs (it makes ${algorithms.join(', ') || 'none'})`,
          );
        }
        // Precondition: the label is 1..128 printable ASCII characters.
        if (typeof label !== 'string' || !LABEL_RE.test(label)) {
          throw new InvalidInputError('root: a key pair label is 1..128 printable ASCII characters');
        }
        const pair = await k.generate(algorithm, label);
        // Postcondition: a key pair handle is 1..MAX_ROOT_WRAPPED_BYTES bytes and its public key a DER SEQUENCE of at most MAX_ROOT_WRAPPED_BYTES.
        if (
          typeof pair !== 'object' ||
          pair === null ||
          !isBytes(pair.handle) ||
          pair.handle.length < 1 ||
          pair.handle.length > MAX_ROOT_WRAPPED_BYTES ||
          !isBytes(pair.publicKey) ||
          pair.publicKey.length < 2 ||
          pair.publicKey.length > MAX_ROOT_WRAPPED_BYTES ||
          pair.publicKey[0] !== 0x30
        ) {
          throw new RootContractError(`root: the ${kind} root returned a malformed key pair (handle or SPKI)`);
        }
        return pair;
      },
      sign: async (handle, data) => {
        // Precondition: the handle is 1..MAX_ROOT_WRAPPED_BYTES bytes and the data a Uint8Array.
        checkHandleIn(handle);
        if (!isBytes(data)) throw new InvalidInputError('root: the data to sign must be a Uint8Array');
        const signature = await k.sign(handle, data);
        // Postcondition: a signature is 1..MAX_SIGNATURE_BYTES bytes.
        if (!isBytes(signature) || signature.length < 1 || signature.length > MAX_SIGNATURE_BYTES) {
          throw new RootContractError(
            `root: the ${kind} root returned a signature outside 1..${MAX_SIGNATURE_BYTES} bytes`,
          );
        }
        return signature;
      },
      destroy: async (handle) => {
        // Precondition: the handle is 1..MAX_ROOT_WRAPPED_BYTES bytes.
        checkHandleIn(handle);
        await k.destroy(handle);
      },
      ...(k.publicKey
        ? {
            publicKey: async (handle: Uint8Array) => {
              // Precondition: the handle is 1..MAX_ROOT_WRAPPED_BYTES bytes.
              checkHandleIn(handle);
              const spki = (await k.publicKey?.(handle)) as Uint8Array;
              // Postcondition: a public key is a DER SEQUENCE of at most MAX_ROOT_WRAPPED_BYTES.
              if (!isBytes(spki) || spki.length < 2 || spki.length > MAX_ROOT_WRAPPED_BYTES || spki[0] !== 0x30) {
                throw new RootContractError(`root: the ${kind} root returned a malformed public key`);
              }
              return spki;
            },
          }
        : {}),
    };
  }
}

const LABEL_RE = /^[\x20-\x7e]{1,128}$/;
/** Largest signature of the algorithms above (RSA-3072: 384 bytes), with room for RSA-4096. */
const MAX_SIGNATURE_BYTES = 512;

function checkHandleIn(handle: Uint8Array): void {
  if (!isBytes(handle) || handle.length < 1 || handle.length > MAX_ROOT_WRAPPED_BYTES) {
    throw new InvalidInputError(`root: a key pair handle is 1..${MAX_ROOT_WRAPPED_BYTES} bytes`);
  }
}

function checkMaterialIn(material: Uint8Array): void {
  if (!isBytes(material) || material.length < MIN_ROOT_MATERIAL_BYTES || material.length > MAX_ROOT_MATERIAL_BYTES) {
    throw new InvalidInputError(
      `root: key material must be ${MIN_ROOT_MATERIAL_BYTES}..${MAX_ROOT_MATERIAL_BYTES} bytes`,
    );
  }
}

function checkMaterialOut(material: Uint8Array, hook: string): void {
  if (!isBytes(material) || material.length < MIN_ROOT_MATERIAL_BYTES || material.length > MAX_ROOT_MATERIAL_BYTES) {
    if (isBytes(material)) wipe(material);
    throw new RootContractError(
      `root: ${hook} returned key material outside ${MIN_ROOT_MATERIAL_BYTES}..${MAX_ROOT_MATERIAL_BYTES} bytes`,
    );
  }
}

function checkBlobIn(blob: Uint8Array): void {
  if (!isBytes(blob)) throw new InvalidInputError('root: a wrapped key must be a Uint8Array');
  if (blob.length < 1 || blob.length > MAX_ROOT_WRAPPED_BYTES) {
    throw new FormatError(`root: a wrapped key is 1..${MAX_ROOT_WRAPPED_BYTES} bytes`);
  }
}

function checkBlobOut(blob: Uint8Array, hook: string): void {
  if (!isBytes(blob) || blob.length < 1 || blob.length > MAX_ROOT_WRAPPED_BYTES) {
    throw new RootContractError(`root: ${hook} returned a blob outside 1..${MAX_ROOT_WRAPPED_BYTES} bytes`);
  }
}

/** The checked wrapper around `root` (the same object when `root` is already checked). */
export function checkedRoot(root: RootOfTrust): CheckedRoot {
  return root instanceof CheckedRoot ? root : new CheckedRoot(root);
}

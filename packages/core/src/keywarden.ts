/**
 * Keywarden: the key manager. It owns the hierarchy root → KEK → DEK:
 *  - KEKs are named keys with immutable ids and scope metadata (one key, one job); each version's
 *    material is born from the root's CSPRNG and stored only wrapped by the root;
 *  - DEKs are generated per message and wrapped under the primary version of a KEK, binding the
 *    KEK id, version and encryption context into the AEAD associated data (data-key.ts);
 *  - the hot path (generateDataKey / decryptDataKey) touches neither the store nor the root once a
 *    KEK version is cached: a bounded LRU of unwrapped KEK versions, wiped on eviction and close —
 *    but never while a call still holds it (see "KEK cache" below).
 *
 * Staleness: another process's rotation or disabling is seen once the cached entries expire
 * (`cache.ttlMs`, default 5 minutes); changes made through this instance take effect at once.
 * After a ROOT rotation or destruction (root-rotation.ts) an instance on the old root refuses
 * every KEK version it loads (wrapped by another root) but keeps using the ones it has cached until
 * they expire: seal or stop it (`seal()` wipes the cache), and load the new root.
 */
import type { Transform } from 'node:stream';
import { assertBytes, concatBytes, toBase64Url, u32be, u8, utf8, wipe } from './_bytes.js';
import { XaesKeySchedule } from './_xaes.js';
import { AES256_KEY_BYTES } from './aead.js';
import type { EncryptionContext } from './context.js';
import {
  DEK_BYTES,
  type DataKey,
  type DataKeyProvider,
  parseWrappedKey,
  unwrapDataKey,
  WRAP_NONCE_BYTES,
  wrapDataKey,
} from './data-key.js';
import {
  checkRequireSigned,
  checkSignedRequirement,
  decryptEnvelope,
  ENVELOPE_VERSION_2,
  type EnvelopeDecryptOptions,
  type EnvelopeEncryptOptions,
  type EnvelopeHeader,
  encryptEnvelope,
  headerWrapContext,
  openCommittedDataKey,
  parseHeader,
  replaceWrappedKey,
} from './envelope.js';
import { type KeySnapshot, type LifecycleOp, nextVersionNumber, planTransition } from './_lifecycle.js';
import {
  ClosedError,
  ConflictError,
  DecryptionError,
  FormatError,
  InvalidInputError,
  KeyCompromisedError,
  KeyDestroyedError,
  KeyMaterialError,
  KeyNotFoundError,
  KeyStateError,
  KeyVersionRetiredError,
  KeystoreSealedError,
  StoreCorruptError,
  UnexpectedKeyError,
  UnsupportedCapabilityError,
} from './errors.js';
import type {
  KeyLifecycle,
  KeyRecord,
  KeyScope,
  KeyStore,
  KeyVersionRecord,
  KeyVersionState,
  RotationPolicy,
} from './keystore.js';
import { NodeRandomSource, nodeRandom, type RandomSource } from './random.js';
import { kekInRootRecord, kekReferenceOf, unwrapDataKeyInRoot, wrapDataKeyInRoot } from './_kek-in-root.js';
import { type CheckedRoot, checkedRoot, isKekInRootRecord, requireKekInRoot, type RootOfTrust } from './root.js';
import { checkKeyExpectation, type KeyExpectation, toKeyExpectation } from './key-expectation.js';
import {
  createDecryptStream,
  createEncryptStream,
  type DecryptStreamOptions,
  type EncryptStreamOptions,
} from './stream.js';
import { assertStrongKeyMaterial } from './weak-key.js';
import { KEY_CHANGES, type KeyChangeListener } from './data-key-cache.js';
import { actAs, type AuditOption, installGuard, type PolicyOption } from './guard.js';

/**
 * @deprecated No longer enforced. It was SP 800-38D §8.3's bound of 2^32 random 96-bit nonces per
 * KEK version for wrap suite 0x01, counted per process. New wraps use suite 0x02 (XAES-256-GCM,
 * docs/format.md §2.1), which derives a fresh key per wrap and needs no count. Kept exported only
 * so that imports of it keep compiling; it will be removed in the next major version.
 */
export const DEK_WRAPS_PER_KEK_VERSION = 2 ** 32;

export interface CacheOptions {
  /** Unwrapped KEK versions kept in memory (LRU). Default 1024. */
  maxEntries?: number;
  /** How long a cached key name → primary version or KEK version stays valid. Default 300 000 ms. */
  ttlMs?: number;
}

export interface KeywardenOptions {
  store: KeyStore;
  /** Any root backend; Keywarden uses it through the checked wrapper (root.ts `checkedRoot`). */
  root: RootOfTrust;
  /** close() also closes the store. Default false: whoever opened the store closes it. */
  ownsStore?: boolean;
  /** close() also closes the root (which seals it). Default false: whoever opened the root closes it. */
  ownsRoot?: boolean;
  /** CSPRNG for DEKs and nonces on the hot path. Default: node:crypto. KEK material always comes
   * from the root's random source when it has one. */
  random?: RandomSource;
  cache?: CacheOptions;
  /** Injected clock for tests. */
  now?: () => Date;
  /** Record every operation in a tamper-evident audit log (docs/audit.md): an AuditLog, or its options. */
  audit?: AuditOption;
  /** Enforce a policy on every operation (docs/policy.md): a Policy, or "store" (the stored, versioned one). */
  policy?: PolicyOption;
  /** The principal this instance acts as, for the policy and the audit log. Default "local". */
  principal?: string;
  /** Rotation defaults, destroy grace period and usage accounting (docs/lifecycle.md). */
  lifecycle?: LifecycleOptions;
}

export interface LifecycleOptions {
  /** Policy of every key that has none of its own. Default: 90 days, 2^31 wraps per version. */
  rotation?: RotationPolicy;
  /** How long a version stays disabled (or compromised) before it may be destroyed without
   * `force`. Default 7 days. */
  destroyGraceMs?: number;
  /** Largest block of uses reserved in the store at once (blocks start at 64 and double up to
   * this). A crash loses at most one block, counted as used. Default 4096. */
  usageBlock?: number;
}

/** Default rotation policy (docs/lifecycle.md §Rotation policy). */
export const DEFAULT_ROTATION: Readonly<Required<RotationPolicy>> = Object.freeze({
  maxAgeMs: 90 * 24 * 3_600_000,
  maxUses: 2 ** 31,
});
export const DEFAULT_DESTROY_GRACE_MS = 7 * 24 * 3_600_000;

export interface DisableOptions {
  /** Allow disabling the key's last enabled version (it then encrypts and decrypts nothing). */
  confirmLastVersion?: boolean;
}

export interface CompromiseOptions {
  /** Rotate in the same change (default true; always done when the version is the primary). */
  rotate?: boolean;
}

export interface DestroyOptions {
  /** Skip the grace period (the version must still be disabled or compromised first). */
  force?: boolean;
  /** Allow destroying the key's primary or last remaining version (crypto-shredding a whole key). */
  confirmLastVersion?: boolean;
}

/** What `compromiseVersion` did, and what the data under the key now needs. */
export interface CompromiseReport {
  key: KeyInfo;
  compromisedVersion: number;
  /** The new primary made by the rotation, if one was made. */
  rotatedTo: number | undefined;
  /** Versions whose envelopes are now unreadable: re-encrypt that data from its source. */
  unreadableVersions: number[];
  /** Enabled versions other than the primary: envelopes under them should be rewrapped. */
  rewrapVersions: number[];
}

/** One key looked at by `rotateDue`. */
export interface RotationDue {
  key: string;
  id: string;
  /** What made it due: the primary's age, its uses, or both. */
  reasons: Array<'age' | 'uses'>;
  fromVersion: number;
  /** The new primary; undefined when another process rotated it first (conflict). */
  toVersion: number | undefined;
  outcome: 'rotated' | 'conflict' | 'due';
}

export interface KeyVersionInfo {
  version: number;
  state: KeyVersionState;
  rootId: string;
  createdAt: Date;
  updatedAt: Date;
  /** Data-key wraps reserved under this version (counted in blocks; see LifecycleOptions). */
  uses?: number;
}

export interface KeyInfo {
  id: string;
  name: string;
  scope: KeyScope;
  primaryVersion: number;
  createdAt: Date;
  updatedAt: Date;
  versions: KeyVersionInfo[];
  /** Versions below it refuse to decrypt (KeyVersionRetiredError). */
  minDecryptionVersion?: number;
  /** The key's effective rotation policy (its own, else the manager's default). */
  rotation?: Required<RotationPolicy>;
  /** When the primary version reaches its maximum age; undefined when the key cannot encrypt. */
  nextRotationDue?: Date | undefined;
}

export interface CreateKeyOptions {
  scope?: KeyScope;
  /**
   * Where the KEK lives. "memory" (default when the root cannot hold KEKs): wrapped by the root,
   * unwrapped into this process and cached. "root": made and kept inside the root (an HSM key
   * object); every data-key wrap and unwrap is a root call and the KEK is never in this process
   * (root.ts `KekInRoot`; default when the root has that capability). Not for importKey.
   */
  kekMode?: KekMode;
}

export type KekMode = 'memory' | 'root';

/** Key names: what applications and operators type. Ids ("kek_…") are never valid names. */
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._/:-]{0,127}$/;
const SCOPE_FIELDS = ['environment', 'service', 'tenant', 'purpose'] as const;
const KEK_AAD_DOMAIN = utf8.encode('keywarden/kek/v1');

/**
 * KEK cache: one entry per unwrapped KEK version, reference counted. The rule is "never wipe a
 * buffer that a caller may still hold": every call borrows an entry (refs + 1) before it touches the
 * material and releases it (refs - 1) in a `finally` once its wrap or unwrap is done. Eviction (LRU,
 * expiry), clearCache(), seal() and close() take the entry out of the cache and wipe it only if no
 * call holds it; otherwise the last release wipes it. Borrowing costs two integer updates and no
 * copy, on the warm path too, so it stays correct whatever awaits a future edit adds between the
 * borrow and the use (today: the slow-random-source path and a shared in-flight load).
 */
interface KekEntry {
  /** Unwrapped KEK (memory mode); empty for a KEK held in the root. */
  material: Uint8Array;
  /** The material's XAES key schedule (wrap suite 0x02), made on first use by a call that holds the
   * entry and destroyed wherever the material is wiped (wipeEntry): it lives exactly as long. */
  schedule?: XaesKeySchedule;
  /** KEK mode "root": the root's reference to the KEK (non-secret), and the version's KEK AAD. */
  inRoot?: { reference: Uint8Array; kekAad: Uint8Array };
  expires: number;
  /** Calls holding this entry between borrow and release. */
  refs: number;
  /** Data-key wraps left in the block reserved in the store (usage accounting, see #takeUse). */
  usesLeft: number;
  /** Size of the next block to reserve (starts small, doubles up to the usageBlock option). */
  nextBlock: number;
  /** A reservation in flight, shared by the callers that found the block empty. */
  reserving?: Promise<void> | undefined;
  /** In the cache map; once false it never returns there, and refs === 0 means wiped. */
  cached: boolean;
}
/** One unwrap in flight, shared by every caller that asked for the same version meanwhile. */
interface KekLoad {
  promise: Promise<KekEntry>;
  /** Callers waiting on `promise`; the entry it resolves to is handed over with this many refs. */
  waiters: number;
}
interface CachedPrimary {
  keyId: string;
  version: number;
  expires: number;
}

export class Keywarden implements DataKeyProvider {
  readonly store: KeyStore;
  /** The root as passed in. Keywarden itself calls it through the checked wrapper. */
  readonly root: RootOfTrust;
  readonly #root: CheckedRoot;
  readonly #ownsStore: boolean;
  readonly #ownsRoot: boolean;
  /** Stop hearing about seals of the root (close). */
  readonly #unsubscribeSeal: (() => void) | undefined;
  /** The root can be sealed behind our back without telling us: check isSealed() on every call. */
  readonly #pollSeal: boolean;
  readonly #random: RandomSource;
  readonly #syncRandom: ((n: number) => Uint8Array) | undefined;
  readonly #maxEntries: number;
  readonly #ttlMs: number;
  readonly #now: () => Date;
  readonly #rotation: Required<RotationPolicy>;
  readonly #graceMs: number;
  readonly #usageBlock: number;
  /** keyId:version → unwrapped KEK material; Map iteration order gives LRU eviction. */
  readonly #kekCache = new Map<string, KekEntry>();
  /** The entry set last into #kekCache (its most recently used one while it is still in it). */
  #kekLast: KekEntry | undefined;
  readonly #inflight = new Map<string, KekLoad>();
  /** Bumped by every cache wipe (clearCache, seal, close): a load or look-up started before a wipe
   * does not put its result into the cache after it. */
  #generation = 0;
  /** name or id → primary version. */
  readonly #primaryCache = new Map<string, CachedPrimary>();
  #closed = false;
  /** Told of every key change made here, and of clearCache() (DataKeyCache, KEY_CHANGES). */
  readonly #keyChangeListeners = new Set<KeyChangeListener>();
  /** DataKeyCache subscribes here (data-key-cache.ts KEY_CHANGES): an own property whose closure
   * holds this instance, so it also works through a guarded view (guard.ts), and is no operation
   * of the policy (a symbol, not a named method). */
  declare readonly [KEY_CHANGES]: (listener: KeyChangeListener) => () => void;

  constructor(options: KeywardenOptions) {
    if (!options?.store || !options.root) throw new InvalidInputError('keywarden: store and root are required');
    checkOptions(options, CONSTRUCTOR_OPTIONS, 'new Keywarden');
    checkOptions(options.cache, CACHE_OPTIONS, 'new Keywarden cache');
    for (const flag of ['ownsStore', 'ownsRoot'] as const) {
      if (options[flag] !== undefined && typeof options[flag] !== 'boolean') {
        throw new InvalidInputError(`keywarden: option "${flag}" must be true, false or absent`);
      }
    }
    if (options.random !== undefined && typeof options.random?.randomBytes !== 'function') {
      throw new InvalidInputError('keywarden: option "random" must be a RandomSource (randomBytes(length))');
    }
    if (options.now !== undefined && typeof options.now !== 'function') {
      throw new InvalidInputError('keywarden: option "now" must be a function returning a Date');
    }
    this.store = options.store;
    this.root = options.root;
    this.#root = checkedRoot(options.root);
    this.#ownsStore = options.ownsStore === true;
    this.#ownsRoot = options.ownsRoot === true;
    // Sealing is immediate (issue 7 §2): however the root gets sealed — kw.seal(), or
    // root.seal() called on the root itself — no KEK cached here serves another call.
    if (this.#root.sealable) {
      // Held weakly: a Keywarden dropped without close() is not kept alive by the root it used,
      // and its subscription goes with it.
      const watch = this.#root.onSeal(Keywarden.#sealListener(new WeakRef(this)));
      this.#unsubscribeSeal = watch.unsubscribe;
      this.#pollSeal = !watch.watchesDirectSeal;
      SEAL_SUBSCRIPTIONS.register(this, watch.unsubscribe, this);
    } else {
      this.#pollSeal = false;
    }
    this.#random = options.random ?? nodeRandom;
    this.#syncRandom =
      this.#random instanceof NodeRandomSource
        ? (n) => (this.#random as NodeRandomSource).randomBytesSync(n)
        : undefined;
    this.#maxEntries = options.cache?.maxEntries ?? 1024;
    this.#ttlMs = options.cache?.ttlMs ?? 300_000;
    if (!Number.isInteger(this.#maxEntries) || this.#maxEntries < 1) {
      throw new InvalidInputError('keywarden: cache.maxEntries must be a positive integer');
    }
    if (!Number.isFinite(this.#ttlMs) || this.#ttlMs < 0)
      throw new InvalidInputError('keywarden: cache.ttlMs must be ≥ 0');
    this.#now = options.now ?? (() => new Date());
    const lifecycle = options.lifecycle ?? {};
    checkOptions(lifecycle, LIFECYCLE_OPTIONS, 'new Keywarden lifecycle');
    this.#rotation = { ...DEFAULT_ROTATION, ...checkPolicy(lifecycle.rotation ?? {}) };
    this.#graceMs = lifecycle.destroyGraceMs ?? DEFAULT_DESTROY_GRACE_MS;
    if (!Number.isSafeInteger(this.#graceMs) || this.#graceMs < 0) {
      throw new InvalidInputError('keywarden: lifecycle.destroyGraceMs must be an integer ≥ 0');
    }
    Object.defineProperty(this, KEY_CHANGES, {
      value: (listener: KeyChangeListener) => {
        this.#keyChangeListeners.add(listener);
        return () => {
          this.#keyChangeListeners.delete(listener);
        };
      },
    });
    this.#usageBlock = lifecycle.usageBlock ?? 4096;
    if (!Number.isSafeInteger(this.#usageBlock) || this.#usageBlock < 1 || this.#usageBlock > 2 ** 32) {
      throw new InvalidInputError('keywarden: lifecycle.usageBlock must be an integer in 1..2^32');
    }
    // Audited or policed: the caller gets a guarded view of this instance (guard.ts). Last, once
    // every field is set.
    // biome-ignore lint/correctness/noConstructorReturn: the view is a Keywarden (its prototype is this instance).
    if (options.audit !== undefined || options.policy !== undefined) return installGuard(this, options);
  }

  /** Made outside the constructor, whose closures hold `this`: the listener holds only the WeakRef. */
  static #sealListener(ref: WeakRef<Keywarden>): () => void {
    return () => {
      const kw = ref.deref();
      if (kw) kw.#wipeCache();
    };
  }

  // ── Key management ────────────────────────────────────────────────────────────────────────────

  /** Create a KEK whose first version is generated by the root's CSPRNG. */
  async createKey(name: string, options: CreateKeyOptions = {}): Promise<KeyInfo> {
    this.#checkOpen();
    checkOptions(options, CREATE_KEY_OPTIONS, 'createKey');
    if (this.#kekMode(options.kekMode) === 'root') return this.#insertKey(name, options.scope ?? {}, undefined);
    const random = this.#root.random ?? this.#random;
    const material = await random.randomBytes(AES256_KEY_BYTES);
    try {
      return await this.#insertKey(name, options.scope ?? {}, material);
    } finally {
      wipe(material);
    }
  }

  /**
   * Bring your own key: import 32 bytes of KEK material generated elsewhere. Obviously weak
   * material (wrong length, repeated, sequential, password-like, low entropy) is refused.
   * The caller's buffer is not modified; wipe it yourself when done.
   */
  async importKey(name: string, material: Uint8Array, options: CreateKeyOptions = {}): Promise<KeyInfo> {
    this.#checkOpen();
    checkOptions(options, CREATE_KEY_OPTIONS, 'importKey');
    if (options.kekMode === 'root') {
      throw new UnsupportedCapabilityError(
        'keywarden: importKey makes memory-mode KEKs only (a KEK held in the root is born there)',
      );
    }
    if (options.kekMode !== undefined && options.kekMode !== 'memory') {
      throw new InvalidInputError('keywarden: option "kekMode" must be "memory" or "root"');
    }
    assertStrongKeyMaterial(material, { expectedLength: AES256_KEY_BYTES, what: 'KEK material' });
    return this.#insertKey(name, options.scope ?? {}, material);
  }

  async getKey(nameOrId: string): Promise<KeyInfo> {
    this.#checkOpen();
    const key = await this.#requireKey(nameOrId);
    return this.#info(key);
  }

  async listKeys(): Promise<KeyInfo[]> {
    this.#checkOpen();
    const keys = await this.store.listKeys();
    return Promise.all(keys.map((k) => this.#info(k)));
  }

  /**
   * Rotate: add a new version from the CSPRNG and make it primary. Older versions stay enabled, so
   * data keys wrapped under them still unwrap (no outage); new data keys use the new version.
   */
  async rotateKey(nameOrId: string): Promise<KeyInfo> {
    this.#checkOpen();
    this.#requireUnsealed();
    const snapshot = await this.#snapshot(nameOrId);
    const newVersion = await this.#makeVersion(snapshot);
    try {
      await this.#apply(snapshot, { op: 'rotate', newVersion });
    } finally {
      wipeVersion(newVersion);
    }
    return this.getKey(snapshot.key.id);
  }

  // ── Lifecycle of KEK versions (rules: _lifecycle.ts; docs/lifecycle.md) ───────────────────────
  //
  // Each change reads the key, plans the transition in one place (planTransition) and writes it in
  // one compare-and-swap transaction (KeyStore.updateKey): a concurrent change by another process
  // makes this one fail with ConflictError and change nothing. A change made here takes effect in
  // this instance at once (its cached KEK versions and primary are dropped); other processes see
  // it when their cached entries expire (cache.ttlMs).

  /** Make an enabled version (at or above the minimum decryption version) the primary. */
  async setPrimaryVersion(nameOrId: string, version: number): Promise<KeyInfo> {
    this.#checkOpen();
    return this.#change(nameOrId, { op: 'primary', version });
  }

  /** Disable a version (reversible): it neither wraps nor unwraps until enabled again. */
  async disableVersion(nameOrId: string, version: number, options: DisableOptions = {}): Promise<KeyInfo> {
    this.#checkOpen();
    checkOptions(options, DISABLE_OPTIONS, 'disableVersion');
    return this.#change(nameOrId, {
      op: 'disable',
      version,
      ...(options.confirmLastVersion !== undefined ? { confirmLastVersion: options.confirmLastVersion } : {}),
    });
  }

  /** Enable a disabled version again (a compromised or destroyed one never). */
  async enableVersion(nameOrId: string, version: number): Promise<KeyInfo> {
    this.#checkOpen();
    return this.#change(nameOrId, { op: 'enable', version });
  }

  /**
   * Mark a version compromised (irreversible): it never unwraps again (KeyCompromisedError), so an
   * attacker holding its material cannot get forged envelopes accepted. Rotates in the same
   * write unless `rotate: false` (a primary is always replaced).
   */
  async compromiseVersion(
    nameOrId: string,
    version: number,
    options: CompromiseOptions = {},
  ): Promise<CompromiseReport> {
    this.#checkOpen();
    checkOptions(options, COMPROMISE_OPTIONS, 'compromiseVersion');
    const snapshot = await this.#snapshot(nameOrId);
    const isPrimary = snapshot.key.primaryVersion === version;
    const target = snapshot.versions.find((v) => v.version === version);
    const rotate = target !== undefined && target.state !== 'destroyed' && (options.rotate !== false || isPrimary);
    let newVersion: KeyVersionRecord | undefined;
    if (rotate && target.state !== 'compromised') {
      this.#requireUnsealed();
      newVersion = await this.#makeVersion(snapshot);
    }
    try {
      await this.#apply(snapshot, { op: 'compromise', version, ...(newVersion ? { newVersion } : {}) });
    } finally {
      if (newVersion) wipeVersion(newVersion);
    }
    const key = await this.getKey(snapshot.key.id);
    return {
      key,
      compromisedVersion: version,
      rotatedTo: newVersion?.version,
      unreadableVersions: key.versions.filter((v) => v.state === 'compromised').map((v) => v.version),
      rewrapVersions: key.versions
        .filter((v) => v.state === 'enabled' && v.version !== key.primaryVersion)
        .map((v) => v.version),
    };
  }

  /**
   * Destroy a version (crypto-shredding): its wrapped material is erased from the store (and a KEK
   * held in the root is destroyed there when the root can), and everything wrapped under it fails
   * with KeyDestroyedError from then on. The version must be disabled or compromised first, for at
   * least the grace period (or `force`); the primary or last version of a key needs
   * `confirmLastVersion`.
   */
  async destroyVersion(nameOrId: string, version: number, options: DestroyOptions = {}): Promise<KeyInfo> {
    this.#checkOpen();
    checkOptions(options, DESTROY_OPTIONS, 'destroyVersion');
    const snapshot = await this.#snapshot(nameOrId);
    const op: LifecycleOp = {
      op: 'destroy',
      version,
      graceMs: this.#graceMs,
      now: this.#now(),
      ...(options.force !== undefined ? { force: options.force } : {}),
      ...(options.confirmLastVersion !== undefined ? { confirmLastVersion: options.confirmLastVersion } : {}),
    };
    const record = snapshot.versions.find((v) => v.version === version);
    // Checked (planTransition throws) before the root is asked to destroy anything.
    const plan = planTransition(snapshot, op);
    if (plan && record && isKekInRootRecord(record.wrappedMaterial)) {
      const destroyKek = this.#root.kekInRoot?.destroyKek;
      // A root that cannot destroy one KEK keeps it; the store record (its only reference) goes.
      if (destroyKek) await destroyKek(kekReferenceOf(record.wrappedMaterial), kekAad(snapshot.key.id, version));
    }
    await this.#apply(snapshot, op);
    return this.getKey(snapshot.key.id);
  }

  /** Versions below `version` refuse to decrypt (KeyVersionRetiredError); lower it to undo. */
  async setMinDecryptionVersion(nameOrId: string, version: number): Promise<KeyInfo> {
    this.#checkOpen();
    return this.#change(nameOrId, { op: 'minDecryption', version });
  }

  /** Set the key's own rotation policy (an empty object: the manager's defaults). */
  async setRotationPolicy(nameOrId: string, policy: RotationPolicy): Promise<KeyInfo> {
    this.#checkOpen();
    return this.#change(nameOrId, { op: 'rotation', policy: checkPolicy(policy) });
  }

  /**
   * Rotate every key whose primary version is older than its maximum age or has reached its
   * maximum uses (for a scheduler). A key another process rotated meanwhile is reported as a
   * conflict and left alone. Keys whose primary cannot encrypt (disabled, destroyed) are skipped.
   * `dryRun`: only report what is due (`outcome` "due", no new version, no root needed).
   */
  async rotateDue(options: { dryRun?: boolean } = {}): Promise<RotationDue[]> {
    this.#checkOpen();
    checkOptions(options, ROTATE_DUE_OPTIONS, 'rotateDue');
    const out: RotationDue[] = [];
    for (const key of await this.store.listKeys()) {
      const snapshot = await this.#snapshotOf(key);
      const reasons = this.#dueReasons(snapshot);
      if (reasons.length === 0) continue;
      if (options.dryRun === true) {
        const { name, id, primaryVersion } = key;
        out.push({ key: name, id, reasons, fromVersion: primaryVersion, toVersion: undefined, outcome: 'due' });
        continue;
      }
      this.#requireUnsealed();
      const newVersion = await this.#makeVersion(snapshot);
      const due: RotationDue = {
        key: key.name,
        id: key.id,
        reasons,
        fromVersion: key.primaryVersion,
        toVersion: newVersion.version,
        outcome: 'rotated',
      };
      try {
        await this.#apply(snapshot, { op: 'rotate', newVersion });
      } catch (err) {
        if (!ConflictError.isInstance(err)) throw err;
        due.toVersion = undefined;
        due.outcome = 'conflict';
      } finally {
        wipeVersion(newVersion);
      }
      out.push(due);
    }
    return out;
  }

  // ── Data keys: the hot path ───────────────────────────────────────────────────────────────────

  /** A fresh 32-byte DEK and its wrapped form under the key's primary version. Wipe `plaintext`
   * as soon as you are done with it. */
  async generateDataKey(key: string, context?: EncryptionContext): Promise<DataKey> {
    this.#checkOpen();
    // Warm path: two map look-ups, no await before the wrap (docs/architecture.md §hot path).
    const primary = this.#primaryHit(key) ?? (await this.#resolvePrimary(key));
    const slot = `${primary.keyId}:${primary.version}`;
    // Borrowed: the material stays intact until the release below, whatever runs in between.
    const kek = this.#kekHit(slot) ?? (await this.#kek(primary.keyId, primary.version, slot));
    let dek: Uint8Array | undefined;
    try {
      if (!this.#takeUse(kek)) await this.#reserveUse(kek, primary.keyId, primary.version);
      dek = this.#syncRandom ? this.#syncRandom(DEK_BYTES) : await this.#random.randomBytes(DEK_BYTES);
      if (kek.inRoot) return await this.#wrapInRoot(kek.inRoot, primary, dek, context);
      // Suite 0x02 (XAES-256-GCM, 192-bit nonce): a derived key per wrap, so no wrap budget to
      // count per KEK version (docs/format.md §2.1).
      const nonce = this.#syncRandom
        ? this.#syncRandom(WRAP_NONCE_BYTES)
        : await this.#random.randomBytes(WRAP_NONCE_BYTES);
      assertUsableKek(kek.material, primary);
      const wrapped = wrapDataKey(kek.material, primary, dek, context, nonce, undefined, scheduleOf(kek));
      return { plaintext: dek, wrapped, keyId: primary.keyId, version: primary.version };
    } catch (err) {
      wipe(dek);
      throw err;
    } finally {
      this.#release(kek);
    }
  }

  /**
   * Unwrap a data key made by generateDataKey, under the same context, if it is wrapped under the
   * expected key: `{ key: 'name' }` (or an id, or a list of names and ids), or deliberately
   * `{ anyKeyInStore: true }` for tools. Data under another KEK is refused with UnexpectedKeyError
   * before that KEK is loaded (key-expectation.ts).
   */
  async decryptDataKey(
    wrapped: Uint8Array,
    context: EncryptionContext | undefined,
    expected: KeyExpectation,
  ): Promise<Uint8Array> {
    this.#checkOpen();
    checkOptions(expected, EXPECTATION_OPTIONS, 'decryptDataKey');
    const allowed = checkKeyExpectation(expected, 'keywarden');
    const parsed = parseWrappedKey(wrapped);
    if (
      allowed !== null &&
      !(this.#expectedHit(allowed, parsed.keyId) ?? (await this.#expects(allowed, parsed.keyId)))
    ) {
      throw new UnexpectedKeyError(
        `keywarden: the data key is wrapped under ${parsed.keyId}, which is not the expected key`,
      );
    }
    const slot = `${parsed.keyId}:${parsed.version}`;
    const kek = this.#kekHit(slot) ?? (await this.#kek(parsed.keyId, parsed.version, slot));
    try {
      if (kek.inRoot) return await this.#unwrapInRoot(kek.inRoot, parsed, context);
      assertUsableKek(kek.material, parsed);
      return unwrapDataKey(kek.material, parsed, context, scheduleOf(kek));
    } finally {
      this.#release(kek);
    }
  }

  // ── Rewrap: move data onto the key's current primary version ──────────────────────────────────

  /**
   * Re-wrap a data key made by generateDataKey under the current primary version of the key it is
   * wrapped under, without touching what the DEK encrypts: one unwrap and one wrap, whatever the
   * payload size. Refused like an unwrap (expected key, context, the version's state: a
   * compromised, destroyed or retired version cannot be rewrapped). `changed` is false when the
   * data key is already under the primary (the same bytes are returned).
   */
  async rewrapDataKey(
    wrapped: Uint8Array,
    context: EncryptionContext | undefined,
    expected: KeyExpectation,
  ): Promise<{ wrapped: Uint8Array; changed: boolean; fromVersion: number; toVersion: number }> {
    this.#checkOpen();
    const parsed = parseWrappedKey(wrapped);
    const primary = this.#primaryHit(parsed.keyId) ?? (await this.#resolvePrimary(parsed.keyId));
    if (parsed.version === primary.version) {
      // Still checked as an unwrap would be (expected key, context, state), so "unchanged" never
      // vouches for a data key that does not open.
      wipe(await this.decryptDataKey(wrapped, context, expected));
      return { wrapped, changed: false, fromVersion: parsed.version, toVersion: primary.version };
    }
    const dek = await this.decryptDataKey(wrapped, context, expected);
    try {
      const out = await this.#wrapUnderPrimary(primary, dek, context);
      return { wrapped: out, changed: true, fromVersion: parsed.version, toVersion: primary.version };
    } finally {
      wipe(dek);
    }
  }

  /** Wrap an existing DEK under `primary` (a use of that version, counted like generateDataKey's). */
  async #wrapUnderPrimary(
    primary: { keyId: string; version: number },
    dek: Uint8Array,
    context: EncryptionContext | undefined,
  ): Promise<Uint8Array> {
    const slot = `${primary.keyId}:${primary.version}`;
    const kek = this.#kekHit(slot) ?? (await this.#kek(primary.keyId, primary.version, slot));
    try {
      if (!this.#takeUse(kek)) await this.#reserveUse(kek, primary.keyId, primary.version);
      if (kek.inRoot) return (await this.#wrapInRoot(kek.inRoot, primary, dek, context)).wrapped;
      // As in generateDataKey: the synchronous CSPRNG when there is one (no thread-pool round trip).
      const nonce = this.#syncRandom
        ? this.#syncRandom(WRAP_NONCE_BYTES)
        : await this.#random.randomBytes(WRAP_NONCE_BYTES);
      assertUsableKek(kek.material, primary);
      return wrapDataKey(kek.material, primary, dek, context, nonce, undefined, scheduleOf(kek));
    } finally {
      this.#release(kek);
    }
  }

  /**
   * Move an envelope onto the key's current primary version.
   *
   * Format v2 (what encrypt writes, docs/format.md §4.10): only the header changes. The DEK is
   * unwrapped under the expected key and context (refused like a decryption: UnexpectedKeyError
   * before any KEK is loaded; a compromised, destroyed or retired version cannot be rewrapped), its
   * key commitment is checked, and it is wrapped again under the primary; the body after the header
   * is returned byte for byte, unread: one unwrap and one wrap whatever the size, framed envelopes
   * included. Given only the header of a v2 envelope (the first `envelopeHeaderLength` bytes of a
   * file), it returns only the new header. The body is not authenticated here: a damaged body stays
   * damaged and fails when it is decrypted, as before.
   *
   * Format v1 (written before v2): its whole header, wrapped DEK included, is in the body's AAD, so
   * it is decrypted and re-encrypted as a single-shot v2 envelope (a new DEK, message id and nonce;
   * a signed envelope is signed again); later rewraps of it are then header-only.
   *
   * An envelope already under the primary is returned unchanged (`changed: false`, the same bytes),
   * after the same checks.
   */
  async rewrapEnvelope(
    envelope: Uint8Array,
    options: EnvelopeDecryptOptions,
  ): Promise<{ envelope: Uint8Array; changed: boolean; fromVersion: number; toVersion: number }> {
    this.#checkOpen();
    checkOptions(options, DECRYPT_OPTIONS, 'rewrapEnvelope');
    assertBytes(envelope, 'envelope: envelope');
    const info = parseHeader(envelope);
    const primary = this.#primaryHit(info.keyId) ?? (await this.#resolvePrimary(info.keyId));
    if (info.formatVersion === ENVELOPE_VERSION_2) return this.#rewrapHeader(envelope, info, options, primary);
    const plaintext = await this.decrypt(envelope, options);
    try {
      if (info.keyVersion === primary.version) {
        return { envelope, changed: false, fromVersion: info.keyVersion, toVersion: primary.version };
      }
      const out = await this.encrypt(plaintext, {
        key: info.keyId,
        ...(options.context !== undefined ? { context: options.context } : {}),
        ...(info.verificationKey ? { signed: true } : {}),
      });
      return { envelope: out, changed: true, fromVersion: info.keyVersion, toVersion: primary.version };
    } finally {
      wipe(plaintext);
    }
  }

  /** rewrapEnvelope for format v2: replace the wrapped DEK in the header, keep the rest. */
  async #rewrapHeader(
    envelope: Uint8Array,
    header: EnvelopeHeader,
    options: EnvelopeDecryptOptions,
    primary: { keyId: string; version: number },
  ): Promise<{ envelope: Uint8Array; changed: boolean; fromVersion: number; toVersion: number }> {
    // Preconditions as for a decryption (docs/format.md §4.5 steps 1, 3-5): options, the header
    // (parsed by the caller), the signed requirement, the expected key, the unwrap, the commitment.
    const expected = toKeyExpectation(checkKeyExpectation(options, 'envelope'));
    const requireSigned = checkRequireSigned(options);
    checkSignedRequirement(header, requireSigned);
    const dek = await openCommittedDataKey(this, header, options.context, expected);
    try {
      const unchanged = { changed: false, fromVersion: header.keyVersion, toVersion: primary.version };
      if (header.keyVersion === primary.version) return { envelope, ...unchanged };
      const wrapped = await this.#wrapUnderPrimary(primary, dek, headerWrapContext(header, options.context));
      const next = replaceWrappedKey(header, wrapped);
      return {
        envelope: concatBytes(next, envelope.subarray(header.bytes.length)),
        changed: true,
        fromVersion: header.keyVersion,
        toVersion: primary.version,
      };
    } finally {
      wipe(dek);
    }
  }

  // ── Envelope encryption ───────────────────────────────────────────────────────────────────────

  /** Encrypt `plaintext` under a fresh DEK wrapped by `options.key` (docs/format.md). */
  encrypt(plaintext: Uint8Array, options: EnvelopeEncryptOptions): Promise<Uint8Array> {
    try {
      checkOptions(options, ENCRYPT_OPTIONS, 'encrypt');
    } catch (err) {
      return Promise.reject(err);
    }
    return encryptEnvelope(this, plaintext, options);
  }

  /** Decrypt an envelope under the expected key: `{ key: 'name', context }` (docs/format.md §4.8). */
  decrypt(envelope: Uint8Array, options: EnvelopeDecryptOptions): Promise<Uint8Array> {
    try {
      checkOptions(options, DECRYPT_OPTIONS, 'decrypt');
    } catch (err) {
      return Promise.reject(err);
    }
    return decryptEnvelope(this, envelope, options);
  }

  /** A Transform that encrypts a stream of any length in authenticated frames, in bounded memory. */
  createEncryptStream(options: EncryptStreamOptions): Transform {
    checkOptions(options, ENCRYPT_STREAM_OPTIONS, 'createEncryptStream');
    return createEncryptStream(this, options);
  }

  /** A Transform that decrypts an envelope stream (framed, or single-shot up to its bound); no frame's plaintext is emitted before it verifies. */
  createDecryptStream(options: DecryptStreamOptions): Transform {
    checkOptions(options, DECRYPT_STREAM_OPTIONS, 'createDecryptStream');
    return createDecryptStream(this, options);
  }

  // ── Lifecycle of this instance ────────────────────────────────────────────────────────────────

  /** This key manager acting as `principal`: its policy decides, its records name it (guard.ts). */
  as(principal: string): Keywarden {
    return actAs(this, principal);
  }

  /** Wipe the KEK cache and seal the root (when it can be sealed). */
  async seal(): Promise<void> {
    this.#wipeCache();
    if (this.#root.sealable) await this.#root.sealable.seal();
  }

  /** Drop cached KEK material and primary versions (they are reloaded on next use), and the data
   * keys of every DataKeyCache that wraps this instance. */
  clearCache(): void {
    this.#wipeCache();
    this.#notifyKeyChange(undefined);
  }

  #notifyKeyChange(keyId: string | undefined): void {
    for (const listener of this.#keyChangeListeners) listener(keyId);
  }

  /** Whether close() was called: a wrapper (DataKeyCache) must then stop serving what it cached. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Wipe this instance's caches, and close the root and the store only when it owns them
   * (`ownsRoot`, `ownsStore`; default: no — whoever opened them closes them, so a store shared
   * with other code stays open).
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#wipeCache();
    SEAL_SUBSCRIPTIONS.unregister(this);
    this.#unsubscribeSeal?.();
    try {
      if (this.#ownsRoot) await this.root.close();
    } finally {
      if (this.#ownsStore) await this.store.close();
    }
  }

  // ── Internals ─────────────────────────────────────────────────────────────────────────────────

  async #snapshot(nameOrId: string): Promise<KeySnapshot> {
    return this.#snapshotOf(await this.#requireKey(nameOrId));
  }

  /** The key as one compare-and-swap reads it: the revision first, so any later write is seen. */
  async #snapshotOf(key: KeyRecord): Promise<KeySnapshot> {
    const life = await this.store.getLifecycle(key.id);
    if (!life) throw new KeyNotFoundError(`keystore: no key named "${key.name}"`);
    // Re-read the key and versions after the revision: a write between the two reads bumps the
    // revision past the one recorded here, so the update below loses rather than acting on a mix.
    const fresh = await this.store.getKey(key.id);
    if (!fresh) throw new KeyNotFoundError(`keystore: no key named "${key.name}"`);
    return { key: fresh, versions: await this.store.listVersions(key.id), life };
  }

  /** A new version record (material from the root's CSPRNG, wrapped by the root), in the key's KEK mode. */
  async #makeVersion(snapshot: KeySnapshot): Promise<KeyVersionRecord> {
    const { key, versions } = snapshot;
    const next = nextVersionNumber(snapshot);
    // A key keeps its KEK mode: a KEK held in the root rotates to a new KEK made in the root.
    const primaryRecord = versions.find((v) => v.version === key.primaryVersion);
    const inRoot = primaryRecord !== undefined && isKekInRootRecord(primaryRecord.wrappedMaterial);
    const random = this.#root.random ?? this.#random;
    const material = inRoot ? new Uint8Array(0) : await random.randomBytes(AES256_KEY_BYTES);
    try {
      const now = this.#now();
      const wrapped = inRoot
        ? kekInRootRecord(await requireKekInRoot(this.#root).createKek(kekAad(key.id, next)))
        : await this.#root.wrapKey(material, kekAad(key.id, next));
      return {
        keyId: key.id,
        version: next,
        state: 'enabled',
        rootId: this.#root.id,
        wrappedMaterial: wrapped,
        createdAt: now,
        updatedAt: now,
      };
    } finally {
      wipe(material);
    }
  }

  async #change(nameOrId: string, op: LifecycleOp): Promise<KeyInfo> {
    const snapshot = await this.#snapshot(nameOrId);
    await this.#apply(snapshot, op);
    return this.getKey(snapshot.key.id);
  }

  /** Plan the transition and write it with compare-and-swap; then forget what this instance cached of the key. */
  async #apply(snapshot: KeySnapshot, op: LifecycleOp): Promise<void> {
    const plan = planTransition(snapshot, op);
    if (plan === null) return;
    try {
      await this.store.updateKey({
        keyId: snapshot.key.id,
        expectedRevision: snapshot.life.revision,
        at: this.#now(),
        ...plan,
      });
    } finally {
      // Also after a failure: the write may have committed before an error was reported.
      this.#forgetKey(snapshot.key);
      this.#notifyKeyChange(snapshot.key.id);
    }
  }

  /**
   * Refuse a version that may not unwrap, with the error that says why (checked on every KEK load;
   * a change made through this instance drops the cached versions of the key at once).
   */
  async #checkUsable(record: KeyVersionRecord): Promise<void> {
    const { keyId, version } = record;
    if (record.state === 'destroyed') {
      throw new KeyDestroyedError(
        `keywarden: key ${keyId} v${version} was destroyed; what it protected is unrecoverable`,
      );
    }
    if (record.state === 'compromised') {
      throw new KeyCompromisedError(
        `keywarden: key ${keyId} v${version} is compromised and never unwraps again; re-encrypt that data from its source`,
      );
    }
    const life = await this.store.getLifecycle(keyId);
    if (life && version < life.minDecryptionVersion) {
      throw new KeyVersionRetiredError(
        `keywarden: key ${keyId} v${version} is retired (below the minimum decryption version v${life.minDecryptionVersion})`,
      );
    }
    if (record.state !== 'enabled') throw new KeyStateError(`keystore: key ${keyId} v${version} is ${record.state}`);
  }

  #dueReasons(snapshot: KeySnapshot): Array<'age' | 'uses'> {
    const { key, versions, life } = snapshot;
    const primary = versions.find((v) => v.version === key.primaryVersion);
    if (primary?.state !== 'enabled') return [];
    const policy = { ...this.#rotation, ...life.rotation };
    const reasons: Array<'age' | 'uses'> = [];
    if (this.#now().getTime() - primary.createdAt.getTime() >= policy.maxAgeMs) reasons.push('age');
    if ((life.uses[primary.version] ?? 0) >= policy.maxUses) reasons.push('uses');
    return reasons;
  }

  async #info(key: KeyRecord): Promise<KeyInfo> {
    const [versions, life] = await Promise.all([this.store.listVersions(key.id), this.store.getLifecycle(key.id)]);
    return toKeyInfo(key, versions, life, this.#rotation);
  }

  /** Drop every cached KEK version and primary of one key; loads in flight are not cached. */
  #forgetKey(key: KeyRecord): void {
    this.#generation++;
    this.#forgetPrimary(key);
    const prefix = `${key.id}:`;
    for (const [slot, entry] of this.#kekCache) {
      if (!slot.startsWith(prefix)) continue;
      this.#kekCache.delete(slot);
      this.#drop(entry);
    }
  }

  /**
   * Count one data-key wrap under the entry's version. Uses are reserved in the store in blocks
   * (KeyStore.reserveUses: one write per block, shared by all processes), so the warm path is one
   * integer decrement; a crash loses at most the rest of one block, which stays counted as used.
   */
  #takeUse(entry: KekEntry): boolean {
    if (entry.usesLeft > 0) {
      entry.usesLeft--;
      return true;
    }
    return false;
  }

  async #reserveUse(entry: KekEntry, keyId: string, version: number): Promise<void> {
    while (!this.#takeUse(entry)) {
      if (!entry.reserving) {
        const block = entry.nextBlock;
        entry.nextBlock = Math.min(block * 2, this.#usageBlock);
        entry.reserving = this.store.reserveUses(keyId, version, block).then(
          () => {
            entry.usesLeft += block;
            entry.reserving = undefined;
          },
          (err) => {
            entry.reserving = undefined;
            throw err;
          },
        );
      }
      await entry.reserving;
    }
  }

  /** `material` undefined: a KEK made inside the root (KEK mode "root"). */
  async #insertKey(name: string, scope: KeyScope, material: Uint8Array | undefined): Promise<KeyInfo> {
    this.#requireUnsealed();
    checkName(name);
    const cleanScope = checkScope(scope);
    const id = `kek_${toBase64Url(await (this.#root.random ?? this.#random).randomBytes(16))}`;
    const wrapped =
      material === undefined
        ? kekInRootRecord(await requireKekInRoot(this.#root).createKek(kekAad(id, 1)))
        : await this.#root.wrapKey(material, kekAad(id, 1));
    const now = this.#now();
    const record: KeyRecord = { id, name, scope: cleanScope, primaryVersion: 1, createdAt: now, updatedAt: now };
    const version: KeyVersionRecord = {
      keyId: id,
      version: 1,
      state: 'enabled',
      rootId: this.#root.id,
      wrappedMaterial: wrapped,
      createdAt: now,
      updatedAt: now,
    };
    await this.store.createKey(record, version);
    return toKeyInfo(record, [version]);
  }

  async #requireKey(nameOrId: string): Promise<KeyRecord> {
    if (typeof nameOrId !== 'string' || nameOrId.length === 0 || nameOrId.length > 128) {
      throw new InvalidInputError('keywarden: key must be a non-empty name or id');
    }
    const key = await this.store.getKey(nameOrId);
    if (!key) throw new KeyNotFoundError(`keystore: no key named "${nameOrId}"`);
    return key;
  }

  /**
   * Whether `keyId` is one of the expected keys, decided from memory: an expected id ("kek_…";
   * names never start so) compares directly, an expected name through the cached name → primary
   * resolution. Undefined when a name is not cached yet (the caller then asks #expects).
   */
  #expectedHit(allowed: readonly string[], keyId: string): boolean | undefined {
    let unresolved = false;
    for (const k of allowed) {
      if (k === keyId) return true;
      if (k.startsWith('kek_')) continue;
      const hit = this.#primaryHit(k);
      if (hit === undefined) unresolved = true;
      else if (hit.keyId === keyId) return true;
    }
    return unresolved ? undefined : false;
  }

  /** #expectedHit with the uncached names resolved through the store (then cached). */
  async #expects(allowed: readonly string[], keyId: string): Promise<boolean> {
    for (const k of allowed) {
      if (k === keyId) return true;
      if (k.startsWith('kek_')) continue;
      const primary = this.#primaryHit(k) ?? (await this.#resolvePrimary(k));
      if (primary.keyId === keyId) return true;
    }
    return false;
  }

  #primaryHit(nameOrId: string): CachedPrimary | undefined {
    const hit = this.#primaryCache.get(nameOrId);
    return hit && hit.expires > Date.now() ? hit : undefined;
  }

  /** Borrow a cached, unexpired KEK version (the caller must #release it), or undefined. */
  #kekHit(slot: string): KekEntry | undefined {
    // A root that cannot tell us it was sealed is asked (one call); sealed means nothing cached serves.
    if (this.#pollSeal && this.#root.sealable?.isSealed()) {
      this.#wipeCache();
      return undefined;
    }
    const hit = this.#kekCache.get(slot);
    if (!hit || hit.expires <= Date.now()) return undefined;
    // Re-insert to keep Map order = least recently used first (already last: nothing to move).
    if (hit !== this.#kekLast) {
      this.#kekCache.delete(slot);
      this.#kekCache.set(slot, hit);
      this.#kekLast = hit;
    }
    hit.refs++;
    return hit;
  }

  /** End a borrow; the last holder of an entry that left the cache wipes it. */
  #release(entry: KekEntry): void {
    entry.refs--;
    if (entry.refs === 0 && !entry.cached) wipeEntry(entry);
  }

  /** Take an entry out of the cache (the caller already removed it from the map). */
  #drop(entry: KekEntry): void {
    entry.cached = false;
    if (entry.refs === 0) wipeEntry(entry);
  }

  async #resolvePrimary(nameOrId: string): Promise<CachedPrimary> {
    const now = Date.now();
    const hit = this.#primaryCache.get(nameOrId);
    if (hit && hit.expires > now) return hit;
    this.#requireUnsealed();
    const generation = this.#generation;
    const key = await this.#requireKey(nameOrId);
    const entry = { keyId: key.id, version: key.primaryVersion, expires: now + this.#ttlMs };
    // A look-up that straddled a cache wipe answers its caller but is not cached.
    if (generation !== this.#generation) return entry;
    this.#primaryCache.set(nameOrId, entry);
    if (this.#primaryCache.size > this.#maxEntries * 4) {
      const oldest = this.#primaryCache.keys().next().value;
      if (oldest !== undefined) this.#primaryCache.delete(oldest);
    }
    return entry;
  }

  /**
   * Borrow a KEK version that #kekHit did not find: join the unwrap already in flight for it, or
   * start one. The returned entry carries a reference for this caller (release it).
   */
  #kek(keyId: string, version: number, slot: string): Promise<KekEntry> {
    const expired = this.#kekCache.get(slot);
    if (expired) {
      this.#kekCache.delete(slot);
      this.#drop(expired);
    }
    const pending = this.#inflight.get(slot);
    if (pending) {
      pending.waiters++;
      return pending.promise;
    }
    // Registered before the load starts, so a load that fails synchronously still finds itself.
    const load: KekLoad = { promise: undefined as unknown as Promise<KekEntry>, waiters: 1 };
    this.#inflight.set(slot, load);
    load.promise = this.#loadKek(keyId, version, slot, load);
    return load.promise;
  }

  async #loadKek(keyId: string, version: number, slot: string, load: KekLoad): Promise<KekEntry> {
    const generation = this.#generation;
    let material: Uint8Array;
    let inRoot: KekEntry['inRoot'];
    try {
      this.#requireUnsealed();
      const record = await this.store.getVersion(keyId, version);
      if (!record) {
        // Off the hot path: say whether the key itself is unknown here (an envelope from another store).
        if (!(await this.store.getKey(keyId))) {
          throw new KeyNotFoundError(
            `keystore: key ${keyId} does not exist in this key store (was the data encrypted under another key store?)`,
          );
        }
        throw new KeyNotFoundError(`keystore: key ${keyId} has no version ${version}`);
      }
      await this.#checkUsable(record);
      const rootId = this.#root.id;
      if (record.rootId !== rootId) {
        throw new KeyStateError(`root: key ${keyId} v${version} was wrapped by another root (${record.rootId})`);
      }
      if (isKekInRootRecord(record.wrappedMaterial)) {
        // KEK mode "root": nothing to unwrap; the entry holds the root's reference only.
        requireKekInRoot(this.#root);
        inRoot = { reference: kekReferenceOf(record.wrappedMaterial), kekAad: kekAad(keyId, version) };
        material = new Uint8Array(0);
      } else
        try {
          material = await this.#root.unwrapKey(record.wrappedMaterial, kekAad(keyId, version));
        } catch (err) {
          // The stored KEK record, not the caller's envelope, failed: say so (issue 6, item 9).
          if (!DecryptionError.isInstance(err) && !FormatError.isInstance(err)) throw err;
          throw new StoreCorruptError(
            `keystore: the key store record of key ${keyId} v${version} failed to authenticate under the root (damaged or altered in the store); restore the key store from a backup`,
            { cause: err },
          );
        }
    } finally {
      // From here to the return nothing awaits: no caller can join any more, `waiters` is final.
      if (this.#inflight.get(slot) === load) this.#inflight.delete(slot);
    }
    if (this.#closed) {
      wipe(material);
      throw new ClosedError('keywarden: closed');
    }
    if (this.#root.sealable?.isSealed()) {
      // Sealed while the unwrap was in flight: the key must not outlive the seal.
      wipe(material);
      throw new KeystoreSealedError('keystore: sealed; unseal the root before using keys');
    }
    const entry: KekEntry = {
      material,
      expires: Date.now() + this.#ttlMs,
      refs: load.waiters,
      cached: false,
      usesLeft: 0,
      nextBlock: Math.min(64, this.#usageBlock),
    };
    if (inRoot) entry.inRoot = inRoot;
    // A load that straddled clearCache()/seal() serves its waiters (the last release wipes the
    // material) but does not put the key back into the cache.
    if (generation !== this.#generation) return entry;
    const previous = this.#kekCache.get(slot);
    if (previous) {
      this.#kekCache.delete(slot);
      this.#drop(previous);
    }
    entry.cached = true;
    this.#kekCache.set(slot, entry);
    this.#kekLast = entry;
    while (this.#kekCache.size > this.#maxEntries) {
      const [oldSlot, old] = this.#kekCache.entries().next().value as [string, KekEntry];
      this.#kekCache.delete(oldSlot);
      this.#drop(old);
    }
    return entry;
  }

  #forgetPrimary(key: KeyRecord): void {
    this.#primaryCache.delete(key.id);
    this.#primaryCache.delete(key.name);
  }

  /** Empty the caches. Entries a call still holds are wiped by that call's release, not here. */
  #wipeCache(): void {
    this.#generation++;
    for (const entry of this.#kekCache.values()) this.#drop(entry);
    this.#kekCache.clear();
    this.#inflight.clear();
    this.#primaryCache.clear();
  }

  /** KEK mode "root": one root call per data key (root.ts KekInRoot). */
  #wrapInRoot(
    inRoot: NonNullable<KekEntry['inRoot']>,
    ref: { keyId: string; version: number },
    dek: Uint8Array,
    context: EncryptionContext | undefined,
  ): Promise<DataKey> {
    return wrapDataKeyInRoot(requireKekInRoot(this.#root), inRoot.reference, inRoot.kekAad, ref, dek, context);
  }

  #unwrapInRoot(
    inRoot: NonNullable<KekEntry['inRoot']>,
    parsed: ReturnType<typeof parseWrappedKey>,
    context: EncryptionContext | undefined,
  ): Promise<Uint8Array> {
    return unwrapDataKeyInRoot(requireKekInRoot(this.#root), inRoot.reference, inRoot.kekAad, parsed, context);
  }

  /** The KEK mode for a new key: as asked, else "root" when the root can hold KEKs. */
  #kekMode(asked: KekMode | undefined): KekMode {
    if (asked !== undefined && asked !== 'memory' && asked !== 'root') {
      throw new InvalidInputError('keywarden: option "kekMode" must be "memory" or "root"');
    }
    if (asked === 'root') requireKekInRoot(this.#root);
    return asked ?? (this.#root.kekInRoot ? 'root' : 'memory');
  }

  #requireUnsealed(): void {
    if (this.#root.sealable?.isSealed()) {
      throw new KeystoreSealedError('keystore: sealed; unseal the root before using keys');
    }
  }

  #checkOpen(): void {
    if (this.#closed) throw new ClosedError('keywarden: closed');
  }
}

/**
 * Backstop before every wrap and unwrap: KEK material is exactly 32 bytes and not all zeros. The
 * cache never hands out a wiped buffer (see KekEntry), so this never fires unless that invariant is
 * broken; if it ever is, nothing gets wrapped under a key anyone could guess. No early exit.
 */
function assertUsableKek(material: Uint8Array, ref: { keyId: string; version: number }): void {
  let bits = 0;
  for (let i = 0; i < material.length; i++) bits |= material[i] as number;
  if (material.length !== AES256_KEY_BYTES || bits === 0) {
    throw new KeyMaterialError(
      `keywarden: KEK ${ref.keyId} v${ref.version} material is unusable (all zeros or wrong length); nothing was wrapped or unwrapped`,
    );
  }
}

/**
 * The entry's XAES key schedule, made on first use (issue 11, hot path: one AES key schedule per
 * cached KEK version instead of one per wrap and unwrap). Only called between borrow and release,
 * after assertUsableKek, so the material it is made from is intact.
 */
function scheduleOf(entry: KekEntry): XaesKeySchedule {
  if (entry.schedule === undefined) entry.schedule = new XaesKeySchedule(entry.material);
  return entry.schedule;
}

/** Wipe an entry's material and destroy its key schedule with it: neither outlives the other. */
function wipeEntry(entry: KekEntry): void {
  entry.schedule?.destroy();
  entry.schedule = undefined;
  wipe(entry.material);
}

/** Associated data for KEK material wrapped by the root: binds the key id and version. */
export function kekAad(keyId: string, version: number): Uint8Array {
  const id = utf8.encode(keyId);
  return concatBytes(KEK_AAD_DOMAIN, u8(id.length), id, u32be(version));
}

function checkName(name: string): void {
  if (typeof name !== 'string' || !NAME_RE.test(name) || name.startsWith('kek_')) {
    throw new InvalidInputError(
      'keywarden: key names are 1..128 characters of [A-Za-z0-9._/:-], start with a letter or digit, and do not start with "kek_"',
    );
  }
}

function checkScope(scope: KeyScope): KeyScope {
  if (typeof scope !== 'object' || scope === null) throw new InvalidInputError('keywarden: scope must be an object');
  const out: KeyScope = {};
  for (const [k, v] of Object.entries(scope)) {
    if (!(SCOPE_FIELDS as readonly string[]).includes(k)) {
      throw new InvalidInputError(`keywarden: unknown scope field "${k}" (expected ${SCOPE_FIELDS.join(', ')})`);
    }
    if (v === undefined) continue;
    if (typeof v !== 'string' || v.length === 0 || v.length > 128 || hasControlCharacter(v)) {
      throw new InvalidInputError(`keywarden: scope ${k} must be 1..128 printable characters`);
    }
    out[k as (typeof SCOPE_FIELDS)[number]] = v;
  }
  return out;
}

/** Ends the seal subscription of a Keywarden that was garbage-collected without close(). */
const SEAL_SUBSCRIPTIONS = new FinalizationRegistry<() => void>((unsubscribe) => unsubscribe());

const CONSTRUCTOR_OPTIONS = new Set([
  ...['store', 'root', 'random', 'cache', 'now', 'ownsStore', 'ownsRoot', 'lifecycle'],
  ...['audit', 'policy', 'principal'],
]);
const LIFECYCLE_OPTIONS = new Set(['rotation', 'destroyGraceMs', 'usageBlock']);
const ROTATION_OPTIONS = new Set(['maxAgeMs', 'maxUses']);
const DISABLE_OPTIONS = new Set(['confirmLastVersion']);
const ROTATE_DUE_OPTIONS = new Set(['dryRun']);
const COMPROMISE_OPTIONS = new Set(['rotate']);
const DESTROY_OPTIONS = new Set(['force', 'confirmLastVersion']);
const CACHE_OPTIONS = new Set(['maxEntries', 'ttlMs']);
const CREATE_KEY_OPTIONS = new Set(['scope', 'kekMode']);
const EXPECTATION_OPTIONS = new Set(['key', 'anyKeyInStore']);
const ENCRYPT_OPTIONS = new Set(['key', 'context', 'signed']);
const DECRYPT_OPTIONS = new Set(['key', 'anyKeyInStore', 'context', 'requireSigned']);
const ENCRYPT_STREAM_OPTIONS = new Set([...ENCRYPT_OPTIONS, 'frameSize']);
const DECRYPT_STREAM_OPTIONS = new Set([...DECRYPT_OPTIONS, 'maxFrameSize']);

/**
 * Runtime check for JavaScript callers (TypeScript catches these at compile time): an options
 * object is an object, and every option in it is one the method knows. An unknown or misspelt
 * option — `createKey('k', { environment: 'prod' })` — is an InvalidInputError naming it, never
 * silently ignored. One pass over the caller's own keys: cheap enough for every call.
 */
function checkOptions(options: unknown, allowed: ReadonlySet<string>, method: string): void {
  if (options === undefined) return;
  if (typeof options !== 'object' || options === null || Array.isArray(options)) {
    throw new InvalidInputError(`keywarden: the options of ${method} must be an object`);
  }
  for (const k in options) {
    if (allowed.has(k)) continue;
    const hint = (SCOPE_FIELDS as readonly string[]).includes(k) ? ` (a scope field: pass { scope: { ${k}: … } })` : '';
    throw new InvalidInputError(
      `keywarden: unknown option "${k.slice(0, 64)}" for ${method}${hint}; expected ${[...allowed].join(', ')}`,
    );
  }
}

function hasControlCharacter(v: string): boolean {
  for (let i = 0; i < v.length; i++) if (v.charCodeAt(i) < 0x20 || v.charCodeAt(i) === 0x7f) return true;
  return false;
}

/** A rotation policy as given by a caller: known fields, each a positive integer. Returns a clean copy. */
function checkPolicy(policy: RotationPolicy): RotationPolicy {
  checkOptions(policy, ROTATION_OPTIONS, 'rotation policy');
  const out: RotationPolicy = {};
  for (const field of ['maxAgeMs', 'maxUses'] as const) {
    const value = policy[field];
    if (value === undefined) continue;
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1) {
      throw new InvalidInputError(`keywarden: rotation ${field} must be a positive integer`);
    }
    out[field] = value;
  }
  return out;
}

/** Wipe the wrapped material of a version record the manager made (the store kept its own copy). */
function wipeVersion(record: KeyVersionRecord): void {
  wipe(record.wrappedMaterial);
}

function toKeyInfo(
  key: KeyRecord,
  versions: KeyVersionRecord[],
  life?: KeyLifecycle,
  defaults: Required<RotationPolicy> = DEFAULT_ROTATION,
): KeyInfo {
  const rotation = { ...defaults, ...(life?.rotation ?? {}) };
  const primary = versions.find((v) => v.version === key.primaryVersion);
  const due =
    primary && primary.state === 'enabled' ? new Date(primary.createdAt.getTime() + rotation.maxAgeMs) : undefined;
  return {
    minDecryptionVersion: life?.minDecryptionVersion ?? 1,
    rotation,
    nextRotationDue: due,
    id: key.id,
    name: key.name,
    scope: { ...key.scope },
    primaryVersion: key.primaryVersion,
    createdAt: key.createdAt,
    updatedAt: key.updatedAt,
    versions: versions
      .map((v) => ({
        version: v.version,
        state: v.state,
        rootId: v.rootId,
        createdAt: v.createdAt,
        updatedAt: v.updatedAt,
        uses: life?.uses[v.version] ?? 0,
      }))
      .sort((a, b) => a.version - b.version),
  };
}

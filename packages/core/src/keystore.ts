/**
 * The key store holds key metadata and root-wrapped KEK material — never a plaintext key.
 * Implementations: MemoryKeyStore (unit tests), @keywarden/store-sqlite (embedded default),
 * and later PostgreSQL. Every write is one transaction: a crash never leaves half a key.
 * The shared conformance suite (@keywarden/testkit) runs against each implementation.
 */

/** Scope metadata: one key, one job. All optional, all non-secret. */
export interface KeyScope {
  environment?: string;
  service?: string;
  tenant?: string;
  purpose?: string;
}

/**
 * Lifecycle of one key version:
 * - enabled: usable for wrap and unwrap; the primary version is the one used to wrap.
 * - disabled: unwrap and wrap refused; can be re-enabled.
 * - compromised: refused like disabled, and flagged for rewrap; cannot be re-enabled.
 * - destroyed: material erased from the store (crypto-shredding); terminal.
 */
export type KeyVersionState = 'enabled' | 'disabled' | 'compromised' | 'destroyed';

export interface KeyRecord {
  /** Immutable random id ("kek_…"), never reused. Bound into every wrapped DEK. */
  id: string;
  /** Unique human name (alias) used by applications and the CLI. */
  name: string;
  scope: KeyScope;
  /** Version used for new wraps. */
  primaryVersion: number;
  createdAt: Date;
  updatedAt: Date;
}

export interface KeyVersionRecord {
  keyId: string;
  /** 1, 2, 3 … never reused. */
  version: number;
  state: KeyVersionState;
  /** Id of the root that wrapped `wrappedMaterial` (RootDescription.id). */
  rootId: string;
  /** KEK material wrapped by the root; empty once destroyed. */
  wrappedMaterial: Uint8Array;
  createdAt: Date;
  updatedAt: Date;
}

/** One KEK version's new wrap, in a {@link KeyStore.replaceRoot} update. */
export interface RootRewrap {
  keyId: string;
  version: number;
  /** Id of the root that made `wrappedMaterial` (the new root's RootDescription.id). */
  rootId: string;
  /** The same KEK material, wrapped by the new root. */
  wrappedMaterial: Uint8Array;
}

/** Everything a root rotation writes, in one transaction (root-rotation.ts). */
export interface RootUpdate {
  /** Every non-destroyed version of every key, each listed once, with its new wrap. */
  versions: RootRewrap[];
  /** The new root's meta record (for the software root: "root", the new sealed root document). */
  meta: { name: string; value: Uint8Array };
  /** Written as the updatedAt of every listed version. */
  at: Date;
  /**
   * Compare-and-swap (two rotations of one store cannot both win): when given, every listed
   * version must still be wrapped by this root (its rootId), else ConflictError.
   */
  expectedRootId?: string;
  /**
   * Compare-and-swap on the root's own record: when given, the meta record `meta.name` must still
   * hold exactly these bytes (null: must not exist), else ConflictError. Nothing changes on a conflict.
   */
  expectedMeta?: Uint8Array | null;
}

/**
 * Rotation policy of one key (keywarden.ts `rotateDue`). Absent fields take the key manager's
 * defaults (90 days; 2^31 data-key wraps per version).
 */
export interface RotationPolicy {
  /** Rotate when the primary version is older than this (milliseconds). */
  maxAgeMs?: number;
  /** Rotate when this many data keys were wrapped under the primary version (reserved uses). */
  maxUses?: number;
}

/**
 * The lifecycle bookkeeping of one key, kept beside its KeyRecord: a revision for
 * compare-and-swap, the minimum decryption version, the rotation policy and per-version usage.
 */
export interface KeyLifecycle {
  /**
   * Bumped by every write that changes the key or one of its versions (updateKey, addVersion,
   * setPrimaryVersion, setVersionState). updateKey succeeds only against the revision it read.
   */
  revision: number;
  /** Versions below it refuse to decrypt (KeyVersionRetiredError). 1 = none retired. */
  minDecryptionVersion: number;
  rotation: RotationPolicy;
  /** Data-key wraps reserved per version (reserveUses); a version never reserved is absent. */
  uses: Record<number, number>;
}

/**
 * One compare-and-swap change to a key, applied in ONE transaction (keywarden.ts decides which
 * changes are allowed; the store checks the facts below and applies all of them or none).
 *
 * Pre: the key exists (KeyNotFoundError); its revision is still `expectedRevision`
 * (ConflictError: someone else changed the key since it was read); `addVersion` belongs to the key
 * and its number is new (KeyExistsError); every version named in `primaryVersion` and `states`
 * exists, counting `addVersion` (KeyNotFoundError); every state change is allowed by
 * checkTransition (KeyStateError).
 * Post: revision + 1; key.updatedAt = `at`; a changed version's updatedAt = `at`; a version set
 * to `destroyed` has its wrapped material erased in the same write.
 */
export interface KeyUpdate {
  keyId: string;
  expectedRevision: number;
  at: Date;
  addVersion?: KeyVersionRecord;
  primaryVersion?: number;
  states?: Array<{ version: number; state: KeyVersionState }>;
  minDecryptionVersion?: number;
  /** Replaces the stored policy (an empty object restores the defaults). */
  rotation?: RotationPolicy;
}

export interface KeyStore {
  /** Insert a key and its first version atomically. KeyExistsError if the id or name exists. */
  createKey(key: KeyRecord, firstVersion: KeyVersionRecord): Promise<void>;
  /** Look a key up by id or by name. */
  getKey(idOrName: string): Promise<KeyRecord | undefined>;
  listKeys(): Promise<KeyRecord[]>;
  getVersion(keyId: string, version: number): Promise<KeyVersionRecord | undefined>;
  listVersions(keyId: string): Promise<KeyVersionRecord[]>;
  /** Add a version (atomically making it primary when asked). KeyExistsError on a duplicate version. */
  addVersion(version: KeyVersionRecord, makePrimary: boolean): Promise<void>;
  /** Change the primary version. KeyNotFoundError when the key or version is missing. */
  setPrimaryVersion(keyId: string, version: number, at: Date): Promise<void>;
  /** Change a version's state; `destroyed` also erases the wrapped material in the same write. */
  setVersionState(keyId: string, version: number, state: KeyVersionState, at: Date): Promise<void>;
  /** The key's lifecycle bookkeeping; undefined when there is no such key. */
  getLifecycle(keyId: string): Promise<KeyLifecycle | undefined>;
  /** Apply one compare-and-swap change (see KeyUpdate). */
  updateKey(update: KeyUpdate): Promise<void>;
  /**
   * Reserve `count` data-key wraps of one version, atomically across processes, and return the
   * version's total reserved uses after this reservation. Does not change the revision.
   * KeyNotFoundError when the version is missing.
   */
  reserveUses(keyId: string, version: number, count: number): Promise<number>;
  /** Small non-secret or root-wrapped records (sealed root blob, store format version…). */
  getMeta(name: string): Promise<Uint8Array | undefined>;
  putMeta(name: string, value: Uint8Array): Promise<void>;
  /** Delete a meta record; deleting a missing one is not an error (idempotent). */
  deleteMeta(name: string): Promise<void>;
  /**
   * Compare-and-swap one meta record, atomically across processes: when the record still holds
   * exactly `expected` (null: absent), write `value` (null: delete it); else ConflictError and
   * nothing changes. What two concurrent rekeys of one store need so that they cannot both win
   * (split-knowledge's staged ceremonies). Optional: a store without it gets a check then a write.
   */
  swapMeta?(name: string, expected: Uint8Array | null, value: Uint8Array | null): Promise<void>;
  /**
   * Read-modify-write of meta records, atomically across processes: `change` is called with the
   * current value of `name` (undefined: absent) while no other updateMeta of `name` on this store
   * can run, and returns the meta records to write, which are written in the same transaction (a
   * crash leaves all of them or none). `change` is synchronous; what it throws aborts the update:
   * nothing is written and the update rejects (a KeywardenError as it was thrown; another error
   * as the store's error for the failed write). It may be called more than once (a retried transaction): only the last call's
   * records are written. Writes no change notification (no key changes). What the audit log's
   * store sink needs so that many processes append to one chain (docs/audit.md §4). Optional: a
   * store without it has one writer per audit log.
   */
  updateMeta?(
    name: string,
    change: (current: Uint8Array | undefined) => ReadonlyArray<{ name: string; value: Uint8Array }>,
  ): Promise<void>;
  /**
   * Move the KEK versions to a new root, in ONE transaction: for each listed version set rootId,
   * wrappedMaterial and updatedAt (= `at`), and write the meta record. A crash leaves either the
   * old root and the old wraps or the new root and the new wraps, never a mix.
   *
   * Pre (checked before anything changes; on failure nothing changes, neither versions nor meta):
   * - every listed version exists (KeyNotFoundError) and is not destroyed (KeyStateError);
   * - no version is listed twice (InvalidInputError);
   * - every non-destroyed version in the store is listed (KeyStateError): a version added
   *   meanwhile by another process, still wrapped by the old root, would otherwise be left behind
   *   under a root that no longer exists;
   * - `expectedRootId` / `expectedMeta`, when given, still hold (ConflictError): another root
   *   rotation or rekey committed since this one read the store.
   * Post: the listed versions carry the new wraps; states, createdAt and keys are unchanged.
   */
  replaceRoot(update: RootUpdate): Promise<void>;
  close(): Promise<void>;
}

/**
 * MemoryKeyStore: a KeyStore held in process memory, for unit tests and ephemeral use.
 *
 * It follows the same contract as the durable stores (the @keywarden/testkit conformance suite
 * runs against it), so code tested against it behaves the same on SQLite:
 * - records are deep-copied on the way in and on the way out, so no caller can change stored
 *   state through an object it passed or got back (including the Uint8Array of material);
 * - every write checks all of its preconditions before it changes anything, so a failed write
 *   leaves no partial state;
 * - `destroyed` zeroes the stored wrapped material and replaces it with an empty array;
 * - ids and names share one namespace (a name may not equal another key's id), so
 *   `getKey(idOrName)` can never be ambiguous;
 * - after close() every method rejects with ClosedError, and all stored material is wiped.
 */
import { wipe } from './_bytes.js';
import { ClosedError, InvalidInputError, KeyExistsError, KeyNotFoundError } from './errors.js';
import {
  SCOPE_FIELDS,
  checkBoolean,
  checkKeyUpdate,
  checkUseCount,
  conflictError,
  metaConflictError,
  metaMatches,
  rootConflictError,
  checkSwapMeta,
  checkBytes,
  checkDate,
  checkKey,
  checkRootUpdate,
  checkState,
  checkText,
  checkTransition,
  checkVersion,
  checkVersionNumber,
  quote,
  rewrapDestroyedError,
  rewrapMissingError,
  rewrapUnlistedError,
  checkFencedMetaName,
  checkLeaseGrant,
  checkLeaseRequest,
  checkLeaseTtl,
  decideLease,
  decodeLease,
  encodeLease,
  type LeaseRecord,
  leaseHolds,
  leaseLostError,
  leaseMetaName,
} from './keystore-checks.js';
import type { LeaseGrant, LeaseRefusal, LeaseStore } from './job-lease.js';
import type {
  KeyLifecycle,
  KeyRecord,
  KeyScope,
  KeyStore,
  KeyUpdate,
  KeyVersionRecord,
  KeyVersionState,
  RootUpdate,
  RotationPolicy,
} from './keystore.js';

interface Lifecycle {
  revision: number;
  minDecryptionVersion: number;
  rotation: RotationPolicy;
  uses: Map<number, number>;
}

export class MemoryKeyStore implements KeyStore, LeaseStore {
  readonly #keys = new Map<string, KeyRecord>();
  /** name → id */
  readonly #names = new Map<string, string>();
  /** id → version → record */
  readonly #versions = new Map<string, Map<number, KeyVersionRecord>>();
  readonly #meta = new Map<string, Uint8Array>();
  /** id → lifecycle bookkeeping (revision, minimum decryption version, policy, uses). */
  readonly #lifecycle = new Map<string, Lifecycle>();
  #closed = false;

  async createKey(key: KeyRecord, firstVersion: KeyVersionRecord): Promise<void> {
    this.#assertOpen();
    // Preconditions: both records well-formed and describing the same key, whose primary is this version.
    checkKey(key);
    checkVersion(firstVersion);
    if (firstVersion.keyId !== key.id) {
      throw new InvalidInputError('keystore: createKey: the first version belongs to another key id');
    }
    if (firstVersion.version !== key.primaryVersion) {
      throw new InvalidInputError('keystore: createKey: primaryVersion must be the first version');
    }
    // Ids and names share one namespace so that getKey(idOrName) is never ambiguous.
    if (this.#keys.has(key.id) || this.#names.has(key.id)) {
      throw new KeyExistsError(`keystore: key id ${quote(key.id)} already exists`);
    }
    if (this.#names.has(key.name) || this.#keys.has(key.name)) {
      throw new KeyExistsError(`keystore: key name ${quote(key.name)} already exists`);
    }
    // All checks passed: the write below cannot fail half-way.
    this.#keys.set(key.id, copyKey(key));
    this.#names.set(key.name, key.id);
    this.#versions.set(key.id, new Map([[firstVersion.version, copyVersion(firstVersion)]]));
    this.#lifecycle.set(key.id, { revision: 0, minDecryptionVersion: 1, rotation: {}, uses: new Map() });
  }

  async getKey(idOrName: string): Promise<KeyRecord | undefined> {
    this.#assertOpen();
    checkText(idOrName, 'key id or name');
    const key = this.#keys.get(idOrName) ?? this.#keys.get(this.#names.get(idOrName) ?? '');
    return key && copyKey(key);
  }

  async listKeys(): Promise<KeyRecord[]> {
    this.#assertOpen();
    return [...this.#keys.values()].sort((a, b) => compareCodePoints(a.name, b.name)).map(copyKey);
  }

  async getVersion(keyId: string, version: number): Promise<KeyVersionRecord | undefined> {
    this.#assertOpen();
    checkText(keyId, 'key id');
    checkVersionNumber(version);
    const record = this.#versions.get(keyId)?.get(version);
    return record && copyVersion(record);
  }

  async listVersions(keyId: string): Promise<KeyVersionRecord[]> {
    this.#assertOpen();
    checkText(keyId, 'key id');
    const versions = this.#versions.get(keyId);
    if (!versions) return [];
    return [...versions.values()].sort((a, b) => a.version - b.version).map(copyVersion);
  }

  async addVersion(version: KeyVersionRecord, makePrimary: boolean): Promise<void> {
    this.#assertOpen();
    checkVersion(version);
    checkBoolean(makePrimary, 'makePrimary');
    const key = this.#keys.get(version.keyId);
    const versions = this.#versions.get(version.keyId);
    if (!key || !versions) throw new KeyNotFoundError(`keystore: key ${quote(version.keyId)} not found`);
    if (versions.has(version.version)) {
      throw new KeyExistsError(`keystore: key ${quote(version.keyId)} already has version ${version.version}`);
    }
    versions.set(version.version, copyVersion(version));
    this.#bump(version.keyId);
    if (makePrimary) {
      key.primaryVersion = version.version;
      key.updatedAt = new Date(version.createdAt.getTime());
    }
  }

  async setPrimaryVersion(keyId: string, version: number, at: Date): Promise<void> {
    this.#assertOpen();
    checkText(keyId, 'key id');
    checkVersionNumber(version);
    checkDate(at, 'at');
    const key = this.#keys.get(keyId);
    if (!key) throw new KeyNotFoundError(`keystore: key ${quote(keyId)} not found`);
    if (!this.#versions.get(keyId)?.has(version)) {
      throw new KeyNotFoundError(`keystore: key ${quote(keyId)} has no version ${version}`);
    }
    key.primaryVersion = version;
    key.updatedAt = new Date(at.getTime());
    this.#bump(keyId);
  }

  async setVersionState(keyId: string, version: number, state: KeyVersionState, at: Date): Promise<void> {
    this.#assertOpen();
    checkText(keyId, 'key id');
    checkVersionNumber(version);
    checkState(state);
    checkDate(at, 'at');
    const record = this.#versions.get(keyId)?.get(version);
    if (!record) throw new KeyNotFoundError(`keystore: key ${quote(keyId)} has no version ${version}`);
    checkTransition(record.state, state);
    if (state === 'destroyed') {
      // Crypto-shredding: zero our only copy of the wrapped material, then drop it.
      wipe(record.wrappedMaterial);
      record.wrappedMaterial = new Uint8Array(0);
    }
    record.state = state;
    record.updatedAt = new Date(at.getTime());
    this.#bump(keyId);
  }

  async getLifecycle(keyId: string): Promise<KeyLifecycle | undefined> {
    this.#assertOpen();
    checkText(keyId, 'key id');
    const life = this.#lifecycle.get(keyId);
    if (!life) return undefined;
    return {
      revision: life.revision,
      minDecryptionVersion: life.minDecryptionVersion,
      rotation: { ...life.rotation },
      uses: Object.fromEntries(life.uses),
    };
  }

  async updateKey(update: KeyUpdate): Promise<void> {
    this.#assertOpen();
    checkKeyUpdate(update);
    const { keyId } = update;
    const key = this.#keys.get(keyId);
    const versions = this.#versions.get(keyId);
    const life = this.#lifecycle.get(keyId);
    if (!key || !versions || !life) throw new KeyNotFoundError(`keystore: key ${quote(keyId)} not found`);
    // Preconditions, all checked before the first change (so a failure changes nothing).
    if (life.revision !== update.expectedRevision) throw conflictError(keyId);
    const added = update.addVersion;
    if (added && versions.has(added.version)) {
      throw new KeyExistsError(`keystore: key ${quote(keyId)} already has version ${added.version}`);
    }
    const exists = (v: number) => versions.has(v) || added?.version === v;
    if (update.primaryVersion !== undefined && !exists(update.primaryVersion)) {
      throw new KeyNotFoundError(`keystore: key ${quote(keyId)} has no version ${update.primaryVersion}`);
    }
    for (const change of update.states ?? []) {
      if (!exists(change.version)) {
        throw new KeyNotFoundError(`keystore: key ${quote(keyId)} has no version ${change.version}`);
      }
      const from = versions.get(change.version)?.state ?? (added as KeyVersionRecord).state;
      checkTransition(from, change.state);
    }
    // All checks passed: the writes below cannot fail half-way.
    const at = update.at.getTime();
    if (added) versions.set(added.version, copyVersion(added));
    for (const change of update.states ?? []) {
      const record = versions.get(change.version) as KeyVersionRecord;
      if (record.state === change.state) continue;
      if (change.state === 'destroyed') {
        wipe(record.wrappedMaterial);
        record.wrappedMaterial = new Uint8Array(0);
      }
      record.state = change.state;
      record.updatedAt = new Date(at);
    }
    if (update.primaryVersion !== undefined) key.primaryVersion = update.primaryVersion;
    if (update.minDecryptionVersion !== undefined) life.minDecryptionVersion = update.minDecryptionVersion;
    if (update.rotation !== undefined) {
      life.rotation = {};
      if (update.rotation.maxAgeMs !== undefined) life.rotation.maxAgeMs = update.rotation.maxAgeMs;
      if (update.rotation.maxUses !== undefined) life.rotation.maxUses = update.rotation.maxUses;
    }
    key.updatedAt = new Date(at);
    life.revision++;
  }

  async reserveUses(keyId: string, version: number, count: number): Promise<number> {
    this.#assertOpen();
    checkText(keyId, 'key id');
    checkVersionNumber(version);
    checkUseCount(count);
    const life = this.#lifecycle.get(keyId);
    if (!life || !this.#versions.get(keyId)?.has(version)) {
      throw new KeyNotFoundError(`keystore: key ${quote(keyId)} has no version ${version}`);
    }
    const total = (life.uses.get(version) ?? 0) + count;
    life.uses.set(version, total);
    return total;
  }

  async getMeta(name: string): Promise<Uint8Array | undefined> {
    this.#assertOpen();
    checkText(name, 'meta name');
    const value = this.#meta.get(name);
    return value && new Uint8Array(value);
  }

  async putMeta(name: string, value: Uint8Array): Promise<void> {
    this.#assertOpen();
    checkText(name, 'meta name');
    checkBytes(value, 'meta value');
    wipe(this.#meta.get(name));
    this.#meta.set(name, new Uint8Array(value));
  }

  async deleteMeta(name: string): Promise<void> {
    this.#assertOpen();
    checkText(name, 'meta name');
    wipe(this.#meta.get(name));
    this.#meta.delete(name);
  }

  async swapMeta(name: string, expected: Uint8Array | null, value: Uint8Array | null): Promise<void> {
    this.#assertOpen();
    checkSwapMeta(name, expected, value);
    if (!metaMatches(this.#meta.get(name), expected)) throw metaConflictError(name);
    wipe(this.#meta.get(name));
    if (value === null) this.#meta.delete(name);
    else this.#meta.set(name, new Uint8Array(value));
  }

  async updateMeta(
    name: string,
    change: (current: Uint8Array | undefined) => ReadonlyArray<{ name: string; value: Uint8Array }>,
  ): Promise<void> {
    this.#assertOpen();
    checkText(name, 'meta name');
    // One thread, and change() is synchronous: nothing else runs between the read and the writes.
    const current = this.#meta.get(name);
    const writes = change(current && new Uint8Array(current));
    for (const w of writes) {
      checkText(w.name, 'meta name');
      checkBytes(w.value, 'meta value');
    }
    for (const w of writes) {
      wipe(this.#meta.get(w.name));
      this.#meta.set(w.name, new Uint8Array(w.value));
    }
  }

  async replaceRoot(update: RootUpdate): Promise<void> {
    this.#assertOpen();
    checkRootUpdate(update);
    // Preconditions, all checked before the first change (so a failure changes nothing):
    // every listed version exists and is not destroyed, and every live version is listed.
    const listed = new Set<KeyVersionRecord>();
    for (const v of update.versions) {
      const record = this.#versions.get(v.keyId)?.get(v.version);
      if (!record) throw rewrapMissingError(v.keyId, v.version);
      if (record.state === 'destroyed') throw rewrapDestroyedError(v.keyId, v.version);
      if (update.expectedRootId !== undefined && record.rootId !== update.expectedRootId) throw rootConflictError();
      listed.add(record);
    }
    if (update.expectedMeta !== undefined && !metaMatches(this.#meta.get(update.meta.name), update.expectedMeta)) {
      throw rootConflictError();
    }
    for (const versions of this.#versions.values()) {
      for (const record of versions.values()) {
        if (record.state !== 'destroyed' && !listed.has(record)) {
          throw rewrapUnlistedError(record.keyId, record.version);
        }
      }
    }
    // All checks passed: the writes below cannot fail half-way.
    for (const v of update.versions) {
      const record = this.#versions.get(v.keyId)?.get(v.version) as KeyVersionRecord;
      wipe(record.wrappedMaterial);
      record.rootId = v.rootId;
      record.wrappedMaterial = new Uint8Array(v.wrappedMaterial);
      record.updatedAt = new Date(update.at.getTime());
    }
    wipe(this.#meta.get(update.meta.name));
    this.#meta.set(update.meta.name, new Uint8Array(update.meta.value));
  }

  /**
   * Leases (core's LeaseStore, job-lease.ts), kept as meta "lease/<name>" like the durable stores.
   * The clock is this process's monotonic clock (performance.timeOrigin + performance.now()): a
   * memory store lives in one process, so every holder reads the same clock, and a wall-clock step
   * cannot shorten or stretch a lease. Each call runs without an await, so it is atomic here.
   */
  async acquireLease(name: string, holder: string, ttlMs: number): Promise<LeaseGrant | LeaseRefusal> {
    this.#assertOpen();
    checkLeaseRequest(name, holder, ttlMs);
    const decision = decideLease(this.#lease(name), holder, ttlMs, monotonicNow());
    if ('refusal' in decision) return decision.refusal;
    this.#setLease(name, decision.grant);
    return { name, holder, token: decision.grant.token };
  }

  async renewLease(grant: LeaseGrant, ttlMs: number): Promise<boolean> {
    this.#assertOpen();
    checkLeaseGrant(grant);
    checkLeaseTtl(ttlMs);
    const now = monotonicNow();
    if (!leaseHolds(this.#lease(grant.name), grant, now)) return false;
    this.#setLease(grant.name, { holder: grant.holder, token: grant.token, expiresAt: now + ttlMs });
    return true;
  }

  async releaseLease(grant: LeaseGrant): Promise<void> {
    this.#assertOpen();
    checkLeaseGrant(grant);
    // Expired now; the token stays, so the next grant's is higher.
    if (leaseHolds(this.#lease(grant.name), grant, monotonicNow())) {
      this.#setLease(grant.name, { holder: grant.holder, token: grant.token, expiresAt: 0 });
    }
  }

  async putMetaUnderLease(grant: LeaseGrant, meta: string, value: Uint8Array | undefined): Promise<void> {
    this.#assertOpen();
    checkLeaseGrant(grant);
    checkFencedMetaName(meta);
    if (value !== undefined) checkBytes(value, 'meta value');
    if (!leaseHolds(this.#lease(grant.name), grant, monotonicNow())) throw leaseLostError(grant);
    wipe(this.#meta.get(meta));
    if (value === undefined) this.#meta.delete(meta);
    else this.#meta.set(meta, new Uint8Array(value));
  }

  #lease(name: string): LeaseRecord | undefined {
    return decodeLease(this.#meta.get(leaseMetaName(name)));
  }

  #setLease(name: string, lease: LeaseRecord): void {
    this.#meta.set(leaseMetaName(name), encodeLease(lease));
  }

  /** Idempotent. Wipes every stored material and meta value. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const versions of this.#versions.values()) {
      for (const record of versions.values()) wipe(record.wrappedMaterial);
    }
    wipe(...this.#meta.values());
    this.#keys.clear();
    this.#names.clear();
    this.#versions.clear();
    this.#meta.clear();
    this.#lifecycle.clear();
  }

  #bump(keyId: string): void {
    const life = this.#lifecycle.get(keyId);
    if (life) life.revision++;
  }

  #assertOpen(): void {
    if (this.#closed) throw new ClosedError('keystore: the memory key store is closed');
  }
}

function copyScope(scope: KeyScope): KeyScope {
  const out: KeyScope = {};
  for (const field of SCOPE_FIELDS) {
    const value = scope[field];
    if (value !== undefined) out[field] = value;
  }
  return out;
}

function copyKey(key: KeyRecord): KeyRecord {
  return {
    id: key.id,
    name: key.name,
    scope: copyScope(key.scope),
    primaryVersion: key.primaryVersion,
    createdAt: new Date(key.createdAt.getTime()),
    updatedAt: new Date(key.updatedAt.getTime()),
  };
}

function copyVersion(v: KeyVersionRecord): KeyVersionRecord {
  return {
    keyId: v.keyId,
    version: v.version,
    state: v.state,
    rootId: v.rootId,
    // new Uint8Array(x) copies, and gives a plain Uint8Array even when x is a Buffer.
    wrappedMaterial: new Uint8Array(v.wrappedMaterial),
    createdAt: new Date(v.createdAt.getTime()),
    updatedAt: new Date(v.updatedAt.getTime()),
  };
}

/** Unicode code-point order, which is UTF-8 byte order: the order SQLite's BINARY collation gives. */
function compareCodePoints(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

/** Milliseconds on this process's monotonic clock, on the scale of the epoch. */
function monotonicNow(): number {
  return Math.floor(performance.timeOrigin + performance.now());
}

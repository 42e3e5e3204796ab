/**
 * Input checks and the state rules of the KeyStore contract, shared by every KeyStore
 * implementation (MemoryKeyStore here, SqliteKeyStore, later PostgreSQL), so that they refuse the
 * same inputs with the same messages. Exported from the package as `keyStoreChecks` for store
 * implementers; the @keywarden/testkit conformance suite holds every store to them.
 */
import { ConflictError, InvalidInputError, KeyNotFoundError, KeyStateError, StoreCorruptError } from './errors.js';
import type {
  KeyRecord,
  KeyUpdate,
  KeyVersionRecord,
  KeyVersionState,
  RootUpdate,
  RotationPolicy,
} from './keystore.js';

const STATES: ReadonlySet<string> = new Set<KeyVersionState>(['enabled', 'disabled', 'compromised', 'destroyed']);
export const SCOPE_FIELDS = ['environment', 'service', 'tenant', 'purpose'] as const;
const KEY_FIELDS: ReadonlySet<string> = new Set(['id', 'name', 'scope', 'primaryVersion', 'createdAt', 'updatedAt']);
const VERSION_FIELDS: ReadonlySet<string> = new Set([
  'keyId',
  'version',
  'state',
  'rootId',
  'wrappedMaterial',
  'createdAt',
  'updatedAt',
]);
const ROOT_UPDATE_FIELDS: ReadonlySet<string> = new Set(['versions', 'meta', 'at', 'expectedRootId', 'expectedMeta']);
const REWRAP_FIELDS: ReadonlySet<string> = new Set(['keyId', 'version', 'rootId', 'wrappedMaterial']);
const META_FIELDS: ReadonlySet<string> = new Set(['name', 'value']);
const KEY_UPDATE_FIELDS: ReadonlySet<string> = new Set([
  'keyId',
  'expectedRevision',
  'at',
  'addVersion',
  'primaryVersion',
  'states',
  'minDecryptionVersion',
  'rotation',
]);
const ROTATION_FIELDS: ReadonlySet<string> = new Set(['maxAgeMs', 'maxUses']);
/** Largest reservation of uses in one call, and largest stored count (a safe integer with room). */
export const MAX_USES = 2 ** 52;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

export function quote(s: string): string {
  return JSON.stringify(s);
}

/**
 * State rules the store enforces because they are facts about the stored data, not policy:
 * destroyed material is gone, so `destroyed` is terminal; a compromise must never be forgotten,
 * so `compromised` can only move on to `destroyed`. Setting the current state again is allowed.
 */
export function checkTransition(from: KeyVersionState, to: KeyVersionState): void {
  if (from === to) return;
  if (from === 'destroyed') throw new KeyStateError('keystore: a destroyed key version cannot change state');
  if (from === 'compromised' && to !== 'destroyed') {
    throw new KeyStateError('keystore: a compromised key version can only be destroyed');
  }
}

// Input checks. Messages name the field, never its value (values may be long or hostile).

export function checkText(value: unknown, what: string): asserts value is string {
  if (typeof value !== 'string' || value.length === 0) {
    throw new InvalidInputError(`keystore: ${what} must be a non-empty string`);
  }
  checkTextContent(value, what);
}

/** Characters no store can keep faithfully: a lone surrogate has no UTF-8 encoding, and
 * PostgreSQL text (and C strings such as PKCS#11 labels) cannot hold NUL. */
function checkTextContent(value: string, what: string): void {
  if (LONE_SURROGATE.test(value)) throw new InvalidInputError(`keystore: ${what} is not well-formed Unicode`);
  if (value.includes('\u0000')) throw new InvalidInputError(`keystore: ${what} must not contain NUL`);
}

export function checkVersionNumber(value: unknown): asserts value is number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1) {
    throw new InvalidInputError('keystore: version must be a positive integer');
  }
}

export function checkDate(value: unknown, what: string): asserts value is Date {
  if (!(value instanceof Date) || !Number.isFinite(value.getTime())) {
    throw new InvalidInputError(`keystore: ${what} must be a valid Date`);
  }
}

export function checkState(value: unknown): asserts value is KeyVersionState {
  if (typeof value !== 'string' || !STATES.has(value)) {
    throw new InvalidInputError('keystore: state must be enabled, disabled, compromised or destroyed');
  }
}

export function checkBoolean(value: unknown, what: string): asserts value is boolean {
  if (typeof value !== 'boolean') throw new InvalidInputError(`keystore: ${what} must be a boolean`);
}

export function checkBytes(value: unknown, what: string): asserts value is Uint8Array {
  if (!(value instanceof Uint8Array)) throw new InvalidInputError(`keystore: ${what} must be a Uint8Array`);
}

/** Refuse fields this store does not know, so a field added to the types is never silently dropped. */
function checkKnownFields(value: object, known: ReadonlySet<string>, what: string): void {
  for (const [field, v] of Object.entries(value)) {
    if (!known.has(field) && v !== undefined) {
      throw new InvalidInputError(`keystore: ${what} has an unknown field ${quote(field)}`);
    }
  }
}

export function checkKey(key: KeyRecord): void {
  if (typeof key !== 'object' || key === null) throw new InvalidInputError('keystore: key must be an object');
  checkKnownFields(key, KEY_FIELDS, 'key');
  checkText(key.id, 'key id');
  checkText(key.name, 'key name');
  if (typeof key.scope !== 'object' || key.scope === null) {
    throw new InvalidInputError('keystore: key scope must be an object');
  }
  checkKnownFields(key.scope, new Set<string>(SCOPE_FIELDS), 'key scope');
  for (const field of SCOPE_FIELDS) {
    const value = key.scope[field];
    if (value !== undefined && typeof value !== 'string') {
      throw new InvalidInputError(`keystore: key scope ${field} must be a string`);
    }
    if (value !== undefined) checkTextContent(value, `key scope ${field}`);
  }
  checkVersionNumber(key.primaryVersion);
  checkDate(key.createdAt, 'key createdAt');
  checkDate(key.updatedAt, 'key updatedAt');
}

export function checkVersion(v: KeyVersionRecord): void {
  if (typeof v !== 'object' || v === null) throw new InvalidInputError('keystore: key version must be an object');
  checkKnownFields(v, VERSION_FIELDS, 'key version');
  checkText(v.keyId, 'key id');
  checkVersionNumber(v.version);
  checkState(v.state);
  checkText(v.rootId, 'root id');
  checkBytes(v.wrappedMaterial, 'wrapped material');
  if (v.state === 'destroyed' && v.wrappedMaterial.length !== 0) {
    throw new InvalidInputError('keystore: a destroyed key version must have empty wrapped material');
  }
  checkDate(v.createdAt, 'version createdAt');
  checkDate(v.updatedAt, 'version updatedAt');
}

/**
 * The shape of a replaceRoot update: every field well-formed, no version listed twice, no empty
 * wrap (only a destroyed version has empty material, and destroyed versions are not rewrapped).
 * The checks against stored data (exists, not destroyed, every non-destroyed version listed) are
 * the store's, inside its transaction, with the errors below.
 */
export function checkRootUpdate(update: RootUpdate): void {
  if (typeof update !== 'object' || update === null) {
    throw new InvalidInputError('keystore: replaceRoot: the update must be an object');
  }
  checkKnownFields(update, ROOT_UPDATE_FIELDS, 'root update');
  if (!Array.isArray(update.versions)) throw new InvalidInputError('keystore: replaceRoot: versions must be an array');
  const seen = new Set<string>();
  for (const v of update.versions) {
    if (typeof v !== 'object' || v === null) {
      throw new InvalidInputError('keystore: replaceRoot: each version must be an object');
    }
    checkKnownFields(v, REWRAP_FIELDS, 'root update version');
    checkText(v.keyId, 'key id');
    checkVersionNumber(v.version);
    checkText(v.rootId, 'root id');
    checkBytes(v.wrappedMaterial, 'wrapped material');
    if (v.wrappedMaterial.length === 0) {
      throw new InvalidInputError('keystore: replaceRoot: wrapped material must not be empty');
    }
    // JSON of the pair: no separator character can make two different pairs collide.
    const slot = JSON.stringify([v.keyId, v.version]);
    if (seen.has(slot)) {
      throw new InvalidInputError(`keystore: replaceRoot: key ${quote(v.keyId)} v${v.version} is listed twice`);
    }
    seen.add(slot);
  }
  if (typeof update.meta !== 'object' || update.meta === null) {
    throw new InvalidInputError('keystore: replaceRoot: meta must be an object');
  }
  checkKnownFields(update.meta, META_FIELDS, 'root update meta');
  checkText(update.meta.name, 'meta name');
  checkBytes(update.meta.value, 'meta value');
  checkDate(update.at, 'at');
  if (update.expectedRootId !== undefined) checkText(update.expectedRootId, 'expected root id');
  if (update.expectedMeta !== undefined && update.expectedMeta !== null)
    checkBytes(update.expectedMeta, 'expected meta');
}

/** replaceRoot lost its compare-and-swap: another rotation or rekey of the store committed first. */
export function rootConflictError(): ConflictError {
  return new ConflictError(
    'keystore: replaceRoot: the store changed since this root rotation read it (another root rotation or rekey committed first); nothing was changed — read it again and retry if still wanted',
  );
}

/** swapMeta lost its compare-and-swap: another process changed the record first. */
export function metaConflictError(name: string): ConflictError {
  return new ConflictError(
    `keystore: swapMeta: meta record ${quote(name)} changed since it was read (another rekey or root rotation committed first); nothing was changed`,
  );
}

/** Check swapMeta's arguments. */
export function checkSwapMeta(name: string, expected: Uint8Array | null, value: Uint8Array | null): void {
  checkText(name, 'meta name');
  if (expected !== null) checkBytes(expected, 'expected meta');
  if (value !== null) checkBytes(value, 'meta value');
}

/** Whether a stored meta value is what a compare-and-swap expects (null: absent). */
export function metaMatches(current: Uint8Array | undefined, expected: Uint8Array | null): boolean {
  if (expected === null) return current === undefined;
  if (current === undefined || current.length !== expected.length) return false;
  for (let i = 0; i < current.length; i++) if (current[i] !== expected[i]) return false;
  return true;
}

/** replaceRoot names a version the store does not have. */
export function rewrapMissingError(keyId: string, version: number): KeyNotFoundError {
  return new KeyNotFoundError(`keystore: replaceRoot: key ${quote(keyId)} has no version ${version}`);
}

/** replaceRoot names a destroyed version: its material is gone, there is nothing to rewrap. */
export function rewrapDestroyedError(keyId: string, version: number): KeyStateError {
  return new KeyStateError(
    `keystore: replaceRoot: key ${quote(keyId)} v${version} is destroyed; a destroyed version cannot be rewrapped`,
  );
}

/** replaceRoot leaves out a version that still has material: it would stay under the old root. */
export function rewrapUnlistedError(keyId: string, version: number): KeyStateError {
  return new KeyStateError(
    `keystore: replaceRoot: key ${quote(keyId)} v${version} is not in the update; every version that is not destroyed must move to the new root in the same write (was a key added or rotated meanwhile?)`,
  );
}

/** A rotation policy: each field absent or a positive safe integer. */
export function checkRotation(policy: RotationPolicy): void {
  if (typeof policy !== 'object' || policy === null) {
    throw new InvalidInputError('keystore: rotation policy must be an object');
  }
  checkKnownFields(policy, ROTATION_FIELDS, 'rotation policy');
  for (const field of ROTATION_FIELDS) {
    const value = (policy as Record<string, unknown>)[field];
    if (value === undefined) continue;
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1 || value > MAX_USES) {
      throw new InvalidInputError(`keystore: rotation ${field} must be a positive integer`);
    }
  }
}

/** A reservation of uses: a positive integer, at most MAX_USES. */
export function checkUseCount(count: unknown): asserts count is number {
  if (typeof count !== 'number' || !Number.isSafeInteger(count) || count < 1 || count > MAX_USES) {
    throw new InvalidInputError('keystore: reserveUses: count must be a positive integer');
  }
}

/** The shape of a KeyUpdate (the checks against stored data are the store's, in its transaction). */
export function checkKeyUpdate(update: KeyUpdate): void {
  if (typeof update !== 'object' || update === null) {
    throw new InvalidInputError('keystore: updateKey: the update must be an object');
  }
  checkKnownFields(update, KEY_UPDATE_FIELDS, 'key update');
  checkText(update.keyId, 'key id');
  if (
    typeof update.expectedRevision !== 'number' ||
    !Number.isSafeInteger(update.expectedRevision) ||
    update.expectedRevision < 0
  ) {
    throw new InvalidInputError('keystore: updateKey: expectedRevision must be a non-negative integer');
  }
  checkDate(update.at, 'at');
  if (update.addVersion !== undefined) {
    checkVersion(update.addVersion);
    if (update.addVersion.keyId !== update.keyId) {
      throw new InvalidInputError('keystore: updateKey: the added version belongs to another key id');
    }
  }
  if (update.primaryVersion !== undefined) checkVersionNumber(update.primaryVersion);
  if (update.states !== undefined) {
    if (!Array.isArray(update.states)) throw new InvalidInputError('keystore: updateKey: states must be an array');
    const seen = new Set<number>();
    for (const change of update.states) {
      if (typeof change !== 'object' || change === null) {
        throw new InvalidInputError('keystore: updateKey: each state change must be an object');
      }
      checkVersionNumber(change.version);
      checkState(change.state);
      if (seen.has(change.version)) {
        throw new InvalidInputError(`keystore: updateKey: version ${change.version} is listed twice`);
      }
      seen.add(change.version);
    }
  }
  if (update.minDecryptionVersion !== undefined) checkVersionNumber(update.minDecryptionVersion);
  if (update.rotation !== undefined) checkRotation(update.rotation);
}

/** updateKey lost the compare-and-swap: the key changed since the caller read it. */
export function conflictError(keyId: string): ConflictError {
  return new ConflictError(
    `keystore: key ${quote(keyId)} was changed by someone else since it was read (another process rotated or changed it); nothing was changed — read it again and retry if still wanted`,
  );
}

// ── Leases (the optional LeaseStore capability, job-lease.ts) ─────────────────────────────────

/** The record a store keeps for a lease, as meta "lease/<name>" (JSON): the same on every store. */
export interface LeaseRecord {
  holder: string;
  /** Fencing token of the current (or last) grant: grows by one at every grant. */
  token: number;
  /** When the grant ends, ms since the epoch by the store's clock; 0 once released. */
  expiresAt: number;
}

/** The meta record that holds lease `name`. */
export function leaseMetaName(name: string): string {
  return `lease/${name}`;
}

/** Check acquireLease's arguments. */
export function checkLeaseRequest(name: unknown, holder: unknown, ttlMs: unknown): void {
  checkText(name, 'lease name');
  checkText(holder, 'lease holder');
  checkLeaseTtl(ttlMs);
}

/** A lease TTL is a positive integer of milliseconds. */
export function checkLeaseTtl(ttlMs: unknown): asserts ttlMs is number {
  // At most 2^40 ms (about 35 years): an expiry (now + TTL) stays a safe integer.
  if (typeof ttlMs !== 'number' || !Number.isSafeInteger(ttlMs) || ttlMs < 1 || ttlMs > 2 ** 40) {
    throw new InvalidInputError('keystore: a lease TTL must be a positive integer (ms), at most 2^40');
  }
}

/** Check a grant handed back to renewLease, releaseLease or putMetaUnderLease. */
export function checkLeaseGrant(grant: unknown): asserts grant is { name: string; holder: string; token: number } {
  const g = grant as { name?: unknown; holder?: unknown; token?: unknown } | null;
  if (typeof g !== 'object' || g === null) throw new InvalidInputError('keystore: a lease grant must be an object');
  checkText(g.name, 'lease name');
  checkText(g.holder, 'lease holder');
  if (typeof g.token !== 'number' || !Number.isSafeInteger(g.token) || g.token < 1) {
    throw new InvalidInputError('keystore: a lease token must be a positive integer');
  }
}

/** Lease records are written through the lease calls only, never through putMetaUnderLease. */
export function checkFencedMetaName(meta: unknown): asserts meta is string {
  checkText(meta, 'meta name');
  if (meta.startsWith('lease/')) {
    throw new InvalidInputError('keystore: lease records are written through the lease calls only');
  }
}

export function encodeLease(lease: LeaseRecord): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(lease));
}

/** The stored lease (undefined: never granted); a damaged record is a StoreCorruptError. */
export function decodeLease(value: Uint8Array | undefined): LeaseRecord | undefined {
  if (value === undefined || value.length === 0) return undefined;
  try {
    const r = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(value)) as Partial<LeaseRecord>;
    if (typeof r.holder === 'string' && Number.isSafeInteger(r.token) && Number.isSafeInteger(r.expiresAt)) {
      return { holder: r.holder, token: r.token as number, expiresAt: r.expiresAt as number };
    }
  } catch {
    // Fall through.
  }
  throw new StoreCorruptError('keystore: a lease record is damaged');
}

/** Whether `lease` is still exactly this grant at `now`: same holder and token, not expired. */
export function leaseHolds(
  lease: LeaseRecord | undefined,
  grant: { holder: string; token: number },
  now: number,
): boolean {
  return lease !== undefined && lease.holder === grant.holder && lease.token === grant.token && lease.expiresAt > now;
}

/** putMetaUnderLease found the grant gone: the stale holder's write is refused. */
export function leaseLostError(grant: { name: string; holder: string }): ConflictError {
  return new ConflictError(
    `keystore: lease ${quote(grant.name)} is no longer held by ${quote(grant.holder)} (expired, or taken by another instance); nothing was written`,
  );
}

/**
 * The decision of acquireLease, the same on every store: granted (with the next token) when the
 * lease is free, expired or already `holder`'s; else refused, naming the holder and the time left.
 */
export function decideLease(
  lease: LeaseRecord | undefined,
  holder: string,
  ttlMs: number,
  now: number,
): { grant: LeaseRecord } | { refusal: { heldBy: string; expiresInMs: number } } {
  if (lease && lease.holder !== holder && lease.expiresAt > now) {
    return { refusal: { heldBy: lease.holder, expiresInMs: lease.expiresAt - now } };
  }
  return { grant: { holder, token: (lease?.token ?? 0) + 1, expiresAt: now + ttlMs } };
}

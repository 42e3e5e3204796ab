/**
 * SqliteKeyStore: the embedded default KeyStore, one SQLite file through better-sqlite3.
 *
 * Durability and safety choices (README.md explains them to users):
 * - WAL journal with `synchronous=FULL`: a commit returns only after the WAL is fsynced, so a
 *   committed key survives power loss (https://sqlite.org/pragma.html#pragma_synchronous);
 * - every write is one IMMEDIATE transaction: it takes the write lock up front, so it waits on
 *   `busy_timeout` instead of failing half-way with SQLITE_BUSY when another writer is active,
 *   and a crash leaves each write fully applied or not at all;
 * - `foreign_keys=ON` and STRICT tables with CHECK constraints (see _schema.ts) back up the
 *   checks done in code: no version without its key, no key without its primary version;
 * - `secure_delete=ON` zeroes freed content, and destroying a version, deleting a meta record
 *   and replacing the root checkpoint and truncate the WAL, so erased material (and a deleted or
 *   replaced sealed root) does not linger in the database or WAL files;
 * - files are created owner-only (0600);
 * - opening checks the file: `PRAGMA quick_check` over the whole file, and the full
 *   `integrity_check` of the meta table (its index decides whether the sealed root is "there"):
 *   a damaged file is a StoreCorruptError, never an empty answer read as "destroyed";
 * - `create: false` opens only an existing Keywarden key store: an empty or foreign file is a
 *   StoreCorruptError, and nothing is created or migrated (read-only opens imply it);
 * - a long-lived connection checks, at the start of each write transaction, that the database
 *   file and its WAL are still the files it opened (device and inode; one stat each): a file
 *   deleted, moved or replaced underneath is a StoreReplacedError, never a write into a file
 *   nobody will read again; and every open refuses a store whose WAL was deleted while another
 *   process holds it (a -shm file without its -wal);
 * - each committed write is followed by a passive checkpoint, so the database file itself holds
 *   every acknowledged write and a lost WAL loses nothing that was acknowledged;
 * - SQLite's I/O errors on a full disk are reported as "no space left on device".
 *
 * better-sqlite3 is synchronous; the KeyStore methods stay async (and report every failure as a
 * rejection) so callers do not depend on that.
 */
import { chmodSync, closeSync, existsSync, openSync, readFileSync, statfsSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import {
  ClosedError,
  InvalidInputError,
  KeyExistsError,
  KeyNotFoundError,
  KeyStoreError,
  KeywardenError,
  NativeAddonError,
  type KeyLifecycle,
  type KeyRecord,
  type KeyScope,
  type KeyStore,
  type KeyUpdate,
  type KeyVersionRecord,
  type KeyVersionState,
  keyStoreChecks as checks,
  type LeaseGrant,
  type LeaseRefusal,
  type LeaseStore,
  type RootUpdate,
  StoreCorruptError,
  StoreReplacedError,
} from '@keywarden/core';
import Database from 'better-sqlite3';
import { APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION, SCHEMA_VERSION_TABLE } from './_schema.js';

export { SCHEMA_VERSION } from './_schema.js';

export interface SqliteKeyStoreOptions {
  /** Open for reading only: the file must exist and be at the current schema version. */
  readonly?: boolean;
  /**
   * Create (and initialize) the key store when the file is missing or empty. Default true for a
   * read-write open, always false read-only. With false, the file must already be a Keywarden key
   * store: a missing file is a KeyStoreError, an empty or foreign file a StoreCorruptError.
   */
  create?: boolean;
  /** How long a write waits for another connection's write lock before failing. Default 5000 ms. */
  busyTimeoutMs?: number;
}

/** Connection settings as SQLite reports them (for diagnostics and tests). */
export interface SqliteStoreSettings {
  journalMode: string;
  synchronous: 'OFF' | 'NORMAL' | 'FULL' | 'EXTRA';
  foreignKeys: boolean;
  secureDelete: boolean;
  busyTimeoutMs: number;
  schemaVersion: number;
  readonly: boolean;
}

const DEFAULT_BUSY_TIMEOUT_MS = 5000;
const FILE_MODE = 0o600;
const SYNCHRONOUS_NAMES = ['OFF', 'NORMAL', 'FULL', 'EXTRA'] as const;

interface KeyRow {
  id: string;
  name: string;
  environment: string | null;
  service: string | null;
  tenant: string | null;
  purpose: string | null;
  primary_version: number;
  created_at: number;
  updated_at: number;
}

interface VersionRow {
  key_id: string;
  version: number;
  state: KeyVersionState;
  root_id: string;
  wrapped_material: Buffer;
  created_at: number;
  updated_at: number;
}

type Db = Database.Database;

const KEY_COLUMNS = 'id, name, environment, service, tenant, purpose, primary_version, created_at, updated_at';
const VERSION_COLUMNS = 'key_id, version, state, root_id, wrapped_material, created_at, updated_at';

/** Statements prepared once per connection. */
function prepare(db: Db) {
  return {
    keyByIdOrName: db.prepare<{ key: string }, KeyRow>(
      // One statement, one snapshot; an id match wins (ids and names share one namespace anyway).
      `SELECT ${KEY_COLUMNS} FROM keys WHERE id = @key OR name = @key ORDER BY id = @key DESC LIMIT 1`,
    ),
    keyById: db.prepare<[string], KeyRow>(`SELECT ${KEY_COLUMNS} FROM keys WHERE id = ?`),
    listKeys: db.prepare<[], KeyRow>(`SELECT ${KEY_COLUMNS} FROM keys ORDER BY name`),
    idOrNameTaken: db.prepare<{ id: string; name: string }, { id: string; name: string }>(
      'SELECT id, name FROM keys WHERE id IN (@id, @name) OR name IN (@id, @name) LIMIT 1',
    ),
    insertKey: db.prepare(
      `INSERT INTO keys (${KEY_COLUMNS}) VALUES
        (@id, @name, @environment, @service, @tenant, @purpose, @primary_version, @created_at, @updated_at)`,
    ),
    setPrimary: db.prepare<[number, number, string]>(
      'UPDATE keys SET primary_version = ?, updated_at = ? WHERE id = ?',
    ),
    version: db.prepare<[string, number], VersionRow>(
      `SELECT ${VERSION_COLUMNS} FROM key_versions WHERE key_id = ? AND version = ?`,
    ),
    versionState: db.prepare<[string, number], { state: KeyVersionState }>(
      'SELECT state FROM key_versions WHERE key_id = ? AND version = ?',
    ),
    listVersions: db.prepare<[string], VersionRow>(
      `SELECT ${VERSION_COLUMNS} FROM key_versions WHERE key_id = ? ORDER BY version`,
    ),
    insertVersion: db.prepare(
      `INSERT INTO key_versions (${VERSION_COLUMNS}) VALUES
        (@key_id, @version, @state, @root_id, @wrapped_material, @created_at, @updated_at)`,
    ),
    setState: db.prepare<[KeyVersionState, number, string, number]>(
      'UPDATE key_versions SET state = ?, updated_at = ? WHERE key_id = ? AND version = ?',
    ),
    destroy: db.prepare<[number, string, number]>(
      `UPDATE key_versions SET state = 'destroyed', wrapped_material = X'', updated_at = ?
        WHERE key_id = ? AND version = ?`,
    ),
    rewrap: db.prepare<[string, Buffer, number, string, number]>(
      'UPDATE key_versions SET root_id = ?, wrapped_material = ?, updated_at = ? WHERE key_id = ? AND version = ?',
    ),
    liveVersions: db.prepare<[], { key_id: string; version: number }>(
      "SELECT key_id, version FROM key_versions WHERE state <> 'destroyed' ORDER BY key_id, version",
    ),
    lifecycle: db.prepare<
      [string],
      {
        revision: number;
        min_decryption_version: number;
        rotation_max_age_ms: number | null;
        rotation_max_uses: number | null;
      }
    >('SELECT revision, min_decryption_version, rotation_max_age_ms, rotation_max_uses FROM keys WHERE id = ?'),
    usesOf: db.prepare<[string], { version: number; uses: number }>(
      'SELECT version, uses FROM key_versions WHERE key_id = ? AND uses > 0 ORDER BY version',
    ),
    bump: db.prepare<[string]>('UPDATE keys SET revision = revision + 1 WHERE id = ?'),
    touchKey: db.prepare<[number, string]>('UPDATE keys SET updated_at = ? WHERE id = ?'),
    setPrimaryOnly: db.prepare<[number, string]>('UPDATE keys SET primary_version = ? WHERE id = ?'),
    setMinDecryption: db.prepare<[number, string]>('UPDATE keys SET min_decryption_version = ? WHERE id = ?'),
    setRotation: db.prepare<[number | null, number | null, string]>(
      'UPDATE keys SET rotation_max_age_ms = ?, rotation_max_uses = ? WHERE id = ?',
    ),
    reserveUses: db.prepare<[number, string, number], { uses: number }>(
      'UPDATE key_versions SET uses = uses + ? WHERE key_id = ? AND version = ? RETURNING uses',
    ),
    getMeta: db.prepare<[string], { value: Buffer }>('SELECT value FROM meta WHERE name = ?'),
    deleteMeta: db.prepare<[string]>('DELETE FROM meta WHERE name = ?'),
    putMeta: db.prepare<[string, Buffer]>(
      'INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value',
    ),
  };
}

type Statements = ReturnType<typeof prepare>;

/** Which files a connection opened: checked before each write (see the file comment). */
interface FileIdentity {
  path: string;
  db: FileId;
  wal: FileId | undefined;
}

export class SqliteKeyStore implements KeyStore, LeaseStore {
  #db: Db | undefined;
  readonly #sql: Statements;
  readonly #readonly: boolean;
  readonly #identity: FileIdentity | undefined;

  private constructor(db: Db, readonly: boolean, identity: FileIdentity | undefined) {
    this.#db = db;
    this.#readonly = readonly;
    this.#sql = prepare(db);
    this.#identity = identity;
  }

  /**
   * Open (creating when missing, with mode 0600) the key store at `path`, and bring its schema up
   * to date. `":memory:"` gives a private in-memory store. Throws KeyStoreError when the file
   * cannot be opened, is not a Keywarden key store, or has a newer schema than this Keywarden.
   */
  static open(path: string, options: SqliteKeyStoreOptions = {}): SqliteKeyStore {
    if (typeof path !== 'string' || path.length === 0) {
      throw new KeyStoreError('keystore: the database path must be a non-empty string');
    }
    const readonly = options.readonly ?? false;
    const busyTimeoutMs = options.busyTimeoutMs ?? DEFAULT_BUSY_TIMEOUT_MS;
    if (!Number.isSafeInteger(busyTimeoutMs) || busyTimeoutMs < 0) {
      throw new KeyStoreError('keystore: busyTimeoutMs must be a non-negative integer');
    }
    const inMemory = path === ':memory:';
    const create = !readonly && (options.create ?? true);
    // Before any file is made: a missing native addon must not leave an empty keystore.db behind.
    requireNativeAddon();
    if (!inMemory) {
      if (create) createOwnerOnly(path);
      else requireExistingFile(path);
      refuseDeletedWal(path);
    }

    let db: Db;
    try {
      db = new Database(path, { readonly, fileMustExist: readonly || !inMemory, timeout: busyTimeoutMs });
    } catch (err) {
      throw storeError('open', err, path);
    }
    try {
      configure(db, { readonly, create, busyTimeoutMs, check: !inMemory });
      if (!inMemory && !readonly) restrictSidecarFiles(path);
      return new SqliteKeyStore(db, readonly, inMemory || readonly ? undefined : identityOf(path));
    } catch (err) {
      db.close();
      throw KeywardenError.isInstance(err) ? err : storeError('open', err, path);
    }
  }

  /** The connection's settings as SQLite reports them. */
  settings(): SqliteStoreSettings {
    const db = this.#open();
    const pragma = (name: string): unknown => db.pragma(name, { simple: true });
    return {
      journalMode: String(pragma('journal_mode')),
      synchronous: SYNCHRONOUS_NAMES[Number(pragma('synchronous'))] ?? 'OFF',
      foreignKeys: pragma('foreign_keys') === 1,
      secureDelete: pragma('secure_delete') === 1,
      busyTimeoutMs: Number(pragma('busy_timeout')),
      schemaVersion: schemaVersionOf(db),
      readonly: this.#readonly,
    };
  }

  async createKey(key: KeyRecord, firstVersion: KeyVersionRecord): Promise<void> {
    this.#writable();
    // Preconditions: both records well-formed and describing the same key, whose primary is this version.
    checks.checkKey(key);
    checks.checkVersion(firstVersion);
    if (firstVersion.keyId !== key.id) {
      throw new InvalidInputError('keystore: createKey: the first version belongs to another key id');
    }
    if (firstVersion.version !== key.primaryVersion) {
      throw new InvalidInputError('keystore: createKey: primaryVersion must be the first version');
    }
    this.#write('createKey', () => {
      // Ids and names share one namespace so that getKey(idOrName) is never ambiguous.
      const taken = this.#sql.idOrNameTaken.get({ id: key.id, name: key.name });
      if (taken) {
        const clash = taken.id === key.id || taken.name === key.id ? key.id : key.name;
        throw new KeyExistsError(`keystore: a key with id or name ${checks.quote(clash)} already exists`);
      }
      this.#sql.insertKey.run(keyToRow(key));
      this.#sql.insertVersion.run(versionToRow(firstVersion));
    });
  }

  async getKey(idOrName: string): Promise<KeyRecord | undefined> {
    this.#open();
    checks.checkText(idOrName, 'key id or name');
    return this.#read('getKey', () => {
      const row = this.#sql.keyByIdOrName.get({ key: idOrName });
      return row && rowToKey(row);
    });
  }

  async listKeys(): Promise<KeyRecord[]> {
    // ORDER BY name uses the BINARY collation: UTF-8 byte order, which is code-point order.
    return this.#read('listKeys', () => this.#sql.listKeys.all().map(rowToKey));
  }

  async getVersion(keyId: string, version: number): Promise<KeyVersionRecord | undefined> {
    this.#open();
    checks.checkText(keyId, 'key id');
    checks.checkVersionNumber(version);
    return this.#read('getVersion', () => {
      const row = this.#sql.version.get(keyId, version);
      return row && rowToVersion(row);
    });
  }

  async listVersions(keyId: string): Promise<KeyVersionRecord[]> {
    this.#open();
    checks.checkText(keyId, 'key id');
    return this.#read('listVersions', () => this.#sql.listVersions.all(keyId).map(rowToVersion));
  }

  async addVersion(version: KeyVersionRecord, makePrimary: boolean): Promise<void> {
    this.#writable();
    checks.checkVersion(version);
    checks.checkBoolean(makePrimary, 'makePrimary');
    this.#write('addVersion', () => {
      if (!this.#sql.keyById.get(version.keyId)) {
        throw new KeyNotFoundError(`keystore: key ${checks.quote(version.keyId)} not found`);
      }
      if (this.#sql.versionState.get(version.keyId, version.version)) {
        throw new KeyExistsError(`keystore: key ${checks.quote(version.keyId)} already has version ${version.version}`);
      }
      this.#sql.insertVersion.run(versionToRow(version));
      if (makePrimary) this.#sql.setPrimary.run(version.version, version.createdAt.getTime(), version.keyId);
      this.#sql.bump.run(version.keyId);
    });
  }

  async setPrimaryVersion(keyId: string, version: number, at: Date): Promise<void> {
    this.#writable();
    checks.checkText(keyId, 'key id');
    checks.checkVersionNumber(version);
    checks.checkDate(at, 'at');
    this.#write('setPrimaryVersion', () => {
      if (!this.#sql.keyById.get(keyId)) throw new KeyNotFoundError(`keystore: key ${checks.quote(keyId)} not found`);
      if (!this.#sql.versionState.get(keyId, version)) {
        throw new KeyNotFoundError(`keystore: key ${checks.quote(keyId)} has no version ${version}`);
      }
      this.#sql.setPrimary.run(version, at.getTime(), keyId);
      this.#sql.bump.run(keyId);
    });
  }

  async setVersionState(keyId: string, version: number, state: KeyVersionState, at: Date): Promise<void> {
    const db = this.#writable();
    checks.checkText(keyId, 'key id');
    checks.checkVersionNumber(version);
    checks.checkState(state);
    checks.checkDate(at, 'at');
    this.#write('setVersionState', () => {
      const current = this.#sql.versionState.get(keyId, version);
      if (!current) throw new KeyNotFoundError(`keystore: key ${checks.quote(keyId)} has no version ${version}`);
      checks.checkTransition(current.state, state);
      if (state === 'destroyed') this.#sql.destroy.run(at.getTime(), keyId, version);
      else this.#sql.setState.run(state, at.getTime(), keyId, version);
      this.#sql.bump.run(keyId);
    });
    if (state === 'destroyed') truncateWal(db);
  }

  async getLifecycle(keyId: string): Promise<KeyLifecycle | undefined> {
    this.#open();
    checks.checkText(keyId, 'key id');
    return this.#read('getLifecycle', () => {
      const row = this.#sql.lifecycle.get(keyId);
      if (!row) return undefined;
      const life: KeyLifecycle = {
        revision: row.revision,
        minDecryptionVersion: row.min_decryption_version,
        rotation: {},
        uses: {},
      };
      if (row.rotation_max_age_ms !== null) life.rotation.maxAgeMs = row.rotation_max_age_ms;
      if (row.rotation_max_uses !== null) life.rotation.maxUses = row.rotation_max_uses;
      for (const u of this.#sql.usesOf.all(keyId)) life.uses[u.version] = u.uses;
      return life;
    });
  }

  /**
   * One IMMEDIATE transaction: the revision is compared under the write lock, so of two
   * connections that read the same revision exactly one commits and the other gets ConflictError.
   */
  async updateKey(update: KeyUpdate): Promise<void> {
    const db = this.#writable();
    checks.checkKeyUpdate(update);
    const { keyId } = update;
    let destroyed = false;
    this.#write('updateKey', () => {
      const life = this.#sql.lifecycle.get(keyId);
      if (!life) throw new KeyNotFoundError(`keystore: key ${checks.quote(keyId)} not found`);
      if (life.revision !== update.expectedRevision) throw checks.conflictError(keyId);
      const added = update.addVersion;
      if (added && this.#sql.versionState.get(keyId, added.version)) {
        throw new KeyExistsError(`keystore: key ${checks.quote(keyId)} already has version ${added.version}`);
      }
      const stateOf = (v: number): KeyVersionState | undefined =>
        this.#sql.versionState.get(keyId, v)?.state ?? (added?.version === v ? added.state : undefined);
      if (update.primaryVersion !== undefined && !stateOf(update.primaryVersion)) {
        throw new KeyNotFoundError(`keystore: key ${checks.quote(keyId)} has no version ${update.primaryVersion}`);
      }
      const changes: Array<{ version: number; state: KeyVersionState }> = [];
      for (const change of update.states ?? []) {
        const from = stateOf(change.version);
        if (!from) throw new KeyNotFoundError(`keystore: key ${checks.quote(keyId)} has no version ${change.version}`);
        checks.checkTransition(from, change.state);
        if (from !== change.state) changes.push(change);
      }
      const at = update.at.getTime();
      if (added) this.#sql.insertVersion.run(versionToRow(added));
      for (const change of changes) {
        if (change.state === 'destroyed') {
          this.#sql.destroy.run(at, keyId, change.version);
          destroyed = true;
        } else this.#sql.setState.run(change.state, at, keyId, change.version);
      }
      if (update.primaryVersion !== undefined) this.#sql.setPrimaryOnly.run(update.primaryVersion, keyId);
      if (update.minDecryptionVersion !== undefined) this.#sql.setMinDecryption.run(update.minDecryptionVersion, keyId);
      if (update.rotation !== undefined) {
        this.#sql.setRotation.run(update.rotation.maxAgeMs ?? null, update.rotation.maxUses ?? null, keyId);
      }
      this.#sql.touchKey.run(at, keyId);
      this.#sql.bump.run(keyId);
    });
    if (destroyed) truncateWal(db);
  }

  async reserveUses(keyId: string, version: number, count: number): Promise<number> {
    this.#writable();
    checks.checkText(keyId, 'key id');
    checks.checkVersionNumber(version);
    checks.checkUseCount(count);
    return this.#write('reserveUses', () => {
      const row = this.#sql.reserveUses.get(count, keyId, version);
      if (!row) throw new KeyNotFoundError(`keystore: key ${checks.quote(keyId)} has no version ${version}`);
      return row.uses;
    });
  }

  async getMeta(name: string): Promise<Uint8Array | undefined> {
    this.#open();
    checks.checkText(name, 'meta name');
    return this.#read('getMeta', () => {
      const row = this.#sql.getMeta.get(name);
      return row && copyOut(row.value);
    });
  }

  async putMeta(name: string, value: Uint8Array): Promise<void> {
    this.#writable();
    checks.checkText(name, 'meta name');
    checks.checkBytes(value, 'meta value');
    this.#write('putMeta', () => {
      this.#sql.putMeta.run(name, asBuffer(value));
    });
  }

  /**
   * Compare-and-swap one meta record in one IMMEDIATE transaction: the check runs under the write
   * lock, so of two connections that read the same value exactly one swaps and the other gets
   * ConflictError. A delete truncates the WAL as deleteMeta does.
   */
  async swapMeta(name: string, expected: Uint8Array | null, value: Uint8Array | null): Promise<void> {
    const db = this.#writable();
    checks.checkSwapMeta(name, expected, value);
    this.#write('swapMeta', () => {
      const row = this.#sql.getMeta.get(name);
      const current = row && copyOut(row.value);
      const matches = checks.metaMatches(current, expected);
      current?.fill(0);
      if (!matches) throw checks.metaConflictError(name);
      if (value === null) this.#sql.deleteMeta.run(name);
      else this.#sql.putMeta.run(name, asBuffer(value));
    });
    if (value === null) truncateWal(db);
  }

  /**
   * One IMMEDIATE transaction: SQLite's write lock is taken before the record is read, so no other
   * process writes between the read, change() and the writes (the audit chain's appends).
   */
  async updateMeta(
    name: string,
    change: (current: Uint8Array | undefined) => ReadonlyArray<{ name: string; value: Uint8Array }>,
  ): Promise<void> {
    this.#writable();
    checks.checkText(name, 'meta name');
    this.#write('updateMeta', () => {
      const row = this.#sql.getMeta.get(name);
      const writes = change(row ? copyOut(row.value) : undefined);
      for (const w of writes) {
        checks.checkText(w.name, 'meta name');
        checks.checkBytes(w.value, 'meta value');
      }
      for (const w of writes) this.#sql.putMeta.run(w.name, asBuffer(w.value));
    });
  }

  /**
   * Idempotent. The record is deleted in one transaction, then the WAL is truncated like after a
   * destroy: deleting the sealed root is how a whole store is crypto-shredded (destroyRoot), so its
   * old value must not linger in WAL frames.
   */
  async deleteMeta(name: string): Promise<void> {
    const db = this.#writable();
    checks.checkText(name, 'meta name');
    this.#write('deleteMeta', () => {
      this.#sql.deleteMeta.run(name);
    });
    truncateWal(db);
  }

  /**
   * One IMMEDIATE transaction: the preconditions are checked under the write lock (so no other
   * connection can add or destroy a version between the check and the write), then every version
   * is rewritten and the meta record is upserted. Any failure rolls all of it back. The WAL is
   * truncated afterwards, so the old wraps and the old sealed root do not linger in its frames.
   */
  async replaceRoot(update: RootUpdate): Promise<void> {
    const db = this.#writable();
    checks.checkRootUpdate(update);
    this.#write('replaceRoot', () => {
      const listed = new Set<string>();
      for (const v of update.versions) {
        const current = this.#sql.version.get(v.keyId, v.version);
        if (!current) throw checks.rewrapMissingError(v.keyId, v.version);
        current.wrapped_material.fill(0);
        if (current.state === 'destroyed') throw checks.rewrapDestroyedError(v.keyId, v.version);
        if (update.expectedRootId !== undefined && current.root_id !== update.expectedRootId) {
          throw checks.rootConflictError();
        }
        listed.add(JSON.stringify([v.keyId, v.version]));
      }
      if (update.expectedMeta !== undefined) {
        const row = this.#sql.getMeta.get(update.meta.name);
        const current = row && copyOut(row.value);
        if (!checks.metaMatches(current, update.expectedMeta)) throw checks.rootConflictError();
      }
      for (const live of this.#sql.liveVersions.all()) {
        if (!listed.has(JSON.stringify([live.key_id, live.version]))) {
          throw checks.rewrapUnlistedError(live.key_id, live.version);
        }
      }
      const at = update.at.getTime();
      for (const v of update.versions) {
        this.#sql.rewrap.run(v.rootId, asBuffer(v.wrappedMaterial), at, v.keyId, v.version);
      }
      this.#sql.putMeta.run(update.meta.name, asBuffer(update.meta.value));
    });
    truncateWal(db);
  }

  /**
   * Leases for jobs that one process at a time may run (core's LeaseStore, job-lease.ts;
   * docs/lifecycle.md §Jobs under a lease): the meta record "lease/<name>" holds the holder, the
   * fencing token and the expiry, as on PostgreSQL. Each call is one IMMEDIATE transaction, so
   * the lease is read, decided and written under SQLite's write lock: of processes racing for a
   * free lease exactly one is granted, and a fenced write commits only if the grant still holds
   * at that instant.
   *
   * The clock: SQLite has no server, so "now" is this machine's wall clock (Date.now()), read
   * under the write lock. Every process that shares one SQLite file runs on one machine (SQLite's
   * file locking is not safe over a network file system), so they all read the same clock. A
   * step of that clock moves every lease's expiry: a step forward can end a grant early — the
   * holder's fenced writes are then refused and JobLease stops it, so the job's record is never
   * written by two holders; a step back lengthens a grant by the step, delaying a takeover.
   */
  async acquireLease(name: string, holder: string, ttlMs: number): Promise<LeaseGrant | LeaseRefusal> {
    this.#writable();
    checks.checkLeaseRequest(name, holder, ttlMs);
    return this.#write('acquireLease', (): LeaseGrant | LeaseRefusal => {
      const decision = checks.decideLease(this.#lease(name), holder, ttlMs, Date.now());
      if ('refusal' in decision) return decision.refusal;
      this.#putLease(name, decision.grant);
      return { name, holder, token: decision.grant.token };
    });
  }

  async renewLease(grant: LeaseGrant, ttlMs: number): Promise<boolean> {
    this.#writable();
    checks.checkLeaseGrant(grant);
    checks.checkLeaseTtl(ttlMs);
    return this.#write('renewLease', () => {
      const now = Date.now();
      if (!checks.leaseHolds(this.#lease(grant.name), grant, now)) return false;
      this.#putLease(grant.name, { holder: grant.holder, token: grant.token, expiresAt: now + ttlMs });
      return true;
    });
  }

  async releaseLease(grant: LeaseGrant): Promise<void> {
    this.#writable();
    checks.checkLeaseGrant(grant);
    this.#write('releaseLease', () => {
      // Expired now; the token stays, so the next grant's is higher.
      if (checks.leaseHolds(this.#lease(grant.name), grant, Date.now())) {
        this.#putLease(grant.name, { holder: grant.holder, token: grant.token, expiresAt: 0 });
      }
    });
  }

  async putMetaUnderLease(grant: LeaseGrant, meta: string, value: Uint8Array | undefined): Promise<void> {
    const db = this.#writable();
    checks.checkLeaseGrant(grant);
    checks.checkFencedMetaName(meta);
    if (value !== undefined) checks.checkBytes(value, 'meta value');
    this.#write('putMetaUnderLease', () => {
      if (!checks.leaseHolds(this.#lease(grant.name), grant, Date.now())) throw checks.leaseLostError(grant);
      if (value === undefined) this.#sql.deleteMeta.run(meta);
      else this.#sql.putMeta.run(meta, asBuffer(value));
    });
    if (value === undefined) truncateWal(db);
  }

  /** The lease record (inside a write transaction). */
  #lease(name: string): checks.LeaseRecord | undefined {
    const row = this.#sql.getMeta.get(checks.leaseMetaName(name));
    return checks.decodeLease(row && copyOut(row.value));
  }

  #putLease(name: string, lease: checks.LeaseRecord): void {
    this.#sql.putMeta.run(checks.leaseMetaName(name), Buffer.from(checks.encodeLease(lease)));
  }

  /** Idempotent. The last connection to close checkpoints the WAL into the database file. */
  async close(): Promise<void> {
    const db = this.#db;
    if (!db) return;
    this.#db = undefined;
    try {
      db.close();
    } catch (err) {
      throw storeError('close', err);
    }
  }

  #open(): Db {
    if (!this.#db) throw new ClosedError('keystore: the SQLite key store is closed');
    return this.#db;
  }

  #writable(): Db {
    const db = this.#open();
    if (this.#readonly) throw new KeyStoreError('keystore: the SQLite key store is open read-only');
    return db;
  }

  /**
   * Runs `body` in one IMMEDIATE transaction; any throw rolls the whole write back. First, the
   * files must still be the ones this connection opened; after the commit, a passive checkpoint
   * copies the write into the database file (best effort: a reader may hold it back, and the
   * write is durable in the WAL either way).
   */
  #write<T>(operation: string, body: () => T): T {
    const db = this.#open();
    if (this.#identity) checkIdentity(this.#identity, operation);
    let result: T;
    try {
      result = db.transaction(body).immediate();
    } catch (err) {
      throw KeywardenError.isInstance(err) ? err : storeError(operation, err, this.#identity?.path);
    }
    try {
      if (this.#identity) db.pragma('wal_checkpoint(PASSIVE)');
    } catch {
      // Deliberately ignored: the write has committed (see above).
    }
    return result;
  }

  #read<T>(operation: string, body: () => T): T {
    this.#open();
    try {
      return body();
    } catch (err) {
      throw KeywardenError.isInstance(err) ? err : storeError(operation, err, this.#identity?.path);
    }
  }
}

// ── Opening ────────────────────────────────────────────────────────────────────────────────────

function requireExistingFile(path: string): void {
  try {
    if (statSync(path).isFile()) return;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT' && code !== 'ENOTDIR') throw storeError('open', err);
  }
  throw new KeyStoreError('keystore: no key store file at this path (nothing was created)');
}

/**
 * SQLite deletes a database's -wal and -shm files together when its last connection closes, and
 * a crash leaves both. A -shm without its -wal means the WAL was deleted under a connection that
 * is still open: that process holds committed writes in a file nobody else can see, and a new
 * WAL beside it would fork the database. Whether a connection is still open is read from the
 * kernel's lock table (every open connection holds a read lock on the -shm; Linux /proc/locks):
 * leftovers of a process that died are no obstacle (SQLite recovers from them). Re-checked for a
 * moment first, so that the instant in which a closing connection has removed the one file and
 * not yet the other is not mistaken. Without /proc/locks, the leftover is refused too.
 */
function refuseDeletedWal(path: string): void {
  for (let attempt = 0; ; attempt++) {
    if (!existsSync(`${path}-shm`) || existsSync(`${path}-wal`)) return;
    if (attempt === 5) break;
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
  }
  if (shmLockedByAnyone(`${path}-shm`) === false) return;
  throw new StoreReplacedError(
    'keystore: the WAL file (-wal) of this key store was deleted while another process still has it open; nothing was changed. Stop every process using the key store (the agent, applications), then open it again',
  );
}

/** Whether any process holds a POSIX lock on `file` (Linux /proc/locks); undefined when unknown. */
function shmLockedByAnyone(file: string): boolean | undefined {
  let table: string;
  let st: { dev: number; ino: number };
  try {
    table = readFileSync('/proc/locks', 'utf8');
    st = statSync(file);
  } catch {
    return undefined;
  }
  // Linux encodes dev_t as major (bits 8..19, 32..) and minor (bits 0..7, 20..); /proc/locks
  // prints them in hex: "1: POSIX ADVISORY READ <pid> <major>:<minor>:<inode> <start> <end>".
  const major = ((st.dev >> 8) & 0xfff) | (Math.floor(st.dev / 2 ** 32) * 0x1000);
  const minor = (st.dev & 0xff) | ((st.dev >> 12) & 0xfff00);
  const id = `${major.toString(16).padStart(2, '0')}:${minor.toString(16).padStart(2, '0')}:${st.ino}`;
  return table.split('\n').some((line) => line.split(/\s+/).includes(id));
}

type FileId = { dev: number; ino: number };

function fileId(file: string): FileId | undefined {
  try {
    const st = statSync(file);
    return { dev: st.dev, ino: st.ino };
  } catch {
    return undefined;
  }
}

function identityOf(path: string): FileIdentity {
  const db = fileId(path);
  if (!db) throw new StoreReplacedError('keystore: the database file disappeared while it was being opened');
  return { path, db, wal: fileId(`${path}-wal`) };
}

/** The files under the connection must still be the ones it opened (device and inode). */
function checkIdentity(opened: FileIdentity, operation: string): void {
  const same = (a: FileId | undefined, b: FileId | undefined) =>
    a !== undefined && b !== undefined && a.dev === b.dev && a.ino === b.ino;
  const walOk = opened.wal === undefined || same(fileId(`${opened.path}-wal`), opened.wal);
  if (!same(fileId(opened.path), opened.db) || !walOk) {
    throw new StoreReplacedError(
      `keystore: ${operation}: the database file or its WAL is no longer the one this process opened (deleted, moved or replaced); nothing was written. Stop this process and start it again`,
    );
  }
}

/** Create the database file owner-only before SQLite opens it (SQLite would use 0644 & ~umask). */
function createOwnerOnly(path: string): void {
  if (existsSync(path)) return;
  try {
    closeSync(openSync(path, 'a', FILE_MODE));
    chmodSync(path, FILE_MODE);
  } catch (err) {
    throw storeError('create', err);
  }
}

/**
 * SQLite gives the -wal and -shm files the mode of the database file. Tighten them anyway when
 * present, in case they were left behind by a process with a looser umask.
 */
function restrictSidecarFiles(path: string): void {
  for (const sidecar of [`${path}-wal`, `${path}-shm`]) {
    try {
      chmodSync(sidecar, FILE_MODE);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      // Missing: nothing to do. EPERM: owned by another user, a deliberate shared setup.
      if (code !== 'ENOENT' && code !== 'EPERM') throw storeError('chmod', err);
    }
  }
}

function configure(
  db: Db,
  options: { readonly: boolean; create: boolean; busyTimeoutMs: number; check: boolean },
): void {
  const { readonly, busyTimeoutMs } = options;
  db.pragma(`busy_timeout = ${busyTimeoutMs}`);
  // Identify the file before changing anything in it: never convert someone else's database.
  const appId = Number(db.pragma('application_id', { simple: true }));
  const hasVersionTable = tableExists(db, 'schema_version');
  if (appId !== APPLICATION_ID && (appId !== 0 || hasVersionTable || userTableCount(db) > 0)) {
    throw new StoreCorruptError("keystore: the file is not a Keywarden key store (another program's SQLite database)");
  }
  if (!options.create && (appId !== APPLICATION_ID || !hasVersionTable)) {
    // An empty (zero-length) file, or a SQLite file with nothing in it: never initialized here.
    throw new StoreCorruptError(
      'keystore: the file is empty, not a Keywarden key store: it was never initialized, or was truncated; restore it from a backup (nothing was changed)',
    );
  }
  checkNotNewer(schemaVersionOf(db));
  if (options.check) checkIntegrity(db);

  db.pragma('foreign_keys = ON');
  db.pragma('trusted_schema = OFF');
  db.pragma('cell_size_check = ON');
  if (readonly) {
    const version = schemaVersionOf(db);
    if (version < SCHEMA_VERSION) {
      throw new KeyStoreError(
        `keystore: database schema version ${version} is older than this Keywarden (${SCHEMA_VERSION}); open it read-write once to upgrade it`,
      );
    }
    return;
  }
  db.pragma('secure_delete = ON');
  // WAL needs a file; an in-memory database reports "memory" and keeps it.
  const mode = String(db.pragma('journal_mode = WAL', { simple: true }));
  if (mode !== 'wal' && mode !== 'memory') {
    throw new KeyStoreError(`keystore: cannot enable the WAL journal (journal_mode is ${mode})`);
  }
  db.pragma('synchronous = FULL');
  migrate(db);
}

function migrate(db: Db): void {
  db.transaction(() => {
    // Read again under the write lock: another process may have migrated meanwhile.
    const current = schemaVersionOf(db);
    checkNotNewer(current);
    if (current === SCHEMA_VERSION) return;
    db.exec(SCHEMA_VERSION_TABLE);
    db.pragma(`application_id = ${APPLICATION_ID}`);
    const record = db.prepare<[number, number]>('INSERT INTO schema_version (version, applied_at) VALUES (?, ?)');
    for (const migration of MIGRATIONS) {
      if (migration.version <= current) continue;
      db.exec(migration.sql);
      record.run(migration.version, Date.now());
    }
  }).immediate();
}

/**
 * The cheap checks on open (https://sqlite.org/pragma.html#pragma_quick_check): `quick_check` walks
 * every page of the file (O(N), no index-against-table comparison), and the full `integrity_check`
 * of the meta table alone compares it with its index — the index by which the sealed root and its
 * tombstone are looked up, so that a broken index is reported as damage, not as "no root".
 */
function checkIntegrity(db: Db): void {
  const problems = [
    ...(db.pragma('quick_check(1)') as Array<{ quick_check: string }>).map((r) => r.quick_check),
    ...(tableExists(db, 'meta')
      ? (db.pragma('integrity_check(meta)') as Array<{ integrity_check: string }>).map((r) => r.integrity_check)
      : []),
  ].filter((line) => line !== 'ok');
  if (problems.length > 0) throw corruptError(problems[0] as string);
}

function corruptError(detail: string, cause?: unknown): StoreCorruptError {
  // SQLite's integrity messages name pages, rows and indexes, never values; keep one short line.
  const what = detail
    .replace(/\*\*\* in database \w+ \*\*\*/g, '')
    .replace(/\s+/g, ' ')
    .trim()
    .slice(0, 160);
  return new StoreCorruptError(
    `keystore: the database file is damaged (${what}); nothing was changed. Check it with \`sqlite3 FILE 'PRAGMA integrity_check'\`, rebuild damaged indexes with \`REINDEX\`, or restore it from a backup`,
    cause === undefined ? undefined : { cause },
  );
}

function checkNotNewer(version: number): void {
  if (version > SCHEMA_VERSION) {
    throw new KeyStoreError(
      `keystore: database schema version ${version} is newer than this Keywarden (${SCHEMA_VERSION})`,
    );
  }
}

function tableExists(db: Db, name: string): boolean {
  return db.prepare("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?").get(name) !== undefined;
}

function userTableCount(db: Db): number {
  const row = db
    .prepare("SELECT count(*) AS n FROM sqlite_schema WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\'")
    .get() as {
    n: number;
  };
  return row.n;
}

function schemaVersionOf(db: Db): number {
  if (!tableExists(db, 'schema_version')) return 0;
  const row = db.prepare('SELECT max(version) AS v FROM schema_version').get() as { v: number | null };
  return row.v ?? 0;
}

/**
 * After a version is destroyed (or a meta record deleted, or the root replaced), copy the WAL
 * into the database and truncate the WAL to zero bytes, so the frames that still hold the old
 * material are gone from the WAL file
 * (https://sqlite.org/pragma.html#pragma_wal_checkpoint). Best effort: with readers active the
 * checkpoint may stop early; the material is erased from the database either way, and the frames
 * are overwritten by later checkpoints. The write has committed, so failures are not reported.
 */
function truncateWal(db: Db): void {
  try {
    db.pragma('wal_checkpoint(TRUNCATE)');
  } catch {
    // Deliberately ignored: see above.
  }
}

// ── Rows ───────────────────────────────────────────────────────────────────────────────────────

function keyToRow(key: KeyRecord): KeyRow {
  return {
    id: key.id,
    name: key.name,
    environment: key.scope.environment ?? null,
    service: key.scope.service ?? null,
    tenant: key.scope.tenant ?? null,
    purpose: key.scope.purpose ?? null,
    primary_version: key.primaryVersion,
    created_at: key.createdAt.getTime(),
    updated_at: key.updatedAt.getTime(),
  };
}

function rowToKey(row: KeyRow): KeyRecord {
  const scope: KeyScope = {};
  for (const field of checks.SCOPE_FIELDS) {
    const value = row[field];
    if (value !== null) scope[field] = value;
  }
  return {
    id: row.id,
    name: row.name,
    scope,
    primaryVersion: row.primary_version,
    createdAt: new Date(row.created_at),
    updatedAt: new Date(row.updated_at),
  };
}

function versionToRow(v: KeyVersionRecord): VersionRow {
  return {
    key_id: v.keyId,
    version: v.version,
    state: v.state,
    root_id: v.rootId,
    wrapped_material: asBuffer(v.wrappedMaterial),
    created_at: v.createdAt.getTime(),
    updated_at: v.updatedAt.getTime(),
  };
}

function rowToVersion(row: VersionRow): KeyVersionRecord {
  return {
    keyId: row.key_id,
    version: row.version,
    state: row.state,
    rootId: row.root_id,
    wrappedMaterial: copyOut(row.wrapped_material),
    createdAt: new Date(row.created_at),
    updatedAt: new Date(row.updated_at),
  };
}

/** A Buffer view of the caller's bytes for binding (SQLite copies them; nothing to wipe). */
function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** A plain Uint8Array copy of a blob read from SQLite; the Buffer better-sqlite3 made is wiped. */
function copyOut(blob: Buffer): Uint8Array {
  const out = new Uint8Array(blob);
  blob.fill(0);
  return out;
}

// ── Errors ─────────────────────────────────────────────────────────────────────────────────────

/**
 * Turn a driver error into a Keywarden error with a one-line message naming the operation and
 * the SQLite result code only: SQLite messages can quote SQL, and no value belongs in a message.
 * The constraint codes are a backstop: the methods check existence themselves first.
 */
let addonChecked = false;

/**
 * Load better-sqlite3's native addon once (an in-memory database) and turn the ways it fails to
 * load into one NativeAddonError naming the package, the cause and the fix.
 */
function requireNativeAddon(): void {
  if (addonChecked) return;
  try {
    new Database(':memory:').close();
    addonChecked = true;
  } catch (err) {
    const text = err instanceof Error ? err.message : String(err);
    if (
      /Could not locate the bindings file|NODE_MODULE_VERSION|compiled against a different Node\.js|invalid ELF|cannot open shared object|wrong ELF class/.test(
        text,
      )
    ) {
      const stale = /NODE_MODULE_VERSION|different Node\.js/.test(text);
      throw new NativeAddonError(
        stale
          ? `keystore: better-sqlite3's native addon was built for another Node.js version (${process.version} is running); rebuild it: \`npm rebuild better-sqlite3\` or \`pnpm rebuild better-sqlite3\``
          : "keystore: better-sqlite3's native addon is not built (its install script did not run); with pnpm, approve its build (`pnpm approve-builds`, or `allowBuilds: { better-sqlite3: true }` in pnpm-workspace.yaml) and run `pnpm rebuild better-sqlite3`; with npm, install without --ignore-scripts or run `npm rebuild better-sqlite3`",
        { cause: err },
      );
    }
    throw storeError('open', err);
  }
}

function storeError(operation: string, err: unknown, path?: string): KeywardenError {
  const code = sqliteCode(err);
  if (code !== undefined && (code.startsWith('SQLITE_CORRUPT') || code === 'SQLITE_NOTADB')) {
    return code === 'SQLITE_NOTADB'
      ? new StoreCorruptError(
          `keystore: ${operation}: the file is not a SQLite database (not a Keywarden key store, or damaged beyond opening); restore it from a backup`,
          { cause: err },
        )
      : corruptError(`${operation}: ${code}`, err);
  }
  if (code === 'SQLITE_FULL' || (code?.startsWith('SQLITE_IOERR') && path !== undefined && diskFull(path))) {
    return new KeyStoreError(
      `keystore: ${operation}: no space left on device (the disk holding the key store is full; ${code}); nothing was changed — free some space and try again`,
      { cause: err },
    );
  }
  if (code === 'SQLITE_CONSTRAINT_PRIMARYKEY' || code === 'SQLITE_CONSTRAINT_UNIQUE') {
    return new KeyExistsError(`keystore: ${operation}: the key or version already exists`, { cause: err });
  }
  if (code === 'SQLITE_CONSTRAINT_FOREIGNKEY') {
    return new KeyNotFoundError(`keystore: ${operation}: the key or version does not exist`, { cause: err });
  }
  if (code !== undefined) return new KeyStoreError(`keystore: ${operation} failed (${code})`, { cause: err });
  const errno = (err as NodeJS.ErrnoException | undefined)?.code;
  if (typeof errno === 'string' && /^E[A-Z]+$/.test(errno)) {
    return new KeyStoreError(`keystore: ${operation} failed (${errno})`, { cause: err });
  }
  return new KeyStoreError(`keystore: ${operation} failed`, { cause: err });
}

/**
 * Whether the file system holding `path` is out of space. SQLite reports a full disk as
 * SQLITE_FULL when it sees ENOSPC on a write, but as an I/O error (SQLITE_IOERR_SHMSIZE,
 * _WRITE, _FSYNC…) when the space runs out while growing the -shm or syncing: look, then.
 */
function diskFull(path: string): boolean {
  try {
    const fs = statfsSync(dirname(path));
    return fs.bavail * fs.bsize < 64 * 1024;
  } catch {
    return false;
  }
}

function sqliteCode(err: unknown): string | undefined {
  if (err instanceof Database.SqliteError && /^SQLITE_[A-Z_]+$/.test(err.code)) return err.code;
  return undefined;
}

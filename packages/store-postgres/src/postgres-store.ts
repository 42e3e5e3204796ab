/**
 * PostgresKeyStore: the KeyStore shared by many processes and machines, on PostgreSQL through `pg`.
 *
 * Choices (README.md and docs/fleet.md explain them to users):
 * - every write is one transaction (READ COMMITTED) that first locks what it decides on: the key's
 *   row (`SELECT … FOR UPDATE`) for a change to one key, so of two compare-and-swap updates against
 *   one revision exactly one commits and the other reads the new revision and gets ConflictError;
 *   a store-wide transaction advisory lock for createKey (ids and names share one namespace) and
 *   replaceRoot (which must see every version of every key), which also locks every key row;
 * - every committed change bumps `store_state.generation` and sends NOTIFY on the store's channel
 *   in the same transaction (PostgreSQL delivers it only on commit): `watch()` tells listeners in
 *   other processes, which drop their KEK caches; a poll of the generation covers notifications
 *   lost while the listening connection was down;
 * - faults: a failure before COMMIT was sent (cannot connect, connection lost mid-transaction,
 *   serialization failure, deadlock) rolls back on the server and is retried with exponential
 *   backoff for up to `retryForMs`; a connection lost while COMMIT was in flight leaves the outcome
 *   unknown, so that write is NOT retried and fails with a KeyStoreError saying to read again;
 * - the password comes from the options, a file, or the environment; it is never logged and no
 *   error message carries a driver message (those can quote values or the connection string):
 *   messages name the operation and the SQLSTATE or errno only.
 */
import { readFileSync } from 'node:fs';
import type { ConnectionOptions } from 'node:tls';
import {
  ClosedError,
  ConflictError,
  InvalidInputError,
  KeyExistsError,
  KeyNotFoundError,
  type KeyLifecycle,
  type KeyRecord,
  type KeyScope,
  type KeyStore,
  KeyStoreError,
  type KeyUpdate,
  type KeyVersionRecord,
  type KeyVersionState,
  KeywardenError,
  keyStoreChecks as checks,
  type LeaseGrant,
  type LeaseRefusal,
  type LeaseStore,
  type RootUpdate,
  StoreCorruptError,
  StoreReplacedError,
} from '@keywarden/core';
import pg from 'pg';
import { parse as parseConnectionString } from 'pg-connection-string';
import { MIGRATIONS, SCHEMA_MARKER, SCHEMA_VERSION, SCHEMA_VERSION_TABLE } from './_schema.js';

export { SCHEMA_VERSION } from './_schema.js';

export interface PostgresKeyStoreOptions {
  /**
   * `postgres://user@host:port/database` (a password in it is accepted but better kept apart).
   * Default: the environment variable KEYWARDEN_PG_URL, else libpq's PG* variables (PGHOST…).
   */
  connectionString?: string;
  /** The password. Prefer `passwordFile`. */
  password?: string;
  /** A file holding the password (trailing newline ignored), read at each new connection, so a
   * rotated password is picked up. Default: KEYWARDEN_PG_PASSWORD_FILE, else PGPASSWORD/.pgpass. */
  passwordFile?: string;
  /** The PostgreSQL schema holding the store's tables. Default "keywarden". */
  schema?: string;
  /** Create the schema and its tables when missing. Default true. With false, a missing store is a KeyStoreError. */
  create?: boolean;
  /** Pool size. Default 10. */
  maxConnections?: number;
  /** How long a failed operation that is safe to repeat is retried, counted from its first failure (backoff 50 ms → 1 s). Default 10 000 ms. */
  retryForMs?: number;
  /** Server-side limit on one statement, and on waiting for a lock. Default 30 000 ms. */
  statementTimeoutMs?: number;
  /**
   * A session of this store left idle inside a transaction this long is ended by the server
   * (`idle_in_transaction_session_timeout`), which releases its locks. The store's transactions
   * never wait on anything but their own statements, so only a stalled process (a long GC pause, a
   * frozen VM, SIGSTOP) gets there; without it a stalled lease holder would keep its successor out
   * until the successor's lock wait timed out. Keep it below statementTimeoutMs. Default 10 000 ms
   * (or half of statementTimeoutMs when that is smaller).
   */
  idleInTransactionTimeoutMs?: number;
  /** TLS options passed to pg (`ssl`); for a managed PostgreSQL, `{ ca, rejectUnauthorized: true }`.
   * Node's own TLS type, so consumers need no `@types/pg`. */
  ssl?: boolean | ConnectionOptions;
  /** The environment to read defaults from. Default process.env. */
  env?: Record<string, string | undefined>;
}

/** A committed change seen by {@link PostgresKeyStore.watch}. */
export interface KeyStoreChange {
  /**
   * "key": one key changed (keyId); "root": the root or every version moved (replaceRoot) or a
   * meta record changed; "resync": changes may have been missed (the listening connection was
   * down, or the poll saw a newer generation) — drop everything cached.
   */
  kind: 'key' | 'root' | 'resync';
  keyId?: string;
  /** The store's change counter after this change. */
  generation: number;
}

export interface WatchOptions {
  /** Polling fallback: how often the generation is compared (ms). Default 1000. 0 disables it. */
  pollIntervalMs?: number;
  /**
   * LISTEN for notifications. Default true. false: poll only — for a connection pooler in
   * transaction mode (PgBouncer), which does not carry LISTEN; changes are then seen within
   * `pollIntervalMs`.
   */
  listen?: boolean;
  /** Reports a listener connection failure (message only; no secret in it). */
  onError?: (err: KeyStoreError) => void;
}

export type KeyStoreChangeListener = (change: KeyStoreChange) => void;

const DEFAULT_SCHEMA = 'keywarden';
/** Pool clients that already carry our 'error' listener (see #connect). */
const GUARDED = new WeakSet<pg.PoolClient>();
const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,62}$/;
/**
 * Connection-level failures: the server rolled back whatever was in flight. 25P03 and 57P05: the
 * server ended a session left idle (in a transaction, or at all) too long — this process stalled.
 */
const TRANSIENT_SQLSTATE = /^(08|57P0[1-3]|57P05|25P03|40001|40P01|53300)/;
const TRANSIENT_ERRNO = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
]);

interface KeyRow {
  id: string;
  name: string;
  environment: string | null;
  service: string | null;
  tenant: string | null;
  purpose: string | null;
  primary_version: number;
  created_at: string;
  updated_at: string;
}

interface VersionRow {
  key_id: string;
  version: number;
  state: KeyVersionState;
  root_id: string;
  wrapped_material: Buffer;
  created_at: string;
  updated_at: string;
}

const KEY_COLUMNS = 'id, name, environment, service, tenant, purpose, primary_version, created_at, updated_at';
const VERSION_COLUMNS = 'key_id, version, state, root_id, wrapped_material, created_at, updated_at';

type Tx = pg.PoolClient;

/** What a write transaction reports to be notified after commit. */
interface Changed {
  keyId?: string;
  root?: boolean;
}

export class PostgresKeyStore implements KeyStore, LeaseStore {
  #pool: pg.Pool | undefined;
  readonly #config: pg.PoolConfig;
  readonly #schema: string;
  readonly #s: string;
  readonly #channel: string;
  readonly #retryForMs: number;
  readonly #watchers = new Set<() => Promise<void>>();
  /** The store's random id (store_state.store_id), read at open: a write into another store — the
   * schema dropped and created again, or restored from a backup of another store — is refused. */
  #storeId: string | undefined;

  private constructor(pool: pg.Pool, config: pg.PoolConfig, schema: string, retryForMs: number) {
    this.#pool = pool;
    this.#config = config;
    this.#schema = schema;
    this.#s = pg.escapeIdentifier(schema);
    this.#channel = `keywarden.${schema}`;
    this.#retryForMs = retryForMs;
  }

  /**
   * Connect, and create or upgrade the store's schema (versioned migrations under an advisory
   * lock). Throws KeyStoreError when PostgreSQL cannot be reached within `retryForMs`, when the
   * store is missing and `create` is false, or when its schema is newer than this Keywarden;
   * StoreCorruptError when the schema holds tables that are not a Keywarden key store.
   */
  static async open(options: PostgresKeyStoreOptions = {}): Promise<PostgresKeyStore> {
    const env = options.env ?? process.env;
    const schema = options.schema ?? DEFAULT_SCHEMA;
    if (typeof schema !== 'string' || !SCHEMA_NAME.test(schema)) {
      throw new InvalidInputError('keystore: schema must be a lower-case SQL identifier (a-z, 0-9, _; at most 63)');
    }
    const retryForMs = options.retryForMs ?? 10_000;
    const statementTimeoutMs = options.statementTimeoutMs ?? 30_000;
    const idleInTransactionTimeoutMs =
      options.idleInTransactionTimeoutMs ?? Math.max(1, Math.min(10_000, Math.floor(statementTimeoutMs / 2)));
    const max = options.maxConnections ?? 10;
    for (const [name, value, min] of [
      ['retryForMs', retryForMs, 0],
      ['statementTimeoutMs', statementTimeoutMs, 1],
      ['idleInTransactionTimeoutMs', idleInTransactionTimeoutMs, 1],
      ['maxConnections', max, 1],
    ] as const) {
      if (!Number.isSafeInteger(value) || value < min) {
        throw new InvalidInputError(`keystore: ${name} must be an integer ≥ ${min}`);
      }
    }
    const config: pg.PoolConfig = {
      max,
      connectionTimeoutMillis: 5_000,
      idleTimeoutMillis: 30_000,
      statement_timeout: statementTimeoutMs,
      lock_timeout: statementTimeoutMs,
      idle_in_transaction_session_timeout: idleInTransactionTimeoutMs,
      application_name: 'keywarden',
      ...(options.ssl !== undefined ? { ssl: options.ssl } : {}),
    };
    const url = options.connectionString ?? env.KEYWARDEN_PG_URL;
    // Parsed here rather than handed to pg as connectionString: pg would let the URL's (absent)
    // password override the password given apart from it.
    if (url !== undefined) {
      let parsed: Record<string, unknown>;
      try {
        parsed = parseConnectionString(url) as Record<string, unknown>;
      } catch {
        throw new InvalidInputError('keystore: the PostgreSQL connection string is malformed');
      }
      for (const [k, v] of Object.entries(parsed)) {
        if (v !== undefined && v !== null && !(k in config)) (config as Record<string, unknown>)[k] = v;
      }
    }
    const passwordFile = options.passwordFile ?? env.KEYWARDEN_PG_PASSWORD_FILE;
    if (options.password !== undefined) config.password = options.password;
    else if (passwordFile !== undefined) config.password = () => readPassword(passwordFile);
    const pool = new pg.Pool(config);
    // An idle connection dropped by the server (restart, failover) must not crash the process;
    // the next checkout connects again.
    pool.on('error', () => {});
    const store = new PostgresKeyStore(pool, config, schema, retryForMs);
    try {
      await store.#retry('open', async () => store.#migrate(options.create ?? true), true);
      const id = await store.#read<{ store_id: string }>('open', `SELECT store_id FROM ${store.#s}.store_state`, []);
      store.#storeId = id[0]?.store_id;
    } catch (err) {
      await pool.end().catch(() => {});
      throw err;
    }
    return store;
  }

  /** The schema holding the store. */
  get schema(): string {
    return this.#schema;
  }

  async createKey(key: KeyRecord, firstVersion: KeyVersionRecord): Promise<void> {
    this.#pool_();
    checks.checkKey(key);
    checks.checkVersion(firstVersion);
    if (firstVersion.keyId !== key.id) {
      throw new InvalidInputError('keystore: createKey: the first version belongs to another key id');
    }
    if (firstVersion.version !== key.primaryVersion) {
      throw new InvalidInputError('keystore: createKey: primaryVersion must be the first version');
    }
    await this.#write('createKey', async (tx) => {
      await this.#lockStore(tx);
      const taken = await tx.query<{ id: string; name: string }>(
        `SELECT id, name FROM ${this.#s}.keys WHERE id IN ($1, $2) OR name IN ($1, $2) LIMIT 1`,
        [key.id, key.name],
      );
      const row = taken.rows[0];
      if (row) {
        const clash = row.id === key.id || row.name === key.id ? key.id : key.name;
        throw new KeyExistsError(`keystore: a key with id or name ${checks.quote(clash)} already exists`);
      }
      await tx.query(
        `INSERT INTO ${this.#s}.keys (${KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
        keyParams(key),
      );
      await this.#insertVersion(tx, firstVersion);
      return { keyId: key.id };
    });
  }

  async getKey(idOrName: string): Promise<KeyRecord | undefined> {
    this.#pool_();
    checks.checkText(idOrName, 'key id or name');
    const rows = await this.#read<KeyRow>(
      'getKey',
      // One statement, one snapshot; an id match wins.
      `SELECT ${KEY_COLUMNS} FROM ${this.#s}.keys WHERE id = $1 OR name = $1 ORDER BY (id = $1) DESC LIMIT 1`,
      [idOrName],
    );
    return rows[0] && rowToKey(rows[0]);
  }

  async listKeys(): Promise<KeyRecord[]> {
    // COLLATE "C": byte order of UTF-8, which is code-point order.
    const rows = await this.#read<KeyRow>(
      'listKeys',
      `SELECT ${KEY_COLUMNS} FROM ${this.#s}.keys ORDER BY name COLLATE "C"`,
      [],
    );
    return rows.map(rowToKey);
  }

  async getVersion(keyId: string, version: number): Promise<KeyVersionRecord | undefined> {
    this.#pool_();
    checks.checkText(keyId, 'key id');
    checks.checkVersionNumber(version);
    const rows = await this.#read<VersionRow>(
      'getVersion',
      `SELECT ${VERSION_COLUMNS} FROM ${this.#s}.key_versions WHERE key_id = $1 AND version = $2`,
      [keyId, version],
    );
    return rows[0] && rowToVersion(rows[0]);
  }

  async listVersions(keyId: string): Promise<KeyVersionRecord[]> {
    this.#pool_();
    checks.checkText(keyId, 'key id');
    const rows = await this.#read<VersionRow>(
      'listVersions',
      `SELECT ${VERSION_COLUMNS} FROM ${this.#s}.key_versions WHERE key_id = $1 ORDER BY version`,
      [keyId],
    );
    return rows.map(rowToVersion);
  }

  async addVersion(version: KeyVersionRecord, makePrimary: boolean): Promise<void> {
    this.#pool_();
    checks.checkVersion(version);
    checks.checkBoolean(makePrimary, 'makePrimary');
    await this.#write('addVersion', async (tx) => {
      if (!(await this.#lockKey(tx, version.keyId))) {
        throw new KeyNotFoundError(`keystore: key ${checks.quote(version.keyId)} not found`);
      }
      if (await this.#stateOf(tx, version.keyId, version.version)) {
        throw new KeyExistsError(`keystore: key ${checks.quote(version.keyId)} already has version ${version.version}`);
      }
      await this.#insertVersion(tx, version);
      if (makePrimary) {
        await tx.query(`UPDATE ${this.#s}.keys SET primary_version = $1, updated_at = $2 WHERE id = $3`, [
          version.version,
          version.createdAt.getTime(),
          version.keyId,
        ]);
      }
      await this.#bump(tx, version.keyId);
      return { keyId: version.keyId };
    });
  }

  async setPrimaryVersion(keyId: string, version: number, at: Date): Promise<void> {
    this.#pool_();
    checks.checkText(keyId, 'key id');
    checks.checkVersionNumber(version);
    checks.checkDate(at, 'at');
    await this.#write('setPrimaryVersion', async (tx) => {
      if (!(await this.#lockKey(tx, keyId)))
        throw new KeyNotFoundError(`keystore: key ${checks.quote(keyId)} not found`);
      if (!(await this.#stateOf(tx, keyId, version))) {
        throw new KeyNotFoundError(`keystore: key ${checks.quote(keyId)} has no version ${version}`);
      }
      await tx.query(`UPDATE ${this.#s}.keys SET primary_version = $1, updated_at = $2 WHERE id = $3`, [
        version,
        at.getTime(),
        keyId,
      ]);
      await this.#bump(tx, keyId);
      return { keyId };
    });
  }

  async setVersionState(keyId: string, version: number, state: KeyVersionState, at: Date): Promise<void> {
    this.#pool_();
    checks.checkText(keyId, 'key id');
    checks.checkVersionNumber(version);
    checks.checkState(state);
    checks.checkDate(at, 'at');
    await this.#write('setVersionState', async (tx) => {
      await this.#lockKey(tx, keyId);
      const current = await this.#stateOf(tx, keyId, version);
      if (!current) throw new KeyNotFoundError(`keystore: key ${checks.quote(keyId)} has no version ${version}`);
      checks.checkTransition(current, state);
      await this.#setState(tx, keyId, version, state, at.getTime());
      await this.#bump(tx, keyId);
      return { keyId };
    });
  }

  async getLifecycle(keyId: string): Promise<KeyLifecycle | undefined> {
    this.#pool_();
    checks.checkText(keyId, 'key id');
    return this.#retry(
      'getLifecycle',
      async () => {
        const client = await this.#connect();
        let broken = true;
        try {
          // One snapshot for both reads.
          await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
          const life = await client.query<{
            revision: string;
            min_decryption_version: number;
            rotation_max_age_ms: string | null;
            rotation_max_uses: string | null;
          }>(
            `SELECT revision, min_decryption_version, rotation_max_age_ms, rotation_max_uses FROM ${this.#s}.keys WHERE id = $1`,
            [keyId],
          );
          const uses = await client.query<{ version: number; uses: string }>(
            `SELECT version, uses FROM ${this.#s}.key_versions WHERE key_id = $1 AND uses > 0 ORDER BY version`,
            [keyId],
          );
          await client.query('COMMIT');
          broken = false;
          const row = life.rows[0];
          if (!row) return undefined;
          const out: KeyLifecycle = {
            revision: Number(row.revision),
            minDecryptionVersion: row.min_decryption_version,
            rotation: {},
            uses: {},
          };
          if (row.rotation_max_age_ms !== null) out.rotation.maxAgeMs = Number(row.rotation_max_age_ms);
          if (row.rotation_max_uses !== null) out.rotation.maxUses = Number(row.rotation_max_uses);
          for (const u of uses.rows) out.uses[u.version] = Number(u.uses);
          return out;
        } finally {
          client.release(broken);
        }
      },
      true,
    );
  }

  /**
   * The key's row is locked first (FOR UPDATE), so the revision is compared while no other
   * transaction can change the key: of two updates against one revision exactly one commits.
   */
  async updateKey(update: KeyUpdate): Promise<void> {
    this.#pool_();
    checks.checkKeyUpdate(update);
    const { keyId } = update;
    await this.#write('updateKey', async (tx) => {
      const life = await tx.query<{ revision: string }>(
        `SELECT revision FROM ${this.#s}.keys WHERE id = $1 FOR UPDATE`,
        [keyId],
      );
      const row = life.rows[0];
      if (!row) throw new KeyNotFoundError(`keystore: key ${checks.quote(keyId)} not found`);
      if (Number(row.revision) !== update.expectedRevision) throw checks.conflictError(keyId);
      const added = update.addVersion;
      if (added && (await this.#stateOf(tx, keyId, added.version))) {
        throw new KeyExistsError(`keystore: key ${checks.quote(keyId)} already has version ${added.version}`);
      }
      const stateOf = async (v: number): Promise<KeyVersionState | undefined> =>
        (await this.#stateOf(tx, keyId, v)) ?? (added?.version === v ? added.state : undefined);
      if (update.primaryVersion !== undefined && !(await stateOf(update.primaryVersion))) {
        throw new KeyNotFoundError(`keystore: key ${checks.quote(keyId)} has no version ${update.primaryVersion}`);
      }
      const changes: Array<{ version: number; state: KeyVersionState }> = [];
      for (const change of update.states ?? []) {
        const from = await stateOf(change.version);
        if (!from) throw new KeyNotFoundError(`keystore: key ${checks.quote(keyId)} has no version ${change.version}`);
        checks.checkTransition(from, change.state);
        if (from !== change.state) changes.push(change);
      }
      const at = update.at.getTime();
      if (added) await this.#insertVersion(tx, added);
      for (const change of changes) await this.#setState(tx, keyId, change.version, change.state, at);
      const sets: string[] = ['updated_at = $2', 'revision = revision + 1'];
      const params: unknown[] = [keyId, at];
      const set = (column: string, value: unknown) => {
        params.push(value);
        sets.push(`${column} = $${params.length}`);
      };
      if (update.primaryVersion !== undefined) set('primary_version', update.primaryVersion);
      if (update.minDecryptionVersion !== undefined) set('min_decryption_version', update.minDecryptionVersion);
      if (update.rotation !== undefined) {
        set('rotation_max_age_ms', update.rotation.maxAgeMs ?? null);
        set('rotation_max_uses', update.rotation.maxUses ?? null);
      }
      await tx.query(`UPDATE ${this.#s}.keys SET ${sets.join(', ')} WHERE id = $1`, params);
      return { keyId };
    });
  }

  /** Not repeated after an unknown commit outcome: a reservation counted twice would waste a block. */
  async reserveUses(keyId: string, version: number, count: number): Promise<number> {
    this.#pool_();
    checks.checkText(keyId, 'key id');
    checks.checkVersionNumber(version);
    checks.checkUseCount(count);
    let total = 0;
    await this.#write('reserveUses', async (tx) => {
      const row = await tx.query<{ uses: string }>(
        `UPDATE ${this.#s}.key_versions SET uses = uses + $1 WHERE key_id = $2 AND version = $3 RETURNING uses`,
        [count, keyId, version],
      );
      if (!row.rows[0]) throw new KeyNotFoundError(`keystore: key ${checks.quote(keyId)} has no version ${version}`);
      total = Number(row.rows[0].uses);
      return undefined;
    });
    return total;
  }

  async getMeta(name: string): Promise<Uint8Array | undefined> {
    this.#pool_();
    checks.checkText(name, 'meta name');
    const rows = await this.#read<{ value: Buffer }>('getMeta', `SELECT value FROM ${this.#s}.meta WHERE name = $1`, [
      name,
    ]);
    return rows[0] && copyOut(rows[0].value);
  }

  async putMeta(name: string, value: Uint8Array): Promise<void> {
    this.#pool_();
    checks.checkText(name, 'meta name');
    checks.checkBytes(value, 'meta value');
    const copy = Buffer.from(value);
    await this.#write('putMeta', async (tx) => {
      await tx.query(
        `INSERT INTO ${this.#s}.meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value`,
        [name, copy],
      );
      return { root: true };
    });
  }

  /**
   * Compare-and-swap one meta record (the sealed root document of a rekey): one transaction under
   * the same advisory lock as updateMeta, so of two instances that read the same value exactly one
   * swaps and the other gets ConflictError with nothing written. A swap notifies like putMeta
   * (every instance's caches follow the new root); a refused one writes and notifies nothing.
   */
  async swapMeta(name: string, expected: Uint8Array | null, value: Uint8Array | null): Promise<void> {
    this.#pool_();
    checks.checkSwapMeta(name, expected, value);
    const copy = value === null ? null : Buffer.from(value);
    await this.#write('swapMeta', async (tx) => {
      await tx.query('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [`${this.#s}/meta/${name}`]);
      const rows = await tx.query<{ value: Buffer }>(`SELECT value FROM ${this.#s}.meta WHERE name = $1 FOR UPDATE`, [
        name,
      ]);
      const current = rows.rows[0] && copyOut(rows.rows[0].value);
      const matches = checks.metaMatches(current, expected);
      current?.fill(0);
      if (!matches) throw checks.metaConflictError(name);
      if (copy === null) await tx.query(`DELETE FROM ${this.#s}.meta WHERE name = $1`, [name]);
      else {
        await tx.query(
          `INSERT INTO ${this.#s}.meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value`,
          [name, copy],
        );
      }
      return { root: true };
    });
  }

  /**
   * One transaction under a transaction-level advisory lock on the record's name (taken before it is
   * read, so of many instances one at a time reads, changes and writes: the audit chain's appends
   * neither fork nor leave gaps). No generation bump and no notification: no key changed.
   */
  async updateMeta(
    name: string,
    change: (current: Uint8Array | undefined) => ReadonlyArray<{ name: string; value: Uint8Array }>,
  ): Promise<void> {
    this.#pool_();
    checks.checkText(name, 'meta name');
    await this.#write('updateMeta', async (tx) => {
      await tx.query('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [`${this.#s}/meta/${name}`]);
      const rows = await tx.query<{ value: Buffer }>(`SELECT value FROM ${this.#s}.meta WHERE name = $1`, [name]);
      const writes = change(rows.rows[0] ? copyOut(rows.rows[0].value) : undefined);
      for (const w of writes) {
        checks.checkText(w.name, 'meta name');
        checks.checkBytes(w.value, 'meta value');
      }
      for (const w of writes) {
        await tx.query(
          `INSERT INTO ${this.#s}.meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value`,
          [w.name, Buffer.from(w.value)],
        );
      }
      return undefined;
    });
  }

  async deleteMeta(name: string): Promise<void> {
    this.#pool_();
    checks.checkText(name, 'meta name');
    await this.#write('deleteMeta', async (tx) => {
      await tx.query(`DELETE FROM ${this.#s}.meta WHERE name = $1`, [name]);
      return { root: true };
    });
  }

  /**
   * Leases for fleet jobs (core's LeaseStore; docs/fleet.md §Jobs): the meta record
   * "lease/<name>" holds the holder, the fencing token and the expiry, all decided under that
   * row's lock and by the SERVER's clock (clock_timestamp()), so instances with skewed clocks
   * agree. Every grant draws a new token, also to the same holder (a restarted instance), which
   * fences out whatever its earlier self still had in flight. Lease writes bump no generation
   * and send no notification: they change no key.
   */
  async acquireLease(name: string, holder: string, ttlMs: number): Promise<LeaseGrant | LeaseRefusal> {
    this.#pool_();
    checks.checkText(name, 'lease name');
    checks.checkText(holder, 'lease holder');
    checkTtl(ttlMs);
    let out: LeaseGrant | LeaseRefusal | undefined;
    await this.#write('acquireLease', async (tx) => {
      const { lease, now } = await this.#lockLease(tx, name, true);
      if (lease && lease.holder !== holder && lease.expiresAt > now) {
        out = { heldBy: lease.holder, expiresInMs: lease.expiresAt - now };
        return undefined;
      }
      const token = (lease?.token ?? 0) + 1;
      await this.#putLease(tx, name, { holder, token, expiresAt: now + ttlMs });
      out = { name, holder, token };
      return undefined;
    });
    return out as LeaseGrant | LeaseRefusal;
  }

  async renewLease(grant: LeaseGrant, ttlMs: number): Promise<boolean> {
    this.#pool_();
    checkTtl(ttlMs);
    let held = false;
    await this.#write('renewLease', async (tx) => {
      const { lease, now } = await this.#lockLease(tx, grant.name, false);
      held = holds(lease, grant, now);
      if (held)
        await this.#putLease(tx, grant.name, { holder: grant.holder, token: grant.token, expiresAt: now + ttlMs });
      return undefined;
    });
    return held;
  }

  async releaseLease(grant: LeaseGrant): Promise<void> {
    this.#pool_();
    await this.#write('releaseLease', async (tx) => {
      const { lease, now } = await this.#lockLease(tx, grant.name, false);
      // Expired now; the token stays, so the next grant's is higher.
      if (holds(lease, grant, now))
        await this.#putLease(tx, grant.name, { holder: grant.holder, token: grant.token, expiresAt: 0 });
      return undefined;
    });
  }

  async putMetaUnderLease(grant: LeaseGrant, meta: string, value: Uint8Array | undefined): Promise<void> {
    this.#pool_();
    checks.checkText(meta, 'meta name');
    if (meta.startsWith('lease/'))
      throw new InvalidInputError('keystore: lease records are written through the lease calls only');
    if (value !== undefined) checks.checkBytes(value, 'meta value');
    const copy = value === undefined ? undefined : Buffer.from(value);
    await this.#write('putMetaUnderLease', async (tx) => {
      const { lease, now } = await this.#lockLease(tx, grant.name, false);
      if (!holds(lease, grant, now)) {
        throw new ConflictError(
          `keystore: lease ${grant.name} is no longer held by ${grant.holder} (expired, or taken by another instance); nothing was written`,
        );
      }
      const id = await tx.query<{ store_id: string }>(`SELECT store_id FROM ${this.#s}.store_state`);
      if (id.rows[0]?.store_id !== this.#storeId) throw storeReplaced('putMetaUnderLease');
      if (copy === undefined) await tx.query(`DELETE FROM ${this.#s}.meta WHERE name = $1`, [meta]);
      else
        await tx.query(
          `INSERT INTO ${this.#s}.meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value`,
          [meta, copy],
        );
      return undefined;
    });
  }

  /** The lease row, locked for this transaction (created empty first when `create`), and the server's time. */
  async #lockLease(tx: Tx, name: string, create: boolean): Promise<{ lease: LeaseRow | undefined; now: number }> {
    const row = `lease/${name}`;
    if (create) {
      await tx.query(`INSERT INTO ${this.#s}.meta (name, value) VALUES ($1, ''::bytea) ON CONFLICT (name) DO NOTHING`, [
        row,
      ]);
    }
    const r = await tx.query<{ value: Buffer; now: string }>(
      `SELECT value, (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS now FROM ${this.#s}.meta WHERE name = $1 FOR UPDATE`,
      [row],
    );
    const now = Number(r.rows[0]?.now ?? Date.now());
    return { lease: r.rows[0] ? parseLease(r.rows[0].value) : undefined, now };
  }

  async #putLease(tx: Tx, name: string, lease: LeaseRow): Promise<void> {
    await tx.query(
      `INSERT INTO ${this.#s}.meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value`,
      [`lease/${name}`, Buffer.from(JSON.stringify(lease))],
    );
  }

  /**
   * Under the store lock and with every key row locked, so no version can be added or destroyed
   * between the checks and the writes; any failure rolls all of it back.
   */
  async replaceRoot(update: RootUpdate): Promise<void> {
    this.#pool_();
    checks.checkRootUpdate(update);
    // Compare-and-swap fields (core's RootUpdate may carry them): read without depending on them.
    const cas = update as RootUpdate & { expectedRootId?: string; expectedMeta?: Uint8Array | null };
    const rewraps = update.versions.map((v) => ({ ...v, wrappedMaterial: Buffer.from(v.wrappedMaterial) }));
    const meta = { name: update.meta.name, value: Buffer.from(update.meta.value) };
    const expectedMeta =
      cas.expectedMeta === undefined || cas.expectedMeta === null ? cas.expectedMeta : Buffer.from(cas.expectedMeta);
    await this.#write('replaceRoot', async (tx) => {
      await this.#lockStore(tx);
      await tx.query(`SELECT id FROM ${this.#s}.keys ORDER BY id FOR UPDATE`);
      const live = await tx.query<{ key_id: string; version: number; state: KeyVersionState; root_id: string }>(
        `SELECT key_id, version, state, root_id FROM ${this.#s}.key_versions`,
      );
      const byId = new Map(live.rows.map((r) => [JSON.stringify([r.key_id, r.version]), r]));
      const listed = new Set<string>();
      for (const v of rewraps) {
        const id = JSON.stringify([v.keyId, v.version]);
        const current = byId.get(id);
        if (!current) throw checks.rewrapMissingError(v.keyId, v.version);
        if (current.state === 'destroyed') throw checks.rewrapDestroyedError(v.keyId, v.version);
        if (cas.expectedRootId !== undefined && current.root_id !== cas.expectedRootId) throw rootConflict();
        listed.add(id);
      }
      if (expectedMeta !== undefined) {
        const row = await tx.query<{ value: Buffer }>(`SELECT value FROM ${this.#s}.meta WHERE name = $1`, [meta.name]);
        const current = row.rows[0]?.value;
        const same = expectedMeta === null ? current === undefined : current?.equals(expectedMeta) === true;
        current?.fill(0);
        if (!same) throw rootConflict();
      }
      for (const r of live.rows) {
        if (r.state !== 'destroyed' && !listed.has(JSON.stringify([r.key_id, r.version]))) {
          throw checks.rewrapUnlistedError(r.key_id, r.version);
        }
      }
      const at = update.at.getTime();
      for (const v of rewraps) {
        await tx.query(
          `UPDATE ${this.#s}.key_versions SET root_id = $1, wrapped_material = $2, updated_at = $3 WHERE key_id = $4 AND version = $5`,
          [v.rootId, v.wrappedMaterial, at, v.keyId, v.version],
        );
      }
      await tx.query(
        `INSERT INTO ${this.#s}.meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value`,
        [meta.name, meta.value],
      );
      return { root: true };
    });
  }

  /**
   * Listen for changes committed by any process on this store (LISTEN/NOTIFY on a connection of
   * its own, reconnected with backoff), with a poll of the store's change counter as a fallback for
   * notifications missed meanwhile. Resolves once listening; returns the function that stops it.
   * Listeners are called after the change committed; "resync" means: drop everything cached.
   */
  async watch(listener: KeyStoreChangeListener, options: WatchOptions = {}): Promise<() => Promise<void>> {
    this.#pool_();
    if (typeof listener !== 'function') throw new InvalidInputError('keystore: watch: the listener must be a function');
    const pollMs = options.pollIntervalMs ?? 1000;
    if (!Number.isSafeInteger(pollMs) || pollMs < 0) {
      throw new InvalidInputError('keystore: watch: pollIntervalMs must be an integer ≥ 0');
    }
    const listen = options.listen ?? true;
    if (typeof listen !== 'boolean') throw new InvalidInputError('keystore: watch: listen must be true or false');
    if (!listen && pollMs === 0) {
      throw new InvalidInputError('keystore: watch: with listen: false, pollIntervalMs must be above 0');
    }
    let stopped = false;
    let seen = await this.#generation();
    let client: pg.Client | undefined;
    let timer: NodeJS.Timeout | undefined;
    let backoff = 50;
    const report = (err: unknown) => options.onError?.(toStoreError('watch', err));
    const emit = (change: KeyStoreChange) => {
      try {
        listener(change);
      } catch {
        // A listener's failure is its own; the others still hear about the change.
      }
    };
    const connect = async (): Promise<void> => {
      if (stopped) return;
      const c = new pg.Client({ ...this.#config, application_name: 'keywarden-watch' });
      c.on('error', () => {});
      c.on('notification', (msg) => {
        if (msg.channel !== this.#channel || !msg.payload) return;
        let parsed: { g?: unknown; k?: unknown; r?: unknown };
        try {
          parsed = JSON.parse(msg.payload) as typeof parsed;
        } catch {
          return;
        }
        const g = Number(parsed.g);
        if (Number.isSafeInteger(g) && g > seen) seen = g;
        if (typeof parsed.k === 'string') emit({ kind: 'key', keyId: parsed.k, generation: g });
        else emit({ kind: 'root', generation: g });
      });
      c.on('end', () => {
        if (client === c) client = undefined;
        if (stopped) return;
        // Notifications sent while we were away are lost: resync, then listen again.
        setTimeout(() => void reconnect(), backoff).unref();
      });
      try {
        await c.connect();
        await c.query(`LISTEN ${pg.escapeIdentifier(this.#channel)}`);
      } catch (err) {
        report(err);
        await c.end().catch(() => {});
        throw err;
      }
      if (stopped) {
        await c.end().catch(() => {});
        return;
      }
      client = c;
      backoff = 50;
    };
    const reconnect = async (): Promise<void> => {
      if (stopped) return;
      try {
        await connect();
        const g = await this.#generation();
        seen = Math.max(seen, g);
        emit({ kind: 'resync', generation: g });
      } catch {
        backoff = Math.min(backoff * 2, 1000);
        if (!stopped) setTimeout(() => void reconnect(), backoff).unref();
      }
    };
    if (listen) await connect();
    if (pollMs > 0) {
      const poll = async () => {
        if (stopped) return;
        try {
          const g = await this.#generation();
          if (g > seen) {
            seen = g;
            emit({ kind: 'resync', generation: g });
          }
        } catch (err) {
          report(err);
        }
        if (!stopped) timer = setTimeout(() => void poll(), pollMs).unref();
      };
      timer = setTimeout(() => void poll(), pollMs).unref();
    }
    const stop = async () => {
      if (stopped) return;
      stopped = true;
      this.#watchers.delete(stop);
      if (timer) clearTimeout(timer);
      await client?.end().catch(() => {});
    };
    this.#watchers.add(stop);
    return stop;
  }

  /** Idempotent: stops every watch and closes the pool. */
  async close(): Promise<void> {
    const pool = this.#pool;
    if (!pool) return;
    this.#pool = undefined;
    await Promise.all([...this.#watchers].map((stop) => stop()));
    await pool.end().catch(() => {});
  }

  // ── Internals ───────────────────────────────────────────────────────────────────────────────

  #pool_(): pg.Pool {
    if (!this.#pool) throw new ClosedError('keystore: the PostgreSQL key store is closed');
    return this.#pool;
  }

  async #connect(): Promise<pg.PoolClient> {
    const client = await this.#pool_().connect();
    // A connection that ends while checked out (server restart, pg_terminate_backend) fails its
    // query, and pg then also emits 'error' on the client: without a listener that would crash the
    // process. The query's failure is what we act on.
    if (!GUARDED.has(client)) {
      GUARDED.add(client);
      client.on('error', () => {});
    }
    return client;
  }

  async #generation(): Promise<number> {
    const rows = await this.#read<{ generation: string }>('watch', `SELECT generation FROM ${this.#s}.store_state`, []);
    return Number(rows[0]?.generation ?? 0);
  }

  /** Serializes createKey and replaceRoot across every process on this store (released at commit). */
  async #lockStore(tx: Tx): Promise<void> {
    await tx.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`keywarden.${this.#schema}.store`]);
  }

  /** Lock the key's row for this transaction; false when there is no such key. */
  async #lockKey(tx: Tx, keyId: string): Promise<boolean> {
    const r = await tx.query(`SELECT 1 FROM ${this.#s}.keys WHERE id = $1 FOR UPDATE`, [keyId]);
    return (r.rowCount ?? 0) > 0;
  }

  async #stateOf(tx: Tx, keyId: string, version: number): Promise<KeyVersionState | undefined> {
    const r = await tx.query<{ state: KeyVersionState }>(
      `SELECT state FROM ${this.#s}.key_versions WHERE key_id = $1 AND version = $2`,
      [keyId, version],
    );
    return r.rows[0]?.state;
  }

  async #insertVersion(tx: Tx, v: KeyVersionRecord): Promise<void> {
    await tx.query(`INSERT INTO ${this.#s}.key_versions (${VERSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)`, [
      v.keyId,
      v.version,
      v.state,
      v.rootId,
      Buffer.from(v.wrappedMaterial),
      v.createdAt.getTime(),
      v.updatedAt.getTime(),
    ]);
  }

  /** `destroyed` erases the material in the same statement. */
  async #setState(tx: Tx, keyId: string, version: number, state: KeyVersionState, at: number): Promise<void> {
    if (state === 'destroyed') {
      await tx.query(
        `UPDATE ${this.#s}.key_versions SET state = 'destroyed', wrapped_material = '\\x'::bytea, updated_at = $1 WHERE key_id = $2 AND version = $3`,
        [at, keyId, version],
      );
    } else {
      await tx.query(
        `UPDATE ${this.#s}.key_versions SET state = $1, updated_at = $2 WHERE key_id = $3 AND version = $4`,
        [state, at, keyId, version],
      );
    }
  }

  async #bump(tx: Tx, keyId: string): Promise<void> {
    await tx.query(`UPDATE ${this.#s}.keys SET revision = revision + 1 WHERE id = $1`, [keyId]);
  }

  async #read<R extends pg.QueryResultRow>(operation: string, sql: string, params: unknown[]): Promise<R[]> {
    return this.#retry(
      operation,
      async () => {
        const result = await this.#pool_().query<R>(sql, params);
        return result.rows;
      },
      true,
    );
  }

  /**
   * One transaction: `body` runs after BEGIN; what it reports changed is counted in the store's
   * generation and announced by NOTIFY in the same transaction (delivered on commit). Retried when
   * the failure came before COMMIT was sent; never after (the outcome is then unknown).
   */
  async #write(operation: string, body: (tx: Tx) => Promise<Changed | undefined>): Promise<void> {
    let committing = false;
    await this.#retry(
      operation,
      async () => {
        committing = false;
        const tx = await this.#connect();
        let broken = false;
        try {
          await tx.query('BEGIN');
          const changed = await body(tx);
          if (changed) {
            const g = await tx.query<{ generation: string; store_id: string }>(
              `UPDATE ${this.#s}.store_state SET generation = generation + 1 RETURNING generation, store_id`,
            );
            if (g.rows[0]?.store_id !== this.#storeId) throw storeReplaced(operation);
            const payload = JSON.stringify(
              changed.keyId !== undefined
                ? { g: Number(g.rows[0]?.generation), k: changed.keyId }
                : { g: Number(g.rows[0]?.generation), r: 1 },
            );
            await tx.query('SELECT pg_notify($1, $2)', [this.#channel, payload]);
          }
          committing = true;
          await tx.query('COMMIT');
        } catch (err) {
          // A refused change (conflict, missing key…) rolls back cleanly and the connection goes
          // back to the pool; a connection that cannot even roll back is discarded.
          broken =
            committing ||
            !(await tx.query('ROLLBACK').then(
              () => true,
              () => false,
            ));
          throw err;
        } finally {
          tx.release(broken);
        }
      },
      () => !committing,
    );
  }

  /** Repeat `fn` while it fails transiently and `safe` says a repeat cannot apply anything twice. */
  async #retry<T>(operation: string, fn: () => Promise<T>, safe: boolean | (() => boolean)): Promise<T> {
    // Counted from the first failure, not from the call: a process that stalled inside its
    // transaction (a GC pause, a frozen VM, SIGSTOP) longer than retryForMs, and whose session the
    // server ended meanwhile, still repeats the write once it runs again, and so learns what is
    // true now (a lease taken over is then a KW_CONFLICT, not a lost connection).
    let deadline: number | undefined;
    let delay = 50;
    for (;;) {
      try {
        return await fn();
      } catch (err) {
        if (KeywardenError.isInstance(err)) throw err;
        deadline ??= Date.now() + this.#retryForMs;
        const transient = isTransient(err);
        const repeatable = typeof safe === 'function' ? safe() : safe;
        if (transient && !repeatable) {
          throw new KeyStoreError(
            `keystore: ${operation}: the connection to PostgreSQL was lost while the change was committing; it may or may not have been applied — read the key again before repeating it`,
            { cause: err },
          );
        }
        if (!transient || Date.now() + delay > deadline || !this.#pool) throw toStoreError(operation, err);
        await new Promise((resolve) => setTimeout(resolve, delay));
        delay = Math.min(delay * 2, 1000);
        this.#pool_();
      }
    }
  }

  /** Create or upgrade the schema, or check it (create: false). */
  async #migrate(create: boolean): Promise<void> {
    const client = await this.#connect();
    const s = this.#s;
    let broken = true;
    try {
      await client.query('BEGIN');
      await client.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`keywarden.${this.#schema}.migrate`]);
      const tables = await client.query<{ table_name: string }>(
        'SELECT table_name FROM information_schema.tables WHERE table_schema = $1',
        [this.#schema],
      );
      const names = new Set(tables.rows.map((r) => r.table_name));
      const marker = await client.query<{ comment: string | null }>(
        'SELECT obj_description(oid, $2) AS comment FROM pg_namespace WHERE nspname = $1',
        [this.#schema, 'pg_namespace'],
      );
      const schemaExists = marker.rows.length > 0;
      const ours = marker.rows[0]?.comment === SCHEMA_MARKER;
      if (schemaExists && !ours && names.size > 0) {
        throw new StoreCorruptError(
          `keystore: schema ${checks.quote(this.#schema)} holds tables that are not a Keywarden key store; nothing was changed (choose another schema)`,
        );
      }
      if (ours && !names.has('schema_version')) {
        throw new StoreCorruptError(
          `keystore: schema ${checks.quote(this.#schema)} is marked as a Keywarden key store but its schema_version table is missing; restore it from a backup (nothing was changed)`,
        );
      }
      let current = 0;
      if (names.has('schema_version')) {
        const v = await client.query<{ v: number | null }>(`SELECT max(version) AS v FROM ${s}.schema_version`);
        current = v.rows[0]?.v ?? 0;
      }
      if (current > SCHEMA_VERSION) {
        throw new KeyStoreError(
          `keystore: database schema version ${current} is newer than this Keywarden (${SCHEMA_VERSION})`,
        );
      }
      if (!create && current === 0) {
        throw new KeyStoreError(
          `keystore: no Keywarden key store in schema ${checks.quote(this.#schema)} (nothing was created)`,
        );
      }
      if (current < SCHEMA_VERSION) {
        await client.query(`CREATE SCHEMA IF NOT EXISTS ${s}`);
        await client.query(`COMMENT ON SCHEMA ${s} IS '${SCHEMA_MARKER}'`);
        await client.query(SCHEMA_VERSION_TABLE.replaceAll('{s}', s));
        for (const m of MIGRATIONS) {
          if (m.version <= current) continue;
          await client.query(m.sql.replaceAll('{s}', s));
          await client.query(`INSERT INTO ${s}.schema_version (version, applied_at) VALUES ($1, $2)`, [
            m.version,
            Date.now(),
          ]);
        }
      }
      await client.query('COMMIT');
      broken = false;
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {});
      throw err;
    } finally {
      client.release(broken);
    }
  }
}

// ── Helpers ────────────────────────────────────────────────────────────────────────────────────

function readPassword(file: string): string {
  try {
    return readFileSync(file, 'utf8').replace(/\r?\n$/, '');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'unknown error';
    // The path is not secret; its contents are never quoted.
    throw new KeyStoreError(`keystore: cannot read the PostgreSQL password file (${code})`, { cause: err });
  }
}

function storeReplaced(operation: string): StoreReplacedError {
  return new StoreReplacedError(
    `keystore: ${operation}: the key store in PostgreSQL is no longer the one this process opened (its schema was dropped and created again, or restored from another store); nothing was written. Stop this process and start it again`,
  );
}

function rootConflict(): ConflictError {
  return new ConflictError(
    'keystore: replaceRoot: the store changed since this root rotation read it (another root rotation or rekey committed first); nothing was changed — read it again and retry if still wanted',
  );
}

function isTransient(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown } | undefined;
  const code = typeof e?.code === 'string' ? e.code : undefined;
  if (
    code !== undefined &&
    (TRANSIENT_ERRNO.has(code) || (/^[0-9A-Z]{5}$/.test(code) && TRANSIENT_SQLSTATE.test(code)))
  ) {
    return true;
  }
  // pg's own messages for a connection that ended or timed out (no SQLSTATE, no errno).
  const message = typeof e?.message === 'string' ? e.message : '';
  return /Connection terminated|connection timeout|Client has encountered a connection error|Connection is closed|timeout exceeded when trying to connect/i.test(
    message,
  );
}

/** A driver error as a Keywarden error naming the operation and the SQLSTATE or errno only. */
function toStoreError(operation: string, err: unknown): KeywardenError {
  if (KeywardenError.isInstance(err)) return err as KeywardenError;
  const code = (err as { code?: unknown } | undefined)?.code;
  if (typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code)) {
    // undefined_table / invalid_schema_name: the store's schema is gone under a running process.
    if (code === '42P01' || code === '3F000') return storeReplaced(operation);
    if (code === '23505')
      return new KeyExistsError(`keystore: ${operation}: the key or version already exists`, { cause: err });
    if (code === '23503')
      return new KeyNotFoundError(`keystore: ${operation}: the key or version does not exist`, { cause: err });
    if (code === '28P01' || code === '28000') {
      return new KeyStoreError(`keystore: ${operation}: PostgreSQL refused the credentials (SQLSTATE ${code})`, {
        cause: err,
      });
    }
    if (/^XX00[12]$/.test(code)) {
      return new StoreCorruptError(
        `keystore: ${operation}: PostgreSQL reports damaged data (SQLSTATE ${code}); restore the store from a backup`,
        { cause: err },
      );
    }
    return new KeyStoreError(`keystore: ${operation} failed (SQLSTATE ${code})`, { cause: err });
  }
  if (typeof code === 'string' && /^E[A-Z]+$/.test(code)) {
    return new KeyStoreError(`keystore: ${operation}: cannot reach PostgreSQL (${code})`, { cause: err });
  }
  if (isTransient(err))
    return new KeyStoreError(`keystore: ${operation}: the connection to PostgreSQL was lost`, { cause: err });
  return new KeyStoreError(`keystore: ${operation} failed`, { cause: err });
}

function keyParams(key: KeyRecord): unknown[] {
  return [
    key.id,
    key.name,
    key.scope.environment ?? null,
    key.scope.service ?? null,
    key.scope.tenant ?? null,
    key.scope.purpose ?? null,
    key.primaryVersion,
    key.createdAt.getTime(),
    key.updatedAt.getTime(),
  ];
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
    createdAt: new Date(Number(row.created_at)),
    updatedAt: new Date(Number(row.updated_at)),
  };
}

function rowToVersion(row: VersionRow): KeyVersionRecord {
  return {
    keyId: row.key_id,
    version: row.version,
    state: row.state,
    rootId: row.root_id,
    wrappedMaterial: copyOut(row.wrapped_material),
    createdAt: new Date(Number(row.created_at)),
    updatedAt: new Date(Number(row.updated_at)),
  };
}

/** A plain Uint8Array copy of a bytea read from PostgreSQL; the driver's Buffer is wiped. */
function copyOut(blob: Buffer): Uint8Array {
  const out = new Uint8Array(blob);
  blob.fill(0);
  return out;
}

interface LeaseRow {
  holder: string;
  token: number;
  /** Server time, ms since the epoch; 0 when released. */
  expiresAt: number;
}

function parseLease(value: Buffer): LeaseRow | undefined {
  if (value.length === 0) return undefined;
  try {
    const r = JSON.parse(value.toString('utf8')) as Partial<LeaseRow>;
    if (typeof r.holder === 'string' && Number.isSafeInteger(r.token) && Number.isSafeInteger(r.expiresAt)) {
      return r as LeaseRow;
    }
  } catch {
    // Fall through.
  }
  throw new StoreCorruptError('keystore: a lease record is damaged');
}

function holds(lease: LeaseRow | undefined, grant: LeaseGrant, now: number): boolean {
  return lease !== undefined && lease.holder === grant.holder && lease.token === grant.token && lease.expiresAt > now;
}

function checkTtl(ttlMs: number): void {
  if (!Number.isSafeInteger(ttlMs) || ttlMs < 1)
    throw new InvalidInputError('keystore: a lease TTL must be a positive integer (ms)');
}

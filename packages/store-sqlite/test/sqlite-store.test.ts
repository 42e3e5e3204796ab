import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { KeyRecord, KeyVersionRecord } from '@keywarden/core';
import { describeKeyStoreConformance } from '@keywarden/testkit';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SCHEMA_VERSION, SqliteKeyStore } from '../src/index.js';

const PACKAGE_DIR = fileURLToPath(new URL('..', import.meta.url));

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'kw-sqlite-'));
}

describeKeyStoreConformance('SqliteKeyStore (file)', async () => {
  const dir = tempDir();
  return {
    store: SqliteKeyStore.open(join(dir, 'keys.db')),
    // Another connection to the same file, as another process would open it.
    connect: async () => SqliteKeyStore.open(join(dir, 'keys.db')),
    cleanup: async () => rmSync(dir, { recursive: true, force: true }),
  };
});

describeKeyStoreConformance('SqliteKeyStore (:memory:)', async () => ({ store: SqliteKeyStore.open(':memory:') }));

// ── Fixtures ─────────────────────────────────────────────────────────────────────────────────────

const T0 = Date.UTC(2025, 5, 1, 12, 0, 0, 123);

function keyRecord(id: string, name: string): KeyRecord {
  return {
    id,
    name,
    scope: { environment: 'test', service: 'store-sqlite' },
    primaryVersion: 1,
    createdAt: new Date(T0),
    updatedAt: new Date(T0),
  };
}

function versionRecord(keyId: string, version: number, material: Uint8Array = randomBytes(48)): KeyVersionRecord {
  return {
    keyId,
    version,
    state: 'enabled',
    rootId: 'root_test',
    wrappedMaterial: new Uint8Array(material),
    createdAt: new Date(T0 + version),
    updatedAt: new Date(T0 + version),
  };
}

function errorOf(fn: () => unknown): Error & { code?: string } {
  try {
    fn();
  } catch (err) {
    return err as Error & { code?: string };
  }
  throw new Error('expected the call to throw');
}

/** True when `needle` appears in the database file or its -wal / -shm files. */
function filesContain(path: string, needle: Uint8Array): boolean {
  return [path, `${path}-wal`, `${path}-shm`].some(
    (file) => existsSync(file) && readFileSync(file).indexOf(Buffer.from(needle)) >= 0,
  );
}

/** Whole-key invariants checked with plain SQL, independently of the store's code. */
function checkNoHalfWrittenKeys(path: string): void {
  const db = new Database(path);
  try {
    expect(db.pragma('integrity_check', { simple: true })).toBe('ok');
    expect(db.pragma('foreign_key_check')).toEqual([]);
    const keysWithoutPrimary = db
      .prepare(
        `SELECT count(*) AS n FROM keys k WHERE NOT EXISTS
           (SELECT 1 FROM key_versions v WHERE v.key_id = k.id AND v.version = k.primary_version)`,
      )
      .get() as { n: number };
    const versionsWithoutKey = db
      .prepare('SELECT count(*) AS n FROM key_versions v WHERE NOT EXISTS (SELECT 1 FROM keys k WHERE k.id = v.key_id)')
      .get() as { n: number };
    expect(keysWithoutPrimary.n, 'key rows without their version row').toBe(0);
    expect(versionsWithoutKey.n, 'version rows without their key row').toBe(0);
  } finally {
    db.close();
  }
}

// ── A writer in another process (plain SQL through better-sqlite3) ───────────────────────────────

const WRITER_SCRIPT = `
import { createRequire } from 'node:module';
import { randomBytes } from 'node:crypto';
const [pkgDir, dbPath, mode, arg] = process.argv.slice(2);
const Database = createRequire(pkgDir + '/package.json')('better-sqlite3');
const db = new Database(dbPath, { timeout: 5000 });
db.pragma('foreign_keys = ON');
db.pragma('synchronous = FULL');
const sleep = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
const say = (line) => process.stdout.write(line + '\\n');
const now = Date.now();
const insertKey = db.prepare(
  'INSERT INTO keys (id, name, primary_version, created_at, updated_at) VALUES (?, ?, 1, ?, ?)');
const insertVersion = db.prepare(
  "INSERT INTO key_versions (key_id, version, state, root_id, wrapped_material, created_at, updated_at) " +
  "VALUES (?, 1, 'enabled', 'root_child', ?, ?, ?)");
// Key row first, version row second: between the two the key is half-written.
function writeKey(id, name, materialBytes) {
  insertKey.run(id, name, now, now);
  insertVersion.run(id, randomBytes(materialBytes), now, now);
}

if (mode === 'hang-in-transaction') {
  // A tiny page cache makes SQLite spill uncommitted pages into the WAL before the kill.
  db.pragma('cache_size = 4');
  db.prepare('BEGIN IMMEDIATE').run();
  for (let i = 0; i < 200; i++) writeKey('kek_half' + i, 'half-' + i, 4096);
  insertKey.run('kek_orphan', 'orphan', now, now);
  say('ready');
  setInterval(() => {}, 60000);
} else if (mode === 'hang-in-root-rotation') {
  // A root rotation done by hand, killed before COMMIT: every version rewrapped, the root replaced.
  db.pragma('cache_size = 4');
  db.prepare('BEGIN IMMEDIATE').run();
  db.prepare("UPDATE key_versions SET root_id = 'root_child', wrapped_material = randomblob(4096) WHERE state <> 'destroyed'").run();
  db.prepare("UPDATE meta SET value = randomblob(4096) WHERE name = 'root'").run();
  say('ready');
  setInterval(() => {}, 60000);
} else if (mode === 'commit-loop') {
  const [limit, pauseMs] = arg.split(',').map(Number);
  const write = db.transaction((i) => writeKey('kek_child' + i, 'child-' + String(i).padStart(5, '0'), 64));
  for (let i = 0; i < limit; i++) {
    write.immediate(i);
    say('committed ' + (i + 1));
    if (pauseMs > 0) sleep(pauseMs);
  }
  say('done');
} else if (mode === 'hold-lock') {
  db.prepare('BEGIN IMMEDIATE').run();
  writeKey('kek_locker', 'locker', 64);
  say('locked');
  sleep(Number(arg));
  db.prepare('COMMIT').run();
  say('done');
}
`;

interface Writer {
  child: ChildProcess;
  /** Resolves with the first stdout line matching `pattern`. */
  waitFor(pattern: RegExp): Promise<string>;
  lines: string[];
  exited: Promise<void>;
  hasExited(): boolean;
}

function startWriter(dir: string, path: string, mode: string, arg = ''): Writer {
  const script = join(dir, 'writer.mjs');
  writeFileSync(script, WRITER_SCRIPT);
  const child = spawn(process.execPath, [script, PACKAGE_DIR, path, mode, arg], { stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: string[] = [];
  const waiters: Array<{ pattern: RegExp; resolve: (line: string) => void; reject: (err: Error) => void }> = [];
  let stderr = '';
  let done = false;
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  createInterface({ input: child.stdout! }).on('line', (line) => {
    lines.push(line);
    for (const w of waiters.splice(0)) {
      if (w.pattern.test(line)) w.resolve(line);
      else waiters.push(w);
    }
  });
  const exited = new Promise<void>((resolve) => {
    child.on('exit', (code, signal) => {
      done = true;
      for (const w of waiters.splice(0))
        w.reject(new Error(`writer exited (${code ?? signal}) before ${w.pattern}: ${stderr}`));
      resolve();
    });
  });
  return {
    child,
    lines,
    exited,
    hasExited: () => done,
    waitFor: (pattern) =>
      new Promise<string>((resolve, reject) => {
        const line = lines.find((l) => pattern.test(l));
        if (line !== undefined) resolve(line);
        else if (done) reject(new Error(`writer exited before ${pattern}: ${stderr}`));
        else waiters.push({ pattern, resolve, reject });
      }),
  };
}

// ── SQLite-specific behaviour ──────────────────────────────────────────────────────────────────────

describe('SqliteKeyStore', () => {
  let dir: string;
  let path: string;
  const opened: SqliteKeyStore[] = [];
  const writers: Writer[] = [];

  function open(options?: Parameters<typeof SqliteKeyStore.open>[1]): SqliteKeyStore {
    const store = SqliteKeyStore.open(path, options);
    opened.push(store);
    return store;
  }

  beforeEach(() => {
    dir = tempDir();
    path = join(dir, 'keys.db');
  });

  afterEach(async () => {
    for (const w of writers.splice(0)) {
      if (!w.hasExited()) w.child.kill('SIGKILL');
      await w.exited;
    }
    for (const s of opened.splice(0)) await s.close();
    rmSync(dir, { recursive: true, force: true });
  });

  describe('damaged, empty, replaced and full (issue 6)', () => {
    /** A closed store (WAL folded into the file) with a sealed-root-like meta record and a key. */
    async function closedStore(): Promise<void> {
      const store = open();
      await store.putMeta('root', Uint8Array.of(1, 2, 3));
      await store.createKey(keyRecord('kek_a', 'alpha'), versionRecord('kek_a', 1));
      await store.close();
      expect(existsSync(`${path}-wal`)).toBe(false);
    }

    function fileDigest(): string {
      return readFileSync(path).toString('base64');
    }

    it('open checks the file: a meta index that lost its entries (the root would read as "not found") is StoreCorruptError (KW_STORE_CORRUPT) read-write and read-only, pointing at integrity_check, REINDEX and backups; nothing changes', async () => {
      await closedStore();
      // Damage the meta table's index the way a torn write would: its leaf page says it holds no cells.
      const raw = new Database(path, { readonly: true });
      const rootpage = raw
        .prepare("SELECT rootpage FROM sqlite_schema WHERE name = 'sqlite_autoindex_meta_1'")
        .pluck()
        .get() as number;
      const pageSize = raw.pragma('page_size', { simple: true }) as number;
      raw.close();
      const bytes = readFileSync(path);
      const header = (rootpage - 1) * pageSize + (rootpage === 1 ? 100 : 0);
      expect(bytes[header]).toBe(0x0a); // a leaf index b-tree page
      bytes.writeUInt16BE(0, header + 3);
      writeFileSync(path, bytes);
      // The failure this prevents: through the index, the record is simply not there.
      const probe = new Database(path, { readonly: true });
      expect(probe.prepare("SELECT count(*) FROM meta WHERE name = 'root'").pluck().get()).toBe(0);
      expect(probe.prepare("SELECT count(*) FROM meta NOT INDEXED WHERE name = 'root'").pluck().get()).toBe(1);
      probe.close();
      const before = fileDigest();
      for (const options of [{}, { create: false }, { readonly: true }]) {
        const err = errorOf(() => open(options));
        expect(err.code).toBe('KW_STORE_CORRUPT');
        expect(err.message).toMatch(
          /^keystore: the database file is damaged \((Fragmentation|.*sqlite_autoindex_meta_1).*\); nothing was changed\. Check it with `sqlite3 FILE 'PRAGMA integrity_check'`, rebuild damaged indexes with `REINDEX`, or restore it from a backup$/,
        );
      }
      expect(fileDigest()).toBe(before);
      // REINDEX, as the message says, brings everything back.
      const repair = new Database(path);
      repair.exec('REINDEX');
      repair.close();
      const store = open({ create: false });
      expect(Array.from((await store.getMeta('root')) ?? [])).toEqual([1, 2, 3]);
    });

    it('an empty (zero-length) file: create:false and read-only opens are StoreCorruptError and leave it zero bytes with no -wal or -shm; a missing file with create:false is KeyStoreError and is not created', () => {
      writeFileSync(path, '');
      for (const options of [{ create: false }, { readonly: true }]) {
        const err = errorOf(() => open(options));
        expect(err.code).toBe('KW_STORE_CORRUPT');
        expect(err.message).toBe(
          'keystore: the file is empty, not a Keywarden key store: it was never initialized, or was truncated; restore it from a backup (nothing was changed)',
        );
        expect(statSync(path).size).toBe(0);
        expect(existsSync(`${path}-wal`)).toBe(false);
        expect(existsSync(`${path}-shm`)).toBe(false);
      }
      rmSync(path);
      const err = errorOf(() => open({ create: false }));
      expect(err.code).toBe('KW_STORE');
      expect(existsSync(path)).toBe(false);
    });

    it('a file of random bytes is StoreCorruptError ("not a SQLite database") and is left as it was', () => {
      const junk = randomBytes(8192);
      writeFileSync(path, junk);
      for (const options of [{}, { create: false }, { readonly: true }]) {
        const err = errorOf(() => open(options));
        expect(err.code).toBe('KW_STORE_CORRUPT');
        expect(err.message).toMatch(/^keystore: open: the file is not a SQLite database/);
      }
      expect(readFileSync(path).equals(junk)).toBe(true);
    });

    it('the WAL deleted under an open store: its next write is StoreReplacedError (KW_STORE_REPLACED), every new open refuses, and once it closes nothing it acknowledged is lost', async () => {
      const a = open();
      await a.createKey(keyRecord('kek_a', 'alpha'), versionRecord('kek_a', 1));
      rmSync(`${path}-wal`);
      const err = await a.putMeta('root', Uint8Array.of(9)).then(
        () => undefined,
        (e: Error & { code?: string }) => e,
      );
      expect(err?.code).toBe('KW_STORE_REPLACED');
      expect(err?.message).toMatch(
        /^keystore: putMeta: the database file or its WAL is no longer the one this process opened/,
      );
      for (const options of [{}, { readonly: true }]) {
        const refused = errorOf(() => open(options));
        expect(refused.code).toBe('KW_STORE_REPLACED');
        expect(refused.message).toMatch(
          /^keystore: the WAL file \(-wal\) of this key store was deleted while another process still has it open/,
        );
      }
      await a.close();
      const b = open({ create: false });
      expect((await b.getKey('alpha'))?.id).toBe('kek_a');
      expect(await b.getMeta('root')).toBeUndefined();
    });

    it('the database file replaced under an open store (a restore moved over it): the next write is StoreReplacedError and goes nowhere', async () => {
      const a = open();
      await a.createKey(keyRecord('kek_a', 'alpha'), versionRecord('kek_a', 1));
      const other = join(dir, 'other.db');
      const o = SqliteKeyStore.open(other);
      await o.close();
      renameSync(other, path);
      const err = await a.createKey(keyRecord('kek_b', 'beta'), versionRecord('kek_b', 1)).then(
        () => undefined,
        (e: Error & { code?: string }) => e,
      );
      expect(err?.code).toBe('KW_STORE_REPLACED');
    });

    const canMount = process.getuid?.() === 0 && process.platform === 'linux';
    // Reason for the skip: filling a disk needs a small file system of its own (a tmpfs mounted by root).
    it.skipIf(!canMount)(
      'a full disk is reported as "no space left on device", not as an SQLite I/O code; nothing is half-written',
      async () => {
        const mnt = join(dir, 'small');
        mkdirSync(mnt);
        const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', mnt]);
        if (mounted.status !== 0) return; // a container without CAP_SYS_ADMIN: nothing to fill
        try {
          const store = SqliteKeyStore.open(join(mnt, 'keys.db'));
          const fd = openSync(join(mnt, 'fill'), 'w');
          try {
            for (;;) writeSync(fd, Buffer.alloc(4096));
          } catch (e) {
            expect((e as NodeJS.ErrnoException).code).toBe('ENOSPC');
          }
          closeSync(fd);
          let err: (Error & { code?: string }) | undefined;
          for (let i = 0; i < 200 && !err; i++) {
            err = await store.putMeta(`m${i}`, new Uint8Array(3000)).then(
              () => undefined,
              (e: Error & { code?: string }) => e,
            );
          }
          expect(err?.code).toBe('KW_STORE');
          expect(err?.message).toMatch(
            /^keystore: putMeta: no space left on device \(the disk holding the key store is full; SQLITE_[A-Z_]+\); nothing was changed/,
          );
          await store.close().catch(() => {});
          rmSync(join(mnt, 'fill'));
          const reopened = SqliteKeyStore.open(join(mnt, 'keys.db'), { create: false });
          expect((await reopened.listKeys()).length).toBe(0);
          await reopened.close();
        } finally {
          spawnSync('umount', [mnt]);
        }
      },
    );
  });

  describe('persistence and schema', () => {
    it('keys, versions, states and meta persist across close and reopen', async () => {
      const store = open();
      await store.createKey(keyRecord('kek_a', 'alpha'), versionRecord('kek_a', 1));
      await store.addVersion(versionRecord('kek_a', 2), true);
      await store.setVersionState('kek_a', 1, 'disabled', new Date(T0 + 50));
      await store.createKey(keyRecord('kek_b', 'beta'), versionRecord('kek_b', 1));
      await store.setVersionState('kek_b', 1, 'destroyed', new Date(T0 + 60));
      await store.putMeta('sealed-root', Uint8Array.of(1, 2, 3));
      const keys = await store.listKeys();
      const versionsA = await store.listVersions('kek_a');
      const versionsB = await store.listVersions('kek_b');
      await store.close();

      const reopened = open();
      expect(await reopened.listKeys()).toStrictEqual(keys);
      expect(await reopened.listVersions('kek_a')).toStrictEqual(versionsA);
      expect(await reopened.listVersions('kek_b')).toStrictEqual(versionsB);
      expect(Array.from((await reopened.getMeta('sealed-root')) ?? [])).toEqual([1, 2, 3]);
    });

    it('a new database records its schema version once, and reopening does not migrate again', async () => {
      await open().close();
      await open().close();
      const db = new Database(path, { readonly: true });
      const rows = db.prepare('SELECT version FROM schema_version ORDER BY version').all() as Array<{
        version: number;
      }>;
      db.close();
      expect(rows.map((r) => r.version)).toEqual(Array.from({ length: SCHEMA_VERSION }, (_, i) => i + 1));
      expect(open().settings().schemaVersion).toBe(SCHEMA_VERSION);
    });

    it('a database with a newer schema version is refused with KeyStoreError (KW_STORE), read-write and read-only', async () => {
      await open().close();
      const db = new Database(path);
      db.prepare('INSERT INTO schema_version (version, applied_at) VALUES (?, ?)').run(SCHEMA_VERSION + 1, T0);
      db.close();
      const message = `keystore: database schema version ${SCHEMA_VERSION + 1} is newer than this Keywarden (${SCHEMA_VERSION})`;
      for (const options of [{}, { readonly: true }]) {
        const err = errorOf(() => open(options));
        expect(err.code).toBe('KW_STORE');
        expect(err.message).toBe(message);
      }
    });

    it('a SQLite file that is not a Keywarden key store is refused and left unchanged (no WAL switch, no tables)', () => {
      const db = new Database(path);
      db.exec('CREATE TABLE notes (body TEXT)');
      db.close();
      const err = errorOf(() => open());
      expect(err.code).toBe('KW_STORE_CORRUPT');
      expect(err.message).toBe("keystore: the file is not a Keywarden key store (another program's SQLite database)");
      const after = new Database(path, { readonly: true });
      expect(after.pragma('journal_mode', { simple: true })).toBe('delete');
      expect(after.prepare("SELECT name FROM sqlite_schema WHERE type = 'table'").pluck().all()).toEqual(['notes']);
      after.close();
    });

    it('a path in a missing directory fails with KeyStoreError and a one-line message', () => {
      const err = errorOf(() => SqliteKeyStore.open(join(dir, 'missing', 'keys.db')));
      expect(err.code).toBe('KW_STORE');
      expect(err.message).toMatch(/^keystore: [^\n]+$/);
    });

    it('read-only: reads work, every write rejects with KeyStoreError (KW_STORE), a missing file is not created', async () => {
      const writer = open();
      await writer.createKey(keyRecord('kek_a', 'alpha'), versionRecord('kek_a', 1));
      await writer.close();
      const reader = open({ readonly: true });
      expect((await reader.getKey('alpha'))?.id).toBe('kek_a');
      expect(reader.settings().readonly).toBe(true);
      const writes: Array<() => Promise<unknown>> = [
        () => reader.createKey(keyRecord('kek_b', 'beta'), versionRecord('kek_b', 1)),
        () => reader.addVersion(versionRecord('kek_a', 2), true),
        () => reader.setPrimaryVersion('kek_a', 1, new Date(T0)),
        () => reader.setVersionState('kek_a', 1, 'disabled', new Date(T0)),
        () => reader.putMeta('m', Uint8Array.of(1)),
        () => reader.deleteMeta('m'),
        () =>
          reader.replaceRoot({
            versions: [{ keyId: 'kek_a', version: 1, rootId: 'root_new', wrappedMaterial: randomBytes(48) }],
            meta: { name: 'root', value: Uint8Array.of(1) },
            at: new Date(T0),
          }),
      ];
      for (const write of writes) await expect(write()).rejects.toMatchObject({ code: 'KW_STORE' });
      const missing = join(dir, 'missing.db');
      expect(errorOf(() => SqliteKeyStore.open(missing, { readonly: true })).code).toBe('KW_STORE');
      expect(existsSync(missing)).toBe(false);
    });

    it('the database itself refuses half a key: a version without its key, a key without its primary version, destroyed with material', () => {
      open();
      const db = new Database(path);
      db.pragma('foreign_keys = ON');
      const insertKey = db.prepare(
        'INSERT INTO keys (id, name, primary_version, created_at, updated_at) VALUES (?, ?, 1, 0, 0)',
      );
      const insertVersion = db.prepare(
        "INSERT INTO key_versions (key_id, version, state, root_id, wrapped_material, created_at, updated_at) VALUES (?, 1, ?, 'r', ?, 0, 0)",
      );
      expect(errorOf(() => insertVersion.run('kek_none', 'enabled', Buffer.alloc(8))).code).toBe(
        'SQLITE_CONSTRAINT_FOREIGNKEY',
      );
      expect(errorOf(() => db.transaction(() => insertKey.run('kek_x', 'x'))()).code).toBe(
        'SQLITE_CONSTRAINT_FOREIGNKEY',
      );
      expect(
        errorOf(() =>
          db.transaction(() => {
            insertKey.run('kek_y', 'y');
            insertVersion.run('kek_y', 'destroyed', Buffer.alloc(8));
          })(),
        ).code,
      ).toBe('SQLITE_CONSTRAINT_CHECK');
      expect(db.prepare('SELECT count(*) FROM keys').pluck().get()).toBe(0);
      db.close();
    });
  });

  describe('every write is one transaction', () => {
    /** Make SQLite fail one statement in the middle of a write, after earlier statements succeeded. */
    function failOn(sql: string): void {
      const db = new Database(path);
      db.exec(sql);
      db.close();
    }

    it('createKey failing after the key row was inserted rolls the key row back too', async () => {
      open();
      failOn(`CREATE TRIGGER fail_version BEFORE INSERT ON key_versions WHEN NEW.root_id = 'root_fail'
              BEGIN SELECT RAISE(ABORT, 'injected failure'); END`);
      const store = open();
      const err = await store
        .createKey(keyRecord('kek_a', 'alpha'), { ...versionRecord('kek_a', 1), rootId: 'root_fail' })
        .catch((e: Error & { code?: string }) => e);
      expect(err?.code).toBe('KW_STORE');
      expect(err?.message).toBe('keystore: createKey failed (SQLITE_CONSTRAINT_TRIGGER)');
      expect(await store.getKey('alpha')).toBeUndefined();
      const raw = new Database(path, { readonly: true });
      expect(raw.prepare('SELECT count(*) FROM keys').pluck().get()).toBe(0);
      raw.close();
      await store.createKey(keyRecord('kek_a', 'alpha'), versionRecord('kek_a', 1));
    });

    it('addVersion with makePrimary failing on the primary update rolls the new version back too', async () => {
      const store = open();
      await store.createKey(keyRecord('kek_a', 'alpha'), versionRecord('kek_a', 1));
      failOn(`CREATE TRIGGER fail_primary BEFORE UPDATE OF primary_version ON keys
              BEGIN SELECT RAISE(ABORT, 'injected failure'); END`);
      const err = await store.addVersion(versionRecord('kek_a', 2), true).catch((e: Error & { code?: string }) => e);
      expect(err?.code).toBe('KW_STORE');
      expect(await store.listVersions('kek_a')).toHaveLength(1);
      expect((await store.getKey('kek_a'))?.primaryVersion).toBe(1);
    });

    /** Two keys (three live versions, one destroyed) under root_test, and meta "root" = old. */
    async function rotationFixture(store: SqliteKeyStore): Promise<{ old: Uint8Array }> {
      await store.createKey(keyRecord('kek_a', 'alpha'), versionRecord('kek_a', 1));
      await store.addVersion(versionRecord('kek_a', 2), true);
      await store.addVersion(versionRecord('kek_a', 3), false);
      await store.setVersionState('kek_a', 3, 'destroyed', new Date(T0 + 3));
      await store.createKey(keyRecord('kek_b', 'beta'), versionRecord('kek_b', 1));
      const old = randomBytes(64);
      await store.putMeta('root', old);
      return { old };
    }

    function rotation(): Parameters<SqliteKeyStore['replaceRoot']>[0] {
      return {
        versions: (
          [
            ['kek_a', 1],
            ['kek_a', 2],
            ['kek_b', 1],
          ] as const
        ).map(([keyId, version]) => ({ keyId, version, rootId: 'root_new', wrappedMaterial: randomBytes(48) })),
        meta: { name: 'root', value: randomBytes(64) },
        at: new Date(T0 + 99),
      };
    }

    async function everything(store: SqliteKeyStore) {
      return {
        a: await store.listVersions('kek_a'),
        b: await store.listVersions('kek_b'),
        root: Array.from((await store.getMeta('root')) ?? []),
      };
    }

    it('replaceRoot failing on the meta write (after every version was rewrapped) rolls the versions back too', async () => {
      const store = open();
      await rotationFixture(store);
      const before = await everything(store);
      failOn(`CREATE TRIGGER fail_meta BEFORE UPDATE ON meta WHEN NEW.name = 'root'
              BEGIN SELECT RAISE(ABORT, 'injected failure'); END`);
      const err = await store.replaceRoot(rotation()).catch((e: Error & { code?: string }) => e);
      expect(err?.code).toBe('KW_STORE');
      expect(err?.message).toBe('keystore: replaceRoot failed (SQLITE_CONSTRAINT_TRIGGER)');
      expect(await everything(store)).toStrictEqual(before);
    });

    it('replaceRoot failing on the second version rolls the first back and leaves the meta as it was', async () => {
      const store = open();
      await rotationFixture(store);
      const before = await everything(store);
      failOn(`CREATE TRIGGER fail_rewrap AFTER UPDATE OF root_id ON key_versions WHEN NEW.version = 2
              BEGIN SELECT RAISE(ABORT, 'injected failure'); END`);
      await expect(store.replaceRoot(rotation())).rejects.toMatchObject({ code: 'KW_STORE' });
      expect(await everything(store)).toStrictEqual(before);
      const raw = new Database(path, { readonly: true });
      expect(raw.prepare("SELECT count(*) FROM key_versions WHERE root_id = 'root_new'").pluck().get()).toBe(0);
      raw.close();
    });

    it('destroying a version failing half-way keeps the material and the old state', async () => {
      const store = open();
      const material = randomBytes(48);
      await store.createKey(keyRecord('kek_a', 'alpha'), versionRecord('kek_a', 1, material));
      failOn(`CREATE TRIGGER fail_destroy AFTER UPDATE ON key_versions WHEN NEW.state = 'destroyed'
              BEGIN SELECT RAISE(ABORT, 'injected failure'); END`);
      await expect(store.setVersionState('kek_a', 1, 'destroyed', new Date(T0))).rejects.toMatchObject({
        code: 'KW_STORE',
      });
      const v1 = await store.getVersion('kek_a', 1);
      expect(v1?.state).toBe('enabled');
      expect(Buffer.from(v1?.wrappedMaterial ?? []).equals(material)).toBe(true);
    });
  });

  describe('file permissions and pragmas', () => {
    it.skipIf(process.platform === 'win32')(
      'a new database file is created with mode 0600, and so are its -wal and -shm files',
      async () => {
        const store = open();
        await store.createKey(keyRecord('kek_a', 'alpha'), versionRecord('kek_a', 1));
        for (const file of [path, `${path}-wal`, `${path}-shm`]) {
          expect(existsSync(file), file).toBe(true);
          expect((statSync(file).mode & 0o777).toString(8), file).toBe('600');
        }
      },
    );

    it('the file is in WAL mode and the connection uses synchronous=FULL, foreign_keys, secure_delete and busy_timeout', () => {
      const store = open({ busyTimeoutMs: 2500 });
      const raw = new Database(path, { readonly: true });
      expect(raw.pragma('journal_mode', { simple: true })).toBe('wal');
      raw.close();
      expect(store.settings()).toStrictEqual({
        journalMode: 'wal',
        synchronous: 'FULL',
        foreignKeys: true,
        secureDelete: true,
        busyTimeoutMs: 2500,
        schemaVersion: SCHEMA_VERSION,
        readonly: false,
      });
    });

    it('destroyed material is left in neither the database file nor its WAL', async () => {
      const store = open();
      const secret = randomBytes(64);
      const kept = randomBytes(64);
      await store.createKey(keyRecord('kek_a', 'alpha'), versionRecord('kek_a', 1, secret));
      await store.addVersion(versionRecord('kek_a', 2, kept), true);
      expect(filesContain(path, secret), 'the test can see material on disk').toBe(true);
      await store.setVersionState('kek_a', 1, 'destroyed', new Date(T0 + 9));
      expect(filesContain(path, secret)).toBe(false);
      expect(filesContain(path, kept)).toBe(true);
      await store.close();
      expect(filesContain(path, secret)).toBe(false);
    });
  });

  describe('root replacement on disk', () => {
    it('after replaceRoot the old wraps and the old sealed root are left in neither the database file nor its WAL; after deleteMeta the deleted value neither', async () => {
      const store = open();
      const oldWrap = randomBytes(64);
      const oldRoot = randomBytes(96);
      await store.createKey(keyRecord('kek_a', 'alpha'), versionRecord('kek_a', 1, oldWrap));
      await store.putMeta('root', oldRoot);
      expect(filesContain(path, oldWrap) && filesContain(path, oldRoot), 'the test can see them on disk').toBe(true);
      const newWrap = randomBytes(64);
      const newRoot = randomBytes(96);
      await store.replaceRoot({
        versions: [{ keyId: 'kek_a', version: 1, rootId: 'root_new', wrappedMaterial: newWrap }],
        meta: { name: 'root', value: newRoot },
        at: new Date(T0 + 1),
      });
      expect(filesContain(path, oldWrap)).toBe(false);
      expect(filesContain(path, oldRoot)).toBe(false);
      expect(filesContain(path, newWrap)).toBe(true);
      await store.deleteMeta('root');
      expect(filesContain(path, newRoot)).toBe(false);
      await store.close();
      expect(filesContain(path, oldRoot) || filesContain(path, newRoot)).toBe(false);
    });
  });

  describe('crash safety (a writer process killed with SIGKILL)', () => {
    it.skipIf(process.platform === 'win32')(
      'a root rotation killed before it commits leaves every version under the old root and the old root record',
      async () => {
        const store = open();
        await store.createKey(keyRecord('kek_a', 'alpha'), versionRecord('kek_a', 1));
        await store.addVersion(versionRecord('kek_a', 2), true);
        await store.createKey(keyRecord('kek_b', 'beta'), versionRecord('kek_b', 1));
        await store.putMeta('root', randomBytes(64));
        const before = {
          a: await store.listVersions('kek_a'),
          b: await store.listVersions('kek_b'),
          root: Array.from((await store.getMeta('root')) ?? []),
        };
        await store.close();

        const writer = startWriter(dir, path, 'hang-in-root-rotation');
        writers.push(writer);
        await writer.waitFor(/^ready$/);
        writer.child.kill('SIGKILL');
        await writer.exited;

        const reopened = open();
        expect(await reopened.listVersions('kek_a')).toStrictEqual(before.a);
        expect(await reopened.listVersions('kek_b')).toStrictEqual(before.b);
        expect(Array.from((await reopened.getMeta('root')) ?? [])).toEqual(before.root);
        checkNoHalfWrittenKeys(path);
      },
    );

    it.skipIf(process.platform === 'win32')(
      'a writer killed in the middle of a transaction leaves no half-written key, and committed keys intact',
      async () => {
        const store = open();
        await store.createKey(keyRecord('kek_a', 'alpha'), versionRecord('kek_a', 1));
        const before = await store.listVersions('kek_a');
        await store.close();

        const writer = startWriter(dir, path, 'hang-in-transaction');
        writers.push(writer);
        await writer.waitFor(/^ready$/);
        // Uncommitted pages reached the WAL: recovery must ignore them, not just never see them.
        expect(statSync(`${path}-wal`).size).toBeGreaterThan(100_000);
        writer.child.kill('SIGKILL');
        await writer.exited;

        const reopened = open();
        expect((await reopened.listKeys()).map((k) => k.name)).toEqual(['alpha']);
        expect(await reopened.listVersions('kek_a')).toStrictEqual(before);
        expect(await reopened.getKey('orphan')).toBeUndefined();
        expect(await reopened.listVersions('kek_half0')).toEqual([]);
        checkNoHalfWrittenKeys(path);
      },
    );

    it.skipIf(process.platform === 'win32')(
      'a writer killed while committing in a loop leaves only whole keys, including every key it reported committed',
      async () => {
        await open().close();
        const writer = startWriter(dir, path, 'commit-loop', '100000,0');
        writers.push(writer);
        await writer.waitFor(/^committed 50$/);
        await new Promise((resolve) => setTimeout(resolve, Math.floor(Math.random() * 20)));
        writer.child.kill('SIGKILL');
        await writer.exited;
        const reported = Math.max(...writer.lines.map((l) => Number(/^committed (\d+)$/.exec(l)?.[1] ?? 0)));

        const reopened = open();
        const keys = await reopened.listKeys();
        expect(keys.length).toBeGreaterThanOrEqual(reported);
        for (const key of keys) {
          const versions = await reopened.listVersions(key.id);
          expect(versions.map((v) => v.version)).toEqual([1]);
          expect(versions[0]?.wrappedMaterial).toHaveLength(64);
        }
        checkNoHalfWrittenKeys(path);
      },
    );
  });

  describe('concurrency (two SqliteKeyStore instances and other processes on one file)', () => {
    it('a write through one store is visible to another store on the same file', async () => {
      const a = open();
      const b = open();
      await a.createKey(keyRecord('kek_a', 'alpha'), versionRecord('kek_a', 1));
      expect((await b.getKey('alpha'))?.id).toBe('kek_a');
      await b.setVersionState('kek_a', 1, 'disabled', new Date(T0 + 1));
      expect((await a.getVersion('kek_a', 1))?.state).toBe('disabled');
    });

    it('readers are not blocked by an open write transaction and see only committed data; a writer gives up after busy_timeout with KeyStoreError', async () => {
      const reader = open();
      const impatientWriter = open({ busyTimeoutMs: 100 });
      await reader.createKey(keyRecord('kek_a', 'alpha'), versionRecord('kek_a', 1));

      const raw = new Database(path);
      raw.pragma('foreign_keys = ON');
      raw.prepare('BEGIN IMMEDIATE').run();
      raw
        .prepare('INSERT INTO keys (id, name, primary_version, created_at, updated_at) VALUES (?, ?, 1, 0, 0)')
        .run('kek_pending', 'pending');
      try {
        expect((await reader.listKeys()).map((k) => k.name)).toEqual(['alpha']);
        expect(await reader.getKey('pending')).toBeUndefined();
        const started = Date.now();
        const err = await impatientWriter.createKey(keyRecord('kek_b', 'beta'), versionRecord('kek_b', 1)).then(
          () => undefined,
          (e: Error & { code?: string }) => e,
        );
        expect(Date.now() - started).toBeGreaterThanOrEqual(90);
        expect(err?.code).toBe('KW_STORE');
        expect(err?.message).toBe('keystore: createKey failed (SQLITE_BUSY)');
      } finally {
        raw.prepare('ROLLBACK').run();
        raw.close();
      }
      await impatientWriter.createKey(keyRecord('kek_b', 'beta'), versionRecord('kek_b', 1));
      expect((await reader.listKeys()).map((k) => k.name)).toEqual(['alpha', 'beta']);
    });

    it.skipIf(process.platform === 'win32')(
      'a write waits (busy_timeout) for another process that holds the write lock, then succeeds',
      async () => {
        const store = open();
        const writer = startWriter(dir, path, 'hold-lock', '300');
        writers.push(writer);
        await writer.waitFor(/^locked$/);
        await store.createKey(keyRecord('kek_a', 'alpha'), versionRecord('kek_a', 1));
        await writer.waitFor(/^done$/);
        expect((await store.listKeys()).map((k) => k.name)).toEqual(['alpha', 'locker']);
      },
    );

    it.skipIf(process.platform === 'win32')(
      'two stores read consistent, whole keys while another process commits keys',
      async () => {
        const a = open();
        const b = open();
        const total = 150;
        const writer = startWriter(dir, path, 'commit-loop', `${total},2`);
        writers.push(writer);
        const counts = new Set<number>();
        let last = 0;
        while (!writer.hasExited()) {
          const keys = await a.listKeys();
          expect(keys.length).toBeGreaterThanOrEqual(last);
          last = keys.length;
          counts.add(keys.length);
          for (const key of keys) {
            const primary = await b.getVersion(key.id, key.primaryVersion);
            expect(primary?.wrappedMaterial).toHaveLength(64);
          }
          await new Promise((resolve) => setTimeout(resolve, 1));
        }
        expect(writer.lines.at(-1)).toBe('done');
        expect((await a.listKeys()).length).toBe(total);
        expect((await b.listKeys()).length).toBe(total);
        // The readers ran while the writer was writing, not only before or after.
        expect([...counts].filter((n) => n > 0 && n < total).length).toBeGreaterThan(2);
        checkNoHalfWrittenKeys(path);
      },
    );
  });
});

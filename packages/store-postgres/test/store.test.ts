/**
 * What the conformance suite does not cover: migrations and how a store is recognised, the
 * password and connection errors, and a connection killed mid-transaction (retried, applied once).
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { type AddressInfo, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { KeyRecord, KeyVersionRecord } from '@keywarden/core';
import { afterEach, describe, expect, it } from 'vitest';
import { PostgresKeyStore, SCHEMA_VERSION } from '../src/index.js';
import { adminClient, dropSchema, freshSchema, openStore, unavailable } from './_pg.js';

const T0 = Date.UTC(2026, 0, 2, 3, 4, 5, 678);

function keyRecord(id: string, name: string): KeyRecord {
  return { id, name, scope: {}, primaryVersion: 1, createdAt: new Date(T0), updatedAt: new Date(T0) };
}

function versionRecord(keyId: string, version: number): KeyVersionRecord {
  return {
    keyId,
    version,
    state: 'enabled',
    rootId: 'root_test',
    wrappedMaterial: new Uint8Array(randomBytes(40)),
    createdAt: new Date(T0 + version),
    updatedAt: new Date(T0 + version),
  };
}

async function rejection(call: () => Promise<unknown>): Promise<Error & { code?: string }> {
  try {
    await call();
  } catch (err) {
    return err as Error & { code?: string };
  }
  throw new Error('expected a rejection');
}

describe.skipIf(unavailable !== undefined)('PostgresKeyStore: schema, credentials and connections', () => {
  const schemas: string[] = [];
  const schema = () => {
    const s = freshSchema();
    schemas.push(s);
    return s;
  };
  afterEach(async () => {
    for (const s of schemas.splice(0)) await dropSchema(s);
  });

  it('many processes opening a new store at once migrate it once (advisory lock); every open sees the current version', async () => {
    const s = schema();
    const stores = await Promise.all(Array.from({ length: 4 }, () => openStore(s)));
    const admin = await adminClient();
    try {
      const rows = await admin.query(`SELECT version FROM ${s}.schema_version ORDER BY version`);
      expect(rows.rows.map((r) => r.version)).toEqual(Array.from({ length: SCHEMA_VERSION }, (_, i) => i + 1));
    } finally {
      await admin.end();
    }
    await Promise.all(stores.map((st) => st.close()));
  });

  it('a schema holding tables of another application is StoreCorruptError (KW_STORE_CORRUPT) and is left untouched', async () => {
    const s = schema();
    const admin = await adminClient();
    try {
      await admin.query(`CREATE SCHEMA ${s}; CREATE TABLE ${s}.invoices (id int)`);
      const err = await rejection(() => openStore(s));
      expect(err.code).toBe('KW_STORE_CORRUPT');
      expect(err.message).toMatch(/^keystore: .*not a Keywarden key store/);
      const tables = await admin.query('SELECT table_name FROM information_schema.tables WHERE table_schema = $1', [s]);
      expect(tables.rows.map((r) => r.table_name)).toEqual(['invoices']);
    } finally {
      await admin.end();
    }
  });

  it('a store written by a newer Keywarden is refused with KeyStoreError (KW_STORE)', async () => {
    const s = schema();
    await (await openStore(s)).close();
    const admin = await adminClient();
    try {
      await admin.query(`INSERT INTO ${s}.schema_version (version, applied_at) VALUES ($1, 0)`, [SCHEMA_VERSION + 1]);
    } finally {
      await admin.end();
    }
    const err = await rejection(() => openStore(s));
    expect(err.code).toBe('KW_STORE');
    expect(err.message).toMatch(/newer than this Keywarden/);
  });

  it('create: false opens an existing store only: a missing one is KeyStoreError and nothing is created', async () => {
    const s = schema();
    const err = await rejection(() => openStore(s, { create: false }));
    expect(err.code).toBe('KW_STORE');
    const admin = await adminClient();
    try {
      expect((await admin.query('SELECT 1 FROM pg_namespace WHERE nspname = $1', [s])).rowCount).toBe(0);
    } finally {
      await admin.end();
    }
    await (await openStore(s)).close();
    await (await openStore(s, { create: false })).close();
  });

  it('a wrong password is KeyStoreError naming the SQLSTATE, never the password; the password file is re-read at each connection', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kw-pg-'));
    try {
      const file = join(dir, 'password');
      const wrong = `wrong-${randomBytes(8).toString('hex')}`;
      writeFileSync(file, `${wrong}\n`, { mode: 0o600 });
      const err = await rejection(() => openStore(schema(), { passwordFile: file, retryForMs: 0 }));
      expect(err.code).toBe('KW_STORE');
      expect(err.message).toBe('keystore: open: PostgreSQL refused the credentials (SQLSTATE 28P01)');
      expect(err.message).not.toContain(wrong);
      const missing = await rejection(() => openStore(schema(), { passwordFile: join(dir, 'none'), retryForMs: 0 }));
      expect(missing.code).toBe('KW_STORE');
      expect(missing.message).toMatch(/^keystore: /);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('an unreachable server is KeyStoreError after retryForMs, naming the errno', async () => {
    const closed = await new Promise<number>((resolve) => {
      const srv = createServer();
      srv.listen(0, '127.0.0.1', () => {
        const { port } = srv.address() as AddressInfo;
        srv.close(() => resolve(port));
      });
    });
    const err = await rejection(() =>
      PostgresKeyStore.open({
        connectionString: `postgres://keywarden@127.0.0.1:${closed}/keywarden`,
        retryForMs: 300,
      }),
    );
    expect(err.code).toBe('KW_STORE');
    expect(err.message).toBe('keystore: open: cannot reach PostgreSQL (ECONNREFUSED)');
  });

  it('a connection killed while its transaction waits for a lock is retried on a new connection, and the change is applied exactly once', async () => {
    const s = schema();
    const store = await openStore(s);
    await store.createKey(keyRecord('kek_a', 'a'), versionRecord('kek_a', 1));
    const admin = await adminClient();
    try {
      await admin.query('BEGIN');
      await admin.query(`SELECT 1 FROM ${s}.keys WHERE id = 'kek_a' FOR UPDATE`);
      const update = store.updateKey({
        keyId: 'kek_a',
        expectedRevision: 0,
        at: new Date(T0 + 10),
        addVersion: versionRecord('kek_a', 2),
        primaryVersion: 2,
      });
      // Wait until the store's transaction is blocked on the row lock, then kill its backend.
      const killer = await adminClient();
      let killed = false;
      try {
        for (let i = 0; i < 200 && !killed; i++) {
          const r = await killer.query(
            `SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity
              WHERE application_name = 'keywarden' AND wait_event_type = 'Lock' AND datname = current_database()`,
          );
          killed = (r.rowCount ?? 0) > 0;
          if (killed) break;
          await new Promise((resolve) => setTimeout(resolve, 25));
        }
      } finally {
        await killer.end();
      }
      expect(killed, 'the waiting backend was terminated').toBe(true);
      await new Promise((resolve) => setTimeout(resolve, 100));
      await admin.query('COMMIT');
      await update;
    } finally {
      await admin.end().catch(() => {});
    }
    expect((await store.getLifecycle('kek_a'))?.revision).toBe(1);
    expect((await store.listVersions('kek_a')).map((v) => v.version)).toEqual([1, 2]);
    expect((await store.getKey('a'))?.primaryVersion).toBe(2);
    await store.close();
  });

  it('every operation after close() is ClosedError, and watch() after close too', async () => {
    const store = await openStore(schema());
    await store.close();
    expect((await rejection(() => store.getKey('a'))).code).toBe('KW_CLOSED');
    expect((await rejection(() => store.watch(() => {}))).code).toBe('KW_CLOSED');
  });
});

describe.skipIf(unavailable !== undefined)('PostgresKeyStore: a store replaced under a running process', () => {
  it('after the schema is dropped (and created again by another process), a write is StoreReplacedError (KW_STORE_REPLACED) and writes nothing', async () => {
    const s = freshSchema();
    const store = await openStore(s);
    try {
      await store.createKey(keyRecord('kek_a', 'a'), versionRecord('kek_a', 1));
      await dropSchema(s);
      const gone = await rejection(() => store.putMeta('m', Uint8Array.of(1)));
      expect(gone.code).toBe('KW_STORE_REPLACED');
      expect(gone.message).toMatch(/^keystore: putMeta: /);
      // Another process creates a new, empty store in the same place.
      const other = await openStore(s);
      await other.close();
      const replaced = await rejection(() => store.createKey(keyRecord('kek_b', 'b'), versionRecord('kek_b', 1)));
      expect(replaced.code).toBe('KW_STORE_REPLACED');
      const again = await openStore(s);
      expect(await again.listKeys()).toEqual([]);
      await again.close();
    } finally {
      await store.close();
      await dropSchema(s);
    }
  });
});

/**
 * Key lifecycle on the SQLite store (issue 10): crypto-shredding of one tenant among three, with
 * the store files scanned for any trace of the destroyed material, and compare-and-swap between
 * real concurrent processes (two rotations of one key: exactly one wins).
 */
import { spawn } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { type DataKey, KeyDestroyedError, Keywarden, parseWrappedKey, SoftwareRoot } from '@keywarden/core';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { SqliteKeyStore } from '../src/index.js';

const PACKAGE_DIR = fileURLToPath(new URL('..', import.meta.url));
const CORE_DIST = pathToFileURL(join(PACKAGE_DIR, '../core/dist/index.js')).href;
const STORE_DIST = pathToFileURL(join(PACKAGE_DIR, 'dist/index.js')).href;

const dirs: string[] = [];
afterEach(() => {
  while (dirs.length > 0) rmSync(dirs.pop() as string, { recursive: true, force: true });
});
function scratch(): string {
  const d = mkdtempSync(join(tmpdir(), 'keywarden-lifecycle-'));
  dirs.push(d);
  return d;
}

/** Every window of `size` bytes of `needle` that occurs anywhere in `haystack`. */
function traces(haystack: Buffer, needle: Uint8Array, size = 16): number {
  let found = 0;
  for (let i = 0; i + size <= needle.length; i += size) {
    if (haystack.includes(Buffer.from(needle.subarray(i, i + size)))) found++;
  }
  return found;
}

describe('crypto-shredding on SQLite: three tenants, one leaves', () => {
  it("destroying one tenant's KEK makes every one of its records fail with KeyDestroyedError, the others still decrypt, and no byte of its material remains in the store files (WAL included)", async () => {
    const dir = scratch();
    const path = join(dir, 'keystore.db');
    const unsealKey = new Uint8Array(randomBytes(32));
    const store = SqliteKeyStore.open(path);
    const root = await SoftwareRoot.initialize(store, { unsealKey });
    const kw = new Keywarden({ store, root });
    const tenants = ['tenant-a', 'tenant-b', 'tenant-c'];
    const records = new Map<string, Array<{ dk: DataKey; context: { record: string } }>>();
    for (const t of tenants) {
      await kw.createKey(t, { scope: { tenant: t } });
      // Two versions each, so that shredding has to take every version of the key.
      const list: Array<{ dk: DataKey; context: { record: string } }> = [];
      for (let i = 0; i < 2000; i++) {
        if (i === 1000) await kw.rotateKey(t);
        const context = { record: `${t}/${i}` };
        list.push({ dk: await kw.generateDataKey(t, context), context });
      }
      records.set(t, list);
    }
    const leaving = await kw.getKey('tenant-b');
    const material = await Promise.all(
      leaving.versions.map(async (v) => (await store.getVersion(leaving.id, v.version))?.wrappedMaterial as Uint8Array),
    );
    for (const m of material) expect(m.length).toBeGreaterThan(32);
    // Before: the wrapped material is in the files (the scan can see it).
    const before = ['', '-wal'].map((s) => (existsSync(path + s) ? readFileSync(path + s) : Buffer.alloc(0)));
    expect(material.reduce((n, m) => n + traces(Buffer.concat(before), m), 0)).toBeGreaterThan(0);

    // The tenant leaves: disable every version (the primary last, confirmed), destroy them all.
    await kw.disableVersion('tenant-b', 1);
    await kw.disableVersion('tenant-b', 2, { confirmLastVersion: true });
    await kw.destroyVersion('tenant-b', 1, { force: true });
    await kw.destroyVersion('tenant-b', 2, { force: true, confirmLastVersion: true });

    let destroyed = 0;
    for (const { dk, context } of records.get('tenant-b') ?? []) {
      await expect(kw.decryptDataKey(dk.wrapped, context, { key: 'tenant-b' })).rejects.toSatisfy(
        KeyDestroyedError.isInstance,
      );
      destroyed++;
    }
    expect(destroyed).toBe(2000);
    for (const t of ['tenant-a', 'tenant-c']) {
      for (const { dk, context } of records.get(t) ?? []) {
        expect(await kw.decryptDataKey(dk.wrapped, context, { key: t })).toEqual(dk.plaintext);
      }
    }
    // A fresh process (no cache) sees the same.
    const fresh = new Keywarden({ store, root });
    const first = records.get('tenant-b')?.[0] as { dk: DataKey; context: { record: string } };
    await expect(fresh.decryptDataKey(first.dk.wrapped, first.context, { key: 'tenant-b' })).rejects.toSatisfy(
      KeyDestroyedError.isInstance,
    );
    await fresh.close();

    // No 16-byte window of the destroyed wrapped material in the database, WAL or shared-memory
    // file: while the store is still open (the WAL then exists), and after the last close.
    const scan = (when: string) => {
      for (const suffix of ['', '-wal', '-shm', '-journal']) {
        if (!existsSync(path + suffix)) continue;
        const bytes = readFileSync(path + suffix);
        for (const m of material) expect(traces(bytes, m), `${suffix || 'database'} file, ${when}`).toBe(0);
      }
    };
    expect(existsSync(`${path}-wal`)).toBe(true);
    scan('store open');
    await kw.close();
    await store.close();
    scan('store closed');
  }, 60_000);
});

/**
 * A child process that opens the store, unseals, reads the key, waits at a barrier (the file
 * `go` appearing) just before its compare-and-swap write, then rotates. Prints "won vN" or the
 * error code.
 */
const ROTATOR = `
import { existsSync } from 'node:fs';
const [coreUrl, storeUrl, dbPath, unsealHex, goPath, readyPath] = process.argv.slice(2);
const { Keywarden, SoftwareRoot } = await import(coreUrl);
const { SqliteKeyStore } = await import(storeUrl);
const { writeFileSync } = await import('node:fs');
const store = SqliteKeyStore.open(dbPath, { create: false });
const root = await SoftwareRoot.load(store);
await root.unseal(Uint8Array.from(Buffer.from(unsealHex, 'hex')));
const updateKey = store.updateKey.bind(store);
// The barrier sits between this process's read of the key and its write: both processes have
// read the same revision before either writes.
store.updateKey = async (update) => {
  writeFileSync(readyPath, '');
  while (!existsSync(goPath)) await new Promise((r) => setTimeout(r, 5));
  return updateKey(update);
};
const kw = new Keywarden({ store, root });
try {
  const info = await kw.rotateKey('shared');
  process.stdout.write('won v' + info.primaryVersion + '\\n');
} catch (err) {
  process.stdout.write('lost ' + err.code + ' ' + err.message + '\\n');
}
await kw.close();
await store.close();
`;

function run(script: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString();
    });
    child.stderr.on('data', (c: Buffer) => {
      err += c.toString();
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(out.trim());
      else reject(new Error(`child exited ${code}: ${err}`));
    });
  });
}

/** Like ROTATOR, for a root rotation: the barrier sits just before replaceRoot. */
const ROOT_ROTATOR = `
import { existsSync, writeFileSync } from 'node:fs';
const [coreUrl, storeUrl, dbPath, unsealHex, goPath, readyPath] = process.argv.slice(2);
const { SoftwareRoot, rewrapUnderNewRoot } = await import(coreUrl);
const { SqliteKeyStore } = await import(storeUrl);
const store = SqliteKeyStore.open(dbPath, { create: false });
const root = await SoftwareRoot.load(store);
const unsealKey = Uint8Array.from(Buffer.from(unsealHex, 'hex'));
await root.unseal(unsealKey);
const { root: next } = await SoftwareRoot.createForRotation({ unsealKey, unseal: root.document.unseal });
const replaceRoot = store.replaceRoot.bind(store);
store.replaceRoot = async (update) => {
  writeFileSync(readyPath, '');
  while (!existsSync(goPath)) await new Promise((r) => setTimeout(r, 5));
  return replaceRoot(update);
};
try {
  await rewrapUnderNewRoot(store, root, next);
  process.stdout.write('won ' + next.describe().id + '\\n');
} catch (err) {
  process.stdout.write('lost ' + err.code + ' ' + err.message + '\\n');
}
await store.close();
`;

describe('compare-and-swap between real processes', () => {
  it('two processes rotating the same key at the same moment: exactly one wins, the other gets KW_CONFLICT, nothing is lost', async () => {
    const dir = scratch();
    const path = join(dir, 'keystore.db');
    const unsealKey = new Uint8Array(randomBytes(32));
    const store = SqliteKeyStore.open(path);
    const root = await SoftwareRoot.initialize(store, { unsealKey });
    const kw = new Keywarden({ store, root });
    await kw.createKey('shared');
    const before = await kw.encrypt(new TextEncoder().encode('before'), { key: 'shared' });
    await kw.close();
    await store.close();

    const script = join(dir, 'rotate.mjs');
    writeFileSync(script, ROTATOR);
    const go = join(dir, 'go');
    const hex = Buffer.from(unsealKey).toString('hex');
    const a = run(script, [CORE_DIST, STORE_DIST, path, hex, go, join(dir, 'ready-a')]);
    const b = run(script, [CORE_DIST, STORE_DIST, path, hex, go, join(dir, 'ready-b')]);
    const deadline = Date.now() + 15_000;
    while (!(existsSync(join(dir, 'ready-a')) && existsSync(join(dir, 'ready-b')))) {
      if (Date.now() > deadline) throw new Error('the children never reached the barrier');
      await new Promise((r) => setTimeout(r, 10));
    }
    writeFileSync(go, '');
    const results = (await Promise.all([a, b])).sort();
    expect(results[0]).toMatch(/^lost KW_CONFLICT keystore: key "kek_\S+" was changed by someone else/);
    expect(results[1]).toBe('won v2');

    const after = SqliteKeyStore.open(path, { create: false });
    const root2 = await SoftwareRoot.load(after);
    await root2.unseal(unsealKey);
    const kw2 = new Keywarden({ store: after, root: root2 });
    const info = await kw2.getKey('shared');
    expect(info.versions.map((v) => [v.version, v.state])).toEqual([
      [1, 'enabled'],
      [2, 'enabled'],
    ]);
    expect(info.primaryVersion).toBe(2);
    expect(new TextDecoder().decode(await kw2.decrypt(before, { key: 'shared' }))).toBe('before');
    await kw2.close();
    await after.close();
  }, 60_000);
  it('two processes rotating the ROOT of one store at the same moment: exactly one wins (its root is the one stored), the other gets KW_CONFLICT', async () => {
    const dir = scratch();
    const path = join(dir, 'keystore.db');
    const unsealKey = new Uint8Array(randomBytes(32));
    const store = SqliteKeyStore.open(path);
    const root = await SoftwareRoot.initialize(store, { unsealKey });
    const kw = new Keywarden({ store, root });
    await kw.createKey('a');
    await kw.createKey('b');
    const before = await kw.encrypt(new TextEncoder().encode('before'), { key: 'b' });
    await kw.close();
    await store.close();

    const script = join(dir, 'root-rotate.mjs');
    writeFileSync(script, ROOT_ROTATOR);
    const go = join(dir, 'go');
    const hex = Buffer.from(unsealKey).toString('hex');
    const a = run(script, [CORE_DIST, STORE_DIST, path, hex, go, join(dir, 'ready-a')]);
    const b = run(script, [CORE_DIST, STORE_DIST, path, hex, go, join(dir, 'ready-b')]);
    const deadline = Date.now() + 15_000;
    while (!(existsSync(join(dir, 'ready-a')) && existsSync(join(dir, 'ready-b')))) {
      if (Date.now() > deadline) throw new Error('the children never reached the barrier');
      await new Promise((r) => setTimeout(r, 10));
    }
    writeFileSync(go, '');
    const results = (await Promise.all([a, b])).sort();
    expect(results[0]).toMatch(/^lost KW_CONFLICT keystore: replaceRoot: the store changed/);
    const winner = /^won (\S+)$/.exec(results[1] as string)?.[1];
    expect(winner).toBeDefined();

    const after = SqliteKeyStore.open(path, { create: false });
    const loaded = await SoftwareRoot.load(after);
    expect(loaded.describe().id).toBe(winner);
    await loaded.unseal(unsealKey);
    const kw2 = new Keywarden({ store: after, root: loaded });
    for (const k of await after.listKeys()) {
      for (const v of await after.listVersions(k.id)) expect(v.rootId).toBe(winner);
    }
    expect(new TextDecoder().decode(await kw2.decrypt(before, { key: 'b' }))).toBe('before');
    await kw2.close();
    await after.close();
  }, 60_000);
});

/**
 * The caller's side of a bulk rewrap: records in their own SQLite table, a rewrapRecords job over
 * them with a checkpoint, each update written back before the next is asked for. Prints
 * "resumed N" at the start and "done" at the end.
 */
const REWRAPPER = `
import { createRequire } from 'node:module';
const [coreUrl, storeUrl, pkgDir, dbPath, recordsPath, unsealHex] = process.argv.slice(2);
const { Keywarden, SoftwareRoot, rewrapRecords } = await import(coreUrl);
const { SqliteKeyStore } = await import(storeUrl);
const Database = createRequire(pkgDir + '/package.json')('better-sqlite3');
const store = SqliteKeyStore.open(dbPath, { create: false });
const root = await SoftwareRoot.load(store);
await root.unseal(Uint8Array.from(Buffer.from(unsealHex, 'hex')));
const kw = new Keywarden({ store, root });
const db = new Database(recordsPath);
db.pragma('journal_mode = WAL');
db.pragma('synchronous = NORMAL');
const rows = db.prepare('SELECT id, wrapped FROM records ORDER BY id').all();
const update = db.prepare('UPDATE records SET wrapped = ? WHERE id = ?');
const records = rows.map((r) => ({ id: String(r.id), wrappedKey: new Uint8Array(r.wrapped), context: { row: String(r.id) } }));
let first = true;
for await (const u of rewrapRecords(kw, records, {
  key: 'bulk',
  jobId: 'bulk-v2',
  checkpointEvery: 25,
  concurrency: 4,
  onProgress: (p) => {
    if (first) process.stdout.write('resumed ' + p.resumedFrom + '\\n');
    first = false;
    process.stdout.write('p ' + p.done + '\\n');
  },
})) {
  if (u.status === 'rewrapped') update.run(Buffer.from(u.wrappedKey), Number(u.id));
}
process.stdout.write('done\\n');
db.close();
await kw.close();
await store.close();
`;

/**
 * Run the rewrapper; with `killAtDone`, SIGKILL it as soon as it reports that many records done
 * (a point in the job's progress, not a time: a fast machine or another Node.js line must not let
 * the job finish before the kill). `lastDone` is the last progress it reported.
 */
function runKilled(
  script: string,
  args: string[],
  killAtDone?: number,
): Promise<{ killed: boolean; out: string; ms: number; lastDone: number }> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const child = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let lastDone = 0;
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString();
      const reported = /p (\d+)\n(?![\s\S]*p \d+\n)/.exec(out);
      if (reported) lastDone = Number(reported[1]);
      if (killAtDone !== undefined && lastDone >= killAtDone) child.kill('SIGKILL');
    });
    child.stderr.on('data', (c: Buffer) => {
      err += c.toString();
    });
    const guard = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('close', (code, signal) => {
      clearTimeout(guard);
      if (signal === 'SIGKILL') resolve({ killed: true, out, ms: Date.now() - started, lastDone });
      else if (code === 0) resolve({ killed: false, out, ms: Date.now() - started, lastDone });
      else reject(new Error(`rewrap child exited ${code}: ${err}`));
    });
  });
}

describe('bulk rewrap job SIGKILLed at random points (real processes)', () => {
  it('the checkpoint never runs ahead of what the caller wrote; every record keeps its data key; reruns resume and complete', async () => {
    const dir = scratch();
    const path = join(dir, 'keystore.db');
    const recordsPath = join(dir, 'records.db');
    const unsealKey = new Uint8Array(randomBytes(32));
    const store = SqliteKeyStore.open(path);
    const root = await SoftwareRoot.initialize(store, { unsealKey });
    const kw = new Keywarden({ store, root });
    await kw.createKey('bulk');
    const db = new Database(recordsPath);
    db.pragma('journal_mode = WAL');
    db.exec('CREATE TABLE records (id INTEGER PRIMARY KEY, wrapped BLOB NOT NULL)');
    const insert = db.prepare('INSERT INTO records (id, wrapped) VALUES (?, ?)');
    const deks = new Map<number, Uint8Array>();
    const N = 2000;
    for (let id = 0; id < N; id++) {
      const dk = await kw.generateDataKey('bulk', { row: String(id) });
      insert.run(id, Buffer.from(dk.wrapped));
      deks.set(id, dk.plaintext);
    }
    db.close();
    await kw.rotateKey('bulk');
    await kw.close();
    await store.close();

    const script = join(dir, 'rewrap.mjs');
    writeFileSync(script, REWRAPPER);
    const args = [CORE_DIST, STORE_DIST, PACKAGE_DIR, path, recordsPath, Buffer.from(unsealKey).toString('hex')];
    // Each of the first ten rounds is killed at a random point in the rest of the job (up to a third
    // of what is left beyond the last progress seen); the eleventh runs to completion.
    let lastDone = 0;
    let kills = 0;
    let resumed = 0;
    let finished = false;
    let fullRunMs = 0;
    for (let round = 0; round < 12 && !finished; round++) {
      const target = lastDone + randomInt(1, Math.max(2, Math.floor((N - lastDone) / 3)));
      const r = await runKilled(script, args, round < 10 ? target : undefined);
      const where = `round ${round} (kill at ${target} records done)`;
      lastDone = Math.max(lastDone, r.lastDone);
      if (r.killed) kills++;
      else {
        expect(r.out, where).toMatch(/done\n$/);
        finished = true;
        fullRunMs = r.ms;
      }
      const from = Number(/^resumed (\d+)/.exec(r.out)?.[1] ?? 0);
      if (from > 0) resumed++;

      // Check from the outside: the checkpoint, and every record.
      const check = SqliteKeyStore.open(path, { create: false });
      const root2 = await SoftwareRoot.load(check);
      await root2.unseal(unsealKey);
      const kw2 = new Keywarden({ store: check, root: root2 });
      const meta = await check.getMeta('rewrap-job/bulk-v2');
      const checkpoint =
        meta === undefined ? (finished ? N : 0) : (JSON.parse(new TextDecoder().decode(meta)) as { done: number }).done;
      const rdb = new Database(recordsPath, { readonly: true });
      const rows = rdb.prepare('SELECT id, wrapped FROM records ORDER BY id').all() as Array<{
        id: number;
        wrapped: Buffer;
      }>;
      rdb.close();
      for (const row of rows) {
        const wrapped = new Uint8Array(row.wrapped);
        const version = parseWrappedKey(wrapped).version;
        // Everything before the checkpoint was written by the caller before the checkpoint moved.
        if (row.id < checkpoint) expect(version, `${where}: record ${row.id} below checkpoint ${checkpoint}`).toBe(2);
        if (row.id % 13 === 0 || (row.id >= checkpoint && row.id < checkpoint + 50)) {
          expect(await kw2.decryptDataKey(wrapped, { row: String(row.id) }, { key: 'bulk' }), where).toEqual(
            deks.get(row.id),
          );
        }
      }
      if (finished) expect(meta, 'the checkpoint is removed when the job completes').toBeUndefined();
      await kw2.close();
      await check.close();
    }
    console.info(`bulk rewrap kill suite: ${kills} kills, ${resumed} resumed runs, last run ${fullRunMs} ms`);
    expect(finished).toBe(true);
    expect(kills, 'rounds killed').toBeGreaterThanOrEqual(3);
    expect(resumed, 'runs that resumed from a checkpoint').toBeGreaterThanOrEqual(1);
  }, 120_000);
});

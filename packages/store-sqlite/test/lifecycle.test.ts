/**
 * Key lifecycle on the SQLite store (issue 10): crypto-shredding of one tenant among three, with
 * the store files scanned for any trace of the destroyed material, and compare-and-swap between
 * real concurrent processes (two rotations of one key: exactly one wins).
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { type DataKey, KeyDestroyedError, Keywarden, SoftwareRoot } from '@keywarden/core';
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
});

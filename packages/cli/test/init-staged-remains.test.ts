/**
 * `init --shares` killed while SQLite was still creating its staged store
 * (D/keystore.db.staged): the file exists but holds no schema yet — zero bytes, possibly with a
 * write-ahead log that never committed. Found by the random kills of ceremony-crash.test.ts; here
 * the same remains are made deterministically (a real SQLite connection SIGKILLed after it switched
 * to WAL). `init --resume` must say there is nothing to resume and remove them, and a new `init`
 * must clear them and succeed — never "the file is empty … restore it from a backup".
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { tempDir } from './helpers.js';
import { built, kw, requireBuild } from './split-helpers.js';

requireBuild('init-staged-remains.test.ts');

/** A staged store as a kill inside SqliteKeyStore.open leaves it. */
function killedWhileCreating(dir: string, withWal: boolean): string {
  const staged = path.join(dir, '.keywarden', 'keystore.db.staged');
  mkdirSync(path.dirname(staged), { recursive: true, mode: 0o700 });
  writeFileSync(staged, '', { mode: 0o600 });
  if (withWal) {
    // better-sqlite3 through store-sqlite, as the CLI opens it: WAL on, then SIGKILL, no schema.
    const script = `
      const { createRequire } = require('node:module');
      const storeRequire = createRequire(require.resolve('@keywarden/store-sqlite/package.json'));
      const Database = storeRequire('better-sqlite3');
      const db = new Database(${JSON.stringify(staged)});
      db.pragma('journal_mode = WAL');
      db.exec('BEGIN IMMEDIATE; CREATE TABLE half_done (x); ');
      process.kill(process.pid, 'SIGKILL');`;
    const r = spawnSync(process.execPath, ['-e', script], { cwd: path.join(__dirname, '..') });
    expect(r.signal).toBe('SIGKILL');
    expect(existsSync(`${staged}-wal`)).toBe(true);
  }
  return staged;
}

describe.runIf(built)('init killed while its staged store was being created', () => {
  for (const withWal of [false, true]) {
    const what = withWal ? 'an empty file and an uncommitted WAL' : 'an empty file';
    it(`init --resume on ${what}: nothing to resume, remains removed`, async () => {
      const dir = await tempDir();
      const staged = killedWhileCreating(dir, withWal);
      const r = await kw(['init', '--resume'], dir);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/nothing to resume/);
      expect(r.stderr).not.toMatch(/restore it from a backup/);
      expect(existsSync(staged)).toBe(false);
      expect(existsSync(`${staged}-wal`)).toBe(false);
    });

    it(`a new init --shares over ${what} clears them and succeeds`, async () => {
      const dir = await tempDir();
      killedWhileCreating(dir, withWal);
      const r = await kw(['init', '--shares', '3', '--threshold', '2', '--share-dir', 's0'], dir);
      expect(r.stderr).not.toMatch(/restore it from a backup/);
      expect(r.code, r.stderr).toBe(0);
      expect(existsSync(path.join(dir, '.keywarden', 'keystore.db'))).toBe(true);
    });
  }
});

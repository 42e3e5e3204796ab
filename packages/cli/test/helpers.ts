/**
 * Test helpers: run the CLI in-process through run() with PassThrough streams, in scratch
 * directories that are removed after each test. No mocks: real SQLite, real files.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { readFileSync } from 'node:fs';
import { decodeUnsealKey, Keywarden, SoftwareRoot } from '@keywarden/core';
import { SqliteKeyStore } from '@keywarden/store-sqlite';
import { afterEach } from 'vitest';
import { run } from '../src/cli.js';

export interface CliResult {
  code: number;
  stdout: Buffer;
  stderr: string;
  /** stdout as UTF-8. */
  out: string;
}

export interface RunOptions {
  cwd: string;
  stdin?: Uint8Array | string;
  env?: NodeJS.ProcessEnv;
}

export async function cli(argv: string[], options: RunOptions): Promise<CliResult> {
  const stdin = new PassThrough();
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  // Copies: the CLI may wipe buffers it owns once written.
  stdout.on('data', (c: Buffer) => out.push(Buffer.from(c)));
  stderr.on('data', (c: Buffer) => err.push(Buffer.from(c)));
  // The caller's bytes are copied too, so a test can compare against them afterwards.
  stdin.end(options.stdin === undefined ? Buffer.alloc(0) : Buffer.from(options.stdin));
  const code = await run(argv, { stdin, stdout, stderr, env: options.env ?? {}, cwd: options.cwd });
  const stdoutBytes = Buffer.concat(out);
  return { code, stdout: stdoutBytes, stderr: Buffer.concat(err).toString('utf8'), out: stdoutBytes.toString('utf8') };
}

const scratch: string[] = [];
afterEach(async () => {
  while (scratch.length > 0) await rm(scratch.pop() as string, { recursive: true, force: true });
});

/** A fresh directory, removed after the test. */
export async function tempDir(): Promise<string> {
  const d = await mkdtemp(path.join(tmpdir(), 'keywarden-cli-test-'));
  scratch.push(d);
  return d;
}

/** A directory with an initialized key store in ./.keywarden (the default). */
export async function initialized(): Promise<string> {
  const cwd = await tempDir();
  const r = await cli(['init'], { cwd });
  if (r.code !== 0) throw new Error(`init failed: ${r.stderr}`);
  return cwd;
}

/** The stderr of a failed command is exactly one `keywarden: …` line. */
export function oneLine(stderr: string): string {
  const lines = stderr.split('\n').filter((l) => l.length > 0);
  if (lines.length !== 1 || !lines[0]?.startsWith('keywarden: ')) {
    throw new Error(`expected one "keywarden: …" line on stderr, got:\n${stderr}`);
  }
  return lines[0];
}

export const DECRYPT_FAILED = 'keywarden: envelope: decryption failed (wrong key or context, or the data was modified)';

// better-sqlite3 is store-sqlite's dependency; tests reach it from there to inspect or damage a
// store the way a user with the sqlite3 shell would (no second copy, no mock).
const storeRequire = createRequire(createRequire(import.meta.url).resolve('@keywarden/store-sqlite/package.json'));
/** The part of better-sqlite3's API the tests use (its types are store-sqlite's dev dependency). */
export interface SqliteDatabase {
  prepare(sql: string): { get(...params: unknown[]): unknown; run(...params: unknown[]): unknown };
  pragma(source: string, options?: { simple?: boolean }): unknown;
  exec(sql: string): void;
  close(): void;
}
export const Database = storeRequire('better-sqlite3') as new (
  file: string,
  options?: { readonly?: boolean },
) => SqliteDatabase;

/** A development-mode folder's store as the CLI left it: opened the way the CLI opens it (never created), unsealed. */
export async function openUnsealed(cwd: string): Promise<Keywarden> {
  const dir = path.join(cwd, '.keywarden');
  const store = SqliteKeyStore.open(path.join(dir, 'keystore.db'), { create: false });
  const root = await SoftwareRoot.load(store);
  const key = decodeUnsealKey(readFileSync(path.join(dir, 'unseal.key'), 'utf8'));
  await root.unseal(key);
  key.fill(0);
  return new Keywarden({ store, root, ownsStore: true, ownsRoot: true });
}

/** The full integrity check of a folder's SQLite store (the open only runs quick_check and the meta table's), read-only. */
export function integrity(cwd: string): string {
  const db = new Database(path.join(cwd, '.keywarden', 'keystore.db'), { readonly: true });
  try {
    return String(db.pragma('integrity_check', { simple: true }));
  } finally {
    db.close();
  }
}

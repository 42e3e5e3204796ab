/**
 * `keywarden rewrap` and `keywarden root rotate` under the key store's job lease (docs/lifecycle.md
 * §Jobs under a lease), with real CLI processes on a SQLite folder:
 * - a second rewrap while one runs (stopped with SIGSTOP while it holds the lease) is refused with
 *   KW_CONFLICT naming the holder, changes nothing, and the first then finishes;
 * - a rewrap stopped past its lease's TTL while another run takes over and finishes stops itself
 *   (its lease lost) when continued, and every file decrypts;
 * - rewrap SIGKILLed at random points: the next run, started at once (the default TTL of 30 s is
 *   longer than its timeout), takes the dead process's lease over, resumes and finishes; every file
 *   decrypts and is under the primary, the lease is free and the job record gone;
 * - a root rotation killed after its commit (its record "started from R", the root S, the lease
 *   held by a dead process) is finished by the next `root rotate`, which does not rotate again;
 * - `root rotate` while a library job (another instance) holds the root-rotation lease is refused.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import * as path from 'node:path';
import {
  AUDIT_KEY_META_NAME,
  AUDIT_KEY_NEXT_META_NAME,
  inspectEnvelope,
  JobLease,
  keyStoreChecks,
  loadAuditKey,
  readRootState,
} from '@keywarden/core';
import { SqliteKeyStore } from '@keywarden/store-sqlite';
import { describe, expect, it } from 'vitest';
import { Database, tempDir, openUnsealed } from './helpers.js';
import { BIN, built, kw as kwRun, requireBuild } from './split-helpers.js';

requireBuild('job-lease.test.ts');

const CONTEXT = { suite: 'job-lease' };

/** The CLI run to completion; a generous limit, as the machine may be shared and slow. */
const kw = (args: string[], cwd: string, options: { env?: NodeJS.ProcessEnv } = {}) =>
  kwRun(args, cwd, { ...options, timeoutMs: 120_000 });
const FILES = 40;

interface Run {
  child: ChildProcess;
  done: Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>;
}

function start(args: string[], cwd: string, env: NodeJS.ProcessEnv = {}): Run {
  const child = spawn(process.execPath, [BIN, ...args], {
    cwd,
    env: { PATH: process.env.PATH, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout?.on('data', (c: Buffer) => out.push(c));
  child.stderr?.on('data', (c: Buffer) => err.push(c));
  const guard = setTimeout(() => child.kill('SIGKILL'), 120_000);
  const done = new Promise<Awaited<Run['done']>>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(guard);
      resolve({ code, signal, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() });
    });
  });
  return { child, done };
}

const dbOf = (cwd: string) => path.join(cwd, '.keywarden', 'keystore.db');

/** A meta record read through its own short-lived connection (as another process would). */
async function meta(cwd: string, name: string): Promise<Uint8Array | undefined> {
  const store = SqliteKeyStore.open(dbOf(cwd), { create: false });
  try {
    return await store.getMeta(name);
  } finally {
    await store.close();
  }
}

async function lease(cwd: string, name: string): Promise<keyStoreChecks.LeaseRecord | undefined> {
  return keyStoreChecks.decodeLease(await meta(cwd, `lease/${name}`));
}

/** A folder with key "r" and `count` small v2 files under it, then `r` rotated (every file to rewrap). */
async function filesToRewrap(count: number): Promise<{ cwd: string; names: string[]; texts: Map<string, string> }> {
  const cwd = await tempDir();
  expect((await kw(['init'], cwd)).code).toBe(0);
  const kwd = await openUnsealed(cwd);
  const names: string[] = [];
  const texts = new Map<string, string>();
  try {
    await kwd.createKey('r');
    for (let i = 0; i < count; i++) {
      const name = `f${String(i).padStart(4, '0')}.kw`;
      const text = `file ${i} `.repeat(50 + i);
      writeFileSync(
        path.join(cwd, name),
        await kwd.encrypt(new TextEncoder().encode(text), { key: 'r', context: CONTEXT }),
      );
      names.push(name);
      texts.set(name, text);
    }
    await kwd.rotateKey('r');
  } finally {
    await kwd.close();
  }
  return { cwd, names, texts };
}

/** Every file decrypts to its text; returns how many are under the primary. */
async function checkFiles(cwd: string, texts: Map<string, string>, where: string): Promise<number> {
  const kwd = await openUnsealed(cwd);
  try {
    const primary = (await kwd.getKey('r')).primaryVersion;
    let underPrimary = 0;
    for (const [name, text] of texts) {
      const bytes = readFileSync(path.join(cwd, name));
      if (inspectEnvelope(bytes).keyVersion === primary) underPrimary++;
      const plain = await kwd.decrypt(bytes, { key: 'r', context: CONTEXT });
      expect(new TextDecoder().decode(plain), `${where}: ${name}`).toBe(text);
    }
    return underPrimary;
  } finally {
    await kwd.close();
  }
}

const rewrapArgs = (names: string[]) => ['rewrap', '--key', 'r', '-c', `suite=${CONTEXT.suite}`, ...names];

/** Resolves once `run` holds the lease `name` and its job has done at least one file. */
async function holding(cwd: string, run: Run, name: string): Promise<void> {
  let ready = false;
  const deadline = Date.now() + 90_000;
  while (!ready && Date.now() < deadline && run.child.exitCode === null) {
    const l = await lease(cwd, name).catch(() => undefined);
    const job = await meta(cwd, 'rewrap-job/cli').catch(() => undefined);
    const done = job ? (JSON.parse(new TextDecoder().decode(job)) as { done: number }).done : 0;
    ready = (l?.holder.includes(`#${run.child.pid}.`) ?? false) && (l?.expiresAt ?? 0) > 0 && done > 0;
    if (!ready) await new Promise((r) => setTimeout(r, 5));
  }
  if (!ready && run.child.exitCode !== null) {
    const r = await run.done;
    throw new Error(`the run ended (exit ${r.code}) before it was seen holding the lease: ${r.stderr}`);
  }
  expect(ready, 'the run took the lease and started').toBe(true);
}

/**
 * SIGSTOP `run` at an instant when it holds no SQLite write lock (a process stopped inside a write
 * transaction blocks every writer of the file, whatever the lease says: that is SQLite's lock, not
 * the job's): stop it, try BEGIN IMMEDIATE without waiting, and if the lock is taken let it run a
 * few milliseconds more and try again.
 */
async function stopOutsideWrite(cwd: string, run: Run): Promise<void> {
  for (let attempt = 0; attempt < 500; attempt++) {
    run.child.kill('SIGSTOP');
    const db = new Database(dbOf(cwd));
    try {
      db.pragma('busy_timeout = 0');
      db.exec('BEGIN IMMEDIATE');
      db.exec('ROLLBACK');
      return;
    } catch {
      run.child.kill('SIGCONT');
      await new Promise((r) => setTimeout(r, randomInt(2, 20)));
    } finally {
      db.close();
    }
  }
  throw new Error('the run was never outside a write transaction');
}

describe.skipIf(!built)('CLI jobs under the key store lease (real processes, SQLite)', () => {
  it('a second rewrap while one runs is refused with KW_CONFLICT naming the holder; the first then finishes', async () => {
    const { cwd, names, texts } = await filesToRewrap(FILES);
    const first = start(rewrapArgs(names), cwd);
    try {
      await holding(cwd, first, 'cli-rewrap');
      await stopOutsideWrite(cwd, first);
      const second = await kw(rewrapArgs(names), cwd);
      expect(second.code).toBe(1);
      expect(second.stderr).toMatch(
        new RegExp(
          `^keywarden: rewrap: another rewrap is running on this key store \\(keywarden-cli@[^)]*#${first.child.pid}\\.`,
        ),
      );
      expect(second.stderr.trim().split('\n')).toHaveLength(1);
      expect(second.stdout).toBe('');
    } finally {
      first.child.kill('SIGCONT');
    }
    const r = await first.done;
    expect(r.code, r.stderr).toBe(0);
    expect(await checkFiles(cwd, texts, 'after the first run')).toBe(FILES);
    expect((await lease(cwd, 'cli-rewrap'))?.expiresAt).toBe(0);
    expect(await meta(cwd, 'rewrap-job/cli')).toBeUndefined();
  }, 240_000);

  it('a rewrap stopped past its lease while another run takes over stops itself when continued (lease lost); every file decrypts', async () => {
    const { cwd, names, texts } = await filesToRewrap(FILES);
    const env = { KEYWARDEN_LEASE_TTL_MS: '3000' };
    const stale = start(rewrapArgs(names), cwd, env);
    let token = 0;
    try {
      await holding(cwd, stale, 'cli-rewrap');
      await stopOutsideWrite(cwd, stale);
      token = (await lease(cwd, 'cli-rewrap'))?.token ?? 0;
      // The stopped process is alive (not dead): the next run may take over only once it expired.
      await new Promise((r) => setTimeout(r, 3500));
      const takeover = await kw(rewrapArgs(names), cwd, { env });
      expect(takeover.code, takeover.stderr).toBe(0);
      expect(takeover.stderr).toMatch(/the interrupted run had done \d+ of 40 files/);
      expect(await checkFiles(cwd, texts, 'after the takeover')).toBe(FILES);
    } finally {
      stale.child.kill('SIGCONT');
    }
    const r = await stale.done;
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^keywarden: (lease: cli-rewrap was lost|keystore: lease "cli-rewrap" is no longer held)/);
    expect(await checkFiles(cwd, texts, 'after the stale run stopped')).toBe(FILES);
    const after = await lease(cwd, 'cli-rewrap');
    expect(after?.token).toBeGreaterThan(token);
    expect(after?.expiresAt).toBe(0);
  }, 240_000);

  it('rewrap SIGKILLed at random points: the next run takes the dead process lease over at once, resumes and finishes', async () => {
    const ROUNDS = 3;
    const { cwd, names, texts } = await filesToRewrap(30);
    // Calibrate: one unkilled run (then rotate again so that every round has every file to do).
    const t0 = Date.now();
    const cal = await kw(rewrapArgs(names), cwd);
    expect(cal.code, cal.stderr).toBe(0);
    const typical = Date.now() - t0;
    let resumedWithLease = 0;
    // At least ROUNDS rounds, more (up to twice as many) until two kills landed while the lease was held.
    for (let round = 0; round < 2 * ROUNDS && (round < ROUNDS || resumedWithLease < 2); round++) {
      expect((await kw(['key', 'rotate', 'r'], cwd)).code).toBe(0);
      const delay = Math.round(typical * (0.5 + (0.5 * randomInt(0, 1001)) / 1000));
      const run = start(rewrapArgs(names), cwd);
      const timer = setTimeout(() => run.child.kill('SIGKILL'), delay);
      const r = await run.done;
      clearTimeout(timer);
      const where = `round ${round} (kill after ${delay} ms)`;
      const left = await lease(cwd, 'cli-rewrap');
      const heldByDead = r.signal === 'SIGKILL' && left !== undefined && left.expiresAt > Date.now();
      // Every file whole after the kill: it decrypts (old version or new).
      await checkFiles(cwd, texts, where);
      // The default TTL (30 s): the rerun says it resumed at once (it never waits for a lease).
      const rerun = await kw(rewrapArgs(names), cwd);
      expect(rerun.code, `${where}: ${rerun.stderr}`).toBe(0);
      if (heldByDead) {
        resumedWithLease++;
        expect(rerun.stderr, where).toMatch(
          /an earlier rewrap on this key store was interrupted \(its process keywarden-cli@/,
        );
      }
      expect(await checkFiles(cwd, texts, `${where}, after the rerun`), where).toBe(names.length);
      expect((await lease(cwd, 'cli-rewrap'))?.expiresAt, where).toBe(0);
      expect(await meta(cwd, 'rewrap-job/cli'), where).toBeUndefined();
      expect(
        readdirSync(cwd).filter((n) => n.includes('keywarden-tmp')),
        where,
      ).toEqual([]);
    }
    expect(resumedWithLease, 'rounds killed while holding the lease').toBeGreaterThanOrEqual(2);
  }, 360_000);

  it('a root rotation killed after its commit (record "started from R", root S, lease of a dead process) is finished by the next run, not repeated', async () => {
    const cwd = await tempDir();
    expect((await kw(['init'], cwd)).code).toBe(0);
    let kwd = await openUnsealed(cwd);
    await kwd.createKey('k');
    const envelope = await kwd.encrypt(new TextEncoder().encode('kept'), { key: 'k', context: CONTEXT });
    (await loadAuditKey(kwd.store, kwd.root, { create: true })).destroy();
    await kwd.close();
    const auditKeyUnderR = await meta(cwd, AUDIT_KEY_META_NAME);
    expect(auditKeyUnderR, 'the store has an audit key').toBeDefined();
    const rotated = await kw(['root', 'rotate'], cwd);
    expect(rotated.code, rotated.stderr).toBe(0);
    const [, from, to] = /: (root_\S+) → (root_\S+);/.exec(rotated.stdout) ?? [];
    expect(from).toMatch(/^root_/);
    // The state a SIGKILL right after the commit leaves: the audit key still under R with its copy
    // under S staged, the record "started from R", the root S, and the lease held (unexpired) by a
    // process that is gone.
    const gone = spawn(process.execPath, ['-e', '']);
    await new Promise((r) => gone.on('close', r));
    const store = SqliteKeyStore.open(dbOf(cwd), { create: false });
    try {
      const auditKeyUnderS = (await store.getMeta(AUDIT_KEY_META_NAME)) as Uint8Array;
      await store.putMeta(AUDIT_KEY_NEXT_META_NAME, auditKeyUnderS);
      await store.putMeta(AUDIT_KEY_META_NAME, auditKeyUnderR as Uint8Array);
      const pidNs = /\[(\d+)\]/.exec(readlinkSync('/proc/self/ns/pid'))?.[1] ?? '';
      await store.putMeta(
        'root-rotation-job/cli',
        new TextEncoder().encode(JSON.stringify({ v: 1, state: 'started', from })),
      );
      const held = (await store.acquireLease(
        'root-rotation',
        `keywarden-cli@${hostname().slice(0, 64)}/${pidNs}#${gone.pid}.1`,
        600_000,
      )) as {
        token: number;
      };
      expect(held.token).toBeGreaterThan(0);
    } finally {
      await store.close();
    }
    const finish = await kw(['root', 'rotate'], cwd);
    expect(finish.code, finish.stderr).toBe(0);
    expect(finish.stdout).toContain(
      `interrupted after its commit: the root had already been rotated (${from} → ${to})`,
    );
    expect(finish.stderr).toMatch(/an earlier root rotate on this key store was interrupted/);
    kwd = await openUnsealed(cwd);
    try {
      expect(kwd.root.describe().id).toBe(to);
      expect(new TextDecoder().decode(await kwd.decrypt(envelope, { key: 'k', context: CONTEXT }))).toBe('kept');
      const state = await readRootState(kwd.store);
      expect(state.state === 'present' && state.document.rootId).toBe(to);
    } finally {
      await kwd.close();
    }
    const record = JSON.parse(new TextDecoder().decode(await meta(cwd, 'root-rotation-job/cli'))) as object;
    expect(record).toEqual({ v: 1, state: 'done', from, to });
    // The staged audit key was promoted: under S, nothing staged.
    expect(JSON.parse(new TextDecoder().decode(await meta(cwd, AUDIT_KEY_META_NAME)))).toMatchObject({ rootId: to });
    expect(await meta(cwd, AUDIT_KEY_NEXT_META_NAME)).toBeUndefined();
    // The next run is a new rotation.
    const again = await kw(['root', 'rotate'], cwd);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toMatch(new RegExp(`: ${to} → root_\\S+;`));
  }, 240_000);

  it('root rotate while another instance (a library job) holds the root-rotation lease is refused with KW_CONFLICT; nothing changes', async () => {
    const cwd = await tempDir();
    expect((await kw(['init'], cwd)).code).toBe(0);
    const store = SqliteKeyStore.open(dbOf(cwd), { create: false });
    const before = await readRootState(store);
    const held = await JobLease.acquire(store, 'root-rotation', { holder: 'ops-host#4242', ttlMs: 60_000 });
    try {
      const r = await kw(['root', 'rotate'], cwd);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(
        /^keywarden: root rotate: another root rotate is running on this key store \(ops-host#4242;/,
      );
      const after = await readRootState(store);
      expect(after.state === 'present' && after.document.rootId).toBe(
        before.state === 'present' && before.document.rootId,
      );
    } finally {
      await held.release();
      await store.close();
    }
    const r = await kw(['root', 'rotate'], cwd);
    expect(r.code, r.stderr).toBe(0);
  }, 180_000);
});

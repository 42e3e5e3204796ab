/**
 * Crash safety of the split-knowledge ceremonies (docs/split-knowledge.md §7.1; issue 6 item 1):
 * the real CLI is SIGKILLed at every step boundary of `init --shares` and `rekey` (through the
 * test-only KEYWARDEN_TEST_STEP_HOOK, which SIGKILLs the process itself), and at random instants
 * inside and around the ceremony. After EVERY kill, before anything is repaired, the store must be
 * openable by a set of shares somebody holds — the old shares, or the complete new share files —
 * and data made before must decrypt; then `--resume`/`--abort` (the real CLI again) must leave a
 * finished store, and the check is repeated.
 *
 * Kills: init 8 boundaries + 23 random = 31; rekey 7 boundaries + 23 random = 30; a kill inside
 * `rekey --resume` and two of the stdout hand-out (rekey, init): 64 in all. Two thirds of the
 * random kills are timed from the first announced step (0–60 ms), so they fall inside the ceremony;
 * the rest from the spawn (150–850 ms). Processes run three at a time.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Keywarden, SoftwareRoot } from '@keywarden/core';
import { readPendingCeremony, unsealWithShares } from '@keywarden/split-knowledge';
import { SqliteKeyStore } from '@keywarden/store-sqlite';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, built, kw, requireBuild } from './split-helpers.js';

requireBuild('ceremony-crash.test.ts');

const HOOK = 'KEYWARDEN_TEST_STEP_HOOK';
const CONCURRENCY = 3;
const RANDOM_KILLS = 23;
const REKEY_STEPS = [
  'rekey:staged',
  'rekey:recorded',
  'rekey:share-1',
  'rekey:share-2',
  'rekey:share-3',
  'rekey:shares-written',
  'rekey:activated',
];
const INIT_STEPS = [
  'init:store-created',
  'init:recorded',
  'init:share-1',
  'init:share-2',
  'init:share-3',
  'init:shares-written',
  'init:activated',
  'init:done',
];

let work: string;
/** A store (3 shares, any 2) with one key and data encrypted before any ceremony: copied per run. */
let template: string;
let data: { wrapped: Uint8Array; iv: Buffer; ciphertext: Buffer; tag: Buffer; plaintext: Buffer };

beforeAll(async () => {
  if (!built) return;
  work = await mkdtemp(path.join(tmpdir(), 'kw-crash-'));
  template = path.join(work, 'template');
  const r = await kw(['init', '--shares', '3', '--threshold', '2', '--share-dir', 's0'], await mk(template));
  expect(r.code, r.stderr).toBe(0);
  const store = await SqliteKeyStore.open(path.join(template, '.keywarden', 'keystore.db'));
  const root = await SoftwareRoot.load(store);
  await unsealWithShares(root, await shareTexts(path.join(template, 's0'), 2));
  const k = new Keywarden({ store, root });
  await k.createKey('app');
  const dk = await k.generateDataKey('app');
  const plaintext = Buffer.from('data encrypted before the ceremony');
  const iv = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', dk.plaintext, iv);
  const ciphertext = Buffer.concat([c.update(plaintext), c.final()]);
  data = { wrapped: dk.wrapped, iv, ciphertext, tag: c.getAuthTag(), plaintext };
  await k.close();
  await store.close();
}, 30_000);

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true, maxRetries: 10, retryDelay: 200 });
});

async function mk(dir: string): Promise<string> {
  await mkdir(dir, { recursive: true });
  return dir;
}

/** The plaintext shares in `dir` (first `count`, or all). */
async function shareTexts(dir: string, count?: number): Promise<string[]> {
  const names = (await readdir(dir)).filter((n) => /^share-\d+-of-\d+\.txt$/.test(n)).sort();
  const texts = await Promise.all(names.map((n) => readFile(path.join(dir, n), 'utf8')));
  return count === undefined ? texts : texts.slice(0, count);
}

interface Outcome {
  /** Which share set opens the store now. */
  opens: 'old' | 'new' | 'none';
  pending: boolean;
}

/**
 * The invariant, checked on the files as the kill left them. For a rekey: the store's root opens
 * with the old shares, or with the new share files (all N present and whole, as the ceremony
 * promised), and the data key made before unwraps and decrypts the data. For an init: either no
 * key store at all (the staged one is not a key store), or one whose new shares are all on disk.
 */
async function check(dir: string, kind: 'init' | 'rekey'): Promise<Outcome> {
  const db = path.join(dir, '.keywarden', 'keystore.db');
  if (!existsSync(db)) {
    expect(kind, 'a rekey never removes the key store').toBe('init');
    return { opens: 'none', pending: existsSync(`${db}.staged`) };
  }
  const store = await SqliteKeyStore.open(db);
  let u: SoftwareRoot['document']['unseal'];
  let pending: boolean;
  try {
    u = (await SoftwareRoot.load(store)).document.unseal;
    pending = (await readPendingCeremony(store)) !== undefined;
  } finally {
    await store.close();
  }
  if (u.method !== 'shamir') throw new Error('not split');
  if (kind === 'rekey') {
    const oldTexts = await shareTexts(path.join(dir, 's0'));
    if (oldTexts[0]?.includes(u.shareSetId)) {
      await opensAndDecrypts(db, oldTexts.slice(0, 2), true);
      return { opens: 'old', pending };
    }
  }
  // The new share set is the store's: every one of its shares must be on disk, whole.
  const newTexts = await shareTexts(path.join(dir, 's1'));
  expect(newTexts.length, `all ${u.shares} new shares on disk`).toBe(u.shares);
  for (const t of newTexts) expect(t).toContain(u.shareSetId);
  // Any quorum works, not only the first: the last two as well.
  await opensAndDecrypts(db, newTexts.slice(-2), kind === 'rekey');
  await opensAndDecrypts(db, newTexts.slice(0, 2), kind === 'rekey');
  return { opens: 'new', pending };
}

/** The quorum unseals the store's root; with `decrypt`, the data made before decrypts. */
async function opensAndDecrypts(db: string, shares: string[], decrypt: boolean): Promise<void> {
  const store = await SqliteKeyStore.open(db);
  const root = await SoftwareRoot.load(store);
  const k = new Keywarden({ store, root });
  try {
    await unsealWithShares(root, shares);
    if (!decrypt) return;
    const dek = await k.decryptDataKey(data.wrapped, undefined, { key: 'app' });
    const d = createDecipheriv('aes-256-gcm', dek, data.iv);
    d.setAuthTag(data.tag);
    expect(Buffer.concat([d.update(data.ciphertext), d.final()]).equals(data.plaintext)).toBe(true);
  } finally {
    await k.close();
    await root.close().catch(() => {});
    await store.close().catch(() => {});
  }
}

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
}

/**
 * Spawn `keywarden ARGS` with the step hook: `kill` names a step at which it SIGKILLs itself;
 * otherwise, when `delayMs` is given, the test SIGKILLs it that long after the first step is
 * announced (`afterFirstStep`) or after the spawn.
 */
function spawnKilled(
  args: string[],
  cwd: string,
  opts: { kill?: string; delayMs?: number; afterFirstStep?: boolean },
): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child: ChildProcess = spawn(process.execPath, [BIN, ...args], {
      cwd,
      env: { PATH: process.env.PATH, [HOOK]: opts.kill ? `announce,kill:${opts.kill}` : 'announce' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    let timer: ReturnType<typeof setTimeout> | undefined;
    const arm = (): void => {
      if (opts.delayMs !== undefined && timer === undefined) {
        timer = setTimeout(() => child.kill('SIGKILL'), opts.delayMs);
      }
    };
    if (!opts.afterFirstStep) arm();
    child.stderr?.on('data', (c: Buffer) => {
      stderr += c.toString('utf8');
      if (opts.afterFirstStep && stderr.includes('keywarden-test-step:')) arm();
    });
    const guard = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(guard);
      if (timer) clearTimeout(timer);
      resolve({ code, signal, stderr });
    });
  });
}

/** Run `jobs` at most CONCURRENCY at a time. */
async function pool<T>(jobs: (() => Promise<T>)[]): Promise<T[]> {
  const out: T[] = new Array(jobs.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < jobs.length) {
        const i = next++;
        out[i] = await (jobs[i] as () => Promise<T>)();
      }
    }),
  );
  return out;
}

/** After the check: finish (resume) or drop (abort) what the kill left, with the real CLI. */
async function recover(dir: string, kind: 'init' | 'rekey', before: Outcome): Promise<Outcome> {
  if (!before.pending) return before;
  const quorum = kind === 'rekey' ? ['--share-file', 's0/share-1-of-3.txt', '--share-file', 's0/share-3-of-3.txt'] : [];
  const resumed = await kw([kind, '--resume', ...quorum], dir);
  if (resumed.code !== 0) {
    // Only an incomplete hand-out may refuse to resume; then abort must work.
    expect(resumed.stderr).toMatch(/were not all written|nothing to resume/);
    if (!/nothing to resume/.test(resumed.stderr)) {
      const aborted = await kw([kind, '--abort'], dir);
      expect(aborted.code, aborted.stderr).toBe(0);
    }
  }
  const after = await check(dir, kind);
  expect(after.pending, 'nothing is left pending after resume or abort').toBe(false);
  if (kind === 'init') expect(existsSync(path.join(dir, '.keywarden', 'keystore.db.staged'))).toBe(false);
  return after;
}

/** How the kills fell: killed or not, and what opened the store before and after recovery. */
function tally(results: { killed: boolean; stderr: string; before: string; after: string }[]): Record<string, number> {
  const t: Record<string, number> = {};
  for (const r of results) {
    const steps = [...r.stderr.matchAll(/keywarden-test-step: (\S+)/g)].map((m) => m[1]);
    const k = `${r.killed ? `killed after ${steps.at(-1) ?? 'start-up'}` : 'completed'}: ${r.before}->${r.after}`;
    t[k] = (t[k] ?? 0) + 1;
  }
  return t;
}

let runs = 0;
async function freshRekeyDir(): Promise<string> {
  const dir = path.join(work, `rekey-${runs++}`);
  await cp(template, dir, { recursive: true });
  return dir;
}

const REKEY_ARGS = [
  'rekey',
  '--share-file',
  's0/share-1-of-3.txt',
  '--share-file',
  's0/share-2-of-3.txt',
  '--share-dir',
  's1',
];
const INIT_ARGS = ['init', '--shares', '3', '--threshold', '2', '--share-dir', 's1'];

describe.skipIf(!built)('a killed ceremony never strands the store (SIGKILL at every step and at random)', () => {
  it('rekey: at each step boundary and at 23 random instants, the old or the complete new share set opens the store, and data made before decrypts', async () => {
    const plans: { kill?: string; delayMs?: number; afterFirstStep?: boolean }[] = [
      ...REKEY_STEPS.map((kill) => ({ kill })),
      // Killed right after the activation's store write inside `--resume` is covered below.
      ...Array.from({ length: RANDOM_KILLS }, (_, i) =>
        i % 3 !== 2 ? { delayMs: Math.random() * 60, afterFirstStep: true } : { delayMs: 150 + Math.random() * 700 },
      ),
    ];
    const results = await pool(
      plans.map((plan) => async () => {
        const dir = await freshRekeyDir();
        const run = await spawnKilled(REKEY_ARGS, dir, plan);
        const before = await check(dir, 'rekey');
        const after = await recover(dir, 'rekey', before);
        if (plan.kill) expect(run.signal, `${plan.kill}: ${run.stderr}`).toBe('SIGKILL');
        return { plan, killed: run.signal === 'SIGKILL', stderr: run.stderr, before: before.opens, after: after.opens };
      }),
    );
    console.log(`rekey kills: ${JSON.stringify(tally(results))}`);
    const kills = results.filter((r) => r.killed).length;
    // Boundary kills land where they say; the random ones mostly land inside the ceremony.
    expect(kills).toBeGreaterThanOrEqual(REKEY_STEPS.length + RANDOM_KILLS / 2);
    // Both sides of the switch were seen: killed before activation (old works) and after (new works).
    expect(results.some((r) => r.before === 'old')).toBe(true);
    expect(results.some((r) => r.before === 'new')).toBe(true);
    // A kill at `rekey:shares-written` leaves everything on disk: resume finishes the rekey.
    const written = results.find((r) => r.plan.kill === 'rekey:shares-written');
    expect(written?.before).toBe('old');
    expect(written?.after).toBe('new');
  }, 120_000);

  it('init --shares: at each step boundary and at 23 random instants, there is either no key store or one whose shares are all on disk', async () => {
    const plans: { kill?: string; delayMs?: number; afterFirstStep?: boolean }[] = [
      ...INIT_STEPS.map((kill) => ({ kill })),
      ...Array.from({ length: RANDOM_KILLS }, (_, i) =>
        i % 3 !== 2 ? { delayMs: Math.random() * 60, afterFirstStep: true } : { delayMs: 150 + Math.random() * 700 },
      ),
    ];
    const results = await pool(
      plans.map((plan, i) => async () => {
        const dir = path.join(work, `init-${i}`);
        await mk(dir);
        const run = await spawnKilled(INIT_ARGS, dir, plan);
        const before = await check(dir, 'init');
        const after = await recover(dir, 'init', before);
        if (plan.kill) expect(run.signal, `${plan.kill}: ${run.stderr}`).toBe('SIGKILL');
        if (after.opens === 'none' && (plan.kill === 'init:recorded' || plan.kill === 'init:share-2')) {
          // Nothing initialized: a new init just works.
          const again = await kw(
            INIT_ARGS.map((a) => (a === 's1' ? 's2' : a)),
            dir,
          );
          expect(again.code, again.stderr).toBe(0);
        }
        return { plan, killed: run.signal === 'SIGKILL', stderr: run.stderr, before: before.opens, after: after.opens };
      }),
    );
    console.log(`init kills: ${JSON.stringify(tally(results))}`);
    expect(results.filter((r) => r.killed).length).toBeGreaterThanOrEqual(INIT_STEPS.length + RANDOM_KILLS / 2);
    expect(results.find((r) => r.plan.kill === 'init:recorded')?.before).toBe('none');
    expect(results.find((r) => r.plan.kill === 'init:shares-written')?.after).toBe('new');
    expect(results.find((r) => r.plan.kill === 'init:activated')?.before).toBe('new');
  }, 120_000);

  it('a kill inside `rekey --resume`, and a rekey or init printing on stdout killed mid-way: the old shares (or no store) until activation', async () => {
    // Resume killed right after its activation: the new set is active and complete.
    const a = await freshRekeyDir();
    await spawnKilled(REKEY_ARGS, a, { kill: 'rekey:shares-written' });
    const r = await spawnKilled(
      ['rekey', '--resume', '--share-file', 's0/share-2-of-3.txt', '--share-file', 's0/share-3-of-3.txt'],
      a,
      { kill: 'rekey:activated' },
    );
    expect(r.signal).toBe('SIGKILL');
    expect((await check(a, 'rekey')).opens).toBe('new');
    expect((await recover(a, 'rekey', await check(a, 'rekey'))).opens).toBe('new');

    // Shares printed on stdout, killed after the second: nobody can tell they were received, so
    // the old set stays; resume with the old quorum is refused; abort drops the rekey.
    const b = await freshRekeyDir();
    const killed = await spawnKilled(REKEY_ARGS.slice(0, 5), b, { kill: 'rekey:share-2' });
    expect(killed.signal).toBe('SIGKILL');
    expect(await check(b, 'rekey')).toEqual({ opens: 'old', pending: true });
    const st = await kw(['status'], b);
    expect(st.stdout).toMatch(
      /pending: +rekey to share set ss_\S+ .*`keywarden rekey --resume`.*the current shares still work/,
    );
    const refused = await kw(
      ['rekey', '--resume', '--share-file', 's0/share-1-of-3.txt', '--share-file', 's0/share-2-of-3.txt'],
      b,
    );
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/printed on a terminal/);
    expect((await kw(['rekey', '--abort'], b)).code).toBe(0);
    expect(await check(b, 'rekey')).toEqual({ opens: 'old', pending: false });

    // The same for an init printing its shares: there is no key store, and the init stays
    // pending until a test quorum or an abort.
    const c = await mk(path.join(work, 'init-stdout'));
    const initKilled = await spawnKilled(INIT_ARGS.slice(0, 5), c, { kill: 'init:share-2' });
    expect(initKilled.signal).toBe('SIGKILL');
    expect(await check(c, 'init')).toEqual({ opens: 'none', pending: true });
    expect((await kw(['status'], c)).stdout).toMatch(/not initialized: the init did not finish/);
    const noQuorum = await kw(['init', '--resume'], c);
    expect(noQuorum.code).toBe(1);
    expect(noQuorum.stderr).toMatch(/printed on a terminal, so a test quorum must show they were received/);
    expect((await kw(['init', '--abort'], c)).code).toBe(0);
    expect(await check(c, 'init')).toEqual({ opens: 'none', pending: false });
  }, 60_000);
});

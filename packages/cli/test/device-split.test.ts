/**
 * Split knowledge over a device root's secret, through the real `keywarden` executable: the
 * SoftHSM2 token's user PIN (`init --root pkcs11:… --pin-shares N --pin-threshold M`) and a TPM
 * root's auth value (`init --root tpm: --auth-shares N --auth-threshold M`), on the devices the
 * harness scripts start (harness/softhsm.sh, harness/swtpm.sh), unsealed by a real agent process
 * from a quorum of shares. Wrong, forged and too few shares; SIGKILL inside the init (then resume or
 * abort, and the token still takes its PIN). Nothing secret in a file of the folder, an error or
 * the agent's log. Outside CI a machine without the device skips with the harness's reason; in CI
 * a missing device is a failure.
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { combineHardwareSecret } from '@keywarden/split-knowledge';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, built, kw, requireBuild, type Spawned, startAgent, waitFor } from './split-helpers.js';

requireBuild('device-split.test.ts');
const HARNESS = fileURLToPath(new URL('../../../harness/', import.meta.url));

type Env = Record<string, string>;

/** Start a harness device; its env, or the reason it cannot run (a failure in CI). */
function startDevice(script: string): { env: Env; stop: () => void } | { reason: string } {
  let out: string;
  try {
    out = execFileSync('bash', [path.join(HARNESS, script), 'start'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 60_000,
    });
  } catch (err) {
    const reason = `${script} could not start its device: ${String((err as { stderr?: string }).stderr ?? err).trim()}`;
    if (process.env.CI) throw new Error(reason);
    return { reason };
  }
  const env: Env = {};
  for (const line of out.split('\n')) {
    const m = /^export ([A-Z0-9_]+)='?([^']*)'?$/.exec(line);
    if (m?.[1] && m[2] !== undefined) env[m[1]] = m[2];
  }
  const dir = env.KEYWARDEN_SOFTHSM_DIR ?? env.KEYWARDEN_SWTPM_DIR;
  return {
    env,
    stop: () => {
      execFileSync('bash', [path.join(HARNESS, script), 'stop', dir as string], { stdio: 'ignore', timeout: 30_000 });
    },
  };
}

const scratch: string[] = [];
async function tempDir(): Promise<string> {
  const d = await mkdtemp(path.join(tmpdir(), 'keywarden-device-split-'));
  scratch.push(d);
  return d;
}
afterAll(async () => {
  for (const d of scratch) await rm(d, { recursive: true, force: true });
});

/** Every file under `dir` (recursively), as bytes. */
function filesUnder(dir: string): { file: string; bytes: Buffer }[] {
  const out: { file: string; bytes: Buffer }[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...filesUnder(p));
    else if (e.isFile()) out.push({ file: p, bytes: readFileSync(p) });
  }
  return out;
}

/** The CLI's one-line failure: `keywarden: …`, no stack trace. */
function oneLineError(r: Spawned, pattern: RegExp, code = 1): void {
  expect(r.code, r.stderr).toBe(code);
  const lines = r.stderr.trimEnd().split('\n');
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(/^keywarden: /);
  expect(lines[0]).toMatch(pattern);
  expect(r.stderr).not.toMatch(/\n\s+at /);
}

/** Alter one character in the middle of a share's payload (still well-formed base64url). */
function altered(share: string): string {
  const i = Math.floor(share.length * 0.7);
  const c = share[i] === 'A' ? 'B' : 'A';
  return share.slice(0, i) + c + share.slice(i + 1);
}

/** The PIN a quorum of hsm-pin shares holds (the test's own recombination, for pkcs11-tool). */
async function pinOf(shares: string[]): Promise<string> {
  const secret = await combineHardwareSecret(shares, { purpose: 'hsm-pin' });
  return Buffer.from(secret).toString('utf8');
}

/**
 * `--dir d init --root ROOT` with the device secret split 2 of 3 into SHARE_DIR: the PKCS#11 user
 * PIN (`--pin-shares`/`--pin-threshold`) or the TPM auth value (`--auth-shares`/`--auth-threshold`).
 */
function splitInitArgs(secret: 'pin' | 'auth', root: string, shareDir: string): string[] {
  const [shares, threshold] = [`--${secret}-shares`, `--${secret}-threshold`];
  return ['--dir', 'd', 'init', '--root', root, shares, '3', threshold, '2', '--share-dir', shareDir];
}

/** Through the unsealed agent: `key create k`, TEXT encrypted to ./ct, and decrypted back to TEXT. */
async function createEncryptDecrypt(cwd: string, env: Env, text: string): Promise<void> {
  expect((await kw(['--dir', 'd', 'key', 'create', 'k'], cwd, { env, timeoutMs: 60_000 })).code).toBe(0);
  const enc = await kw(['--dir', 'd', 'encrypt', '--key', 'k', '-o', 'ct'], cwd, {
    env,
    input: text,
    timeoutMs: 60_000,
  });
  expect(enc.code, enc.stderr).toBe(0);
  const dec = await kw(['--dir', 'd', 'decrypt', '--key', 'k', '-i', 'ct'], cwd, { env, timeoutMs: 60_000 });
  expect(dec.code, dec.stderr).toBe(0);
  expect(dec.stdout).toBe(text);
}

/** `--dir d rekey --resume|--abort [--share-file …]`: finish or undo a rekey that was stopped. */
function rekeyThen(cwd: string, env: Env, how: '--resume' | '--abort', shareFiles: string[] = []): Promise<Spawned> {
  return kw(['--dir', 'd', 'rekey', how, ...shareFiles], cwd, { env, timeoutMs: 60_000 });
}

/**
 * `keywarden ARGS` with the step hook's `kill:STEP` (KEYWARDEN_TEST_STEP_HOOK): the process SIGKILLs
 * itself when it reaches STEP. It must have died there (no exit code), not finished or failed.
 */
async function killAtStep(args: string[], cwd: string, env: Env, step: string): Promise<void> {
  const r = await kw(args, cwd, { env: { ...env, KEYWARDEN_TEST_STEP_HOOK: `kill:${step}` }, timeoutMs: 60_000 });
  expect(r.code, r.stderr).toBeNull();
}

/**
 * `keywarden ARGS`, SIGKILLed `delayMs` after it announces step `after` (or left to finish), at any
 * instant but one: inside SoftHSM2's C_SetPIN, which is not crash-safe in SoftHSM2 itself (a kill
 * there can leave the token uninitialized: harness/softhsm-setpin-kill.mjs, docs/pkcs11.md). The
 * process is held at `init:pin-changing` (the test step hook's wait) while the test decides: the
 * kill was due before (or at) the call lands there, just before C_SetPIN; a kill drawn after a
 * later step lets it through.
 */
function killAfterStep(
  args: string[],
  cwd: string,
  env: Env,
  after: string,
  delayMs: number,
): Promise<{ killed: boolean; code: number | null }> {
  const go = path.join(cwd, `go-${Math.random().toString(36).slice(2)}`);
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      cwd,
      env: { PATH: process.env.PATH, ...env, KEYWARDEN_TEST_STEP_HOOK: `announce,wait:init:pin-changing@${go}` },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let seen = '';
    const target = after;
    let timer: NodeJS.Timeout | undefined;
    const guard = setTimeout(() => child.kill('SIGKILL'), 90_000);
    const announced = (step: string) => seen.includes(`keywarden-test-step: ${step}\n`);
    child.stderr.on('data', (c: Buffer) => {
      seen += c.toString('utf8');
      if (announced('init:pin-changing') && !existsSync(go)) {
        // Held before C_SetPIN: kill here if the kill was due by now, else let it through.
        if (timer !== undefined || target === 'init:pin-changing') {
          clearTimeout(timer);
          child.kill('SIGKILL');
          return;
        }
        writeFileSync(go, '');
      }
      if (timer === undefined && target !== 'init:pin-changing' && announced(target)) {
        timer = setTimeout(() => child.kill('SIGKILL'), delayMs);
      }
    });
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(guard);
      clearTimeout(timer);
      resolve({ killed: signal === 'SIGKILL', code });
    });
  });
}

// ── PKCS#11: the user PIN ──────────────────────────────────────────────────────────────────────

describe.skipIf(!built)('init --root pkcs11:… --pin-shares: the user PIN split among custodians (SoftHSM2)', () => {
  // Each test has its own token (a fresh harness SoftHSM2): an init changes the token's user PIN.
  let device: ReturnType<typeof startDevice>;
  let env: Env = {};
  let pin = '';
  const devices: { stop: () => void }[] = [];
  const fresh = () => {
    device = startDevice('softhsm.sh');
    if ('env' in device) {
      devices.push(device);
      env = { SOFTHSM2_CONF: device.env.SOFTHSM2_CONF as string };
      pin = readFileSync(device.env.KEYWARDEN_PKCS11_PIN_FILE as string, 'utf8').replace(/\n$/, '');
    }
  };
  afterAll(() => {
    for (const d of devices) d.stop();
  });
  const skip = () => {
    fresh();
    if ('reason' in device) {
      console.warn(`skipped: ${device.reason}`);
      return true;
    }
    return false;
  };
  const uri = (object: string) =>
    `pkcs11:token=${encodeURIComponent(('env' in device && device.env.KEYWARDEN_PKCS11_TOKEN) || 'keywarden')};object=${object}` +
    `?module-path=${encodeURI(('env' in device && device.env.KEYWARDEN_PKCS11_MODULE) || '')}&pin-source=env:KW_TEST_PIN`;
  const withPin = () => ({ ...env, KW_TEST_PIN: pin });
  /** OpenSC's pkcs11-tool (not Keywarden) logged in to the test token with user PIN `p`: what it prints. */
  const pkcs11Tool = (p: string, ...args: string[]): string => {
    if (!('env' in device)) throw new Error('no SoftHSM2 token');
    return execFileSync(
      'pkcs11-tool',
      [
        '--module',
        device.env.KEYWARDEN_PKCS11_MODULE as string,
        '--token-label',
        device.env.KEYWARDEN_PKCS11_TOKEN as string,
        '--login',
        '--pin',
        p,
        ...args,
      ],
      { env: { ...process.env, ...env }, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 20_000 },
    );
  };
  /** Whether the token takes `p` as its user PIN, asked by pkcs11-tool. */
  const tokenTakes = (p: string): boolean => {
    try {
      pkcs11Tool(p, '--list-objects');
      return true;
    } catch {
      return false;
    }
  };

  it('init splits the PIN; the agent unseals from a quorum; wrong, forged and too few shares never reach the token', async (ctx) => {
    if (skip()) return ctx.skip();
    const cwd = await tempDir();
    const init = await kw(splitInitArgs('pin', uri('kw-split'), 'shares'), cwd, { env: withPin(), timeoutMs: 60_000 });
    expect(init.code, init.stderr).toBe(0);
    expect(init.stderr).toMatch(
      /a new random user PIN, set on the token in place of the one given \(which no longer opens it\), was split into 3 shares, any 2 of which unseal/,
    );
    const shares = [1, 2, 3].map((i) => readFileSync(path.join(cwd, 'shares', `share-${i}-of-3.txt`), 'utf8').trim());
    for (const s of shares) expect(s).toMatch(/^kwshare1\.hsm-pin\.ss_/);
    // The PIN that was typed no longer opens the token; the one the shares hold does, and it is new.
    const split = await pinOf(shares.slice(0, 2));
    expect(split).toMatch(/^[A-Za-z0-9]{32}$/);
    expect(split).not.toBe(pin);
    expect(tokenTakes(pin)).toBe(false);
    expect(tokenTakes(split)).toBe(true);
    // D/root.uri names no PIN source, and no file of the folder holds the PIN.
    const recorded = readFileSync(path.join(cwd, 'd', 'root.uri'), 'utf8');
    expect(recorded).not.toMatch(/pin-source|pin-value/);
    for (const f of filesUnder(path.join(cwd, 'd'))) {
      expect(f.bytes.includes(Buffer.from(pin)), f.file).toBe(false);
      expect(f.bytes.includes(Buffer.from(split)), f.file).toBe(false);
    }
    expect(init.stderr).not.toContain(split);
    expect(init.stdout).not.toContain(split);

    // Without the agent, key operations say how to unseal.
    oneLineError(await kw(['--dir', 'd', 'key', 'create', 'k'], cwd, { env }), /start `keywarden agent`/);

    const agent = await startAgent(cwd, ['--dir', 'd'], env);
    await waitFor(() => /unseal with/.test(agent.log()), 'the agent to say what unseals it');
    expect(agent.log()).toMatch(/unseal with 2 of 3 shares of share set ss_\S+ \(hsm-pin\)/);
    let st = await kw(['--dir', 'd', 'status', '--json'], cwd, { env, timeoutMs: 60_000 });
    expect(st.code, st.stderr).toBe(0);
    expect(JSON.parse(st.stdout)).toMatchObject({
      mode: 'device-split-knowledge',
      purpose: 'hsm-pin',
      threshold: 2,
      shares: 3,
      agent: { running: true, sealed: true, accepted: 0 },
    });

    // Too few: one share leaves it sealed, and key operations are refused.
    await writeFile(path.join(cwd, 's1'), `${shares[0]}\n`, { mode: 0o600 });
    const one = await kw(['--dir', 'd', 'unseal', '--share-file', 's1'], cwd, { env });
    expect(one.code, one.stderr).toBe(0);
    expect(one.stdout).toMatch(/unseal progress: 1 of 2 \(share 1\)/);
    expect(one.stdout).toMatch(/still sealed/);
    // The device status says what the agent holds as the folder status does (shares, not only a count).
    const stOne = await kw(['--dir', 'd', 'status'], cwd, { env, timeoutMs: 60_000 });
    expect(stOne.code, stOne.stderr).toBe(0);
    expect(stOne.stdout).toMatch(/\nagent: +running on .+ \(pid \d+\), sealed, unseal progress 1 of 2 \(share 1\)\n/);
    oneLineError(await kw(['--dir', 'd', 'key', 'create', 'k'], cwd, { env }), /sealed/);

    // A forged share (altered) is refused by its commitment; the progress made is kept.
    await writeFile(path.join(cwd, 'forged'), `${altered(shares[1] as string)}\n`, { mode: 0o600 });
    const forged = await kw(['--dir', 'd', 'unseal', '--share-file', 'forged'], cwd, { env });
    expect(forged.code).toBe(1);
    expect(forged.stderr).toMatch(/^keywarden: share: /);
    // A share of another split (an unseal-key share, or another PIN split) is refused too.
    const other = await kw(
      ['--dir', 'other', 'init', '--shares', '3', '--threshold', '2', '--share-dir', 'other-shares'],
      cwd,
      {},
    );
    expect(other.code, other.stderr).toBe(0);
    const foreign = path.join(cwd, 'other-shares', 'share-2-of-3.txt');
    const wrong = await kw(['--dir', 'd', 'unseal', '--share-file', foreign], cwd, { env });
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toMatch(/^keywarden: share: .*(unseal-key|hsm-pin)/);
    st = await kw(['--dir', 'd', 'status', '--json'], cwd, { env, timeoutMs: 60_000 });
    expect(JSON.parse(st.stdout).agent).toMatchObject({ sealed: true, accepted: 1, indices: [1] });

    // The quorum: share 3 completes it; the agent logs in with the recombined PIN.
    await writeFile(path.join(cwd, 's3'), `${shares[2]}\n`, { mode: 0o600 });
    const done = await kw(['--dir', 'd', 'unseal', '--share-file', 's3'], cwd, { env, timeoutMs: 60_000 });
    expect(done.code, done.stderr).toBe(0);
    expect(done.stdout).toMatch(/unsealed/);
    await createEncryptDecrypt(cwd, env, 'pin split');

    // Seal, and a quorum unseals again (the root is reopened sealed from the store).
    expect((await kw(['--dir', 'd', 'seal'], cwd, { env })).code).toBe(0);
    oneLineError(await kw(['--dir', 'd', 'key', 'create', 'k2'], cwd, { env }), /sealed/);
    const again = await kw(['--dir', 'd', 'unseal'], cwd, {
      env,
      input: `${shares[1]}\n${shares[2]}\n`,
      timeoutMs: 60_000,
    });
    expect(again.stdout).toMatch(/unsealed/);
    expect((await kw(['--dir', 'd', 'key', 'create', 'k2'], cwd, { env, timeoutMs: 60_000 })).code).toBe(0);

    expect(await agent.stop()).toBe(0);
    // Nothing secret in the agent's log.
    const log = agent.log();
    expect(log).not.toContain(pin);
    for (const s of shares) expect(log).not.toContain(s.slice(20));
    for (const f of filesUnder(path.join(cwd, 'd'))) {
      expect(f.bytes.includes(Buffer.from(pin)), f.file).toBe(false);
    }
  }, 240_000);

  it('refuses what does not fit: --pin-* on a TPM URI, --auth-* on PKCS#11, both kinds, --pin-* without --root', async (ctx) => {
    if (skip()) return ctx.skip();
    const cwd = await tempDir();
    const r1 = await kw(['init', '--root', 'tpm:', '--pin-shares', '3'], cwd, { env });
    oneLineError(r1, /--pin-shares\/--pin-threshold split a PKCS#11 user PIN/, 2);
    const r2 = await kw(['init', '--root', uri('x'), '--auth-shares', '3'], cwd, { env: withPin() });
    oneLineError(r2, /--auth-shares\/--auth-threshold split a TPM auth value/, 2);
    const r3 = await kw(['init', '--root', uri('x'), '--pin-shares', '3', '--auth-threshold', '2'], cwd, { env });
    oneLineError(r3, /not both/, 2);
    const r4 = await kw(['init', '--pin-shares', '3'], cwd, { env });
    oneLineError(r4, /are for `init --root …`/, 2);
    const r5 = await kw(['init', '--root', uri('x'), '--pin-shares', '3', '--pin-threshold', '4'], cwd, {
      env: withPin(),
    });
    expect(r5.code).toBe(2);
    // Nothing was made.
    expect(readdirSync(cwd)).toEqual([]);
  }, 60_000);

  it('SIGKILL at each step of the init: the typed PIN opens the token until C_SetPIN, the durable shares after; resume and abort finish or undo the PIN change', async (ctx) => {
    if (skip()) return ctx.skip();
    const cwd = await tempDir();
    const args = (object: string) => splitInitArgs('pin', uri(object), 'shares');
    const left = () =>
      readdirSync(path.join(cwd, 'd'))
        .filter((f) => !/^keystore\.db\.staged-(wal|shm)$/.test(f))
        .sort();
    const killAt = (step: string, object: string) => killAtStep(args(object), cwd, withPin(), step);
    const shareFiles = [1, 2, 3].map((i) => path.join('shares', `share-${i}-of-3.txt`));
    const quorum = ['--share-file', shareFiles[0] as string, '--share-file', shareFiles[2] as string];
    const splitPin = async () =>
      pinOf([1, 3].map((i) => readFileSync(path.join(cwd, shareFiles[i - 1] as string), 'utf8').trim()));

    // 1. Killed after share 2 of 3: neither the PIN nor the token was touched. Nothing looks initialized.
    await killAt('init:share-2', 'kw-kill');
    expect(left()).toEqual(['keystore.db.staged', 'root.uri']);
    expect(tokenTakes(pin)).toBe(true);
    const st = await kw(['--dir', 'd', 'status'], cwd, { env });
    expect(st.code, st.stderr).toBe(0);
    expect(st.stdout).toMatch(/not initialized: the init did not finish/);
    // A new init is refused while this one is unfinished; resume refuses (the root was never made).
    oneLineError(await kw(args('kw-kill'), cwd, { env: withPin(), timeoutMs: 60_000 }), /did not finish/);
    oneLineError(
      await kw(['--dir', 'd', 'init', '--resume'], cwd, { env, timeoutMs: 60_000 }),
      /stopped before the root was made in the device/,
    );
    const abort1 = await kw(['--dir', 'd', 'init', '--abort'], cwd, { env, timeoutMs: 60_000 });
    expect(abort1.code, abort1.stderr).toBe(0);
    expect(abort1.stderr).not.toMatch(/root object|PIN/);
    expect(readdirSync(path.join(cwd, 'd'))).toEqual([]);
    expect(readdirSync(path.join(cwd, 'shares'))).toEqual([]);
    expect(tokenTakes(pin)).toBe(true);

    // 2. Killed just before C_SetPIN (every share durable, the change recorded as begun): the typed
    // PIN still opens the token. Resume needs a quorum; with it, it sets the PIN and finishes.
    await killAt('init:pin-changing', 'kw-kill');
    expect(tokenTakes(pin)).toBe(true);
    oneLineError(await kw(['--dir', 'd', 'init', '--resume'], cwd, { env: withPin(), timeoutMs: 60_000 }), /share/);
    expect(left()).toEqual(['keystore.db.staged', 'root.uri']);
    const resume2 = await kw(['--dir', 'd', 'init', '--resume', ...quorum], cwd, {
      env: withPin(),
      timeoutMs: 60_000,
    });
    expect(resume2.code, resume2.stderr).toBe(0);
    expect(left()).toEqual(['keystore.db', 'root.uri']);
    const pin2 = await splitPin();
    expect(tokenTakes(pin)).toBe(false);
    expect(tokenTakes(pin2)).toBe(true);
    const agent = await startAgent(cwd, ['--dir', 'd'], env);
    const un = await kw(['--dir', 'd', 'unseal', ...quorum], cwd, { env, timeoutMs: 60_000 });
    expect(un.stdout, un.stderr).toMatch(/unsealed/);
    expect((await kw(['--dir', 'd', 'key', 'create', 'k'], cwd, { env, timeoutMs: 60_000 })).code).toBe(0);
    expect(await agent.stop()).toBe(0);
    // The next inits start from the token's PIN as it is now (the typed one is the split one of 2.).
    await rm(path.join(cwd, 'd'), { recursive: true });
    await rm(path.join(cwd, 'shares'), { recursive: true });
    pin = pin2;

    // 3. Killed right after C_SetPIN, before it was recorded as done: only the shares open the
    // token. Abort without them removes nothing; with a quorum it logs in with the new PIN (the
    // token says it is in effect) and sets the typed one back.
    await killAt('init:pin-changed', 'kw-kill3');
    const pin3 = await splitPin();
    expect(tokenTakes(pin)).toBe(false);
    expect(tokenTakes(pin3)).toBe(true);
    oneLineError(
      await kw(['--dir', 'd', 'init', '--abort'], cwd, { env: withPin(), timeoutMs: 60_000 }),
      /may be the only way into the token: give a quorum of the new shares \(--share-file\); nothing was changed/,
    );
    expect(left()).toEqual(['keystore.db.staged', 'root.uri']);
    expect(readdirSync(path.join(cwd, 'shares')).sort()).toEqual([
      'share-1-of-3.txt',
      'share-2-of-3.txt',
      'share-3-of-3.txt',
    ]);
    const abort3 = await kw(['--dir', 'd', 'init', '--abort', ...quorum], cwd, { env: withPin(), timeoutMs: 60_000 });
    expect(abort3.code, abort3.stderr).toBe(0);
    expect(abort3.stderr).toMatch(/set the token's user PIN back to the one given at init/);
    expect(abort3.stderr).not.toMatch(/root object/);
    expect(readdirSync(path.join(cwd, 'd'))).toEqual([]);
    expect(readdirSync(path.join(cwd, 'shares'))).toEqual([]);
    expect(tokenTakes(pin)).toBe(true);
    expect(tokenTakes(pin3)).toBe(false);

    // 4. Killed right after the root object was made: abort with a quorum destroys the object and
    // sets the typed PIN back; the same label is free again.
    await killAt('init:root-created', 'kw-kill4');
    expect(tokenTakes(pin)).toBe(false);
    const abort4 = await kw(['--dir', 'd', 'init', '--abort', ...quorum], cwd, { env: withPin(), timeoutMs: 60_000 });
    expect(abort4.code, abort4.stderr).toBe(0);
    expect(abort4.stderr).toMatch(/destroyed the root object this init made/);
    expect(abort4.stderr).toMatch(/set the token's user PIN back/);
    expect(readdirSync(path.join(cwd, 'd'))).toEqual([]);
    expect(tokenTakes(pin)).toBe(true);
    // Killed at the same instant, this time resumed (no quorum needed: the root exists, the PIN is set).
    await killAt('init:root-created', 'kw-kill4');
    const resume4 = await kw(['--dir', 'd', 'init', '--resume'], cwd, { env, timeoutMs: 60_000 });
    expect(resume4.code, resume4.stderr).toBe(0);
    expect(left()).toEqual(['keystore.db', 'root.uri']);
    expect(tokenTakes(await splitPin())).toBe(true);
    expect(tokenTakes(pin)).toBe(false);
    pin = await splitPin();
    await rm(path.join(cwd, 'd'), { recursive: true });
    await rm(path.join(cwd, 'shares'), { recursive: true });

    // 5. Killed after the store moved into place, before its pending record was removed (a random
    // kill found this instant in CI): the store is complete. Abort has nothing to undo and says to
    // resume; resume removes the record; the split PIN opens the token and the agent unseals.
    await killAt('init:activated', 'kw-kill5');
    expect(left().filter((f) => !/-(wal|shm)$/.test(f))).toEqual(['keystore.db', 'root.uri']);
    const pin5 = await splitPin();
    expect(tokenTakes(pin5)).toBe(true);
    oneLineError(
      await kw(['--dir', 'd', 'init', '--abort', ...quorum], cwd, { env: withPin(), timeoutMs: 60_000 }),
      /already put the key store in place .*run `keywarden init --resume` to finish it/,
    );
    const resume5 = await kw(['--dir', 'd', 'init', '--resume', ...quorum], cwd, { env, timeoutMs: 60_000 });
    expect(resume5.code, resume5.stderr).toBe(0);
    expect(resume5.stderr).toMatch(/had already been completed before it stopped; it is finished now/);
    oneLineError(await kw(['--dir', 'd', 'init', '--resume'], cwd, { env, timeoutMs: 60_000 }), /no init is pending/);
    const agent5 = await startAgent(cwd, ['--dir', 'd'], env);
    const un5 = await kw(['--dir', 'd', 'unseal', ...quorum], cwd, { env, timeoutMs: 60_000 });
    expect(un5.stdout, un5.stderr).toMatch(/unsealed/);
    expect(await agent5.stop()).toBe(0);
    expect(tokenTakes(pin5)).toBe(true);
  }, 300_000);

  it('SIGKILL at random instants of the init: at every instant the typed PIN or a quorum of the written shares opens the token; resume or abort then leaves exactly one of them in effect', async (ctx) => {
    if (skip()) return ctx.skip();
    const cwd = await tempDir();
    const steps = [
      'init:recorded',
      'init:share-1',
      'init:share-3',
      'init:shares-written',
      'init:pin-changing',
      'init:pin-changed',
      'init:root-created',
      'init:activated',
    ];
    const files = () =>
      existsSync(path.join(cwd, 'shares'))
        ? readdirSync(path.join(cwd, 'shares'))
            .sort()
            .map((f) => path.join('shares', f))
        : [];
    /** The PIN the written shares hold, if a quorum of them is whole. */
    const writtenPin = async (): Promise<string | undefined> => {
      const texts = files()
        .map((f) => readFileSync(path.join(cwd, f), 'utf8').trim())
        .filter((t) => t.length > 0);
      return texts.length >= 2 ? pinOf(texts.slice(0, 2)).catch(() => undefined) : undefined;
    };
    const rounds = 5;
    for (let round = 0; round < rounds; round++) {
      const step = steps[Math.floor(Math.random() * steps.length)] as string;
      const delay = Math.floor(Math.random() * 40);
      const args = splitInitArgs('pin', uri(`kw-r${round}`), 'shares');
      const run = await killAfterStep(args, cwd, withPin(), step, delay);
      const note = `round ${round}: SIGKILL ${delay} ms after ${step} (killed: ${run.killed})`;
      const split = await writtenPin();
      // The invariant: some durable secret opens the token.
      expect(tokenTakes(pin) || (split !== undefined && tokenTakes(split)), note).toBe(true);
      if (!run.killed) {
        expect(run.code, note).toBe(0);
      } else {
        const quorum = files()
          .slice(0, 2)
          .flatMap((f) => ['--share-file', f]);
        const abortFirst = Math.random() < 0.5;
        const abort = () =>
          kw(['--dir', 'd', 'init', '--abort', ...(split ? quorum : [])], cwd, { env: withPin(), timeoutMs: 60_000 });
        const resume = () =>
          kw(['--dir', 'd', 'init', '--resume', ...(split ? quorum : [])], cwd, { env: withPin(), timeoutMs: 60_000 });
        let r = abortFirst ? await abort() : await resume();
        if (r.code !== 0 && /no init is pending/.test(r.stderr)) {
          // Killed after the init had finished its last step: nothing is pending, the store is whole.
          expect(existsSync(path.join(cwd, 'd', 'keystore.db')), note).toBe(true);
        } else {
          if (abortFirst && r.code !== 0) {
            // Killed once the store was in place: nothing to undo, resume finishes it.
            expect(r.stderr, note).toMatch(/already put the key store in place/);
            r = await resume();
          } else if (!abortFirst && r.code !== 0) {
            expect(r.stderr, note).toMatch(/stopped before the root was made|were not all written/);
            r = await abort();
          }
          expect(r.code, `${note}: ${r.stderr}`).toBe(0);
        }
      }
      // Afterwards exactly one of the two opens the token: the typed PIN after an abort, the split
      // one after a finished init (and the folder is then in place).
      const done = existsSync(path.join(cwd, 'd', 'keystore.db'));
      const now = await writtenPin();
      if (done) {
        expect(now, note).toBeDefined();
        expect(tokenTakes(now as string), note).toBe(true);
        expect(tokenTakes(pin), note).toBe(false);
        pin = now as string;
      } else {
        expect(tokenTakes(pin), note).toBe(true);
        expect(files(), note).toEqual([]);
      }
      await rm(path.join(cwd, 'd'), { recursive: true, force: true });
      await rm(path.join(cwd, 'shares'), { recursive: true, force: true });
    }
  }, 400_000);

  it('rekey of the split PIN: a quorum of the current shares, a new random PIN set with C_SetPIN, new N and M; SIGKILL before and after C_SetPIN, then resume or abort', async (ctx) => {
    if (skip()) return ctx.skip();
    const cwd = await tempDir();
    const init = await kw(splitInitArgs('pin', uri('kw-rekey'), 'old'), cwd, { env: withPin(), timeoutMs: 60_000 });
    expect(init.code, init.stderr).toBe(0);
    const read = (dir: string, n: number) =>
      Array.from({ length: n }, (_, i) =>
        readFileSync(path.join(cwd, dir, `share-${i + 1}-of-${n}.txt`), 'utf8').trim(),
      );
    const fileArgs = (dir: string, n: number, which: number[]) =>
      which.flatMap((i) => ['--share-file', path.join(dir, `share-${i}-of-${n}.txt`)]);
    const pin1 = await pinOf(read('old', 3).slice(0, 2));
    expect(tokenTakes(pin1)).toBe(true);
    const rekeyArgs = ['--dir', 'd', 'rekey', '--shares', '4', '--threshold', '3', '--share-dir', 'new'];
    const killAt = (step: string) => killAtStep([...rekeyArgs, ...fileArgs('old', 3, [1, 3])], cwd, env, step);
    const newPin = async () => pinOf(read('new', 4).slice(1, 4));

    // Too few current shares: nothing changes.
    oneLineError(await kw([...rekeyArgs, ...fileArgs('old', 3, [2])], cwd, { env, timeoutMs: 60_000 }), /share/);
    expect(existsSync(path.join(cwd, 'new'))).toBe(false);

    // 1. Killed during the hand-out: the token keeps its PIN; abort drops the new files.
    await killAt('rekey:share-2');
    expect(tokenTakes(pin1)).toBe(true);
    // status shows the pending rekey (nothing secret) beside the share set that still works.
    const st = await kw(['--dir', 'd', 'status', '--json'], cwd, { env, timeoutMs: 60_000 });
    expect(st.code, st.stderr).toBe(0);
    const shown = JSON.parse(st.stdout) as { shares: number; pending: Record<string, unknown> | null };
    expect(shown.shares).toBe(3);
    expect(shown.pending).toMatchObject({ kind: 'rekey', threshold: 3, shares: 4, testQuorum: false });
    const stText = await kw(['--dir', 'd', 'status'], cwd, { env, timeoutMs: 60_000 });
    expect(stText.stdout).toMatch(
      /pending:\s+rekey to share set \S+ \(any 3 of 4\) since \S+, not activated: `keywarden rekey --resume` or `keywarden rekey --abort`; the current shares still work/,
    );
    oneLineError(
      await kw([...rekeyArgs, ...fileArgs('old', 3, [1, 2])], cwd, { env, timeoutMs: 60_000 }),
      /is pending/,
    );
    const abort1 = await rekeyThen(cwd, env, '--abort');
    expect(abort1.code, abort1.stderr).toBe(0);
    const after = await kw(['--dir', 'd', 'status', '--json'], cwd, { env, timeoutMs: 60_000 });
    expect(JSON.parse(after.stdout).pending).toBeNull();
    expect(readdirSync(path.join(cwd, 'new'))).toEqual([]);
    expect(tokenTakes(pin1)).toBe(true);

    // 2. Killed just before C_SetPIN: the current shares still open the token. Resume says so
    // (it asks the token with the new PIN); abort needs the new shares now, and drops the rekey.
    await killAt('rekey:pin-changing');
    expect(tokenTakes(pin1)).toBe(true);
    oneLineError(
      await rekeyThen(cwd, env, '--resume', fileArgs('new', 4, [1, 2, 4])),
      /still takes the current secret/,
    );
    oneLineError(await rekeyThen(cwd, env, '--abort'), /give a quorum of the new shares/);
    const abort2 = await rekeyThen(cwd, env, '--abort', fileArgs('new', 4, [1, 2, 4]));
    expect(abort2.code, abort2.stderr).toBe(0);
    expect(tokenTakes(pin1)).toBe(true);

    // 3. Killed just after C_SetPIN: only the new shares open the token. Abort refuses; resume activates.
    await killAt('rekey:pin-changed');
    const pin2 = await newPin();
    expect(tokenTakes(pin1)).toBe(false);
    expect(tokenTakes(pin2)).toBe(true);
    oneLineError(await rekeyThen(cwd, env, '--abort', fileArgs('new', 4, [1, 2, 3])), /already takes the new secret/);
    const resume3 = await rekeyThen(cwd, env, '--resume', fileArgs('new', 4, [2, 3, 4]));
    expect(resume3.code, resume3.stderr).toBe(0);
    expect(resume3.stderr).toMatch(/Activated the new share set ss_\S+ of d \(3 of 4\)/);

    // The new set unseals (3 of 4); the old shares are refused by their commitments.
    const agent = await startAgent(cwd, ['--dir', 'd'], env);
    await waitFor(() => /unseal with/.test(agent.log()), 'the agent to say what unseals it');
    expect(agent.log()).toMatch(/unseal with 3 of 4 shares/);
    const stale = await kw(['--dir', 'd', 'unseal', ...fileArgs('old', 3, [1])], cwd, { env });
    expect(stale.code).toBe(1);
    expect(stale.stderr).toMatch(/^keywarden: share: /);
    const un = await kw(['--dir', 'd', 'unseal', ...fileArgs('new', 4, [1, 3, 4])], cwd, { env, timeoutMs: 60_000 });
    expect(un.stdout, un.stderr).toMatch(/unsealed/);
    expect((await kw(['--dir', 'd', 'key', 'create', 'k'], cwd, { env, timeoutMs: 60_000 })).code).toBe(0);

    // 4. A rekey run to its end, back to 2 of 3, from the 4-share set, while the agent runs.
    await rm(path.join(cwd, 'old'), { recursive: true });
    const full = await kw(
      [
        '--dir',
        'd',
        'rekey',
        '--shares',
        '3',
        '--threshold',
        '2',
        '--share-dir',
        'old',
        ...fileArgs('new', 4, [1, 2, 3]),
      ],
      cwd,
      { env, timeoutMs: 60_000 },
    );
    expect(full.code, full.stderr).toBe(0);
    expect(full.stderr).toMatch(
      /a new random user PIN is set on the token and split into 3 shares, any 2 of which unseal/,
    );
    const pin3 = await pinOf(read('old', 3).slice(0, 2));
    expect(tokenTakes(pin2)).toBe(false);
    expect(tokenTakes(pin3)).toBe(true);
    // The running agent follows the store: sealed, it asks for the new set, and 2 of its 3 shares
    // unseal it (no restart); a share of the set it started with is refused.
    expect((await kw(['--dir', 'd', 'seal'], cwd, { env, timeoutMs: 60_000 })).code).toBe(0);
    const sealedStatus = JSON.parse(
      (await kw(['--dir', 'd', 'status', '--json'], cwd, { env, timeoutMs: 60_000 })).stdout,
    );
    expect(sealedStatus.agent).toMatchObject({ running: true, sealed: true });
    const staleNew = await kw(['--dir', 'd', 'unseal', ...fileArgs('new', 4, [2])], cwd, { env });
    expect(staleNew.code).toBe(1);
    expect(staleNew.stderr).toMatch(/^keywarden: share: /);
    const un3 = await kw(['--dir', 'd', 'unseal', ...fileArgs('old', 3, [1, 3])], cwd, { env, timeoutMs: 60_000 });
    expect(un3.stdout, un3.stderr).toMatch(/unsealed/);
    expect((await kw(['--dir', 'd', 'key', 'create', 'k2'], cwd, { env, timeoutMs: 60_000 })).code).toBe(0);
    expect(await agent.stop()).toBe(0);
    for (const f of filesUnder(path.join(cwd, 'd'))) {
      for (const p of [pin1, pin2, pin3]) expect(f.bytes.includes(Buffer.from(p)), f.file).toBe(false);
    }
  }, 300_000);

  it('cert --storage root on a folder whose PIN is split: a quorum of the PIN shares unseals the token for the one command; OpenSSL verifies what it signs', async (ctx) => {
    if (skip()) return ctx.skip();
    const cwd = await tempDir();
    const init = await kw(splitInitArgs('pin', uri('kw-cert'), 'shares'), cwd, { env: withPin(), timeoutMs: 60_000 });
    expect(init.code, init.stderr).toBe(0);
    const quorum = (...which: number[]) =>
      which.flatMap((i) => ['--share-file', path.join('shares', `share-${i}-of-3.txt`)]);
    const caArgs = ['--dir', 'd', 'cert', 'ca', 'hsm-ca', '--cn', 'Split PIN CA', '--algorithm', 'ECDSA-P256'];
    const caStorage = [...caArgs, '--storage', 'root', '--out', 'ca.pem', '--json'];
    // No shares (nothing piped), too few, a forged one: refused before anything reaches the token.
    oneLineError(await kw(caStorage, cwd, { env, timeoutMs: 60_000 }), /share/);
    oneLineError(await kw([...caStorage, ...quorum(2)], cwd, { env, timeoutMs: 60_000 }), /share/);
    const forged = altered(readFileSync(path.join(cwd, 'shares', 'share-3-of-3.txt'), 'utf8').trim());
    await writeFile(path.join(cwd, 'forged'), `${forged}\n`, { mode: 0o600 });
    const f = await kw([...caStorage, ...quorum(1), '--share-file', 'forged'], cwd, { env, timeoutMs: 60_000 });
    expect(f.code).toBe(1);
    expect(f.stderr).toMatch(/^keywarden: share: /);
    expect(existsSync(path.join(cwd, 'ca.pem'))).toBe(false);

    const ca = await kw([...caStorage, ...quorum(1, 3)], cwd, { env, timeoutMs: 90_000 });
    expect(ca.code, ca.stderr).toBe(0);
    expect(JSON.parse(ca.stdout)).toMatchObject({ ca: 'hsm-ca', algorithm: 'ECDSA-P256', storage: 'root' });
    const req = await kw(
      [
        '--dir',
        'd',
        'cert',
        'request',
        'web',
        '--cn',
        'web.test',
        '--dns',
        'web.test',
        '--storage',
        'root',
        '--out',
        'web.csr',
        ...quorum(2, 3),
      ],
      cwd,
      { env, timeoutMs: 90_000 },
    );
    expect(req.code, req.stderr).toBe(0);
    const issue = await kw(
      ['--dir', 'd', 'cert', 'issue', 'hsm-ca', '--csr', 'web.csr', '--out', 'web.pem', ...quorum(1, 2)],
      cwd,
      { env, timeoutMs: 90_000 },
    );
    expect(issue.code, issue.stderr).toBe(0);
    // OpenSSL (not Keywarden) checks the request's signature and the chain.
    const ossl = (...args: string[]) =>
      execFileSync('openssl', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 20_000 });
    expect(() => ossl('req', '-verify', '-in', 'web.csr', '-noout')).not.toThrow();
    expect(ossl('verify', '-CAfile', 'ca.pem', 'web.pem')).toMatch(/web\.pem: OK/);
    // Listing reads records only: no shares asked.
    const list = await kw(['--dir', 'd', 'cert', 'list', '--json'], cwd, { env, timeoutMs: 60_000 });
    expect(list.code, list.stderr).toBe(0);
    const names = (JSON.parse(list.stdout) as { name: string }[]).map((c) => c.name);
    expect(names).toEqual(expect.arrayContaining(['hsm-ca']));
    // The key pairs are in the token (pkcs11-tool lists private keys there), and nothing secret in the folder.
    const pinNow = await pinOf(
      [1, 2].map((i) => readFileSync(path.join(cwd, 'shares', `share-${i}-of-3.txt`), 'utf8').trim()),
    );
    for (const file of filesUnder(path.join(cwd, 'd'))) {
      expect(file.bytes.includes(Buffer.from(pinNow)), file.file).toBe(false);
    }
    const objects = pkcs11Tool(pinNow, '--list-objects', '--type', 'privkey');
    expect(objects.match(/Private Key Object/g)?.length ?? 0).toBeGreaterThanOrEqual(2);
  }, 300_000);

  it('a wrong PIN at init: one line naming CKR_PIN_INCORRECT, not the PIN; the shares handed out are taken back', async (ctx) => {
    if (skip()) return ctx.skip();
    const cwd = await tempDir();
    const wrongPin = `${pin}-not-it`;
    const r = await kw(splitInitArgs('pin', uri('kw-wrong'), 'shares'), cwd, {
      env: { ...env, KW_TEST_PIN: wrongPin },
      timeoutMs: 60_000,
    });
    oneLineError(r, /CKR_PIN_INCORRECT/);
    expect(r.stderr).not.toContain(wrongPin);
    // Checked before anything is made: no folder, no share, and the token still takes its PIN.
    expect(existsSync(path.join(cwd, 'd'))).toBe(false);
    expect(tokenTakes(pin)).toBe(true);
    expect(existsSync(path.join(cwd, 'shares'))).toBe(false);
  }, 60_000);
});

// ── TPM: the auth value ────────────────────────────────────────────────────────────────────────

describe.skipIf(!built)(
  'init --root tpm: --auth-shares: a random TPM auth value split among custodians (swtpm)',
  () => {
    let device: ReturnType<typeof startDevice>;
    let env: Env = {};
    beforeAll(() => {
      device = startDevice('swtpm.sh');
      if ('env' in device) env = { KEYWARDEN_TPM_TCTI: device.env.KEYWARDEN_TPM_TCTI as string };
    }, 90_000);
    afterAll(() => {
      if (device && 'stop' in device) device.stop();
    });
    const skip = () => {
      if ('reason' in device) {
        console.warn(`skipped: ${device.reason}`);
        return true;
      }
      return false;
    };

    it('init draws and splits the auth value; the agent unseals from a quorum; wrong-purpose shares are refused', async (ctx) => {
      if (skip()) return ctx.skip();
      const cwd = await tempDir();
      // An auth value named by the URI is refused: with shares nobody is meant to know it.
      await writeFile(path.join(cwd, 'auth'), 'a-known-auth-value\n', { mode: 0o600 });
      oneLineError(
        await kw(
          ['--dir', 'd', 'init', '--root', `tpm:?auth-file=${path.join(cwd, 'auth')}`, '--auth-shares', '3'],
          cwd,
          {
            env,
          },
        ),
        /drawn at random and exists only as shares/,
      );
      expect(readdirSync(cwd)).toEqual(['auth']);

      const init = await kw(splitInitArgs('auth', 'tpm:', 'shares'), cwd, { env, timeoutMs: 60_000 });
      expect(init.code, init.stderr).toBe(0);
      expect(init.stderr).toMatch(/a random auth value for the TPM root was split into 3 shares/);
      const shares = [1, 2, 3].map((i) => path.join(cwd, 'shares', `share-${i}-of-3.txt`));
      for (const s of shares) expect(await readFile(s, 'utf8')).toMatch(/^kwshare1\.tpm-auth\.ss_/);
      expect(readFileSync(path.join(cwd, 'd', 'root.uri'), 'utf8')).toBe('tpm:\n');

      const agent = await startAgent(cwd, ['--dir', 'd'], env);
      await waitFor(() => /unseal with/.test(agent.log()), 'the agent to say what unseals it');
      expect(agent.log()).toMatch(/unseal with 2 of 3 shares of share set ss_\S+ \(tpm-auth\)/);
      // An unseal-key share where a TPM auth-value share is expected.
      const other = await kw(
        ['--dir', 'other', 'init', '--shares', '3', '--threshold', '2', '--share-dir', 'o'],
        cwd,
        {},
      );
      expect(other.code, other.stderr).toBe(0);
      const wrong = await kw(['--dir', 'd', 'unseal', '--share-file', 'o/share-1-of-3.txt'], cwd, { env });
      expect(wrong.code).toBe(1);
      expect(wrong.stderr).toMatch(/^keywarden: share: .*(unseal-key|tpm-auth)/);
      const un = await kw(
        ['--dir', 'd', 'unseal', '--share-file', shares[2] as string, '--share-file', shares[0] as string],
        cwd,
        {
          env,
          timeoutMs: 60_000,
        },
      );
      expect(un.code, un.stderr).toBe(0);
      expect(un.stdout).toMatch(/unsealed/);
      await createEncryptDecrypt(cwd, env, 'tpm split');
      expect(await agent.stop()).toBe(0);
      const log = agent.log();
      for (const s of shares) expect(log).not.toContain((await readFile(s, 'utf8')).trim().slice(20));

      // status: the TPM's manufacturer (TPM2_GetCapability TPM_PT_MANUFACTURER), as tpm2-tools reads it.
      const st = await kw(['--dir', 'd', 'status', '--json'], cwd, { env, timeoutMs: 60_000 });
      expect(st.code, st.stderr).toBe(0);
      const tpm = JSON.parse(st.stdout).tpm;
      expect(tpm.manufacturer).toMatch(/^[\x20-\x7e]{1,4}$/);
      expect(tpm.firmwareVersion).toMatch(/^[0-9a-f]{1,4}(\.[0-9a-f]{1,4}){3}$/);
      let getcap = '';
      try {
        getcap = execFileSync('tpm2_getcap', ['properties-fixed'], {
          encoding: 'utf8',
          env: { ...process.env, TPM2TOOLS_TCTI: env.KEYWARDEN_TPM_TCTI },
          stdio: ['ignore', 'pipe', 'ignore'],
          timeout: 20_000,
        });
      } catch (err) {
        if (process.env.CI) throw err;
      }
      if (getcap) {
        const m = /TPM2_PT_MANUFACTURER:\s*raw: 0x[0-9A-Fa-f]+\s*value: "([^"]*)"/.exec(getcap);
        expect(tpm.manufacturer).toBe(m?.[1]);
      }
    }, 180_000);

    it('rekey of the split TPM auth value: TPM2_ObjectChangeAuth on the check object, new N and M; SIGKILL before and after the change, then resume or abort; data from before still decrypts', async (ctx) => {
      if (skip()) return ctx.skip();
      const cwd = await tempDir();
      const init = await kw(splitInitArgs('auth', 'tpm:', 'old'), cwd, { env, timeoutMs: 60_000 });
      expect(init.code, init.stderr).toBe(0);
      const files = (dir: string, n: number, which: number[]) =>
        which.flatMap((i) => ['--share-file', path.join(dir, `share-${i}-of-${n}.txt`)]);
      let agent = await startAgent(cwd, ['--dir', 'd'], env);
      let un = await kw(['--dir', 'd', 'unseal', ...files('old', 3, [1, 2])], cwd, { env, timeoutMs: 60_000 });
      expect(un.stdout, un.stderr).toMatch(/unsealed/);
      expect((await kw(['--dir', 'd', 'key', 'create', 'k'], cwd, { env, timeoutMs: 60_000 })).code).toBe(0);
      const enc = await kw(['--dir', 'd', 'encrypt', '--key', 'k', '-o', 'ct'], cwd, {
        env,
        input: 'before the rekey',
        timeoutMs: 60_000,
      });
      expect(enc.code, enc.stderr).toBe(0);
      expect(await agent.stop()).toBe(0);

      const rekeyArgs = ['--dir', 'd', 'rekey', '--shares', '4', '--threshold', '3', '--share-dir', 'new'];
      const killAt = (step: string) => killAtStep([...rekeyArgs, ...files('old', 3, [2, 3])], cwd, env, step);
      // Killed just before the change: the current auth value still opens the root.
      await killAt('rekey:pin-changing');
      oneLineError(await rekeyThen(cwd, env, '--resume', files('new', 4, [1, 2, 3])), /still takes the current secret/);
      const abort = await rekeyThen(cwd, env, '--abort', files('new', 4, [1, 2, 3]));
      expect(abort.code, abort.stderr).toBe(0);
      // Killed just after the new check object was written: only the new shares open it.
      await killAt('rekey:pin-changed');
      oneLineError(await rekeyThen(cwd, env, '--abort', files('new', 4, [2, 3, 4])), /already takes the new secret/);
      const resume = await rekeyThen(cwd, env, '--resume', files('new', 4, [1, 3, 4]));
      expect(resume.code, resume.stderr).toBe(0);
      expect(resume.stderr).toMatch(
        /Activated the new share set ss_\S+ of d \(3 of 4\); the TPM root has the new secret/,
      );

      agent = await startAgent(cwd, ['--dir', 'd'], env);
      await waitFor(() => /unseal with/.test(agent.log()), 'the agent to say what unseals it');
      expect(agent.log()).toMatch(/unseal with 3 of 4 shares of share set ss_\S+ \(tpm-auth\)/);
      const stale = await kw(['--dir', 'd', 'unseal', ...files('old', 3, [1])], cwd, { env });
      expect(stale.code).toBe(1);
      expect(stale.stderr).toMatch(/^keywarden: share: /);
      un = await kw(['--dir', 'd', 'unseal', ...files('new', 4, [2, 3, 4])], cwd, { env, timeoutMs: 60_000 });
      expect(un.stdout, un.stderr).toMatch(/unsealed/);
      // The root key and K did not change: what was encrypted before decrypts.
      const dec = await kw(['--dir', 'd', 'decrypt', '--key', 'k', '-i', 'ct'], cwd, { env, timeoutMs: 60_000 });
      expect(dec.code, dec.stderr).toBe(0);
      expect(dec.stdout).toBe('before the rekey');
      expect(await agent.stop()).toBe(0);
    }, 240_000);

    it('cert ca --storage root on a folder whose TPM auth value is split: a quorum of its shares unseals the TPM root for the command; OpenSSL verifies the CA', async (ctx) => {
      if (skip()) return ctx.skip();
      const cwd = await tempDir();
      const init = await kw(splitInitArgs('auth', 'tpm:', 'shares'), cwd, { env, timeoutMs: 60_000 });
      expect(init.code, init.stderr).toBe(0);
      const args = [
        '--dir',
        'd',
        'cert',
        'ca',
        'tpm-ca',
        '--cn',
        'Split Auth CA',
        '--storage',
        'root',
        '--out',
        'ca.pem',
      ];
      oneLineError(
        await kw([...args, '--share-file', 'shares/share-2-of-3.txt'], cwd, { env, timeoutMs: 60_000 }),
        /share/,
      );
      const ca = await kw(
        [...args, '--share-file', 'shares/share-1-of-3.txt', '--share-file', 'shares/share-3-of-3.txt', '--json'],
        cwd,
        { env, timeoutMs: 120_000 },
      );
      expect(ca.code, ca.stderr).toBe(0);
      expect(JSON.parse(ca.stdout)).toMatchObject({ ca: 'tpm-ca', storage: 'root' });
      const v = execFileSync('openssl', ['verify', '-CAfile', 'ca.pem', 'ca.pem'], {
        cwd,
        encoding: 'utf8',
        timeout: 20_000,
      });
      expect(v).toMatch(/ca\.pem: OK/);
    }, 240_000);
  },
);

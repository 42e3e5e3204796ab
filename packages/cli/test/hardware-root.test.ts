/**
 * Device roots through the real `keywarden` executable (dist/bin.js): a SoftHSM2 token and a swtpm
 * started by the project's harness scripts (harness/softhsm.sh, harness/swtpm.sh; the same scripts
 * packages/pkcs11 and packages/tss2 start in their globalSetup), in temporary folders, stopped
 * after. When the environment already names a device (KEYWARDEN_PKCS11_MODULE + _PIN_FILE,
 * KEYWARDEN_TPM_TCTI) that one is used. Outside CI a machine without the device skips with the
 * harness's reason; in CI (process.env.CI) a missing device is a failure.
 *
 * The TPM commands here run one after the other; pipelines of TPM commands (several processes on
 * one swtpm, serialised by the root's lock file) are tpm-pipe.test.ts's subject.
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const BIN = fileURLToPath(new URL('../dist/bin.js', import.meta.url));
const HARNESS = fileURLToPath(new URL('../../../harness/', import.meta.url));

type Env = Record<string, string>;

/** Start a harness device unless the environment names one; its env, or the reason it cannot run. */
function startDevice(
  script: string,
  present: (env: NodeJS.ProcessEnv) => boolean,
): { env: Env; stop?: () => void } | { reason: string } {
  if (present(process.env)) return { env: {} };
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

interface Result {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

/** Run dist/bin.js with `env` added to this process's environment; `stdin` piped in. */
function kw(args: string[], cwd: string, env: Env, stdin?: Uint8Array | string): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      cwd,
      env: { ...process.env, KEYWARDEN_DIR: '', KEYWARDEN_UNSEAL_KEY: '', ...env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString('utf8') });
    });
    child.stdin.end(stdin ?? '');
  });
}

/** The CLI's one-line failure: `keywarden: …`, exit 1, no stack trace. */
function expectOneLineError(r: Result, pattern: RegExp): void {
  expect(r.code).toBe(1);
  const lines = r.stderr.trimEnd().split('\n');
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(/^keywarden: /);
  expect(lines[0]).toMatch(pattern);
  expect(r.stderr).not.toMatch(/\n\s+at /);
}

const scratch: string[] = [];
async function tempDir(): Promise<string> {
  const d = await mkdtemp(path.join(tmpdir(), 'keywarden-hw-test-'));
  scratch.push(d);
  return d;
}
afterAll(async () => {
  for (const d of scratch) await rm(d, { recursive: true, force: true });
});

const built = existsSync(BIN);
if (!built && process.env.CI) throw new Error('dist/bin.js is missing: build the CLI first');

// ── PKCS#11 (SoftHSM2) ─────────────────────────────────────────────────────────────────────────

describe.skipIf(!built)('keywarden with a PKCS#11 root (SoftHSM2 through harness/softhsm.sh)', () => {
  let device: ReturnType<typeof startDevice>;
  let env: Env = {};
  let pin = '';
  beforeAll(() => {
    device = startDevice('softhsm.sh', (e) => !!(e.KEYWARDEN_PKCS11_MODULE && e.KEYWARDEN_PKCS11_PIN_FILE));
    if ('env' in device) {
      env = { ...device.env };
      const conf = env.SOFTHSM2_CONF ?? process.env.SOFTHSM2_CONF ?? process.env.KEYWARDEN_SOFTHSM2_CONF;
      if (conf) env.SOFTHSM2_CONF = conf;
      const pinFile = env.KEYWARDEN_PKCS11_PIN_FILE ?? (process.env.KEYWARDEN_PKCS11_PIN_FILE as string);
      pin = readFileSync(pinFile, 'utf8').replace(/\n$/, '');
    }
  }, 90_000);
  afterAll(() => {
    if (device && 'stop' in device) device.stop?.();
  });
  const skip = () => {
    if ('reason' in device) {
      console.warn(`skipped: ${device.reason}`);
      return true;
    }
    return false;
  };
  const get = (name: string) => env[name] ?? process.env[name] ?? '';
  const uri = (object: string, pinSource: string) =>
    `pkcs11:token=${encodeURIComponent(get('KEYWARDEN_PKCS11_TOKEN') || 'keywarden')};object=${object}` +
    `?module-path=${encodeURI(get('KEYWARDEN_PKCS11_MODULE'))}&pin-source=${pinSource}`;

  it('init --root, key create in both KEK modes, encrypt/decrypt, status, wrong PIN', async (ctx) => {
    if (skip()) return ctx.skip();
    const cwd = await tempDir();
    const object = `kw-cli-${Date.now().toString(36)}`;
    const e = { ...env, KW_TEST_PIN: pin };
    const init = await kw(['init', '--root', uri(object, 'env:KW_TEST_PIN')], cwd, e);
    expect(init.stderr).toMatch(/with a pkcs11 root \(root p11_/);
    expect(init.code).toBe(0);
    // The folder records the URI (no PIN in it) and no unseal key exists.
    const recorded = await readFile(path.join(cwd, '.keywarden', 'root.uri'), 'utf8');
    expect(recorded).toBe(`${uri(object, 'env:KW_TEST_PIN')}\n`);
    expect(recorded).not.toContain(pin);
    expect(existsSync(path.join(cwd, '.keywarden', 'unseal.key'))).toBe(false);

    const hsm = await kw(['key', 'create', 'in-hsm', '--kek-mode', 'hsm', '--json'], cwd, e);
    expect(hsm.stderr).toBe('');
    expect(hsm.code).toBe(0);
    const mem = await kw(['key', 'create', 'in-memory', '--kek-mode', 'memory'], cwd, e);
    expect(mem.code).toBe(0);
    const bad = await kw(['key', 'create', 'x', '--kek-mode', 'disk'], cwd, e);
    expect(bad.code).toBe(2);

    const plaintext = Buffer.from('pkcs11 record: the quick brown fox');
    for (const key of ['in-hsm', 'in-memory']) {
      const enc = await kw(['encrypt', '--key', key, '-c', 'row=1'], cwd, e, plaintext);
      expect(enc.code).toBe(0);
      expect(enc.stdout.includes(plaintext)).toBe(false);
      const dec = await kw(['decrypt', '--key', key, '-c', 'row=1'], cwd, e, enc.stdout);
      expect(dec.code).toBe(0);
      expect(dec.stdout.equals(plaintext)).toBe(true);
    }

    const status = await kw(['status', '--json'], cwd, e);
    expect(status.code).toBe(0);
    const st = JSON.parse(status.stdout.toString('utf8'));
    expect(st.root.kind).toBe('pkcs11');
    expect(st.root.sealed).toBe(false);
    expect(st.root.mechanism).toMatch(/CKM_AES_GCM/);
    expect(st.token.object).toBe(object);
    expect(st.pool.workers).toBeGreaterThan(0);
    expect(st.keys).toBe(2);
    const text = await kw(['status'], cwd, e);
    expect(text.stdout.toString()).toMatch(/pool: +\d+ worker (thread|process)/);
    expect(text.stdout.toString()).not.toContain(pin);

    // A wrong PIN: one typed line, exit 1, no stack, no PIN in it.
    const wrong = await kw(['encrypt', '--key', 'in-memory'], cwd, { ...env, KW_TEST_PIN: `${pin}x` }, 'data');
    expectOneLineError(wrong, /pkcs11: .*(PIN|CKR_PIN_INCORRECT)/i);
    expect(wrong.stderr).not.toContain(pin);
    // The software-root ceremonies do not apply to a device root, and say so.
    const rekey = await kw(['rekey', '--shares', '3', '--threshold', '2'], cwd, e);
    expect(rekey.code).not.toBe(0);
    expect(rekey.stderr.trimEnd().split('\n')).toHaveLength(1);
  }, 150_000);

  it('init --root refuses a URI carrying the PIN, and a URI with no PIN source off a terminal', async (ctx) => {
    if (skip()) return ctx.skip();
    const cwd = await tempDir();
    const withPin = uri('kw-cli-pinvalue', 'env:X').replace(/&pin-source=env:X$/, `&pin-value=${pin}`);
    const r = await kw(['init', '--root', withPin], cwd, env);
    expectOneLineError(r, /pin-value/);
    expect(r.stderr).not.toContain(pin);
    expect(existsSync(path.join(cwd, '.keywarden', 'keystore.db'))).toBe(false);
    const noPin = uri('kw-cli-nopin', 'env:X').replace(/&pin-source=env:X$/, '');
    const r2 = await kw(['init', '--root', noPin], cwd, env);
    expectOneLineError(r2, /needs the user PIN/);
    expect(existsSync(path.join(cwd, '.keywarden', 'root.uri'))).toBe(false);
    // A software init in the same folder afterwards is a software root, as before.
    const soft = await kw(['init'], cwd, env);
    expect(soft.code).toBe(0);
    expect((await kw(['status'], cwd, env)).stdout.toString()).toMatch(/development mode/);
  }, 60_000);

  it('demo --root pkcs11 runs the narrated demo on the token', async (ctx) => {
    if (skip()) return ctx.skip();
    const r = await kw(['demo', '--root', 'pkcs11'], await tempDir(), env);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const out = r.stdout.toString('utf8');
    expect(out).toMatch(/root of trust is in a PKCS#11 token/);
    expect(out).toMatch(/reopened: +sealed/);
    expect(out).toMatch(/Destroy the root in the device/);
    expect(out).not.toContain(pin);
  }, 60_000);
});

// ── TPM (swtpm) ────────────────────────────────────────────────────────────────────────────────

describe.skipIf(!built)('keywarden with a TPM root (swtpm through harness/swtpm.sh)', () => {
  let device: ReturnType<typeof startDevice>;
  let env: Env = {};
  beforeAll(() => {
    device = startDevice('swtpm.sh', (e) => !!e.KEYWARDEN_TPM_TCTI);
    if ('env' in device) env = { ...device.env };
  }, 90_000);
  afterAll(() => {
    if (device && 'stop' in device) device.stop?.();
  });
  const skip = () => {
    if ('reason' in device) {
      console.warn(`skipped: ${device.reason}`);
      return true;
    }
    return false;
  };

  it('init --root tpm: --pcrs, key create, encrypt/decrypt, status, wrong auth value', async (ctx) => {
    if (skip()) return ctx.skip();
    const cwd = await tempDir();
    const authFile = path.join(cwd, 'auth');
    await writeFile(authFile, 'correct horse battery staple\n', { mode: 0o600 });
    const init = await kw(['init', '--root', `tpm:?auth-file=${authFile}`, '--pcrs', '7'], cwd, env);
    expect(init.stderr).toMatch(/with a tpm root/);
    expect(init.code).toBe(0);
    expect(await readFile(path.join(cwd, '.keywarden', 'root.uri'), 'utf8')).toBe(`tpm:pcrs=7?auth-file=${authFile}\n`);
    const mem = await kw(['key', 'create', 'tenant', '--kek-mode', 'memory'], cwd, env);
    expect(mem.code).toBe(0);
    // A TPM root keeps no KEK objects of its own: --kek-mode hsm is refused, typed, one line.
    expectOneLineError(await kw(['key', 'create', 'other', '--kek-mode', 'hsm'], cwd, env), /cannot hold KEKs/);

    const plaintext = Buffer.from('tpm record');
    const enc = await kw(['encrypt', '--key', 'tenant'], cwd, env, plaintext);
    expect(enc.code).toBe(0);
    const dec = await kw(['decrypt', '--key', 'tenant'], cwd, env, enc.stdout);
    expect(dec.code).toBe(0);
    expect(dec.stdout.equals(plaintext)).toBe(true);

    const st = JSON.parse((await kw(['status', '--json'], cwd, env)).stdout.toString('utf8'));
    expect(st.root.kind).toBe('tpm');
    expect(st.tpm.pcrs).toEqual([7]);
    expect(st.root.sealed).toBe(false);
    const text = (await kw(['status'], cwd, env)).stdout.toString('utf8');
    expect(text).toMatch(/PCR policy: +every KEK bound to SHA-256 PCRs 7/);

    await writeFile(authFile, 'not the auth value\n');
    const wrong = await kw(['decrypt', '--key', 'tenant'], cwd, env, enc.stdout);
    expectOneLineError(wrong, /^keywarden: tpm: /);
    expect(wrong.stderr).not.toMatch(/correct horse/);
  }, 120_000);

  it('demo --root tpm runs on swtpm; without a TPM it names the harness command', async (ctx) => {
    if (skip()) return ctx.skip();
    const r = await kw(['demo', '--root', 'tpm'], await tempDir(), env);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout.toString('utf8')).toMatch(/root of trust is in a TPM/);
    const none = await kw(['demo', '--root', 'tpm'], await tempDir(), { KEYWARDEN_TPM_TCTI: '' });
    expectOneLineError(none, /harness\/swtpm\.sh start/);
  }, 60_000);
});

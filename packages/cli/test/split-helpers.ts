/**
 * Helpers for the split-knowledge tests: the built CLI spawned as a user runs it, real agent
 * processes (killed after every test, whatever happened), and custodian key pairs made at test
 * time. Every wait has a timeout, so a broken agent fails a test instead of hanging the run.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach } from 'vitest';

export const BIN = fileURLToPath(new URL('../dist/bin.js', import.meta.url));
export const built = existsSync(BIN);

/** Spawned tests need dist/bin.js: skipped locally without it, a failure in CI. */
export function requireBuild(file: string): void {
  if (!built && process.env.CI) throw new Error(`${file}: ${BIN} is missing; CI must build before testing`);
  if (!built) console.warn(`${file}: skipped, ${BIN} is missing (run \`pnpm build\` first)`);
}

export interface Spawned {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run `keywarden ARGS` to completion (killed after `timeoutMs`). */
export function kw(
  args: string[],
  cwd: string,
  options: { input?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<Spawned> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      cwd,
      env: { PATH: process.env.PATH, ...options.env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`keywarden ${args.join(' ')}: no exit within ${options.timeoutMs ?? 20_000} ms`));
    }, options.timeoutMs ?? 20_000);
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') });
    });
    child.stdin.on('error', () => {});
    child.stdin.end(options.input);
  });
}

export interface AgentProcess {
  child: ChildProcess;
  /** Everything the agent wrote to stderr so far. */
  log(): string;
  /** SIGTERM (or `signal`) and wait for the exit; SIGKILL after 5 s. Resolves to the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

const running = new Set<ChildProcess>();

afterEach(async () => {
  const children = [...running];
  running.clear();
  await Promise.all(children.map((c) => terminate(c, 'SIGKILL')));
});

function terminate(child: ChildProcess, signal: NodeJS.Signals): Promise<number | null> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) {
      resolve(child.exitCode);
      return;
    }
    const kill = setTimeout(() => child.kill('SIGKILL'), 5000);
    child.once('exit', (code) => {
      clearTimeout(kill);
      resolve(code);
    });
    child.kill(signal);
  });
}

/**
 * Start `keywarden agent ARGS` in `cwd` and wait (at most 10 s) until it says it is serving.
 * Rejects with its stderr if it exits first.
 */
export function startAgent(cwd: string, args: string[] = [], env: NodeJS.ProcessEnv = {}): Promise<AgentProcess> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, 'agent', ...args], {
      cwd,
      env: { PATH: process.env.PATH, ...env },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    running.add(child);
    let log = '';
    let ready = false;
    const handle: AgentProcess = {
      child,
      log: () => log,
      stop: async (signal = 'SIGTERM') => {
        const code = await terminate(child, signal);
        running.delete(child);
        return code;
      },
    };
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`agent did not start within 10 s:\n${log}`));
    }, 10_000);
    child.stderr?.on('data', (c: Buffer) => {
      log += c.toString('utf8');
      if (!ready && /keywarden agent: serving /.test(log)) {
        ready = true;
        clearTimeout(timer);
        resolve(handle);
      }
    });
    child.once('exit', (code) => {
      running.delete(child);
      if (!ready) {
        clearTimeout(timer);
        reject(Object.assign(new Error(`agent exited with ${code}:\n${log}`), { code, log }));
      }
    });
  });
}

/** Wait until `check()` is true (polling), at most `timeoutMs`. */
export async function waitFor(check: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export interface CustodianKeys {
  publicKey: string;
  privateKey: string;
}

/** A custodian key pair as PEM files in `dir`: NAME.pub (SPKI) and NAME.key (PKCS#8, 0600). */
export async function custodian(dir: string, name: string, type: 'x25519' | 'rsa'): Promise<CustodianKeys> {
  const pair =
    type === 'x25519'
      ? generateKeyPairSync('x25519', {
          publicKeyEncoding: { type: 'spki', format: 'pem' },
          privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
        })
      : generateKeyPairSync('rsa', {
          modulusLength: 2048,
          publicKeyEncoding: { type: 'spki', format: 'pem' },
          privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
        });
  const publicKey = path.join(dir, `${name}.pub`);
  const privateKey = path.join(dir, `${name}.key`);
  await writeFile(publicKey, pair.publicKey, { mode: 0o644 });
  await writeFile(privateKey, pair.privateKey, { mode: 0o600 });
  return { publicKey, privateKey };
}

/** Every `kwshare1.…` token in a text. */
export function sharesIn(text: string): string[] {
  return text.match(/kwshare1\.[A-Za-z0-9._-]+/g) ?? [];
}

/** What a killed-or-finished `keywarden` run left: exit status, stdout, wall time. */
export interface KillOutcome {
  killed: boolean;
  code: number | null;
  stdout: string;
  ms: number;
}

/** Spawn `keywarden ARGS` and SIGKILL it after `killAfterMs` (undefined: let it finish; 20 s guard). */
export function runAndKill(args: string[], cwd: string, killAfterMs?: number): Promise<KillOutcome> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const child: ChildProcess = spawn(process.execPath, [BIN, ...args], {
      cwd,
      env: { PATH: process.env.PATH },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    child.stdout?.on('data', (c: Buffer) => out.push(c));
    child.stderr?.resume();
    const timer = killAfterMs === undefined ? undefined : setTimeout(() => child.kill('SIGKILL'), killAfterMs);
    const guard = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      clearTimeout(guard);
      resolve({
        killed: signal === 'SIGKILL',
        code,
        stdout: Buffer.concat(out).toString('utf8'),
        ms: Date.now() - started,
      });
    });
  });
}

/**
 * `keywarden ARGS` as its own process with only `env` (and PATH), killed by its step hook
 * (KEYWARDEN_TEST_STEP_HOOK, e.g. `kill:init:staged`) or after `delayMs`; a 60 s guard.
 */
export function spawnKilled(
  args: string[],
  cwd: string,
  kill: { hook?: string; delayMs?: number },
  env: NodeJS.ProcessEnv = {},
): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      cwd,
      env: { PATH: process.env.PATH, ...env, ...(kill.hook ? { KEYWARDEN_TEST_STEP_HOOK: kill.hook } : {}) },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    const err: Buffer[] = [];
    child.stderr?.on('data', (b: Buffer) => err.push(b));
    const timer = kill.delayMs === undefined ? undefined : setTimeout(() => child.kill('SIGKILL'), kill.delayMs);
    const guard = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      clearTimeout(guard);
      resolve({ code, signal, stderr: Buffer.concat(err).toString('utf8') });
    });
  });
}

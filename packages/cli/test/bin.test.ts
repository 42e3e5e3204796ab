/**
 * The built executable (dist/bin.js) as a user runs it: real exit codes, real binary pipes, no
 * stack trace without --debug. CI builds first; locally these are skipped until `pnpm build`.
 */
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, openSync } from 'node:fs';
import { mkdir, readdir, rmdir } from 'node:fs/promises';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { cli, DECRYPT_FAILED, tempDir } from './helpers.js';

const BIN = fileURLToPath(new URL('../dist/bin.js', import.meta.url));
const built = existsSync(BIN);
if (!built && process.env.CI) throw new Error(`bin.test.ts: ${BIN} is missing; CI must build before testing`);
if (!built) console.warn(`bin.test.ts: skipped, ${BIN} is missing (run \`pnpm build\` first)`);

interface Spawned {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

function keywarden(
  args: string[],
  cwd: string,
  input?: Uint8Array | string,
  env: NodeJS.ProcessEnv = {},
): Promise<Spawned> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      cwd,
      env: { PATH: process.env.PATH, ...env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.on('data', (c: Buffer) => err.push(c));
    child.on('error', reject);
    child.on('close', (code) =>
      resolve({ code, stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString('utf8') }),
    );
    child.stdin.on('error', () => {}); // the CLI may exit before reading everything
    child.stdin.end(input === undefined ? undefined : Buffer.from(input));
  });
}

const BROKEN_PIPE = 'keywarden: output closed before the command finished (broken pipe)\n';

/**
 * Run with stdout going to a pipe whose reader goes away: at once (`| true`), or after reading
 * `keep` bytes (`| head -c KEEP`).
 */
function withClosedStdout(
  args: string[],
  cwd: string,
  options: { keep?: number; input?: Uint8Array; env?: NodeJS.ProcessEnv } = {},
): Promise<Spawned> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      cwd,
      env: { PATH: process.env.PATH, ...options.env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    let got = 0;
    const err: Buffer[] = [];
    if (!options.keep) child.stdout.destroy();
    else {
      child.stdout.on('data', (c: Buffer) => {
        out.push(c);
        got += c.length;
        if (got >= (options.keep as number)) child.stdout.destroy();
      });
    }
    child.stderr.on('data', (c: Buffer) => err.push(c));
    child.on('error', reject);
    child.on('close', (code) =>
      resolve({ code, stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString('utf8') }),
    );
    child.stdin.on('error', () => {});
    child.stdin.end(options.input);
  });
}

/** Run with stdout on /dev/full (every write fails with ENOSPC). */
function toDevFull(args: string[], cwd: string, input?: Uint8Array, env: NodeJS.ProcessEnv = {}): Promise<Spawned> {
  return new Promise((resolve, reject) => {
    const full = openSync('/dev/full', 'w');
    const child = spawn(process.execPath, [BIN, ...args], {
      cwd,
      env: { PATH: process.env.PATH, ...env },
      stdio: ['pipe', full, 'pipe'],
    });
    closeSync(full);
    const err: Buffer[] = [];
    child.stderr?.on('data', (c: Buffer) => err.push(c));
    child.on('error', reject);
    child.on('close', (code) =>
      resolve({ code, stdout: Buffer.alloc(0), stderr: Buffer.concat(err).toString('utf8') }),
    );
    child.stdin?.on('error', () => {});
    child.stdin?.end(input);
  });
}

const NO_STACK = /\n\s+at |Error:|node:/;

describe.skipIf(!built)('dist/bin.js', () => {
  it('exit codes: 0 for --help, 2 for an unknown command, 1 for a missing key store; one line, no stack', async () => {
    const cwd = await tempDir();
    const help = await keywarden(['--help'], cwd);
    expect(help.code).toBe(0);
    expect(help.stdout.toString()).toMatch(/^Usage: keywarden/);

    const unknown = await keywarden(['frobnicate'], cwd);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr.trimEnd().split('\n')).toHaveLength(1);

    const missing = await keywarden(['key', 'list'], cwd);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toBe('keywarden: no key store in .keywarden (run `keywarden init`)\n');

    const debug = await keywarden(['key', 'list', '--debug'], cwd);
    expect(debug.code).toBe(1);
    expect(debug.stderr).toMatch(/\n\s+at /);
  });

  it('binary-safe stdin/stdout round trip; tampered input exits 1 with one line and no stack', async () => {
    const cwd = await tempDir();
    expect((await keywarden(['init'], cwd)).code).toBe(0);
    expect((await keywarden(['key', 'create', 'k'], cwd)).code).toBe(0);
    const data = Buffer.concat([Buffer.from([0, 0xff, 0x0a, 0x0d, 0x1a, 0]), randomBytes(1024 * 1024 + 3)]);
    const enc = await keywarden(['encrypt', '--key', 'k', '-c', 'a=b'], cwd, data);
    expect(enc.stderr).toBe('');
    expect(enc.code).toBe(0);
    const dec = await keywarden(['decrypt', '--key', 'k', '-c', 'a=b'], cwd, enc.stdout);
    expect(dec.code).toBe(0);
    expect(dec.stdout.equals(data)).toBe(true);

    const bad = Buffer.from(enc.stdout);
    const i = bad.length - 1000;
    bad[i] = (bad[i] as number) ^ 1;
    const refused = await keywarden(['decrypt', '--key', 'k', '-c', 'a=b'], cwd, bad);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toBe(`${DECRYPT_FAILED}\n`);
  });

  it('reads KEYWARDEN_UNSEAL_KEY from the real environment', async () => {
    const cwd = await tempDir();
    const init = await keywarden(['init', '--print-unseal-key'], cwd);
    expect(init.code).toBe(0);
    const env = { KEYWARDEN_UNSEAL_KEY: init.stdout.toString().trim() };
    expect((await keywarden(['key', 'create', 'k'], cwd, undefined, env)).code).toBe(0);
    const dk = await keywarden(['datakey', 'k'], cwd, undefined, env);
    expect(dk.code).toBe(0);
    expect(JSON.parse(dk.stdout.toString()).plaintext).toHaveLength(44);
  });
});

/** A development-mode store with key `k` (made in-process: faster than spawning) and a ciphertext. */
async function storeWithCiphertext(bytes: number): Promise<{ cwd: string; ciphertext: Buffer }> {
  const cwd = await tempDir();
  expect((await cli(['init'], { cwd })).code).toBe(0);
  expect((await cli(['key', 'create', 'k'], { cwd })).code).toBe(0);
  const enc = await cli(['encrypt', '--key', 'k'], { cwd, stdin: randomBytes(bytes) });
  expect(enc.code, enc.stderr).toBe(0);
  return { cwd, ciphertext: enc.stdout };
}

describe.skipIf(!built)('write errors: one line, exit 1, never "interrupted", never a stack trace', () => {
  it('`--help | true`, `init --help | true`, `key --help | true`: broken pipe, exit 1', async () => {
    const cwd = await tempDir();
    for (const args of [['--help'], ['init', '--help'], ['key', '--help'], ['--version']]) {
      const r = await withClosedStdout(args, cwd);
      expect(r.stderr, args.join(' ')).toBe(BROKEN_PIPE);
      expect(r.code).toBe(1);
    }
  });

  it('`demo | head -c1`: broken pipe, exit 1, no stack trace', async () => {
    const cwd = await tempDir();
    const r = await withClosedStdout(['demo'], cwd, { keep: 1 });
    expect(r.stderr).not.toMatch(NO_STACK);
    expect(r.stderr.endsWith(BROKEN_PIPE), r.stderr).toBe(true);
    expect(r.code).toBe(1);
  });

  it('`decrypt | head -c1` of a large plaintext: broken pipe, exit 1', async () => {
    const { cwd, ciphertext } = await storeWithCiphertext(4 * 1024 * 1024);
    const r = await withClosedStdout(['decrypt', '--key', 'k'], cwd, { keep: 1, input: ciphertext });
    expect(r.stderr).toBe(BROKEN_PIPE);
    expect(r.code).toBe(1);
  });

  it.skipIf(!existsSync('/dev/full'))('stdout on /dev/full: "no space left on device", exit 1', async () => {
    const { cwd, ciphertext } = await storeWithCiphertext(256 * 1024);
    const dec = await toDevFull(['decrypt', '--key', 'k'], cwd, ciphertext);
    expect(dec.stderr).toBe('keywarden: cannot write to standard output: no space left on device\n');
    expect(dec.code).toBe(1);
    const help = await toDevFull(['--help'], cwd);
    expect(help.stderr).toBe('keywarden: cannot write to standard output: no space left on device\n');
    expect(help.code).toBe(1);
  });

  // A real full file system: a 64 KiB tmpfs (needs root and Linux; skipped where mount is refused).
  it.skipIf(process.platform !== 'linux' || process.getuid?.() !== 0)(
    'decrypt -o on a full file system: "no space left on device", exit 1, nothing left on it',
    async () => {
      const { cwd, ciphertext } = await storeWithCiphertext(256 * 1024);
      const mnt = path.join(cwd, 'small');
      await mkdir(mnt);
      try {
        execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', mnt], { stdio: 'ignore' });
      } catch {
        console.warn('bin.test.ts: mount -t tmpfs refused here; the ENOSPC-on-file case is covered by /dev/full only');
        return;
      }
      try {
        for (const env of [{}, { KEYWARDEN_NO_TMPFILE: '1' }]) {
          const r = await keywarden(['decrypt', '--key', 'k', '-o', 'small/out.bin'], cwd, ciphertext, env);
          expect(r.stderr).toBe('keywarden: cannot write small/out.bin: no space left on device\n');
          expect(r.code).toBe(1);
          expect(await readdir(mnt)).toEqual([]);
        }
      } finally {
        execFileSync('umount', [mnt], { stdio: 'ignore' });
        await rmdir(mnt);
      }
    },
  );
});

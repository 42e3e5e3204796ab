/**
 * `decrypt -o FILE` killed mid-stream leaves no plaintext on disk: the real CLI (dist/bin.js) is
 * fed a large ciphertext slowly through a pipe, killed once plaintext has been written to its
 * temporary file, and the folder is then searched for the plaintext's bytes. Every catchable
 * terminating signal removes the temporary file (exit 128 + N); SIGKILL leaves nothing either
 * with an unnamed O_TMPFILE (Linux), and with a named temporary file (KEYWARDEN_NO_TMPFILE=1, the
 * path other systems take) the next `-o` into the folder removes it, with a warning.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readdir, readFile, readlink, stat } from 'node:fs/promises';
import { constants } from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cli, tempDir } from './helpers.js';
import { BIN, built, requireBuild } from './split-helpers.js';

requireBuild('decrypt-signals.test.ts');

const MARKER = Buffer.from('PLAINTEXT-MARKER:patient-record-0042;');
const linux = process.platform === 'linux';

/** A dev-mode store in a fresh folder, and a 4 MiB plaintext of markers encrypted into memory. */
async function setup(): Promise<{ cwd: string; ciphertext: Buffer }> {
  const cwd = await tempDir();
  expect((await cli(['init'], { cwd })).code).toBe(0);
  expect((await cli(['key', 'create', 'k'], { cwd })).code).toBe(0);
  const plaintext = Buffer.alloc(4 * 1024 * 1024);
  for (let off = 0; off < plaintext.length; off += MARKER.length) MARKER.copy(plaintext, off);
  const enc = await cli(['encrypt', '--key', 'k'], { cwd, stdin: plaintext });
  expect(enc.code, enc.stderr).toBe(0);
  return { cwd, ciphertext: enc.stdout };
}

/** Every regular file under `dir` that contains the marker. */
async function filesWithPlaintext(dir: string): Promise<string[]> {
  const found: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
    const p = path.join(entry.parentPath ?? (entry as unknown as { path: string }).path, entry.name);
    if (!entry.isFile()) continue;
    if ((await readFile(p)).includes(MARKER)) found.push(p);
  }
  return found;
}

/** Bytes of plaintext the process holds in its temporary output, named or unnamed (via /proc). */
async function tempOutputBytes(pid: number, cwd: string): Promise<{ bytes: number; unnamed: boolean }> {
  for (const name of await readdir(cwd)) {
    if (name.includes('keywarden-tmp')) return { bytes: (await stat(path.join(cwd, name))).size, unnamed: false };
  }
  if (!linux) return { bytes: 0, unnamed: false };
  for (const fd of await readdir(`/proc/${pid}/fd`).catch(() => [] as string[])) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
    if (target.startsWith(`${cwd}/#`) && target.endsWith('(deleted)')) {
      return { bytes: (await stat(`/proc/${pid}/fd/${fd}`).catch(() => ({ size: 0 }))).size, unnamed: true };
    }
  }
  return { bytes: 0, unnamed: false };
}

interface Killed {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
  unnamed: boolean;
  pid: number;
}

/** Start `decrypt -o out.bin`, feed half the ciphertext, wait for plaintext on disk, send `signal`. */
async function decryptAndKill(
  cwd: string,
  ciphertext: Buffer,
  signal: NodeJS.Signals,
  env: NodeJS.ProcessEnv = {},
): Promise<Killed> {
  const child: ChildProcess = spawn(process.execPath, [BIN, 'decrypt', '--key', 'k', '-o', 'out.bin'], {
    cwd,
    env: { PATH: process.env.PATH, ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
  child.stdin?.on('error', () => {});
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, sig) => resolve({ code, signal: sig })),
  );
  try {
    child.stdin?.write(ciphertext.subarray(0, ciphertext.length / 2));
    let held = { bytes: 0, unnamed: false };
    const until = Date.now() + 15_000;
    while (held.bytes < 256 * 1024) {
      if (Date.now() > until) throw new Error(`no plaintext written within 15 s: ${stderr}`);
      await new Promise((r) => setTimeout(r, 25));
      held = await tempOutputBytes(child.pid as number, cwd);
    }
    child.kill(signal);
    const end = await exited;
    return { ...end, stderr, unnamed: held.unnamed, pid: child.pid as number };
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
}

const CATCHABLE: NodeJS.Signals[] = ['SIGHUP', 'SIGINT', 'SIGQUIT', 'SIGTERM', 'SIGALRM', 'SIGUSR2'];

describe.skipIf(!built)('decrypt -o killed mid-stream leaves no plaintext on disk', () => {
  for (const mode of ['unnamed temporary file (O_TMPFILE)', 'named temporary file'] as const) {
    const env = mode === 'named temporary file' ? { KEYWARDEN_NO_TMPFILE: '1' } : {};
    it(`${mode}: ${CATCHABLE.join(', ')} remove it and exit 128 + N, one line on stderr`, async () => {
      const { cwd, ciphertext } = await setup();
      for (const signal of CATCHABLE) {
        const r = await decryptAndKill(cwd, ciphertext, signal, env);
        expect(r.signal, signal).toBe(null);
        expect(r.code, `${signal}: ${r.stderr}`).toBe(128 + (constants.signals[signal] as number));
        expect(r.stderr).toBe(`keywarden: interrupted (${signal})\n`);
        if (mode === 'named temporary file' || !linux) expect(r.unnamed).toBe(false);
        else expect(r.unnamed).toBe(true);
        expect(existsSync(path.join(cwd, 'out.bin'))).toBe(false);
        expect(await filesWithPlaintext(cwd), signal).toEqual([]);
      }
    });
  }

  it.skipIf(!linux)(
    'SIGKILL with an unnamed temporary file (Linux): nothing is left, nothing to clean up',
    async () => {
      const { cwd, ciphertext } = await setup();
      const r = await decryptAndKill(cwd, ciphertext, 'SIGKILL');
      expect(r.signal).toBe('SIGKILL');
      expect(r.unnamed).toBe(true);
      expect(await filesWithPlaintext(cwd)).toEqual([]);
      expect((await readdir(cwd)).filter((f) => f.includes('keywarden-tmp'))).toEqual([]);
    },
  );

  it('SIGKILL with a named temporary file: the next -o into the folder removes it, with a warning', async () => {
    const { cwd, ciphertext } = await setup();
    const r = await decryptAndKill(cwd, ciphertext, 'SIGKILL', { KEYWARDEN_NO_TMPFILE: '1' });
    expect(r.signal).toBe('SIGKILL');
    const stale = (await readdir(cwd)).filter((f) => f.includes('keywarden-tmp'));
    expect(stale).toHaveLength(1);
    expect(stale[0]).toMatch(new RegExp(`^\\.out\\.bin\\.keywarden-tmp\\.${r.pid}\\.[0-9a-f]{12}$`));

    // The next run decrypts something else into the same folder.
    const small = await cli(['encrypt', '--key', 'k', '--text'], { cwd, stdin: 'x' });
    const next = await cli(['decrypt', '--key', 'k', '-o', 'small.txt'], { cwd, stdin: small.stdout });
    expect(next.code, next.stderr).toBe(0);
    expect(next.stderr).toBe(
      `keywarden: warning: removed ${stale[0]}, a temporary output file left by process ${r.pid}, which was killed (it may have held partial plaintext)\n`,
    );
    expect(await filesWithPlaintext(cwd)).toEqual([]);
  });

  it("another live process's temporary file is left alone", async () => {
    const { cwd, ciphertext } = await setup();
    const child = spawn(process.execPath, [BIN, 'decrypt', '--key', 'k', '-o', 'out.bin'], {
      cwd,
      env: { PATH: process.env.PATH, KEYWARDEN_NO_TMPFILE: '1' },
      stdio: ['pipe', 'ignore', 'pipe'],
    });
    child.stdin.on('error', () => {});
    try {
      child.stdin.write(ciphertext.subarray(0, ciphertext.length / 2));
      const until = Date.now() + 15_000;
      let names: string[] = [];
      while (names.length === 0) {
        if (Date.now() > until) throw new Error('no temporary file');
        await new Promise((r) => setTimeout(r, 25));
        names = (await readdir(cwd)).filter((f) => f.includes('keywarden-tmp'));
      }
      const small = await cli(['encrypt', '--key', 'k', '--text'], { cwd, stdin: 'x' });
      const next = await cli(['decrypt', '--key', 'k', '-o', 'small.txt'], { cwd, stdin: small.stdout });
      expect(next.code).toBe(0);
      expect(next.stderr).toBe('');
      expect((await readdir(cwd)).filter((f) => f.includes('keywarden-tmp'))).toEqual(names);
      // Let it finish: the whole input, then the complete plaintext is renamed into place.
      child.stdin.end(ciphertext.subarray(ciphertext.length / 2));
      const code = await new Promise((resolve) => child.on('exit', resolve));
      expect(code).toBe(0);
      expect((await stat(path.join(cwd, 'out.bin'))).size).toBe(4 * 1024 * 1024);
      expect((await stat(path.join(cwd, 'out.bin'))).mode & 0o777).toBe(0o600);
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('SIGUSR1 mid-stream opens no debugger: the decrypt carries on and completes', async () => {
    const { cwd, ciphertext } = await setup();
    const child = spawn(process.execPath, [BIN, 'decrypt', '--key', 'k', '-o', 'out.bin'], {
      cwd,
      env: { PATH: process.env.PATH },
      stdio: ['pipe', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    child.stdin.on('error', () => {});
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    try {
      child.stdin.write(ciphertext.subarray(0, ciphertext.length / 2));
      const until = Date.now() + 15_000;
      while ((await tempOutputBytes(child.pid as number, cwd)).bytes < 256 * 1024) {
        if (Date.now() > until) throw new Error(`no plaintext written within 15 s: ${stderr}`);
        await new Promise((r) => setTimeout(r, 25));
      }
      child.kill('SIGUSR1');
      await new Promise((r) => setTimeout(r, 500));
      child.stdin.end(ciphertext.subarray(ciphertext.length / 2));
      expect(await exited).toBe(0);
      expect(stderr).toBe('');
      expect((await readFile(path.join(cwd, 'out.bin'))).subarray(0, MARKER.length).equals(MARKER)).toBe(true);
      expect((await stat(path.join(cwd, 'out.bin'))).size).toBe(4 * 1024 * 1024);
    } finally {
      child.kill('SIGKILL');
    }
  });
});

/**
 * The built executable (dist/bin.js) as a user runs it: real exit codes, real binary pipes, no
 * stack trace without --debug. CI builds first; locally these are skipped until `pnpm build`.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { DECRYPT_FAILED, tempDir } from './helpers.js';

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

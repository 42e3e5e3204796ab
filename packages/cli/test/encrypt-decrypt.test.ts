import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import { beforeEach, describe, expect, it } from 'vitest';
import { run } from '../src/cli.js';
import { cli, DECRYPT_FAILED, initialized, oneLine, tempDir } from './helpers.js';
import { built, startAgent } from './split-helpers.js';

let cwd: string;
beforeEach(async () => {
  cwd = await initialized();
  const r = await cli(['key', 'create', 'files'], { cwd });
  expect(r.code).toBe(0);
  expect((await cli(['key', 'create', 'other'], { cwd })).code).toBe(0);
});

const FRAME = 64 * 1024;
const noTempFiles = async () => (await readdir(cwd)).filter((f) => f.includes('keywarden-tmp'));

async function encryptToFile(plaintext: Uint8Array, name: string, ...extra: string[]): Promise<Buffer> {
  await writeFile(path.join(cwd, `${name}.plain`), plaintext);
  const r = await cli(['encrypt', '--key', 'files', '-i', `${name}.plain`, '-o', `${name}.kw`, ...extra], { cwd });
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  return readFile(path.join(cwd, `${name}.kw`));
}

describe('encrypt / decrypt round trips', () => {
  it('via files: -i/-o, binary data, several frames', async () => {
    const data = randomBytes(3 * FRAME + 12345);
    const ct = await encryptToFile(data, 'a', '--context', 'purpose=backup');
    expect(ct.subarray(0, 3).toString('latin1')).toBe('KWE');
    const r = await cli(['decrypt', '--key', 'files', '-i', 'a.kw', '-o', 'a.out', '--context', 'purpose=backup'], {
      cwd,
    });
    expect(r.code).toBe(0);
    expect(r.stdout).toHaveLength(0);
    expect((await readFile(path.join(cwd, 'a.out'))).equals(data)).toBe(true);
    expect(await noTempFiles()).toEqual([]);
  });

  it('via stdin/stdout: every byte value, a few MiB', async () => {
    const data = Buffer.concat([Buffer.from(Array.from({ length: 256 }, (_, i) => i)), randomBytes(3 * 1024 * 1024)]);
    const enc = await cli(['encrypt', '--key', 'files'], { cwd, stdin: data });
    expect(enc.code).toBe(0);
    const dec = await cli(['decrypt', '--key', 'files'], { cwd, stdin: enc.stdout });
    expect(dec.code).toBe(0);
    expect(dec.stdout.equals(data)).toBe(true);
  });

  it('0 bytes in, 0 bytes out (the envelope still authenticates the empty message)', async () => {
    const enc = await cli(['encrypt', '--key', 'files'], { cwd, stdin: Buffer.alloc(0) });
    expect(enc.code).toBe(0);
    expect(enc.stdout.length).toBeGreaterThan(0);
    const dec = await cli(['decrypt', '--key', 'files'], { cwd, stdin: enc.stdout });
    expect(dec.code).toBe(0);
    expect(dec.stdout).toHaveLength(0);
  });

  it('context pairs may be given in any order', async () => {
    const enc = await cli(['encrypt', '--key', 'files', '-c', 'a=1', '-c', 'b=x=y'], { cwd, stdin: 'ctx' });
    const dec = await cli(['decrypt', '--key', 'files', '-c', 'b=x=y', '-c', 'a=1'], { cwd, stdin: enc.stdout });
    expect(dec.code).toBe(0);
    expect(dec.out).toBe('ctx');
  });

  it('--text: one "kw1." line, decrypt detects it (stdin and files), 0 bytes too', async () => {
    const enc = await cli(['encrypt', '--key', 'files', '--text', '--context', 'row=42'], {
      cwd,
      stdin: 'secret value',
    });
    expect(enc.code).toBe(0);
    expect(enc.out).toMatch(/^kw1\.[A-Za-z0-9_-]+\n$/);
    const dec = await cli(['decrypt', '--key', 'files', '--context', 'row=42'], { cwd, stdin: enc.out });
    expect(dec.code).toBe(0);
    expect(dec.out).toBe('secret value');

    await writeFile(path.join(cwd, 't.txt'), enc.out);
    const fromFile = await cli(['decrypt', '--key', 'files', '--context', 'row=42', '-i', 't.txt', '-o', 't.out'], {
      cwd,
    });
    expect(fromFile.code).toBe(0);
    expect(await readFile(path.join(cwd, 't.out'), 'utf8')).toBe('secret value');

    const empty = await cli(['encrypt', '--key', 'files', '--text'], { cwd, stdin: '' });
    expect(empty.code).toBe(0);
    const back = await cli(['decrypt', '--key', 'files'], { cwd, stdin: empty.out });
    expect(back.code).toBe(0);
    expect(back.stdout).toHaveLength(0);
  });

  it('--text refuses input over 64 MiB with a clear message', async () => {
    const r = await cli(['encrypt', '--key', 'files', '--text', '-o', 'big.txt'], {
      cwd,
      stdin: Buffer.alloc(64 * 1024 * 1024 + 1),
    });
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toBe(
      'keywarden: --text is for values up to 64 MiB; encrypt larger input without --text (streaming)',
    );
    expect(existsSync(path.join(cwd, 'big.txt'))).toBe(false);
  });
});

describe('decrypt failures leave no plaintext behind', () => {
  const data = randomBytes(3 * FRAME + 4000);

  it('wrong context: exit 1, one line, -o file not created and an existing -o file untouched', async () => {
    await encryptToFile(data, 'w', '--context', 'tenant=a');
    for (const ctx of [['--context', 'tenant=b'], []]) {
      const r = await cli(['decrypt', '--key', 'files', '-i', 'w.kw', '-o', 'w.out', ...ctx], { cwd });
      expect(r.code).toBe(1);
      expect(oneLine(r.stderr)).toBe(DECRYPT_FAILED);
      expect(existsSync(path.join(cwd, 'w.out'))).toBe(false);
    }
    await writeFile(path.join(cwd, 'keep.txt'), 'old content');
    const r = await cli(['decrypt', '--key', 'files', '-i', 'w.kw', '-o', 'keep.txt', '--context', 'tenant=b'], {
      cwd,
    });
    expect(r.code).toBe(1);
    expect(await readFile(path.join(cwd, 'keep.txt'), 'utf8')).toBe('old content');
    expect(await noTempFiles()).toEqual([]);
  });

  it('wrong context on stdout: nothing is written', async () => {
    const enc = await cli(['encrypt', '--key', 'files', '-c', 'tenant=a'], { cwd, stdin: data });
    const r = await cli(['decrypt', '--key', 'files', '-c', 'tenant=b'], { cwd, stdin: enc.stdout });
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toBe(DECRYPT_FAILED);
    expect(r.stdout).toHaveLength(0);
  });

  it('--text with a wrong context', async () => {
    const enc = await cli(['encrypt', '--key', 'files', '--text', '-c', 'row=1'], { cwd, stdin: 'v' });
    const r = await cli(['decrypt', '--key', 'files', '-c', 'row=2', '-o', 'v.out'], { cwd, stdin: enc.out });
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toBe(DECRYPT_FAILED);
    expect(existsSync(path.join(cwd, 'v.out'))).toBe(false);
  });

  it('tampered input (one bit flipped in the third frame): -o is all or nothing', async () => {
    const ct = await encryptToFile(data, 't');
    const bad = Buffer.from(ct);
    const at = ct.length - 70_000;
    bad[at] = (bad[at] as number) ^ 0x01;
    await writeFile(path.join(cwd, 't.bad'), bad);
    await writeFile(path.join(cwd, 'existing.out'), 'untouched');
    for (const target of ['t.out', 'existing.out']) {
      const r = await cli(['decrypt', '--key', 'files', '-i', 't.bad', '-o', target], { cwd });
      expect(r.code).toBe(1);
      expect(oneLine(r.stderr)).toBe(DECRYPT_FAILED);
    }
    expect(existsSync(path.join(cwd, 't.out'))).toBe(false);
    expect(await readFile(path.join(cwd, 'existing.out'), 'utf8')).toBe('untouched');
    expect(await noTempFiles()).toEqual([]);
  });

  it('tampered input on stdout: only authenticated frames are written, then exit 1', async () => {
    const ct = await encryptToFile(data, 's');
    const bad = Buffer.from(ct);
    const at = ct.length - 70_000;
    bad[at] = (bad[at] as number) ^ 0x80;
    const r = await cli(['decrypt', '--key', 'files'], { cwd, stdin: bad });
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toBe(DECRYPT_FAILED);
    expect(r.stdout.length).toBeLessThan(data.length);
    expect(r.stdout.length % FRAME).toBe(0);
    expect(r.stdout.equals(data.subarray(0, r.stdout.length))).toBe(true);
  });

  it('a tampered --text envelope is refused', async () => {
    const enc = await cli(['encrypt', '--key', 'files', '--text'], { cwd, stdin: 'value' });
    const text = enc.out.trim();
    const i = text.length - 5;
    const flipped = text.slice(0, i) + (text[i] === 'A' ? 'B' : 'A') + text.slice(i + 1);
    const r = await cli(['decrypt', '--key', 'files'], { cwd, stdin: flipped });
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toMatch(/^keywarden: envelope: /);
    expect(r.stdout).toHaveLength(0);
  });

  it('truncated input: -o not created; stdout stops at the last complete frame and exit 1', async () => {
    const ct = await encryptToFile(data, 'c');
    for (const cut of [10, FRAME + 100, ct.length - 100]) {
      await writeFile(path.join(cwd, 'c.cut'), ct.subarray(0, ct.length - cut));
      const toFile = await cli(['decrypt', '--key', 'files', '-i', 'c.cut', '-o', 'c.out'], { cwd });
      expect(toFile.code).toBe(1);
      expect(oneLine(toFile.stderr)).toMatch(/^keywarden: envelope: /);
      expect(existsSync(path.join(cwd, 'c.out'))).toBe(false);

      const toStdout = await cli(['decrypt', '--key', 'files', '-i', 'c.cut'], { cwd });
      expect(toStdout.code).toBe(1);
      expect(oneLine(toStdout.stderr)).toMatch(/^keywarden: envelope: /);
      expect(toStdout.stdout.length).toBeLessThan(data.length);
      expect(toStdout.stdout.equals(data.subarray(0, toStdout.stdout.length))).toBe(true);
    }
    expect(await noTempFiles()).toEqual([]);
  });

  it('empty or foreign input is not mistaken for ciphertext', async () => {
    for (const input of [Buffer.alloc(0), Buffer.from('hello, this is not ciphertext')]) {
      const r = await cli(['decrypt', '--key', 'files', '-o', 'x.out'], { cwd, stdin: input });
      expect(r.code).toBe(1);
      expect(oneLine(r.stderr)).toMatch(/^keywarden: envelope: /);
      expect(existsSync(path.join(cwd, 'x.out'))).toBe(false);
    }
  });
});

describe('encrypt / decrypt errors', () => {
  it('unknown key: exit 1 before any output file exists', async () => {
    const r = await cli(['encrypt', '--key', 'nope', '-o', 'n.kw'], { cwd, stdin: 'x' });
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toBe('keywarden: keystore: no key named "nope"');
    expect(existsSync(path.join(cwd, 'n.kw'))).toBe(false);
  });

  it('missing input file', async () => {
    for (const argv of [
      ['encrypt', '--key', 'files', '-i', 'missing.bin'],
      ['decrypt', '--key', 'files', '-i', 'missing.kw', '-o', 'm.out'],
    ]) {
      const r = await cli(argv, { cwd });
      expect(r.code).toBe(1);
      expect(oneLine(r.stderr)).toMatch(/^keywarden: no such file: missing\.(bin|kw)$/);
    }
    expect(existsSync(path.join(cwd, 'm.out'))).toBe(false);
  });

  it('an output in a missing directory, or over a directory, is reported plainly and leaves nothing', async () => {
    const missing = await cli(['encrypt', '--key', 'files', '-o', 'nodir/x.kw'], { cwd, stdin: 'x' });
    expect(missing.code).toBe(1);
    expect(oneLine(missing.stderr)).toBe('keywarden: cannot create nodir/x.kw: no such directory nodir');
    await mkdir(path.join(cwd, 'adir'));
    const overDir = await cli(['encrypt', '--key', 'files', '-o', 'adir'], { cwd, stdin: 'x' });
    expect(overDir.code).toBe(1);
    expect(oneLine(overDir.stderr)).toBe('keywarden: cannot replace adir: is a directory');
    expect(await noTempFiles()).toEqual([]);
  });

  it('refuses to write binary ciphertext to a terminal (exit 2)', async () => {
    const stdout = Object.assign(new PassThrough(), { isTTY: true });
    const stderr = new PassThrough();
    let err = '';
    stderr.on('data', (c: Buffer) => (err += c.toString()));
    const stdin = new PassThrough();
    stdin.end('x');
    const code = await run(['encrypt', '--key', 'files'], { stdin, stdout, stderr, env: {}, cwd });
    expect(code).toBe(2);
    expect(oneLine(err)).toMatch(/^keywarden: refusing to write binary ciphertext to a terminal/);
    expect(stdout.read()).toBeNull();
  });

  it('missing --key and malformed --context are usage errors (exit 2)', async () => {
    const noKey = await cli(['encrypt'], { cwd, stdin: 'x' });
    expect(noKey.code).toBe(2);
    expect(oneLine(noKey.stderr)).toMatch(/required option '-k, --key <name>' not specified/);
    const badCtx = await cli(['decrypt', '--key', 'files', '--context', '=x'], { cwd, stdin: 'x' });
    expect(badCtx.code).toBe(2);
    expect(oneLine(badCtx.stderr)).toMatch(/^keywarden: context: expected key=value/);
  });

  it('decrypt takes the expected key: ciphertext under another key is refused even with the right context', async () => {
    const enc = await cli(['encrypt', '--key', 'other', '-c', 'tenant=a'], { cwd, stdin: 'planted' });
    expect((await cli(['decrypt', '--key', 'other', '-c', 'tenant=a'], { cwd, stdin: enc.stdout })).out).toBe(
      'planted',
    );
    const wrong = await cli(['decrypt', '--key', 'files', '-c', 'tenant=a', '-o', 'w.out'], { cwd, stdin: enc.stdout });
    expect(wrong.code).toBe(1);
    expect(oneLine(wrong.stderr)).toMatch(
      /^keywarden: the data key is wrapped under kek_[A-Za-z0-9_-]+, which is not the expected key$/,
    );
    expect(existsSync(path.join(cwd, 'w.out'))).toBe(false);
    // The text form goes through the same check.
    const text = await cli(['encrypt', '--key', 'other', '--text'], { cwd, stdin: 'planted' });
    expect((await cli(['decrypt', '--key', 'files'], { cwd, stdin: text.out })).code).toBe(1);
    // An allow-list: --key repeated.
    expect((await cli(['decrypt', '--key', 'files', '--key', 'other'], { cwd, stdin: text.out })).out).toBe('planted');
    // Names and ids both work.
    const id = /kek_[A-Za-z0-9_-]{22}/.exec((await cli(['key', 'show', 'other'], { cwd })).out)?.[0] as string;
    expect((await cli(['decrypt', '--key', id], { cwd, stdin: text.out })).out).toBe('planted');
  });

  it('--any-key-in-store accepts any key of this store; no key at all, or both, is a usage error (exit 2)', async () => {
    const enc = await cli(['encrypt', '--key', 'other'], { cwd, stdin: 'x' });
    expect((await cli(['decrypt', '--any-key-in-store'], { cwd, stdin: enc.stdout })).out).toBe('x');
    const none = await cli(['decrypt'], { cwd, stdin: enc.stdout });
    expect(none.code).toBe(2);
    expect(oneLine(none.stderr)).toBe(
      "keywarden: name the key the ciphertext must be under: --key NAME (or --any-key-in-store to accept any key of this store) (see 'keywarden --help')",
    );
    const both = await cli(['decrypt', '--key', 'other', '--any-key-in-store'], { cwd, stdin: enc.stdout });
    expect(both.code).toBe(2);
    expect(oneLine(both.stderr)).toMatch(/^keywarden: give --key or --any-key-in-store, not both/);
  });
});

describe.skipIf(!built)('decrypt through the agent (split knowledge) forwards the expected key', () => {
  it('the agent refuses ciphertext under another key (UnexpectedKeyError over the wire) and never widens --key', async () => {
    const dir = await tempDir();
    const init = await cli(['init', '--shares', '2', '--threshold', '2', '--share-dir', 'shares'], { cwd: dir });
    expect(init.code).toBe(0);
    const agent = await startAgent(dir);
    const shares = ['--share-file', 'shares/share-1-of-2.txt', '--share-file', 'shares/share-2-of-2.txt'];
    expect((await cli(['unseal', ...shares], { cwd: dir })).code).toBe(0);
    for (const name of ['files', 'other']) expect((await cli(['key', 'create', name], { cwd: dir })).code).toBe(0);
    const text = (await cli(['encrypt', '--key', 'other', '--text', '-c', 'tenant=a'], { cwd: dir, stdin: 'planted' }))
      .out;
    const wrong = await cli(['decrypt', '--key', 'files', '-c', 'tenant=a'], { cwd: dir, stdin: text });
    expect(wrong.code).toBe(1);
    expect(oneLine(wrong.stderr)).toMatch(
      /^keywarden: the data key is wrapped under kek_[A-Za-z0-9_-]+, which is not the expected key$/,
    );
    expect((await cli(['decrypt', '--key', 'other', '-c', 'tenant=a'], { cwd: dir, stdin: text })).out).toBe('planted');
    expect((await cli(['decrypt', '--any-key-in-store', '-c', 'tenant=a'], { cwd: dir, stdin: text })).out).toBe(
      'planted',
    );
    expect(await agent.stop()).toBe(0);
  });
});

/**
 * `keywarden rewrap FILE...` (issue 10): files move to the key's primary version in place; files
 * already there are not rewritten; a compromised version's files are reported and the rest go on.
 */
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { envelopeHeaderLength, inspectEnvelope } from '@keywarden/core';
import { describe, expect, it } from 'vitest';
import { run } from '../src/cli.js';
import { cli, initialized, oneLine } from './helpers.js';

async function encryptTo(cwd: string, key: string, text: string, file: string, extra: string[] = []) {
  writeFileSync(join(cwd, `${file}.plain`), text);
  const r = await cli(['encrypt', '--key', key, '-i', `${file}.plain`, '-o', file, ...extra], { cwd });
  if (r.code !== 0) throw new Error(r.stderr);
}

describe('keywarden rewrap', () => {
  it('rewraps files in place onto the primary (same plaintext, same context), leaves current ones untouched, and prints --json results', async () => {
    const cwd = await initialized();
    await cli(['key', 'create', 'docs'], { cwd });
    await encryptTo(cwd, 'docs', 'first file', 'a.kw', ['-c', 'kind=doc']);
    await encryptTo(cwd, 'docs', 'second file', 'b.kw', ['-c', 'kind=doc', '--signed']);
    await cli(['key', 'rotate', 'docs'], { cwd });
    await encryptTo(cwd, 'docs', 'third file', 'c.kw', ['-c', 'kind=doc']);
    const cBefore = statSync(join(cwd, 'c.kw')).mtimeMs;
    const cBytes = readFileSync(join(cwd, 'c.kw'));
    const before = { a: readFileSync(join(cwd, 'a.kw')), b: readFileSync(join(cwd, 'b.kw')) };

    const r = await cli(['rewrap', '--key', 'docs', '-c', 'kind=doc', '--json', 'a.kw', 'b.kw', 'c.kw'], { cwd });
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.out)).toEqual([
      { file: 'a.kw', status: 'rewrapped', method: 'header', fromVersion: 1, toVersion: 2 },
      { file: 'b.kw', status: 'rewrapped', method: 'header', fromVersion: 1, toVersion: 2 },
      { file: 'c.kw', status: 'unchanged', fromVersion: 2, toVersion: 2 },
    ]);
    // Format v2 (docs/format.md §4.10): only the header changed; the body is byte for byte the same.
    for (const [file, old] of [
      ['a.kw', before.a],
      ['b.kw', before.b],
    ] as const) {
      const now = readFileSync(join(cwd, file));
      expect(now.subarray(envelopeHeaderLength(now)).equals(old.subarray(envelopeHeaderLength(old)))).toBe(true);
      expect(now.subarray(0, envelopeHeaderLength(now)).equals(old.subarray(0, envelopeHeaderLength(old)))).toBe(false);
    }
    expect(inspectEnvelope(readFileSync(join(cwd, 'a.kw'))).keyVersion).toBe(2);
    expect(inspectEnvelope(readFileSync(join(cwd, 'b.kw'))).signed).toBe(true);
    expect(statSync(join(cwd, 'c.kw')).mtimeMs).toBe(cBefore);
    expect(readFileSync(join(cwd, 'c.kw')).equals(cBytes)).toBe(true);
    // v1 can now be retired: the rewrapped files still decrypt.
    await cli(['key', 'retire', 'docs', '--min-version', '2'], { cwd });
    for (const [file, text] of [
      ['a.kw', 'first file'],
      ['b.kw', 'second file'],
    ]) {
      const d = await cli(['decrypt', '--key', 'docs', '-c', 'kind=doc', '-i', file as string], { cwd });
      expect(d.out).toBe(text);
    }
    const again = await cli(['rewrap', '--key', 'docs', '-c', 'kind=doc', 'a.kw'], { cwd });
    expect(again.out).toBe('a.kw: already under v2\n');
  });

  it('a file under a compromised version is reported, the others are rewrapped, and the exit status is 1', async () => {
    const cwd = await initialized();
    await cli(['key', 'create', 'k'], { cwd });
    await encryptTo(cwd, 'k', 'one', 'one.kw');
    await cli(['key', 'rotate', 'k'], { cwd });
    await encryptTo(cwd, 'k', 'two', 'two.kw');
    await cli(['key', 'compromise', 'k', '2'], { cwd });
    const bytes = readFileSync(join(cwd, 'two.kw'));
    const r = await cli(['rewrap', '--key', 'k', 'one.kw', 'two.kw'], { cwd });
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/^one\.kw: rewrapped v1 → v3\ntwo\.kw: failed: .*v2 is compromised/);
    expect(oneLine(r.stderr)).toBe('keywarden: rewrap: 1 of 2 files could not be rewrapped (listed above)');
    expect(readFileSync(join(cwd, 'two.kw')).equals(bytes)).toBe(true);
  });

  it('a large framed file keeps its body; --re-encrypt decrypts and re-encrypts instead (new data key, new body)', async () => {
    const cwd = await initialized();
    await cli(['key', 'create', 'big'], { cwd });
    const text = 'x'.repeat(3 * 1024 * 1024 + 17);
    await encryptTo(cwd, 'big', text, 'big.kw');
    await encryptTo(cwd, 'big', 'small', 'small.kw');
    const bytes = readFileSync(join(cwd, 'big.kw'));
    expect(inspectEnvelope(bytes)).toMatchObject({ formatVersion: 2, mode: 'framed' });
    await cli(['key', 'rotate', 'big'], { cwd });
    const r = await cli(['rewrap', '--key', 'big', 'big.kw'], { cwd });
    expect(r.code, r.stderr).toBe(0);
    expect(r.out).toBe('big.kw: rewrapped v1 → v2\n');
    const now = readFileSync(join(cwd, 'big.kw'));
    expect(now.length).toBe(bytes.length);
    expect(now.subarray(envelopeHeaderLength(now)).equals(bytes.subarray(envelopeHeaderLength(bytes)))).toBe(true);
    expect((await cli(['decrypt', '--key', 'big', '-i', 'big.kw'], { cwd })).out).toBe(text);

    const small = readFileSync(join(cwd, 'small.kw'));
    const re = await cli(['rewrap', '--key', 'big', '--re-encrypt', '--json', 'small.kw'], { cwd });
    expect(re.code, re.stderr).toBe(0);
    expect(JSON.parse(re.out)).toEqual([
      { file: 'small.kw', status: 'rewrapped', method: 're-encrypted', fromVersion: 1, toVersion: 2 },
    ]);
    const after = readFileSync(join(cwd, 'small.kw'));
    expect(after.subarray(envelopeHeaderLength(after)).equals(small.subarray(envelopeHeaderLength(small)))).toBe(false);
    expect(inspectEnvelope(after)).toMatchObject({ formatVersion: 2, keyVersion: 2 });
    expect((await cli(['decrypt', '--key', 'big', '-i', 'small.kw'], { cwd })).out).toBe('small');
  });

  it('on a terminal, several files show a cli-progress bar on stderr (and --no-progress hides it)', async () => {
    const cwd = await initialized();
    await cli(['key', 'create', 'p'], { cwd });
    for (const f of ['x.kw', 'y.kw', 'z.kw']) await encryptTo(cwd, 'p', f, f);
    await cli(['key', 'rotate', 'p'], { cwd });
    const tty = async (argv: string[]) => {
      const stderr = Object.assign(new PassThrough(), { isTTY: true, columns: 100 });
      const stdout = new PassThrough();
      let err = '';
      stderr.on('data', (c: Buffer) => {
        err += c.toString();
      });
      stdout.resume();
      const stdin = new PassThrough();
      stdin.end();
      const code = await run(argv, { stdin, stdout, stderr, env: {}, cwd });
      return { code, err };
    };
    const shown = await tty(['rewrap', '--key', 'p', 'x.kw', 'y.kw', 'z.kw']);
    expect(shown.code).toBe(0);
    expect(shown.err).toMatch(/rewrap \[[^\]]*\] 3\/3 files/);
    await cli(['key', 'rotate', 'p'], { cwd });
    const hidden = await tty(['rewrap', '--key', 'p', '--no-progress', 'x.kw', 'y.kw', 'z.kw']);
    expect(hidden.code).toBe(0);
    expect(hidden.err).toBe('');
  });
});

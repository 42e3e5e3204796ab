/**
 * `keywarden rewrap FILE...` (issue 10): files move to the key's primary version in place; files
 * already there are not rewritten; a compromised version's files are reported and the rest go on.
 */
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { inspectEnvelope } from '@keywarden/core';
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

    const r = await cli(['rewrap', '--key', 'docs', '-c', 'kind=doc', '--json', 'a.kw', 'b.kw', 'c.kw'], { cwd });
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.out)).toEqual([
      { file: 'a.kw', status: 'rewrapped', fromVersion: 1, toVersion: 2 },
      { file: 'b.kw', status: 'rewrapped', fromVersion: 1, toVersion: 2 },
      { file: 'c.kw', status: 'unchanged', fromVersion: 2, toVersion: 2 },
    ]);
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

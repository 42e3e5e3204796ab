import { randomBytes } from 'node:crypto';
import { chmod, rename, writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { encodeUnsealKey } from '@keywarden/core';
import { describe, expect, it } from 'vitest';
import { cli, initialized, oneLine, tempDir } from './helpers.js';

describe('unseal key resolution', () => {
  it('KEYWARDEN_UNSEAL_KEY (text form) opens a store initialized with --print-unseal-key', async () => {
    const cwd = await tempDir();
    const init = await cli(['init', '--print-unseal-key'], { cwd });
    const env = { KEYWARDEN_UNSEAL_KEY: init.out.trim() };
    const created = await cli(['key', 'create', 'app'], { cwd, env });
    expect(created.code).toBe(0);
    const enc = await cli(['encrypt', '--key', 'app', '--text'], { cwd, env, stdin: 'hello' });
    expect(enc.code).toBe(0);
    const dec = await cli(['decrypt', '--key', 'app'], { cwd, env, stdin: enc.out });
    expect(dec.out).toBe('hello');
  });

  it('without any unseal key the message names all three sources', async () => {
    const cwd = await tempDir();
    await cli(['init', '--print-unseal-key'], { cwd });
    const r = await cli(['key', 'create', 'app'], { cwd });
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toBe(
      'keywarden: no unseal key: set KEYWARDEN_UNSEAL_KEY, pass --unseal-key-file, or keep the key in .keywarden/unseal.key',
    );
  });

  it('KEYWARDEN_UNSEAL_KEY takes precedence over the key file', async () => {
    const cwd = await initialized();
    const wrong = encodeUnsealKey(new Uint8Array(randomBytes(32)));
    const r = await cli(['key', 'create', 'app'], { cwd, env: { KEYWARDEN_UNSEAL_KEY: wrong } });
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toBe('keywarden: root: unseal failed (wrong unseal key or shares)');
  });

  it('a wrong key file gives the UnsealError message and never echoes the key', async () => {
    const cwd = await initialized();
    const wrong = encodeUnsealKey(new Uint8Array(randomBytes(32)));
    await writeFile(path.join(cwd, 'other.key'), wrong, { mode: 0o600 });
    const r = await cli(['datakey', 'k', '--unseal-key-file', 'other.key'], { cwd });
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toBe('keywarden: root: unseal failed (wrong unseal key or shares)');
    expect(r.stderr).not.toContain(wrong);
  });

  it('a malformed KEYWARDEN_UNSEAL_KEY is reported without echoing it', async () => {
    const cwd = await initialized();
    const r = await cli(['key', 'create', 'app'], { cwd, env: { KEYWARDEN_UNSEAL_KEY: 'hunter2-not-a-key' } });
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toBe(
      'keywarden: KEYWARDEN_UNSEAL_KEY does not hold a valid unseal key (root: not a Keywarden unseal key)',
    );
    expect(r.stderr).not.toContain('hunter2');
  });

  it('a missing --unseal-key-file is named', async () => {
    const cwd = await initialized();
    const r = await cli(['key', 'create', 'app', '--unseal-key-file', 'nope.key'], { cwd });
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toBe('keywarden: no such unseal key file: nope.key');
  });

  it('warns when the unseal key file is readable by others, and still works', async () => {
    const cwd = await initialized();
    await chmod(path.join(cwd, '.keywarden', 'unseal.key'), 0o644);
    const r = await cli(['key', 'create', 'app'], { cwd });
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(
      /warning: unseal key file .keywarden\/unseal.key is accessible to group or others \(mode 644\)/,
    );
  });

  it('key list and key show need no unseal key', async () => {
    const cwd = await initialized();
    expect((await cli(['key', 'create', 'app'], { cwd })).code).toBe(0);
    await rename(path.join(cwd, '.keywarden', 'unseal.key'), path.join(cwd, 'elsewhere.key'));
    expect((await cli(['key', 'list'], { cwd })).code).toBe(0);
    expect((await cli(['key', 'show', 'app'], { cwd })).code).toBe(0);
    expect((await cli(['key', 'rotate', 'app'], { cwd })).code).toBe(1);
  });
});

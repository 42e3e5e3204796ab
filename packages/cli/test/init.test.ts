import { existsSync } from 'node:fs';
import { readFile, stat, writeFile, mkdir } from 'node:fs/promises';
import * as path from 'node:path';
import { decodeUnsealKey } from '@keywarden/core';
import { describe, expect, it } from 'vitest';
import { cli, oneLine, tempDir } from './helpers.js';

const mode = async (p: string) => (await stat(p)).mode & 0o777;

describe('keywarden init', () => {
  it('creates the directory 0700, keystore.db and unseal.key 0600, and warns about development mode', async () => {
    const cwd = await tempDir();
    const r = await cli(['init'], { cwd });
    expect(r.code).toBe(0);
    const dir = path.join(cwd, '.keywarden');
    expect(await mode(dir)).toBe(0o700);
    expect(await mode(path.join(dir, 'keystore.db'))).toBe(0o600);
    expect(await mode(path.join(dir, 'unseal.key'))).toBe(0o600);
    const keyText = await readFile(path.join(dir, 'unseal.key'), 'utf8');
    expect(keyText).toMatch(/^keywarden-unseal-key:v1:[A-Za-z0-9_-]{43}\n$/);
    expect(decodeUnsealKey(keyText)).toHaveLength(32);
    expect(r.stdout).toHaveLength(0);
    expect(r.stderr).toContain('DEVELOPMENT MODE');
    expect(r.stderr).toMatch(/split knowledge/);
    expect(r.stderr).toMatch(/HSM\/TPM/);
    // The unseal key itself is never echoed.
    expect(r.stderr).not.toContain(keyText.trim());
  });

  it('refuses to initialize a directory that already has a key store, leaving it as it was', async () => {
    const cwd = await tempDir();
    expect((await cli(['init'], { cwd })).code).toBe(0);
    const before = await readFile(path.join(cwd, '.keywarden', 'unseal.key'), 'utf8');
    const r = await cli(['init'], { cwd });
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toBe('keywarden: .keywarden already has a key store');
    expect(await readFile(path.join(cwd, '.keywarden', 'unseal.key'), 'utf8')).toBe(before);
  });

  it('refuses to overwrite an existing unseal key file and creates no key store', async () => {
    const cwd = await tempDir();
    await writeFile(path.join(cwd, 'my.key'), 'precious');
    const r = await cli(['init', '--unseal-key-file', 'my.key'], { cwd });
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toBe('keywarden: unseal key file my.key already exists; refusing to overwrite it');
    expect(await readFile(path.join(cwd, 'my.key'), 'utf8')).toBe('precious');
    expect(existsSync(path.join(cwd, '.keywarden', 'keystore.db'))).toBe(false);
  });

  it('writes the unseal key to --unseal-key-file (0600) and none into the directory', async () => {
    const cwd = await tempDir();
    await mkdir(path.join(cwd, 'secrets'));
    const r = await cli(['init', '--dir', 'store', '--unseal-key-file', 'secrets/kw.key'], { cwd });
    expect(r.code).toBe(0);
    expect(await mode(path.join(cwd, 'secrets', 'kw.key'))).toBe(0o600);
    expect(existsSync(path.join(cwd, 'store', 'unseal.key'))).toBe(false);
    expect(existsSync(path.join(cwd, 'store', 'keystore.db'))).toBe(true);
    // Opening needs the same option.
    expect((await cli(['key', 'create', 'k', '--dir', 'store'], { cwd })).code).toBe(1);
    expect(
      (await cli(['key', 'create', 'k', '--dir', 'store', '--unseal-key-file', 'secrets/kw.key'], { cwd })).code,
    ).toBe(0);
  });

  it('--print-unseal-key prints the key once on stdout and writes no key file', async () => {
    const cwd = await tempDir();
    const r = await cli(['init', '--print-unseal-key'], { cwd });
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^keywarden-unseal-key:v1:[A-Za-z0-9_-]{43}\n$/);
    expect(existsSync(path.join(cwd, '.keywarden', 'unseal.key'))).toBe(false);
    expect(r.stderr).toContain('KEYWARDEN_UNSEAL_KEY');
    expect(r.stderr).not.toContain(r.out.trim());
  });

  it('--print-unseal-key with --unseal-key-file is a usage error (exit 2)', async () => {
    const cwd = await tempDir();
    const r = await cli(['init', '--print-unseal-key', '--unseal-key-file', 'x.key'], { cwd });
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toContain('cannot be used together');
    expect(existsSync(path.join(cwd, '.keywarden'))).toBe(false);
  });

  it('uses KEYWARDEN_DIR when --dir is not given, and --dir over KEYWARDEN_DIR', async () => {
    const cwd = await tempDir();
    expect((await cli(['init'], { cwd, env: { KEYWARDEN_DIR: 'from-env' } })).code).toBe(0);
    expect(existsSync(path.join(cwd, 'from-env', 'keystore.db'))).toBe(true);
    expect((await cli(['init', '--dir', 'from-flag'], { cwd, env: { KEYWARDEN_DIR: 'from-env' } })).code).toBe(0);
    expect(existsSync(path.join(cwd, 'from-flag', 'keystore.db'))).toBe(true);
  });
});

describe('opening a key store', () => {
  it('says how to create one when the directory has none', async () => {
    const cwd = await tempDir();
    for (const argv of [
      ['key', 'list'],
      ['key', 'create', 'k'],
      ['encrypt', '--key', 'k'],
      ['decrypt', '--key', 'k'],
      ['datakey', 'k'],
    ]) {
      const r = await cli(argv, { cwd });
      expect(r.code).toBe(1);
      expect(oneLine(r.stderr)).toBe('keywarden: no key store in .keywarden (run `keywarden init`)');
    }
  });
});

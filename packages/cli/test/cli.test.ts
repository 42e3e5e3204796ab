import { describe, expect, it } from 'vitest';
import { cli, initialized, oneLine, tempDir } from './helpers.js';

const COMMANDS = [
  [],
  ['init'],
  ['key'],
  ['key', 'create'],
  ['key', 'list'],
  ['key', 'show'],
  ['key', 'rotate'],
  ['encrypt'],
  ['decrypt'],
  ['datakey'],
  ['demo'],
];

describe('usage', () => {
  it.each(COMMANDS.map((c) => [c.join(' ') || '(program)', c]))(
    '%s --help prints usage on stdout and exits 0',
    async (_, argv) => {
      const cwd = await tempDir();
      const r = await cli([...(argv as string[]), '--help'], { cwd });
      expect(r.code).toBe(0);
      expect(r.out).toMatch(/^Usage: keywarden/);
      expect(r.stderr).toBe('');
    },
  );

  it('`help COMMAND` works too', async () => {
    const r = await cli(['help', 'decrypt'], { cwd: await tempDir() });
    expect(r.code).toBe(0);
    expect(r.out).toContain('INCOMPLETE');
  });

  it('--help documents the global options and the decrypt guarantees', async () => {
    const cwd = await tempDir();
    const top = (await cli(['--help'], { cwd })).out;
    for (const s of ['--dir', '--debug', '--unseal-key-file', 'init', 'key', 'encrypt', 'decrypt', 'datakey', 'demo']) {
      expect(top).toContain(s);
    }
    const dec = (await cli(['decrypt', '--help'], { cwd })).out;
    expect(dec).toContain('renamed over');
    expect(dec).toContain('pipefail');
  });

  it('--version prints the package version', async () => {
    const r = await cli(['--version'], { cwd: await tempDir() });
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/^\d+\.\d+\.\d+/);
  });

  it.each([
    [['frobnicate'], /^keywarden: unknown command 'frobnicate'/],
    [['encrypt', '--key', 'k', '--nope'], /^keywarden: unknown option '--nope'/],
    [['key', 'create'], /^keywarden: missing required argument 'name'/],
    [['key', 'show'], /^keywarden: missing required argument 'name'/],
    [['datakey'], /^keywarden: missing required argument 'name'/],
    [['encrypt', '--key'], /^keywarden: option '-k, --key <name>' argument missing/],
    [['key', 'list', 'extra'], /^keywarden: too many arguments/],
  ])('%j is a usage error: exit 2, one line', async (argv, message) => {
    const r = await cli(argv, { cwd: await tempDir() });
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toMatch(message);
    expect(r.stdout).toHaveLength(0);
  });

  it('a suggestion stays on the same line', async () => {
    const r = await cli(['encrpyt'], { cwd: await tempDir() });
    expect(r.code).toBe(2);
    expect(oneLine(r.stderr)).toContain('Did you mean encrypt?');
  });

  it('no command, or a command group alone, prints help on stderr and exits 2', async () => {
    for (const argv of [[], ['key']]) {
      const r = await cli(argv, { cwd: await tempDir() });
      expect(r.code).toBe(2);
      expect(r.stderr).toContain('Usage: keywarden');
      expect(r.stdout).toHaveLength(0);
    }
  });

  it('global options work before and after the command', async () => {
    const cwd = await tempDir();
    expect((await cli(['--dir', 'a', 'init'], { cwd })).code).toBe(0);
    expect((await cli(['init', '--dir', 'b'], { cwd })).code).toBe(0);
    expect((await cli(['-d', 'a', 'key', 'list'], { cwd })).code).toBe(0);
    expect((await cli(['key', 'list', '--dir', 'b'], { cwd })).code).toBe(0);
  });
});

describe('errors', () => {
  it('are one line without a stack; --debug adds the stack', async () => {
    const cwd = await initialized();
    const plain = await cli(['key', 'show', 'nope'], { cwd });
    expect(plain.code).toBe(1);
    expect(oneLine(plain.stderr)).toBe('keywarden: keystore: no key named "nope"');
    expect(plain.stderr).not.toMatch(/\n\s+at /);

    const debug = await cli(['key', 'show', 'nope', '--debug'], { cwd });
    expect(debug.code).toBe(1);
    const lines = debug.stderr.split('\n');
    expect(lines[0]).toBe('keywarden: keystore: no key named "nope"');
    expect(debug.stderr).toMatch(/KeyNotFoundError/);
    expect(debug.stderr).toMatch(/\n\s+at /);
  });

  it('a message that already names the Keywarden component is not prefixed twice', async () => {
    const cwd = await initialized();
    const r = await cli(['key', 'create', 'bad name!'], { cwd });
    expect(r.code).toBe(1);
    expect(oneLine(r.stderr)).toMatch(/^keywarden: key names are 1\.\.128 characters/);
    expect(r.stderr).not.toContain('keywarden: keywarden:');
  });
});

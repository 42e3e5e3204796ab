/**
 * better-sqlite3 installed without its native build (pnpm's unapproved build scripts, npm's
 * --ignore-scripts): opening a store is a NativeAddonError naming the package, the cause and the
 * fix, and no empty database file is left behind. The real package is laid out in a scratch
 * node_modules without its build/ folder, and the built store package is loaded in a child process.
 */
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const PACKAGE_DIR = fileURLToPath(new URL('..', import.meta.url));
const CORE_DIR = fileURLToPath(new URL('../../core', import.meta.url));

describe('a missing better-sqlite3 native addon', () => {
  let dir: string;

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'kw-addon-'));
    const nm = join(dir, 'node_modules');
    mkdirSync(join(nm, '@keywarden'), { recursive: true });
    // The store package as built (dist), and core as a link.
    mkdirSync(join(nm, '@keywarden', 'store-sqlite'));
    cpSync(join(PACKAGE_DIR, 'dist'), join(nm, '@keywarden', 'store-sqlite', 'dist'), { recursive: true });
    cpSync(join(PACKAGE_DIR, 'package.json'), join(nm, '@keywarden', 'store-sqlite', 'package.json'));
    symlinkSync(CORE_DIR, join(nm, '@keywarden', 'core'));
    // better-sqlite3 as an install whose build script never ran: its JavaScript, no build/.
    const require = createRequire(join(PACKAGE_DIR, 'package.json'));
    const addonPkg = dirname(realpathSync(require.resolve('better-sqlite3/package.json')));
    mkdirSync(join(nm, 'better-sqlite3'));
    cpSync(join(addonPkg, 'package.json'), join(nm, 'better-sqlite3', 'package.json'));
    cpSync(join(addonPkg, 'lib'), join(nm, 'better-sqlite3', 'lib'), { recursive: true });
    const fromAddon = createRequire(join(addonPkg, 'package.json'));
    const bindings = dirname(realpathSync(fromAddon.resolve('bindings/package.json')));
    symlinkSync(bindings, join(nm, 'bindings'));
    const fromBindings = createRequire(join(bindings, 'package.json'));
    symlinkSync(
      dirname(realpathSync(fromBindings.resolve('file-uri-to-path/package.json'))),
      join(nm, 'file-uri-to-path'),
    );
  });

  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('open() throws NativeAddonError naming better-sqlite3, the cause and the fix, and creates no file', () => {
    const script = `
      import { SqliteKeyStore } from '@keywarden/store-sqlite';
      try {
        SqliteKeyStore.open('keystore.db');
        console.log(JSON.stringify({ opened: true }));
      } catch (err) {
        console.log(JSON.stringify({ name: err.name, code: err.code, message: err.message }));
      }`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { cwd: dir, encoding: 'utf8' });
    expect(r.stderr).toBe('');
    const out = JSON.parse(r.stdout.trim());
    expect(out.code).toBe('KW_NATIVE_ADDON');
    expect(out.name).toBe('NativeAddonError');
    expect(out.message).toMatch(/^keystore: better-sqlite3's native addon is not built/);
    expect(out.message).toMatch(/pnpm approve-builds/);
    expect(out.message).toMatch(/npm rebuild better-sqlite3/);
    expect(out.message.split('\n')).toHaveLength(1);
    expect(existsSync(join(dir, 'keystore.db'))).toBe(false);
  });
});

import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import {
  decodeUnsealKey,
  InvalidInputError,
  Keywarden,
  KeyStoreError,
  RootDestroyedError,
  SoftwareRoot,
} from '@keywarden/core';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  DIR_ENV,
  exists,
  initStoreDir,
  MissingRoot,
  openSealed,
  requireStore,
  resolveStoreLocation,
  sealedRootDocument,
  stagedStorePath,
} from '../src/index.js';

let work: string;
beforeEach(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'kw-ceremony-'));
});
afterEach(async () => {
  await rm(work, { recursive: true, force: true });
});

describe('resolveStoreLocation', () => {
  it('takes the explicit folder first, then $KEYWARDEN_DIR, then ./.keywarden, against cwd', () => {
    const env = { [DIR_ENV]: 'from-env' };
    expect(resolveStoreLocation({ cwd: work, env }, 'explicit').dir).toBe(path.join(work, 'explicit'));
    expect(resolveStoreLocation({ cwd: work, env }).dir).toBe(path.join(work, 'from-env'));
    const loc = resolveStoreLocation({ cwd: work, env: { [DIR_ENV]: '' } });
    expect(loc.dir).toBe(path.join(work, '.keywarden'));
    expect(loc.dbPath).toBe(path.join(work, '.keywarden', 'keystore.db'));
    expect(loc.defaultUnsealKeyPath).toBe(path.join(work, '.keywarden', 'unseal.key'));
    expect(loc.display).toBe('.keywarden');
    expect(stagedStorePath(loc)).toBe(`${loc.dbPath}.staged`);
  });

  it('shows a folder outside the working directory by its absolute path', () => {
    expect(resolveStoreLocation({ cwd: work, env: {} }, '/elsewhere/kw').display).toBe('/elsewhere/kw');
  });
});

describe('initStoreDir (development mode)', () => {
  it('creates D 0700, the store and the unseal key file 0600, and a root that the written key unseals', async () => {
    const loc = resolveStoreLocation({ cwd: work, env: {} });
    const r = await initStoreDir(loc, { cwd: work });
    expect(r.unsealKeyPath).toBe(loc.defaultUnsealKeyPath);
    expect((await stat(loc.dir)).mode & 0o777).toBe(0o700);
    expect((await stat(loc.dbPath)).mode & 0o777).toBe(0o600);
    expect((await stat(loc.defaultUnsealKeyPath)).mode & 0o777).toBe(0o600);
    expect((await sealedRootDocument(loc)).rootId).toBe(r.rootId);

    const { store, root } = await openSealed(loc);
    const { readFile } = await import('node:fs/promises');
    const key = decodeUnsealKey(await readFile(loc.defaultUnsealKeyPath, 'utf8'));
    await root.unseal(key);
    const kw = new Keywarden({ store, root, ownsStore: true, ownsRoot: true });
    await kw.createKey('k');
    const context = { purpose: 'test' };
    const env = await kw.encrypt(new TextEncoder().encode('hello'), { key: 'k', context });
    expect(new TextDecoder().decode(await kw.decrypt(env, { key: 'k', context }))).toBe('hello');
    await kw.close();
  });

  it('returns the key text instead of writing a file with printUnsealKey, and refuses a second init', async () => {
    const loc = resolveStoreLocation({ cwd: work, env: {} });
    const r = await initStoreDir(loc, { cwd: work, printUnsealKey: true });
    expect(r.unsealKeyPath).toBeUndefined();
    expect(decodeUnsealKey(r.unsealKeyText as string)).toHaveLength(32);
    expect(await exists(loc.defaultUnsealKeyPath)).toBe(false);
    await expect(initStoreDir(loc, { cwd: work })).rejects.toThrow(KeyStoreError);
    await expect(initStoreDir(loc, { cwd: work })).rejects.toThrow('.keywarden already has a key store');
  });

  it('refuses to overwrite an existing unseal key file and leaves no store behind', async () => {
    const loc = resolveStoreLocation({ cwd: work, env: {} });
    await writeFile(path.join(work, 'mine.key'), 'keep me\n');
    await expect(initStoreDir(loc, { cwd: work, unsealKeyFile: 'mine.key' })).rejects.toThrow(
      'unseal key file mine.key already exists; refusing to overwrite it',
    );
    expect(await exists(loc.dbPath)).toBe(false);
  });

  it('refuses printUnsealKey together with unsealKeyFile (InvalidInputError)', async () => {
    const loc = resolveStoreLocation({ cwd: work, env: {} });
    await expect(initStoreDir(loc, { cwd: work, printUnsealKey: true, unsealKeyFile: 'k' })).rejects.toThrow(
      InvalidInputError,
    );
  });
});

describe('opening', () => {
  it('requireStore: a folder without a store is a KeyStoreError naming the folder', async () => {
    const loc = resolveStoreLocation({ cwd: work, env: {} }, 'nothing-here');
    await expect(requireStore(loc)).rejects.toThrow(KeyStoreError);
    await expect(openSealed(loc)).rejects.toThrow('no key store in nothing-here (run `keywarden init`)');
  });

  it('openSealed gives the store and its software root, sealed', async () => {
    const loc = resolveStoreLocation({ cwd: work, env: {} });
    await initStoreDir(loc, { cwd: work });
    const { store, root } = await openSealed(loc, 'read');
    expect(root).toBeInstanceOf(SoftwareRoot);
    expect(root.isSealed()).toBe(true);
    await root.close();
    await store.close();
  });

  it('MissingRoot refuses to wrap and to unwrap (RootDestroyedError), never a no-op', async () => {
    const r = new MissingRoot();
    expect(r.describe().id).toBe('none');
    await expect(r.wrapKey()).rejects.toThrow(RootDestroyedError);
    await expect(r.unwrapKey()).rejects.toThrow(RootDestroyedError);
    expect(new MissingRoot(true).interrupted).toBe(true);
  });
});

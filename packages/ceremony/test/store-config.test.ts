/**
 * D/store.json (layout.ts): the folder's note of a store kept in PostgreSQL. Only the kind and the
 * schema are accepted — a connection string or a password in it is refused as a damaged folder,
 * never read — and a folder that has one refuses every init. No PostgreSQL is needed here (the
 * PostgreSQL side: packages/cli/test/folder-postgres.test.ts).
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { KeyStoreError } from '@keywarden/core';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  folderStoreKind,
  initPostgresStoreDir,
  initSplitStoreDir,
  initStoreDir,
  postgresPendingInitOf,
  readFolderStoreConfig,
  requireStore,
  resolveStoreLocation,
  STORE_CONFIG_FILE,
  type StoreLocation,
} from '../src/index.js';

let work: string;
let loc: StoreLocation;
beforeEach(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'kw-store-config-'));
  loc = resolveStoreLocation({ cwd: work, env: {} });
  await mkdir(loc.dir, { mode: 0o700 });
});
afterEach(async () => {
  await rm(work, { recursive: true, force: true });
});

const writeConfig = (value: unknown, file = STORE_CONFIG_FILE) =>
  writeFile(path.join(loc.dir, file), typeof value === 'string' ? value : JSON.stringify(value), { mode: 0o600 });

describe('D/store.json', () => {
  it('absent: the store is D/keystore.db (kind sqlite), and a folder without it has no store', async () => {
    expect(await readFolderStoreConfig(loc)).toBeUndefined();
    expect(await folderStoreKind(loc)).toBe('sqlite');
    await expect(requireStore(loc)).rejects.toThrow('no key store in .keywarden');
  });

  it('names a PostgreSQL schema: the folder has a store (kind postgres)', async () => {
    await writeConfig({ format: 1, kind: 'postgres', schema: 'payments' });
    expect(await readFolderStoreConfig(loc)).toEqual({ format: 1, kind: 'postgres', schema: 'payments' });
    expect(await folderStoreKind(loc)).toBe('postgres');
    await expect(requireStore(loc)).resolves.toBeUndefined();
  });

  it('a connection string, a password, an unknown kind or a bad schema name is a damaged folder, never used', async () => {
    for (const bad of [
      { format: 1, kind: 'postgres', schema: 'k', url: 'postgres://u:secret@db/k' },
      { format: 1, kind: 'postgres', schema: 'k', password: 'secret' },
      { format: 1, kind: 'mysql', schema: 'k' },
      { format: 1, kind: 'postgres', schema: 'K; DROP SCHEMA public' },
      { format: 2, kind: 'postgres', schema: 'k' },
      { format: 1, kind: 'postgres' },
      '{"format":1,',
      '[]',
    ]) {
      await writeConfig(bad);
      const err = await readFolderStoreConfig(loc).catch((e: unknown) => e);
      expect(KeyStoreError.isInstance(err), JSON.stringify(bad)).toBe(true);
      expect((err as Error).message).toBe('.keywarden/store.json is not a key-store config (damaged folder?)');
      // The message never repeats the file's contents.
      expect((err as Error).message).not.toContain('secret');
    }
  });

  it('a folder with a store in PostgreSQL refuses every init (nothing is created in it)', async () => {
    await writeConfig({ format: 1, kind: 'postgres', schema: 'payments' });
    await expect(initStoreDir(loc, { cwd: work })).rejects.toThrow('.keywarden already has a key store');
    await expect(initSplitStoreDir(loc, { cwd: work, shares: 3, threshold: 2 })).rejects.toThrow(
      '.keywarden already has a key store',
    );
    await expect(initPostgresStoreDir(loc, { cwd: work, schema: 'other' })).rejects.toThrow(
      '.keywarden already has a key store',
    );
  });

  it('an init on PostgreSQL left unfinished is seen by its staged config', async () => {
    expect(await postgresPendingInitOf(loc)).toBeUndefined();
    await writeConfig(
      { format: 1, kind: 'postgres', schema: 'payments', rootId: 'root_x' },
      `${STORE_CONFIG_FILE}.staged`,
    );
    expect(await postgresPendingInitOf(loc)).toEqual({ schema: 'payments' });
  });
});

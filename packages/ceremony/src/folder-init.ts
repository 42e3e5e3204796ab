/**
 * `keywarden init` on a folder's own SQLite file, in development mode or with a device root, built
 * as the split-knowledge init is (split.ts): the store is made whole as D/keystore.db.staged and
 * becomes D/keystore.db by one rename (fsync of D). A process killed at any instant leaves either
 * the folder's whole store or remains that the next init (or `init --resume` / `--abort`) undoes
 * (staged-remains.ts) — never a D/keystore.db without its root, nor an unseal key file that
 * blocks the next init while opening nothing.
 *
 * Development mode: the staged store, its root sealed under a fresh unseal key (`init:staged`);
 * the key file (written, fsynced: `init:key-written`); the rename (`init:activated`). So a store
 * never exists without the key that opens it, and a key file is removed only by an undo that
 * checked it opens the staged root.
 *
 * Device root: the staged store with the root made in the device (`init:device-root-made`);
 * D/root.uri (temporary file, fsync, rename: `init:uri-written`); the rename (`init:activated`).
 * The device keeps the object of an init killed before the rename (the undo's notice names it).
 */
import { randomFillSync } from 'node:crypto';
import { chmod, rename, rm } from 'node:fs/promises';
import * as path from 'node:path';
import {
  encodeUnsealKey,
  InvalidInputError,
  KeyStoreError,
  openRoot,
  type RootDescription,
  SoftwareRoot,
  UNSEAL_KEY_BYTES,
  wipe,
} from '@keywarden/core';
import { SqliteKeyStore } from '@keywarden/store-sqlite';
import { fsyncPath } from './_files.js';
import {
  checkDeviceRootUri,
  type DeviceInitOptions,
  type DeviceInitResult,
  displayPath,
  exists,
  type InitOptions,
  type InitResult,
  makeInitFolder,
  refuseExistingStore,
  refusePendingPostgresInit,
  removeStoreFiles,
  ROOT_URI_FILE,
  type StoreLocation,
  stagedStorePath,
  writeSecretFile,
} from './layout.js';
import { clearAbandonedInit, renameStagedStore } from './split.js';

/**
 * Create D (0700), a new key store, and a software root sealed under a fresh 32-byte unseal key
 * from node:crypto. Refuses when D already has a key store or the unseal key file exists (after
 * undoing an earlier init's remains). On failure nothing is left behind: neither a store without
 * a key nor a key without a store.
 */
export async function initStoreDir(loc: StoreLocation, options: InitOptions = {}): Promise<InitResult> {
  const cwd = options.cwd ?? process.cwd();
  if (options.printUnsealKey && options.unsealKeyFile !== undefined) {
    throw new InvalidInputError('init: printUnsealKey and unsealKeyFile cannot be used together');
  }
  await refuseExistingStore(loc);
  await refusePendingPostgresInit(loc);
  const keyPath = options.printUnsealKey
    ? undefined
    : options.unsealKeyFile !== undefined
      ? path.resolve(cwd, options.unsealKeyFile)
      : loc.defaultUnsealKeyPath;
  await makeInitFolder(loc);
  // An earlier init's remains are undone, with its key file when it lies where this one goes.
  await clearAbandonedInit(loc, { ...options, cwd }, keyPath);
  if (keyPath !== undefined && (await exists(keyPath))) {
    throw new KeyStoreError(`unseal key file ${displayPath(keyPath, cwd)} already exists; refusing to overwrite it`);
  }
  const stagedPath = stagedStorePath(loc);
  const unsealKey = randomFillSync(new Uint8Array(UNSEAL_KEY_BYTES));
  let wroteKeyFile = false;
  try {
    const store = SqliteKeyStore.open(stagedPath);
    let rootId: string;
    try {
      const root = await SoftwareRoot.initialize(store, { unsealKey });
      rootId = root.describe().id;
      await root.close();
    } finally {
      await store.close();
    }
    await chmod(stagedPath, 0o600);
    options.onStep?.('init:staged');
    const text = encodeUnsealKey(unsealKey);
    if (keyPath !== undefined) {
      await writeSecretFile(keyPath, `${text}\n`);
      wroteKeyFile = true;
      options.onStep?.('init:key-written');
    }
    await renameStagedStore(loc, options);
    return {
      rootId,
      ...(keyPath !== undefined ? { unsealKeyPath: keyPath } : {}),
      ...(options.printUnsealKey ? { unsealKeyText: text } : {}),
    };
  } catch (err) {
    if (!(await exists(loc.dbPath))) {
      await removeStoreFiles(stagedPath);
      if (wroteKeyFile && keyPath !== undefined) await rm(keyPath, { force: true }).catch(() => {});
    }
    throw err;
  } finally {
    wipe(unsealKey);
  }
}

/**
 * Create D (0700), a new key store, and a root in the device the URI names (core's openRoot with
 * `create`; the backend must be registered), and record the URI in D/root.uri. Refuses when D has a
 * key store, and a URI that carries the PIN itself (`pin-value`: D/root.uri is not a secret's
 * place). On failure no store and no root.uri are left behind (the device may keep an orphan
 * object: the backend's create says what it made).
 */
export async function initDeviceStoreDir(loc: StoreLocation, options: DeviceInitOptions): Promise<DeviceInitResult> {
  checkDeviceRootUri(options.uri);
  const cwd = options.cwd ?? process.cwd();
  await refuseExistingStore(loc);
  await refusePendingPostgresInit(loc);
  await makeInitFolder(loc);
  await clearAbandonedInit(loc, { ...options, cwd });
  const stagedPath = stagedStorePath(loc);
  const uriPath = path.join(loc.dir, ROOT_URI_FILE);
  const tmp = `${uriPath}.tmp`;
  try {
    const store = SqliteKeyStore.open(stagedPath);
    let description: RootDescription;
    try {
      const root = await openRoot(options.uri, {
        store,
        create: true,
        ...(options.secret ? { secret: options.secret } : {}),
        ...(options.env ? { env: options.env } : {}),
      });
      try {
        description = root.describe();
      } finally {
        await root.close();
      }
    } finally {
      await store.close();
    }
    await chmod(stagedPath, 0o600);
    options.onStep?.('init:device-root-made');
    // The URI before the store is in place: a folder with a store and no root.uri is a software root's.
    await rm(tmp, { force: true });
    await writeSecretFile(tmp, `${options.uri}\n`);
    await rename(tmp, uriPath);
    fsyncPath(loc.dir);
    options.onStep?.('init:uri-written');
    await renameStagedStore(loc, options);
    return { rootId: description.id, description, rootUriPath: uriPath };
  } catch (err) {
    if (!(await exists(loc.dbPath))) {
      await removeStoreFiles(stagedPath);
      await rm(uriPath, { force: true }).catch(() => {});
      await rm(tmp, { force: true }).catch(() => {});
    }
    throw err;
  }
}

/**
 * What an init on a folder's own SQLite file leaves when it is killed before its store is
 * activated, and how the next init (or `init --resume` / `init --abort`) undoes it.
 *
 * Every init on a folder builds its store as D/keystore.db.staged and renames it to D/keystore.db
 * only when it is whole (folder-init.ts, split.ts, device-split.ts). A staged store that recorded
 * no ceremony (split knowledge records one before it hands anything out) is a remains: the store
 * of a development-mode or device-root init, or one killed before it recorded anything. Undoing
 * it removes:
 *  - the unseal key file a development-mode init wrote: the file at the path the next init is
 *    about to write (else D/unseal.key), when it opens the staged root — so a key that opens no
 *    store never blocks that init, and a file that does not open that root is never removed;
 *  - D/root.uri, which names the device root of a store that never became the folder's;
 *  - the staged store itself.
 * A device keeps the root object such an init made in it: the notes say so, naming the root.
 */
import { readFile, rm } from 'node:fs/promises';
import * as path from 'node:path';
import { decodeUnsealKey, type KeyStore, ROOT_META_NAME, SoftwareRoot, wipe } from '@keywarden/core';
import { fsyncPath } from './_files.js';
import {
  displayPath,
  exists,
  removeStoreFiles,
  ROOT_URI_FILE,
  STORE_CONFIG_FILE,
  type StoreLocation,
  stagedStorePath,
} from './layout.js';
import { openStagedStore } from './pending.js';

/**
 * Undo the remains of an init in D (see above); the caller has checked that D/keystore.db.staged
 * exists and records no ceremony. `keyFile`: where the killed init may have written its unseal key
 * (default D/unseal.key). Returns what was done or is left, one line each.
 */
export async function undoStagedRemains(
  loc: StoreLocation,
  cwd: string,
  keyFile: string = loc.defaultUnsealKeyPath,
): Promise<string[]> {
  const stagedPath = stagedStorePath(loc);
  const notes: string[] = [];
  let store: KeyStore | undefined;
  try {
    store = await openStagedStore(stagedPath);
  } catch {
    // Unreadable remains (a kill inside SQLite's own first writes): nothing in them to undo.
    store = undefined;
  }
  if (store) {
    try {
      if (await unsealsRoot(store, keyFile)) {
        await rm(keyFile, { force: true });
        notes.push(`removed ${displayPath(keyFile, cwd)} (the unseal key of that init's root)`);
      }
      const device = await deviceRootOf(store);
      if (device) {
        notes.push(
          `the ${device.kind} device may keep the root object that init made${device.id ? ` (root ${device.id})` : ''}: it is unused; remove it with the device's own tools to reuse its label`,
        );
      }
    } catch {
      // Remains that cannot be read are removed all the same.
    } finally {
      await store.close().catch(() => {});
    }
  }
  await removeStoreFiles(stagedPath);
  // root.uri names the folder's root once the folder has a store (its own file, or a schema).
  if (!(await exists(loc.dbPath)) && !(await exists(path.join(loc.dir, STORE_CONFIG_FILE)))) {
    await rm(path.join(loc.dir, ROOT_URI_FILE), { force: true });
  }
  fsyncPath(loc.dir);
  return notes;
}

/** Whether `file` holds the unseal key that opens the store's software root (an init's own key file). */
export async function unsealsRoot(store: KeyStore, file: string): Promise<boolean> {
  let text: string;
  try {
    text = (await readFile(file, 'utf8')).trim();
  } catch {
    return false;
  }
  let key: Uint8Array | undefined;
  let root: SoftwareRoot | undefined;
  try {
    root = await SoftwareRoot.load(store);
    key = decodeUnsealKey(text);
    await root.unseal(key);
    return true;
  } catch {
    return false;
  } finally {
    if (key) wipe(key);
    await root?.close();
  }
}

/**
 * The device root a store records ({ kind: "pkcs11" | "tpm", id? }), or undefined (a software root,
 * none, or a record that cannot be read): a TPM root's record, or a root record of another kind
 * than "software" (a PKCS#11 root keeps its record under the software root's name).
 */
export async function deviceRootOf(store: KeyStore): Promise<{ kind: string; id?: string } | undefined> {
  const tpm = await store.getMeta('tpm-root');
  const bytes = tpm ?? (await store.getMeta(ROOT_META_NAME));
  if (!bytes) return undefined;
  let record: { kind?: unknown; rootId?: unknown } | null;
  try {
    record = JSON.parse(Buffer.from(bytes).toString('utf8')) as { kind?: unknown; rootId?: unknown } | null;
  } catch {
    return tpm ? { kind: 'tpm' } : undefined;
  }
  const kind = tpm ? 'tpm' : record?.kind;
  if (typeof kind !== 'string' || kind === 'software' || !/^[a-z0-9]{1,16}$/.test(kind)) return undefined;
  const id = record?.rootId;
  return typeof id === 'string' && /^[A-Za-z0-9_-]{1,80}$/.test(id) ? { kind, id } : { kind };
}

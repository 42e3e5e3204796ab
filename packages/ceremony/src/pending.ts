/**
 * An unfinished split-knowledge ceremony in a store folder (docs/split-knowledge.md §7.1): an init
 * whose store is still D/keystore.db.staged, or a rekey recorded as pending inside D/keystore.db.
 * Reading only: nothing here creates, initializes or migrates a key store (a staged init store
 * without a schema gets its empty one: `openStagedStore`).
 */
import { stat } from 'node:fs/promises';
import {
  checkShareAgainstStore,
  type ParsedShare,
  type PendingCeremony,
  pendingCeremonyState,
  readPendingCeremony,
} from '@keywarden/split-knowledge';
import { SqliteKeyStore } from '@keywarden/store-sqlite';
import { readDevicePendingInit } from './device-split.js';
import { exists, folderStoreKind, openFolderStore, type StoreLocation, stagedStorePath } from './layout.js';

/**
 * The pending record of a staged init store, or undefined when the init was killed before it
 * recorded anything (an empty file, or a store without the record).
 */
export async function readStagedPending(stagedPath: string): Promise<PendingCeremony | undefined> {
  // Killed between creating the file and writing its schema: an empty file, nothing recorded.
  if ((await stat(stagedPath)).size === 0 && !(await exists(`${stagedPath}-wal`))) return undefined;
  const store = await openStagedStore(stagedPath);
  try {
    // A split init's record, or a device init's (its PIN / auth value split: device-split.ts).
    return (await readPendingCeremony(store)) ?? (await readDevicePendingInit(store));
  } finally {
    await store.close();
  }
}

/**
 * Open the staged init store. It is the ceremony's own scratch file, never a user's key store, so
 * it is opened with `create`: a kill inside its creation leaves it without a schema (zero bytes,
 * perhaps with a write-ahead log that never committed), and completing the empty schema is how
 * such remains read as "nothing recorded" instead of as a damaged key store. This is the one write
 * a status report may make, and only to the staged file.
 */
export function openStagedStore(stagedPath: string): Promise<SqliteKeyStore> {
  return Promise.resolve(SqliteKeyStore.open(stagedPath));
}

/** The unfinished ceremony in D, if any: what a status report says about it. */
export async function pendingCeremonyOf(
  loc: StoreLocation,
): Promise<{ kind: 'init' | 'rekey'; pending: PendingCeremony } | undefined> {
  const stagedPath = stagedStorePath(loc);
  if (!(await exists(loc.dbPath)) && (await exists(stagedPath))) {
    const pending = await readStagedPending(stagedPath);
    return pending ? { kind: 'init', pending } : undefined;
  }
  const onPostgres = (await folderStoreKind(loc)) === 'postgres';
  if (!onPostgres && !(await exists(loc.dbPath))) return undefined;
  // A status report reads only: never create, initialize or migrate the file.
  const store = onPostgres ? await openFolderStore(loc, 'read') : SqliteKeyStore.open(loc.dbPath, { readonly: true });
  try {
    const st = await pendingCeremonyState(store);
    return st.state === 'pending' ? { kind: st.pending.kind, pending: st.pending } : undefined;
  } finally {
    await store.close();
  }
}

/**
 * Check one share against D's key store, or against the staged store of an init waiting for its
 * test quorum (split-knowledge's checkShareAgainstStore: the share set's N and M, and the
 * commitment recorded for its index). Undefined when D has neither; the key store is opened
 * read-only. A share that is not the one handed out is a ShareError.
 */
export async function checkShareAgainstFolder(
  loc: StoreLocation,
  share: string | ParsedShare,
): Promise<Awaited<ReturnType<typeof checkShareAgainstStore>> | undefined> {
  const onPostgres = (await folderStoreKind(loc)) === 'postgres';
  const file = (await exists(loc.dbPath)) ? loc.dbPath : stagedStorePath(loc);
  if (!onPostgres && !(await exists(file))) return undefined;
  const store = onPostgres
    ? await openFolderStore(loc, 'read')
    : SqliteKeyStore.open(file, file === loc.dbPath ? { readonly: true } : { create: false });
  try {
    return await checkShareAgainstStore(store, share);
  } finally {
    await store.close();
  }
}

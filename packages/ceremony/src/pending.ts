/**
 * An unfinished split-knowledge ceremony in a store folder (docs/split-knowledge.md §7.1): an init
 * whose store is still D/keystore.db.staged, or a rekey recorded as pending inside D/keystore.db.
 * Reading only: nothing here creates, initializes or migrates a key store (a staged init store
 * without a schema gets its empty one: `openStagedStore`).
 */
import { stat } from 'node:fs/promises';
import { type PendingCeremony, pendingCeremonyState, readPendingCeremony } from '@keywarden/split-knowledge';
import { SqliteKeyStore } from '@keywarden/store-sqlite';
import { exists, type StoreLocation, stagedStorePath } from './layout.js';

/**
 * The pending record of a staged init store, or undefined when the init was killed before it
 * recorded anything (an empty file, or a store without the record).
 */
export async function readStagedPending(stagedPath: string): Promise<PendingCeremony | undefined> {
  // Killed between creating the file and writing its schema: an empty file, nothing recorded.
  if ((await stat(stagedPath)).size === 0 && !(await exists(`${stagedPath}-wal`))) return undefined;
  const store = await openStagedStore(stagedPath);
  try {
    return await readPendingCeremony(store);
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
  if (!(await exists(loc.dbPath))) return undefined;
  // A status report reads only: never create, initialize or migrate the file.
  const store = await SqliteKeyStore.open(loc.dbPath, { readonly: true });
  try {
    const st = await pendingCeremonyState(store);
    return st.state === 'pending' ? { kind: st.pending.kind, pending: st.pending } : undefined;
  } finally {
    await store.close();
  }
}

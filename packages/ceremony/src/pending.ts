/**
 * An unfinished split-knowledge ceremony in a store folder (docs/split-knowledge.md §7.1): an init
 * whose store is still D/keystore.db.staged, or a rekey recorded as pending inside D/keystore.db.
 * Reading only: nothing here creates, initializes or migrates a file.
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
  const store = await SqliteKeyStore.open(stagedPath, { create: false });
  try {
    return await readPendingCeremony(store);
  } finally {
    await store.close();
  }
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

/**
 * Read-modify-write of one pki meta record (key pair, certificate book, CA book) without lost
 * updates when several processes write the same record (docs/pki.md §3.1).
 *
 * `change` gets the record's current bytes (undefined: absent) and returns the new bytes, or
 * undefined to write nothing. It is synchronous and may run more than once (a retried
 * transaction or a lost compare-and-swap): it must only compute from its argument, and what the
 * caller keeps from it must be what its LAST call saw. What it throws aborts the update and is
 * rethrown (a precondition that no longer holds on the current record: KeyExistsError,
 * KeyDestroyedError…).
 *
 * - A store with `updateMeta` (SQLite, PostgreSQL, memory): change() runs under the store's lock
 *   on the record (SQLite's write lock; PostgreSQL's advisory lock on the name).
 * - A store with only `swapMeta`: read, change(), compare-and-swap; a lost swap reads again and
 *   re-applies change(), up to SWAP_ATTEMPTS times, then ConflictError.
 * - A store with neither: read then write; one writer per record (the store says so).
 */
import { ConflictError, type KeyStore } from '@keywarden/core';

const SWAP_ATTEMPTS = 16;

export async function updateRecord(
  store: KeyStore,
  name: string,
  change: (current: Uint8Array | undefined) => Uint8Array | undefined,
): Promise<void> {
  if (typeof store.updateMeta === 'function') {
    await store.updateMeta(name, (current) => {
      const next = change(current);
      return next === undefined ? [] : [{ name, value: next }];
    });
    return;
  }
  if (typeof store.swapMeta === 'function') {
    for (let attempt = 0; attempt < SWAP_ATTEMPTS; attempt++) {
      const current = await store.getMeta(name);
      const next = change(current);
      if (next === undefined) return;
      try {
        await store.swapMeta(name, current ?? null, next);
        return;
      } catch (err) {
        if (!(err instanceof ConflictError)) throw err;
      }
    }
    throw new ConflictError(
      `pki: record ${name} kept changing under ${SWAP_ATTEMPTS} concurrent writers; nothing was changed, try again`,
    );
  }
  const next = change(await store.getMeta(name));
  if (next !== undefined) await store.putMeta(name, next);
}

export const encodeJson = (value: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(value));

/**
 * Fleet cache invalidation: a rotation, disable, compromise or destroy committed by any process on
 * the store drops this process's cached KEK versions and primaries (Keywarden.clearCache), so the
 * change is honoured here within the notification delay, or the poll interval when a notification
 * was missed — instead of when the cache entries expire (cache.ttlMs, 5 minutes by default).
 *
 * The whole cache is dropped, not one key's entries: lifecycle changes are rare next to data-key
 * calls, and the next call per key reloads it with one root unwrap.
 */
import type { PostgresKeyStore, WatchOptions } from './postgres-store.js';

/** Anything with Keywarden's clearCache() (a Keywarden, or a DataKeyCache in front of one). */
export interface ClearableCache {
  clearCache(): void;
}

/**
 * Watch `store` and clear every given cache on each change committed by any process. Resolves
 * once listening; returns the function that stops watching (call it before closing them).
 */
export async function invalidateCachesOnChange(
  store: PostgresKeyStore,
  caches: ClearableCache | readonly ClearableCache[],
  options: WatchOptions = {},
): Promise<() => Promise<void>> {
  const list = Array.isArray(caches) ? [...caches] : [caches as ClearableCache];
  return store.watch(() => {
    for (const cache of list) cache.clearCache();
  }, options);
}

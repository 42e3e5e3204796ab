/**
 * Fleet cache invalidation: a rotation, disable, compromise or destroy committed by any process on
 * the store drops this process's cached KEK versions and primaries (Keywarden.clearCache) and the
 * data keys a DataKeyCache holds (DataKeyCache.clear), so the change is honoured here within the
 * notification delay, or the poll interval when a notification was missed — instead of when the
 * cache entries expire (cache.ttlMs, 5 minutes by default; DataKeyCache maxAgeMs).
 *
 * The whole cache is dropped, not one key's entries: lifecycle changes are rare next to data-key
 * calls, and the next call per key reloads it with one root unwrap.
 */
import type { PostgresKeyStore, WatchOptions } from './postgres-store.js';

/** A Keywarden (clearCache) or a DataKeyCache (clear) in front of one. */
export type ClearableCache = { clearCache(): void } | { clear(): void };

/**
 * Watch `store` and clear every given cache on each change committed by any process. Resolves
 * once listening; returns the function that stops watching (call it before closing them). List a
 * DataKeyCache before the Keywarden behind it, or both: each is cleared.
 */
export async function invalidateCachesOnChange(
  store: PostgresKeyStore,
  caches: ClearableCache | readonly ClearableCache[],
  options: WatchOptions = {},
): Promise<() => Promise<void>> {
  const list: ClearableCache[] = Array.isArray(caches) ? [...caches] : [caches as ClearableCache];
  const clears = list.map((cache) => {
    if ('clearCache' in cache && typeof cache.clearCache === 'function') return () => cache.clearCache();
    if ('clear' in cache && typeof cache.clear === 'function') return () => cache.clear();
    throw new TypeError('keystore: invalidateCachesOnChange: each cache needs clearCache() or clear()');
  });
  return store.watch(() => {
    for (const clear of clears) clear();
  }, options);
}

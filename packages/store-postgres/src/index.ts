/**
 * @keywarden/store-postgres — the KeyStore shared by many processes and machines, on PostgreSQL:
 * versioned migrations, compare-and-swap under row locks, change notifications (LISTEN/NOTIFY with
 * a polling fallback) for cache invalidation across a fleet. See README.md and docs/fleet.md.
 */
export {
  type KeyStoreChange,
  type KeyStoreChangeListener,
  PostgresKeyStore,
  type PostgresKeyStoreOptions,
  SCHEMA_VERSION,
  type WatchOptions,
} from './postgres-store.js';
export { type ClearableCache, invalidateCachesOnChange } from './invalidate.js';

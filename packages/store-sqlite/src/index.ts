/**
 * @keywarden/store-sqlite — the embedded default KeyStore: one SQLite file (WAL, synchronous=FULL,
 * one transaction per write, mode 0600). See README.md for durability guarantees.
 */
export {
  SqliteKeyStore,
  SCHEMA_VERSION,
  type SqliteKeyStoreOptions,
  type SqliteStoreSettings,
} from './sqlite-store.js';

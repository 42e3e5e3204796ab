/**
 * @keywarden/testkit: shared conformance suites for Keywarden packages (private, not published).
 * Run a suite from a package's own test file, e.g.
 *   describeKeyStoreConformance('SqliteKeyStore', async () => ({ store: SqliteKeyStore.open(path) }));
 *   describeRootConformance('SoftwareRoot', async () => ({ root, store, secret: unsealKey, reopen }));
 */
export { describeKeyStoreConformance } from './keystore-conformance.js';
export type { KeyStoreFactory, KeyStoreFixture } from './keystore-conformance.js';
export { describeRootConformance } from './root-conformance.js';
export type { PrivateKeyFacts, RootFactory, RootFixture } from './root-conformance.js';
export { inspectSoftwareKeyPair, openSoftwareKeyPair } from './software-key-pairs.js';

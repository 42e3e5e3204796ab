/**
 * @keywarden/ceremony: the key-store folder and its ceremonies as a library. Paths, secrets and
 * options are inputs; nothing here prompts or prints; failures are core's typed errors.
 */
export {
  AGENT_SOCKET_ENV,
  AGENT_SOCKET_FILE,
  DEFAULT_DIR,
  DIR_ENV,
  displayPath,
  exists,
  type InitOptions,
  type InitResult,
  initStoreDir,
  KEYSTORE_FILE,
  MissingRoot,
  openSealed,
  openStoreFile,
  removeStoreFiles,
  requireStore,
  resolveStoreLocation,
  sealedRootDocument,
  SHARES_OUT_DIR,
  type StoreLocation,
  stagedStorePath,
  type Surroundings,
  UNSEAL_KEY_ENV,
  UNSEAL_KEY_FILE,
} from './layout.js';
export { openStagedStore, pendingCeremonyOf, readStagedPending } from './pending.js';

/**
 * keywarden — the command line. `run(argv, io)` is the whole CLI, callable in-process.
 */
export { run, buildProgram, type CliIO } from './cli.js';
export { BY_CODE, describeError, UsageError, EXIT_OK, EXIT_FAILURE, EXIT_USAGE } from './errors.js';
export {
  resolveStoreLocation,
  resolveUnsealSource,
  resolveAgentSocket,
  readUnsealKey,
  openKeywarden,
  openKeyService,
  initStoreDir,
  type KeyService,
  type SocketLocation,
  type StoreLocation,
  type UnsealSource,
} from './store-dir.js';
export { runDemo } from './demo.js';

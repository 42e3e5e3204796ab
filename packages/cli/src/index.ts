/**
 * keywarden — the command line. `run(argv, io)` is the whole CLI, callable in-process.
 */
export { run, buildProgram, type CliIO } from './cli.js';
export { describeError, CliError, UsageError, EXIT_OK, EXIT_FAILURE, EXIT_USAGE } from './errors.js';
export {
  resolveStoreLocation,
  resolveUnsealSource,
  readUnsealKey,
  openKeywarden,
  initStoreDir,
  type StoreLocation,
  type UnsealSource,
} from './store-dir.js';
export { runDemo } from './demo.js';

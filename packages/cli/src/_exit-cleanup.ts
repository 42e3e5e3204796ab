/**
 * Paths to remove if the process ends before the command that created them could: temporary
 * output files that may hold partial plaintext. bin.ts removes them synchronously from its signal
 * handlers and on 'exit', so a SIGHUP, SIGQUIT, SIGALRM… (every catchable terminating signal) or
 * an uncaught exception leaves nothing behind. (SIGKILL cannot be caught: see _streams.ts for how
 * that case is made safe.)
 *
 * This module imports nothing but node:fs: bin.ts loads it before the rest of the CLI.
 */
import { unlinkSync } from 'node:fs';

const paths = new Set<string>();

/** Remove `path` when the process is stopped; call the returned function once it is gone or renamed. */
export function removeOnExit(path: string): () => void {
  paths.add(path);
  return () => {
    paths.delete(path);
  };
}

/** Remove every registered path now (synchronous: safe in a signal handler and on 'exit'). */
export function removeRegisteredSync(): void {
  for (const p of paths) {
    try {
      unlinkSync(p);
    } catch {
      // already gone (renamed into place, or removed by its owner)
    }
    paths.delete(p);
  }
}

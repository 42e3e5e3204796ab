/**
 * What a command may touch of the outside world. `run()` takes it as a parameter so tests drive
 * the CLI in-process with PassThrough streams, a scratch cwd and a private environment; only
 * bin.ts passes the real process streams.
 */
import type { Readable, Writable } from 'node:stream';

export interface CliIO {
  stdin: Readable;
  stdout: Writable;
  stderr: Writable;
  env: NodeJS.ProcessEnv;
  cwd: string;
  /** Aborted on SIGINT/SIGTERM by bin.ts: streaming commands stop and delete their temporary files. */
  signal?: AbortSignal;
}

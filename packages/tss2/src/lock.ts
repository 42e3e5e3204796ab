/**
 * A cross-process advisory lock on one TPM (flock(2) on a lock file, through libc): a TPM without a
 * resource manager (swtpm, /dev/tpm0) has three transient object slots and three session slots for
 * every client together, so clients that load objects at the same time run it out of memory
 * (TPM_RC_OBJECT_MEMORY). Clients that take this lock around each operation — and hold no handle
 * between operations — never meet. The kernel releases the lock when the process exits, however it
 * exits (SIGKILL included), so a crashed holder never blocks the others.
 *
 * Advisory: tpm2-tools and other clients do not take it (retry on TPM_RC_OBJECT_MEMORY covers them).
 */
import { createHash } from 'node:crypto';
import { closeSync, constants, openSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TssUnavailableError } from './errors.js';
import { tss2Native } from './lib.js';

const LOCK_EX = 2;
const LOCK_NB = 4;
const LOCK_UN = 8;

/**
 * The default lock file for a TCTI configuration: `<tmpdir>/keywarden-tpm-<16 hex of
 * SHA-256(tcti)>.lock` (tcti undefined: tpm2-tss's default TPM, "default"). Every process that
 * reaches the TPM through the same TCTI string shares it.
 */
export function defaultLockFile(tcti: string | undefined): string {
  const id = createHash('sha256')
    .update(tcti ?? 'default')
    .digest('hex')
    .slice(0, 16);
  return join(tmpdir(), `keywarden-tpm-${id}.lock`);
}

export interface DeviceLock {
  /** Release the lock (idempotent). */
  release(): void;
}

/**
 * Take the exclusive lock on `file` (created when missing, mode 0666 less the umask), waiting up to
 * `waitMs`: TssUnavailableError when another process still holds it then.
 */
export async function lockDevice(file: string, waitMs: number): Promise<DeviceLock> {
  const n = tss2Native();
  let fd: number;
  try {
    fd = openSync(file, constants.O_RDONLY | constants.O_CREAT, 0o666);
  } catch (err) {
    throw new TssUnavailableError('flock', undefined, `tss2: the TPM lock file ${file} cannot be opened`, {
      cause: err,
    });
  }
  const started = Date.now();
  let delay = 1;
  for (;;) {
    if ((n.flock(fd, LOCK_EX | LOCK_NB) as number) === 0) break;
    if (Date.now() - started >= waitMs) {
      closeSync(fd);
      throw new TssUnavailableError(
        'flock',
        undefined,
        `tss2: the TPM is busy: another process held its lock (${file}) for ${waitMs} ms`,
      );
    }
    await new Promise((r) => setTimeout(r, delay * (0.5 + Math.random())));
    delay = Math.min(25, delay * 1.5);
  }
  let held = true;
  return {
    release() {
      if (!held) return;
      held = false;
      n.flock(fd, LOCK_UN);
      closeSync(fd);
    },
  };
}

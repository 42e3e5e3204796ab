/** File helpers of the ceremonies: fsync, existence without following links, error text. */
import { closeSync, fsyncSync, openSync } from 'node:fs';
import { lstat } from 'node:fs/promises';
import { KeywardenError } from '@keywarden/core';

/** fsync a file (or a directory, so the names created or renamed in it survive a power loss). */
export function fsyncPath(p: string): void {
  const fd = openSync(p, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Whether a path exists, not following a symbolic link at the end. */
export async function lexists(p: string): Promise<boolean> {
  try {
    await lstat(p);
    return true;
  } catch {
    return false;
  }
}

const SYSTEM_ERRORS: Record<string, string> = {
  ENOENT: 'no such file',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EISDIR: 'is a directory',
  ENOTDIR: 'not a directory',
  EEXIST: 'already exists',
  ENOSPC: 'no space left on device',
  EROFS: 'read-only file system',
  EMFILE: 'too many open files',
  ELOOP: 'too many symbolic links',
  ENAMETOOLONG: 'file name too long',
};

/** "no such file", "permission denied"… for a Node system error code, or the code itself. */
export function systemErrorText(err: unknown): string {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (typeof code !== 'string') return 'failed';
  return SYSTEM_ERRORS[code] ?? code;
}

/**
 * A Keywarden error's message, a system error's text, or the message of an error a caller's
 * callback threw (its own words): never a buffer or a secret formatted here.
 */
export function messageOf(err: unknown): string {
  if (KeywardenError.isInstance(err)) return err.message;
  if (typeof (err as NodeJS.ErrnoException | undefined)?.code === 'string') return systemErrorText(err);
  if (err instanceof Error && err.message) return err.message;
  return 'failed';
}

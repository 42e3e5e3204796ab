/**
 * How a failure reaches the user: exactly one line `keywarden: <message>` on stderr and an exit
 * status (0 success, 1 failure, 2 usage). A stack trace only with --debug.
 *
 * One error model: everything the libraries and the commands throw is a core `KeywardenError` with
 * a stable code (its rules already keep key material, plaintext and unseal keys out of messages,
 * and never say which decryption check failed), except `UsageError`: the command line itself is
 * wrong. `BY_CODE` below is the one place that turns a code into an exit status and adds what the
 * command line knows (which command fixes it); a code not in it exits 1 with the library's message.
 * Anything else (a Node system error) gets a short description. Nothing here ever formats a buffer
 * or a secret into text.
 */
import * as path from 'node:path';
import { CommanderError } from 'commander';
import { KeywardenError, type KeywardenErrorCode } from '@keywarden/core';

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;
/** 128 + SIGINT, what shells report for an interrupted command. */
export const EXIT_INTERRUPTED = 130;

/**
 * The command line itself is wrong (conflicting options, malformed --context, bad N and M): exit 2.
 * A command's own non-library outcome that must exit non-zero (`scan` found secrets: exit 1) is a
 * UsageError with its `exitCode`, so the CLI still defines one error class.
 */
export class UsageError extends Error {
  readonly exitCode: number;
  override name = 'UsageError';

  constructor(message: string, options?: { exitCode?: number; cause?: unknown }) {
    super(message, options?.cause !== undefined ? { cause: options.cause } : undefined);
    this.exitCode = options?.exitCode ?? EXIT_USAGE;
  }
}

/** A core error code as the command line reports it: exit status, and text after the message. */
interface CodeReport {
  exitCode: number;
  /** Appended to the library's message: how to fix it from the command line. */
  suffix?: string;
}

/** Core error code → exit status (and message suffix). Codes not listed exit 1, message as is. */
export const BY_CODE: Readonly<Partial<Record<KeywardenErrorCode, CodeReport>>> = {
  // The library says what failed; the CLI says which command fixes it.
  KW_AGENT_UNAVAILABLE: { exitCode: EXIT_FAILURE, suffix: ' (start one with `keywarden agent`)' },
};

export interface ReportedError {
  /** Single line, no trailing newline, without the `keywarden: ` prefix. */
  message: string;
  exitCode: number;
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

/** Turn anything thrown into one line and an exit status. */
export function describeError(err: unknown, cwd: string): ReportedError {
  if (err instanceof CommanderError) {
    return { message: oneLine(err.message.replace(/^error:\s*/i, '')), exitCode: EXIT_USAGE };
  }
  if (err instanceof UsageError) return { message: oneLine(err.message), exitCode: err.exitCode };
  if (KeywardenError.isInstance(err)) {
    const report = BY_CODE[err.code];
    return { message: oneLine(`${err.message}${report?.suffix ?? ''}`), exitCode: report?.exitCode ?? EXIT_FAILURE };
  }
  if (isAbort(err)) return { message: 'interrupted', exitCode: EXIT_INTERRUPTED };
  const sys = err as NodeJS.ErrnoException | undefined;
  if (sys && typeof sys === 'object' && typeof sys.code === 'string') {
    if (sys.code === 'EPIPE' || sys.code === 'ERR_STREAM_DESTROYED') {
      return { message: 'output closed before the command finished (broken pipe)', exitCode: EXIT_FAILURE };
    }
    const what = SYSTEM_ERRORS[sys.code];
    if (what) {
      const where = typeof sys.path === 'string' ? `: ${displayPath(sys.path, cwd)}` : '';
      return { message: `${what}${where}`, exitCode: EXIT_FAILURE };
    }
  }
  if (err instanceof Error && err.message) {
    return { message: oneLine(`unexpected error: ${err.message}`), exitCode: EXIT_FAILURE };
  }
  return { message: 'unexpected error (run again with --debug for details)', exitCode: EXIT_FAILURE };
}

/** "no such file", "permission denied"… for a Node system error code, or the code itself. */
export function systemErrorText(err: unknown): string {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (typeof code !== 'string') return 'failed';
  return SYSTEM_ERRORS[code] ?? code;
}

/** The stack and the chain of causes, for --debug. */
export function debugDetails(err: unknown): string {
  const parts: string[] = [];
  let current: unknown = err;
  for (let depth = 0; current !== undefined && depth < 8; depth++) {
    if (current instanceof Error) parts.push(`${depth === 0 ? '' : 'caused by: '}${current.stack ?? current.message}`);
    else parts.push(`${depth === 0 ? '' : 'caused by: '}${String(current)}`);
    current = current instanceof Error ? current.cause : undefined;
  }
  return parts.join('\n');
}

/** Paths under the working directory are shown relative to it, as the user most likely typed them. */
export function displayPath(p: string, cwd: string): string {
  const rel = path.relative(cwd, p);
  return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel) ? rel : p;
}

function isAbort(err: unknown): boolean {
  return typeof err === 'object' && err !== null && (err as { name?: unknown }).name === 'AbortError';
}

/**
 * One line, without a leading `keywarden: `: core's Keywarden class names itself that way
 * (`keywarden: closed`), and cli.ts prints every message after the same prefix.
 */
function oneLine(s: string): string {
  return s
    .replace(/^\s*keywarden:\s*/, '')
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l.length > 0)
    .join(' ');
}

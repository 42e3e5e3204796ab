/**
 * Jobs of the CLI under a lease (docs/lifecycle.md §Jobs under a lease): `keywarden rewrap` and
 * `keywarden root rotate` take the key store's job lease (core's JobLease) whenever the store
 * offers leases (SQLite, PostgreSQL), renew it in the background while they run, and write their
 * job record only through it (fenced). So:
 *
 * - a second run while one is running is refused at once with a ConflictError (KW_CONFLICT) that
 *   names the holder, like the library's JobLease.acquire — it does not wait;
 * - a run left by a process that was killed is resumed by the next run: a holder that is a process
 *   of THIS machine that no longer runs (its process id is gone, or now belongs to a process started
 *   at another time) is released on its behalf (core's releaseDeadHolder, a compare-and-swap) and
 *   the lease taken at once; a holder on another machine, or one whose liveness cannot be read,
 *   must let its lease expire first (the TTL, 30 s by default; KEYWARDEN_LEASE_TTL_MS).
 *
 * The holder name: `keywarden-cli@HOST/PIDNS#PID.START` — host name, the PID namespace (two
 * containers on one host have separate process ids), the process id and its start time in clock
 * ticks since boot (/proc/PID/stat field 22), so that a reused process id is not taken for the dead
 * holder. Without /proc (not Linux), the name carries no start time and is never judged dead.
 */
import { readFileSync, readlinkSync } from 'node:fs';
import { hostname } from 'node:os';
import { openFolderStore, requireStore, type StoreLocation } from '@keywarden/ceremony';
import {
  ConflictError,
  InvalidInputError,
  JobLease,
  type KeyStore,
  releaseDeadHolder,
  supportsLeases,
} from '@keywarden/core';
import type { CliIO } from '../io.js';
import { print } from '../output.js';

export const LEASE_TTL_ENV = 'KEYWARDEN_LEASE_TTL_MS';
const DEFAULT_TTL_MS = 30_000;

/** The lease of `keywarden rewrap` runs on one key store. */
export const REWRAP_LEASE = 'cli-rewrap';

/**
 * Run `fn` holding the job lease `name` of the folder's key store (`lease` undefined when the store
 * offers none). `what` names the job in messages ("rewrap", "root rotate"). The lease is released
 * and the store connection closed afterwards, also on failure.
 */
export async function withJobLease<T>(
  loc: StoreLocation,
  io: CliIO,
  name: string,
  what: string,
  fn: (lease: JobLease | undefined, store: KeyStore) => Promise<T>,
): Promise<T> {
  const ttlMs = leaseTtl(io.env);
  await requireStore(loc);
  const store = await openFolderStore(loc, 'write');
  try {
    if (!supportsLeases(store)) return await fn(undefined, store);
    const lease = await takeLease(store, name, what, ttlMs, io);
    try {
      return await fn(lease, store);
    } finally {
      await lease.release().catch(() => undefined);
    }
  } finally {
    await store.close().catch(() => undefined);
  }
}

async function takeLease(store: KeyStore, name: string, what: string, ttlMs: number, io: CliIO): Promise<JobLease> {
  const holder = processHolder();
  for (let attempt = 0; ; attempt++) {
    const got = await JobLease.tryAcquire(store, name, { holder, ttlMs });
    if (got instanceof JobLease) return got;
    if (attempt === 0 && holderIsDead(got.heldBy) && (await releaseDeadHolder(store, name, got.heldBy))) {
      await print(
        io.stderr,
        `keywarden: an earlier ${what} on this key store was interrupted (its process ${got.heldBy} no longer runs); resuming it\n`,
      );
      continue;
    }
    throw new ConflictError(
      `${what}: another ${what} is running on this key store (${got.heldBy}; its lease runs ${Math.ceil(got.expiresInMs / 1000)} s more unless renewed); nothing was changed — wait for it to finish`,
    );
  }
}

function leaseTtl(env: NodeJS.ProcessEnv): number {
  const text = env[LEASE_TTL_ENV];
  if (text === undefined || text === '') return DEFAULT_TTL_MS;
  const ttl = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(ttl) || ttl < 1000) {
    throw new InvalidInputError(`lease: ${LEASE_TTL_ENV} must be a whole number of milliseconds, at least 1000`);
  }
  return ttl;
}

// ── Who holds a lease, and is it still running? ─────────────────────────────────────────────────

const HOLDER_RE = /^keywarden-cli@(.+)\/([^/#]*)#(\d+)(?:\.(\d+))?$/;

/** This process as a lease holder (see the file comment). */
export function processHolder(): string {
  const start = startTimeOf(process.pid);
  return `keywarden-cli@${hostname().slice(0, 64)}/${pidNamespace()}#${process.pid}${start === undefined ? '' : `.${start}`}`;
}

/**
 * True only when `holder` is surely a process of this machine (same host name and PID namespace)
 * that no longer runs: its process id is gone, a zombie, or now another process (another start
 * time). Anything else — another machine, no start time recorded, /proc unreadable — is false.
 */
export function holderIsDead(holder: string): boolean {
  const m = HOLDER_RE.exec(holder);
  if (!m || m[4] === undefined) return false;
  if (m[1] !== hostname().slice(0, 64) || m[2] !== pidNamespace() || m[2] === '') return false;
  const pid = Number(m[3]);
  if (pid === process.pid) return false;
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT';
  }
  const fields = fieldsOf(stat);
  if (fields === undefined) return false;
  return fields[0] === 'Z' || fields[0] === 'X' || fields[19] !== m[4];
}

/** /proc/PID/stat after "(comm)": state is [0], starttime (field 22 of the whole line) is [19]. */
function fieldsOf(stat: string): string[] | undefined {
  const close = stat.lastIndexOf(')');
  if (close < 0) return undefined;
  const fields = stat
    .slice(close + 2)
    .trim()
    .split(/\s+/);
  return fields.length > 19 ? fields : undefined;
}

function startTimeOf(pid: number): string | undefined {
  try {
    return fieldsOf(readFileSync(`/proc/${pid}/stat`, 'utf8'))?.[19];
  } catch {
    return undefined;
  }
}

function pidNamespace(): string {
  try {
    // "pid:[4026531836]"
    return /\[(\d+)\]/.exec(readlinkSync('/proc/self/ns/pid'))?.[1] ?? '';
  } catch {
    return '';
  }
}

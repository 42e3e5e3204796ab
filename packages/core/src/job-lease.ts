/**
 * Leases for jobs that one instance of a fleet at a time may run — a bulk rewrap, a root rotation
 * (docs/fleet.md §Jobs started on one instance and resumed on another).
 *
 * A lease is a named record in the key store: who holds it, until when (the STORE's clock, so
 * instances with skewed clocks agree), and a fencing token that grows by one at every grant. A
 * store offers leases through the optional {@link LeaseStore} capability. Every store of this
 * repository does, each with one clock that all its holders share:
 * - @keywarden/store-postgres: the server's clock (clock_timestamp()), whatever machine the
 *   instances run on;
 * - @keywarden/store-sqlite: the wall clock of the one machine whose processes share the file
 *   (SQLite's locking is for one machine; a lease read and written under SQLite's write lock);
 * - MemoryKeyStore: the monotonic clock of its one process.
 *
 * - acquire: granted when the lease is free, expired, or already this holder's (a restarted
 *   instance with the same holder name takes its own lease back); else ConflictError naming no
 *   secret, only the holder and how long until it expires.
 * - The holder renews it every `ttlMs / 3` in the background. A renewal that finds the lease taken
 *   by another instance (the holder stalled past the expiry) marks it lost.
 * - Fencing: the job's own store writes (its checkpoint) go through the lease
 *   ({@link JobLease.putMeta}), which the store applies only while the lease is still this grant
 *   (same token, not expired) in the same transaction; a stale holder's write is a ConflictError.
 * - {@link JobLease.check} refuses (ConflictError) once the lease might have expired by the local
 *   clock: the deadline is counted from the moment the grant or renewal was SENT, which is before
 *   the store started the lease's time, so a holder stops before another can start.
 *
 * What a lease cannot fence: a write the job's consumer makes to its own database after check()
 * passed, if the holder then stalls past the expiry (a stop-the-world pause). Keep the TTL well
 * above the longest pause (default 30 s), and make such writes idempotent — a rewrap update is:
 * any rewrap of a record decrypts.
 */
import { ConflictError, InvalidInputError } from './errors.js';
import type { KeyStore } from './keystore.js';
import { decodeLease, encodeLease, leaseMetaName } from './keystore-checks.js';

/** A lease held by one holder: what the store granted. */
export interface LeaseGrant {
  readonly name: string;
  readonly holder: string;
  /** Fencing token: grows at every grant to a new holder (or after an expiry). */
  readonly token: number;
}

/** Why a lease was not granted: someone else holds it. */
export interface LeaseRefusal {
  readonly heldBy: string;
  /** Milliseconds until it expires, by the store's clock. */
  readonly expiresInMs: number;
}

/** Optional KeyStore capability: leases with expiry and fenced meta writes. */
export interface LeaseStore {
  /** Grant `name` to `holder` for `ttlMs` (store clock) when free, expired or already `holder`'s. */
  acquireLease(name: string, holder: string, ttlMs: number): Promise<LeaseGrant | LeaseRefusal>;
  /** Extend a grant; false when it is no longer this grant (taken by another after expiry, or released). */
  renewLease(grant: LeaseGrant, ttlMs: number): Promise<boolean>;
  /** Give it up (only if it is still this grant; otherwise nothing happens). */
  releaseLease(grant: LeaseGrant): Promise<void>;
  /**
   * Write (`value`) or delete (`undefined`) the meta record `meta` only while `grant` holds: same
   * token, not expired, in the same transaction. ConflictError otherwise, and nothing is written.
   */
  putMetaUnderLease(grant: LeaseGrant, meta: string, value: Uint8Array | undefined): Promise<void>;
}

/** Does `store` offer leases? */
export function supportsLeases(store: KeyStore): store is KeyStore & LeaseStore {
  const s = store as Partial<LeaseStore>;
  return (
    typeof s.acquireLease === 'function' &&
    typeof s.renewLease === 'function' &&
    typeof s.releaseLease === 'function' &&
    typeof s.putMetaUnderLease === 'function'
  );
}

/**
 * Release lease `name` on behalf of `holder`, a holder the caller KNOWS is dead (a process on this
 * machine that no longer runs: the CLI checks its process id and start time), so that a job it
 * left can be resumed at once instead of after the lease's expiry. A compare-and-swap of the lease
 * record (KeyStore.swapMeta): nothing happens when the record changed meanwhile (renewed, released,
 * taken by another), and of two callers racing to release it, one does. The token stays, so the
 * next grant's is higher and whatever the dead holder left in flight is fenced out. Resolves true
 * when this call released it.
 */
export async function releaseDeadHolder(store: KeyStore, name: string, holder: string): Promise<boolean> {
  if (!supportsLeases(store) || typeof store.swapMeta !== 'function') {
    throw new InvalidInputError('lease: this key store offers no leases');
  }
  const meta = leaseMetaName(name);
  const current = await store.getMeta(meta);
  const lease = decodeLease(current);
  if (current === undefined || lease === undefined || lease.holder !== holder || lease.expiresAt === 0) return false;
  try {
    await store.swapMeta(meta, current, encodeLease({ ...lease, expiresAt: 0 }));
    return true;
  } catch (err) {
    if (ConflictError.isInstance(err)) return false;
    throw err;
  }
}

export interface JobLeaseOptions {
  /** Who asks: unique per instance (host name and process id, a pod name). 1..128 characters. */
  holder: string;
  /** How long a grant lasts without renewal (store clock). Default 30 000 ms; at least 1000. */
  ttlMs?: number;
}

const NAME_RE = /^[A-Za-z0-9._:/-]{1,128}$/;

/** A lease held by this process, renewed in the background until released. */
export class JobLease {
  readonly #store: KeyStore & LeaseStore;
  readonly #grant: LeaseGrant;
  readonly #ttlMs: number;
  #validUntil: number;
  #lost = false;
  #released = false;
  #timer: ReturnType<typeof setInterval> | undefined;
  #renewing: Promise<void> | undefined;

  private constructor(store: KeyStore & LeaseStore, grant: LeaseGrant, ttlMs: number, sentAt: number) {
    this.#store = store;
    this.#grant = grant;
    this.#ttlMs = ttlMs;
    this.#validUntil = sentAt + ttlMs;
    this.#timer = setInterval(
      () => {
        this.#renewing ??= this.#renew().finally(() => {
          this.#renewing = undefined;
        });
      },
      Math.max(100, Math.floor(ttlMs / 3)),
    );
    this.#timer.unref?.();
  }

  /**
   * Take the lease `name` (ConflictError when another instance holds it; InvalidInputError when
   * the store offers no leases or an argument is malformed).
   */
  static async acquire(store: KeyStore, name: string, options: JobLeaseOptions): Promise<JobLease> {
    const got = await JobLease.tryAcquire(store, name, options);
    if (!(got instanceof JobLease)) {
      throw new ConflictError(
        `lease: ${name} is held by ${got.heldBy} for ${Math.ceil(got.expiresInMs / 1000)} s more; another instance is running this job`,
      );
    }
    return got;
  }

  /**
   * Like {@link JobLease.acquire}, but a lease held by another instance is returned as the store's
   * refusal (who holds it, how long until it expires) instead of a ConflictError, so that a caller
   * can decide to wait (e.g. for the lease of a process it knows is dead to expire).
   */
  static async tryAcquire(store: KeyStore, name: string, options: JobLeaseOptions): Promise<JobLease | LeaseRefusal> {
    const ttlMs = options.ttlMs ?? 30_000;
    if (!supportsLeases(store)) {
      throw new InvalidInputError('lease: this key store offers no leases');
    }
    if (typeof name !== 'string' || !NAME_RE.test(name)) {
      throw new InvalidInputError('lease: name must be 1..128 characters of [A-Za-z0-9._:/-]');
    }
    if (typeof options.holder !== 'string' || options.holder.length < 1 || options.holder.length > 128) {
      throw new InvalidInputError('lease: holder must be 1..128 characters');
    }
    if (!Number.isSafeInteger(ttlMs) || ttlMs < 1000)
      throw new InvalidInputError('lease: ttlMs must be an integer ≥ 1000');
    const sentAt = performance.now();
    const got = await store.acquireLease(name, options.holder, ttlMs);
    if (!('token' in got)) return got;
    return new JobLease(store, got, ttlMs, sentAt);
  }

  get name(): string {
    return this.#grant.name;
  }
  get token(): number {
    return this.#grant.token;
  }
  /** True once a renewal found the lease taken, or it was released. */
  get lost(): boolean {
    return this.#lost || this.#released;
  }

  /** ConflictError unless the lease is surely still held (not lost, local deadline not passed). */
  check(): void {
    if (this.#released) throw new ConflictError(`lease: ${this.#grant.name} was released`);
    if (this.#lost || performance.now() >= this.#validUntil) {
      this.#lost = true;
      throw new ConflictError(
        `lease: ${this.#grant.name} was lost (not renewed in time, or taken by another instance); this instance stops the job`,
      );
    }
  }

  /** putMeta, applied only while this lease holds (ConflictError otherwise). */
  async putMeta(name: string, value: Uint8Array): Promise<void> {
    this.check();
    await this.#fenced(name, value);
  }

  /** deleteMeta, applied only while this lease holds (ConflictError otherwise). */
  async deleteMeta(name: string): Promise<void> {
    this.check();
    await this.#fenced(name, undefined);
  }

  /** Stop renewing and give the lease up. Idempotent. */
  async release(): Promise<void> {
    if (this.#released) return;
    this.#released = true;
    clearInterval(this.#timer);
    await this.#renewing?.catch(() => undefined);
    if (!this.#lost) await this.#store.releaseLease(this.#grant);
  }

  async #fenced(name: string, value: Uint8Array | undefined): Promise<void> {
    try {
      await this.#store.putMetaUnderLease(this.#grant, name, value);
    } catch (err) {
      if (ConflictError.isInstance(err)) this.#lost = true;
      throw err;
    }
  }

  async #renew(): Promise<void> {
    if (this.#lost || this.#released) return;
    const sentAt = performance.now();
    try {
      if (await this.#store.renewLease(this.#grant, this.#ttlMs)) this.#validUntil = sentAt + this.#ttlMs;
      else this.#lost = true;
    } catch {
      // The store is unreachable for now: the lease runs out by itself (check() says so) unless a
      // later renewal gets through in time.
    }
  }
}

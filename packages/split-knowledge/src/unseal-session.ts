/**
 * UnsealSession: collects the shares of a quorum one at a time, for a sealed process whose
 * custodians arrive one after another (an interactive prompt, share files, an API endpoint).
 *
 * State machine:
 *   collecting (0 ≤ accepted < M) --submit ok--> collecting | complete (accepted = M)
 *   complete --takeSecret--> collecting (0 held: the shares are combined, then wiped)
 *   any --timeout since the last accepted share | reset()--> collecting (0 held, shares wiped)
 *
 * Contracts:
 *  - shares live only in this object's memory (copies it owns and wipes), never on disk;
 *  - a rejected share (corrupt, wrong set, wrong purpose, duplicate) throws a precise ShareError
 *    and leaves the shares already accepted in place;
 *  - `timeoutMs` (default 10 minutes) after the last accepted share, everything held is wiped —
 *    by a timer (unref'd, so it never keeps a process alive) and, in case the timer could not
 *    run, again on the next call; the next status says `reset: true`;
 *  - the result of `takeSecret()` is only as good as the shares: authenticate it (for the root,
 *    `unsealWithSession` in ceremony.ts does; hardware secrets carry a verifier).
 */
import { InvalidInputError, ShareError, wipe } from '@keywarden/core';
import { checkShareCommitment, isCommitmentList } from './commitment.js';
import { decodeHardwareSecret, type HardwareSecretPurpose } from './hardware-secret.js';
import {
  checkEnough,
  checkSameParameters,
  checkSamePurpose,
  checkSameSet,
  combineWithPurpose,
  duplicateError,
  HARDWARE_PURPOSES,
  isShareSetId,
  MAX_SHARES,
  MIN_SHARES,
  MIN_THRESHOLD,
  ParsedShare,
  parseShare,
  type SharePurpose,
  type ShareSetInfo,
} from './share.js';

export const DEFAULT_UNSEAL_TIMEOUT_MS = 10 * 60 * 1000;

export interface UnsealSessionOptions {
  /** The share set to collect: from the sealed root document's `unseal` (method "shamir"). */
  expected: {
    shareSetId: string;
    threshold: number;
    shares: number;
    purpose?: SharePurpose;
    /** The commitment to each share (commitment.ts): a share that does not match is refused on submit. */
    commitments?: readonly string[];
  };
  /** Idle time after the last accepted share before everything held is wiped. Default 10 minutes. */
  timeoutMs?: number;
  /** Clock in milliseconds, injectable for tests. Default `Date.now`. */
  now?: () => number;
}

export interface UnsealProgress {
  shareSetId: string;
  purpose: SharePurpose;
  /** Shares held now. */
  accepted: number;
  /** M. */
  threshold: number;
  /** N. */
  shares: number;
  /** Indices held (not secret), ascending. */
  indices: number[];
  /** accepted ≥ threshold: `takeSecret()` can be called. */
  complete: boolean;
  /** Shares accepted earlier were wiped after the timeout (reported until the next accepted share). */
  reset: boolean;
  /** When the held shares will be wiped (ms, same clock as `now`), if any are held. */
  expiresAt: number | undefined;
}

export class UnsealSession {
  readonly expected: Readonly<ShareSetInfo>;
  readonly #commitments: readonly string[] | undefined;
  readonly timeoutMs: number;
  readonly #now: () => number;
  readonly #held = new Map<number, ParsedShare>();
  #lastAcceptedAt: number | undefined;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #timedOut = false;

  constructor(options: UnsealSessionOptions) {
    const e = options?.expected;
    if (!e || !isShareSetId(e.shareSetId))
      throw new InvalidInputError('unseal: expected.shareSetId is not a share-set id');
    if (!Number.isInteger(e.shares) || e.shares < MIN_SHARES || e.shares > MAX_SHARES) {
      throw new InvalidInputError(`unseal: expected.shares must be ${MIN_SHARES}..${MAX_SHARES}`);
    }
    if (!Number.isInteger(e.threshold) || e.threshold < MIN_THRESHOLD || e.threshold > e.shares) {
      throw new InvalidInputError(`unseal: expected.threshold must be ${MIN_THRESHOLD}..${e.shares}`);
    }
    const timeoutMs = options.timeoutMs ?? DEFAULT_UNSEAL_TIMEOUT_MS;
    if (!Number.isFinite(timeoutMs) || timeoutMs <= 0 || timeoutMs > 2 ** 31 - 1) {
      throw new InvalidInputError('unseal: timeoutMs must be a positive number of milliseconds (at most ~24.8 days)');
    }
    this.expected = Object.freeze({
      shareSetId: e.shareSetId,
      threshold: e.threshold,
      shares: e.shares,
      purpose: e.purpose ?? 'unseal-key',
    });
    if (e.commitments !== undefined && !isCommitmentList(e.commitments, e.shares)) {
      throw new InvalidInputError('unseal: expected.commitments must hold one commitment per share');
    }
    this.#commitments = e.commitments === undefined ? undefined : Object.freeze([...e.commitments]);
    this.timeoutMs = timeoutMs;
    this.#now = options.now ?? Date.now;
  }

  /**
   * Add one share (text or parsed; a parsed share is copied, the caller keeps and wipes theirs).
   * Throws a ShareError for a share that does not belong, keeping the progress made so far.
   */
  submit(share: string | ParsedShare): UnsealProgress {
    this.#expireIfIdle();
    const parsed = share instanceof ParsedShare ? share.clone() : parseShare(share);
    try {
      checkSamePurpose(parsed, this.expected);
      checkSameSet(parsed, this.expected);
      checkSameParameters(parsed, this.expected);
      if (this.#commitments) checkShareCommitment(parsed, this.#commitments);
      const earlier = this.#held.get(parsed.index);
      if (earlier) throw duplicateError(earlier, parsed);
      if (this.#held.size >= this.expected.threshold) {
        throw new ShareError(
          `share: already ${this.#held.size} of ${this.expected.threshold} shares; no more are needed`,
        );
      }
    } catch (err) {
      parsed.wipe();
      throw err;
    }
    this.#held.set(parsed.index, parsed);
    this.#lastAcceptedAt = this.#now();
    this.#schedule();
    const status = this.#status();
    this.#timedOut = false;
    return status;
  }

  /** Where the session stands (wipes first if the timeout has passed). */
  progress(): UnsealProgress {
    this.#expireIfIdle();
    return this.#status();
  }

  /**
   * Combine the held shares and return the secret (the unseal key, or for an hsm-pin / tpm-auth
   * session the verified PIN or auth value); the held shares are wiped whatever happens. Throws
   * "share: k of M shares, need … more" before the quorum is complete. Wipe the result after use.
   */
  async takeSecret(): Promise<Uint8Array> {
    this.#expireIfIdle();
    checkEnough(this.#held.size, this.expected.threshold);
    const shares = [...this.#held.values()];
    try {
      const combined = await combineWithPurpose(
        shares,
        this.#commitments ? { ...this.expected, commitments: this.#commitments } : this.expected,
        true,
      );
      if (!HARDWARE_PURPOSES.has(this.expected.purpose)) return combined;
      try {
        return decodeHardwareSecret(combined, this.expected.purpose as HardwareSecretPurpose);
      } finally {
        wipe(combined);
      }
    } finally {
      this.reset();
    }
  }

  /** Wipe every held share and start over. */
  reset(): void {
    for (const s of this.#held.values()) s.wipe();
    this.#held.clear();
    this.#lastAcceptedAt = undefined;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #status(): UnsealProgress {
    const accepted = this.#held.size;
    return {
      shareSetId: this.expected.shareSetId,
      purpose: this.expected.purpose,
      accepted,
      threshold: this.expected.threshold,
      shares: this.expected.shares,
      indices: [...this.#held.keys()].sort((a, b) => a - b),
      complete: accepted >= this.expected.threshold,
      reset: this.#timedOut,
      expiresAt: this.#lastAcceptedAt === undefined ? undefined : this.#lastAcceptedAt + this.timeoutMs,
    };
  }

  #expireIfIdle(): void {
    if (this.#lastAcceptedAt !== undefined && this.#now() - this.#lastAcceptedAt >= this.timeoutMs) this.#expire();
  }

  #expire(): void {
    if (this.#held.size > 0) this.#timedOut = true;
    this.reset();
  }

  #schedule(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#expire(), this.timeoutMs);
    this.#timer.unref?.();
  }
}

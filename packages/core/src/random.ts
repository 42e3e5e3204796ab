import { randomFillSync } from 'node:crypto';
import { InvalidInputError } from './errors.js';

/**
 * Capability: a cryptographically secure random source. Every key Keywarden makes comes from one
 * of these — node:crypto here, the HSM's C_GenerateRandom or the TPM's TPM2_GetRandom in the
 * hardware backends. Nothing here is seedable or uses Math.random. A RandomSource passed to
 * Keywarden (`KeywardenOptions.random`, a root's `random`) must be a CSPRNG: a repeated source
 * repeats data keys and nonces. The one deterministic source in the package is the golden vectors'
 * (the internal, test-only _testing.ts), which is not exported.
 */
export interface RandomSource {
  randomBytes(length: number): Promise<Uint8Array>;
}

/** Largest single request; keys and nonces are tiny, so anything bigger is a bug. */
export const MAX_RANDOM_REQUEST = 65_536;

export function checkRandomLength(length: number): void {
  if (!Number.isSafeInteger(length) || length < 1 || length > MAX_RANDOM_REQUEST) {
    throw new InvalidInputError(`random: length must be 1..${MAX_RANDOM_REQUEST}, got ${length}`);
  }
}

/**
 * Requests up to this size are served from a pool refilled POOL_BYTES at a time (issue 11, hot
 * path): one randomFillSync call costs about 5 µs whatever its size (measured, node 20) and a
 * message draws four small values (DEK, wrap nonce, message id, GCM nonce), which made it the
 * largest single cost of generateDataKey and encrypt in the profile. Node does the same for
 * crypto.randomUUID. Every byte handed out is a copy, zeroed in the pool at once, so no output is
 * ever handed out twice or kept. The pool holds up to POOL_BYTES of future output in memory; that
 * is no new exposure, since OpenSSL's DRBG state, in the same process memory, already determines
 * its future output until it reseeds.
 */
const POOL_BYTES = 4096;
const POOLED_MAX = 64;

/** The operating system CSPRNG through node:crypto (OpenSSL's DRBG seeded by getrandom(2) on Linux). */
export class NodeRandomSource implements RandomSource {
  readonly #pool = new Uint8Array(POOL_BYTES);
  #offset = POOL_BYTES;

  async randomBytes(length: number): Promise<Uint8Array> {
    return this.randomBytesSync(length);
  }
  /** Synchronous form for the hot path (nonces, data keys). */
  randomBytesSync(length: number): Uint8Array {
    checkRandomLength(length);
    if (length > POOLED_MAX) return randomFillSync(new Uint8Array(length));
    if (this.#offset + length > POOL_BYTES) {
      randomFillSync(this.#pool);
      this.#offset = 0;
    }
    const end = this.#offset + length;
    const out = this.#pool.slice(this.#offset, end);
    this.#pool.fill(0, this.#offset, end);
    this.#offset = end;
    return out;
  }
}

export const nodeRandom = new NodeRandomSource();

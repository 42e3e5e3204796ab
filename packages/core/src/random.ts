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

/** The operating system CSPRNG through node:crypto (getrandom(2) on Linux). */
export class NodeRandomSource implements RandomSource {
  async randomBytes(length: number): Promise<Uint8Array> {
    return this.randomBytesSync(length);
  }
  /** Synchronous form for the hot path (nonces, data keys). */
  randomBytesSync(length: number): Uint8Array {
    checkRandomLength(length);
    return randomFillSync(new Uint8Array(length));
  }
}

export const nodeRandom = new NodeRandomSource();

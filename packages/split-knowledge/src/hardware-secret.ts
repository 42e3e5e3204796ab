/**
 * Split knowledge for hardware roots: the secret that unlocks an HSM (the PKCS#11 user PIN) or a
 * TPM object (its auth value) is split exactly like the unseal key, so no single person can log
 * in to the token. Shares carry the purpose `hsm-pin` or `tpm-auth`; an unseal-key share is
 * refused where a PIN share is expected, and the other way round.
 *
 * Two differences from the unseal key, both because these secrets are short, of variable length,
 * and checked by a device that counts failures:
 *  - Padding. The secret is encoded as `version ‖ len ‖ secret ‖ zeros` in a block of 64, 128, 192
 *    or 256 bytes (the smallest that fits), so a share's length does not reveal the PIN's length.
 *  - Verifier (version 2). A random 32-byte key K is drawn per split and kept INSIDE the shared
 *    secret, and a 16-byte tag = HMAC-SHA256(K, DOMAIN ‖ 0 ‖ purpose ‖ 0 ‖ block) (RFC 2104),
 *    truncated, follows it: the split secret is `block ‖ K ‖ tag`. After combining, the tag is
 *    checked before the secret is returned, so a wrong PIN never reaches the token.
 *
 * Why keyed: Shamir is linear, so a custodian who alters their share by δ shifts the combined
 * secret by a known multiple of δ — a chosen offset Δ. Version 1's tag was an UNKEYED hash of the
 * block; as the block is fully determined by the PIN, a forger could guess a PIN, compute both
 * encodings with their tags, and choose Δ = enc(their PIN) ⊕ enc(guess): one PIN guess per
 * ceremony, and on a right guess the token is handed a PIN of the forger's choice. With the key
 * inside the shared secret the forger cannot compute the tag of any shifted secret (they do not
 * know K, and shifting K changes the MAC key), so every offset fails the check except with
 * probability 2^-128. What remains: the verifier protects the PIN against forged SHARES; a PIN is
 * only as strong as its entropy against anyone who can make login attempts on the token, so only
 * high-entropy PINs and auth values get the full claim (docs/split-knowledge.md §10).
 *
 * Version 1 (unkeyed) shares are refused by default with a message that says why; a caller that
 * still holds some combines them once with `allowLegacyVerifier: true` and splits the secret again.
 */
import { createHmac } from 'node:crypto';
import { constantTimeEqual, InvalidInputError, ShareError, wipe } from '@keywarden/core';
import { asUint8, concatBytes, randomBytes, sha256, utf8 } from './_bytes.js';
import {
  combineWithPurpose,
  HARDWARE_ENCODED_LENGTHS,
  type ParsedShare,
  type ShareExpectation,
  type ShareSet,
  splitWithPurpose,
} from './share.js';

export type HardwareSecretPurpose = 'hsm-pin' | 'tpm-auth';

/** Longest PIN or auth value (a 256-byte block minus version and length bytes). */
export const MAX_HARDWARE_SECRET_BYTES = 254;

const LEGACY_VERSION = 0x01;
const ENCODING_VERSION = 0x02;
const BLOCK_SIZES = [64, 128, 192, 256] as const;
const TAG_BYTES = 16;
const MAC_KEY_BYTES = 32;
const LEGACY_DOMAIN = utf8.encode('keywarden/hardware-secret/v1');
const DOMAIN = utf8.encode('keywarden/hardware-secret/v2');

/** Options of combineHardwareSecret. */
export interface CombineHardwareOptions {
  /**
   * Accept shares split with the version-1 (unkeyed) verifier, which a forging custodian can
   * defeat (see above). Only to recover a secret split before version 2, then split it again.
   */
  allowLegacyVerifier?: boolean;
}

function checkHardwarePurpose(purpose: unknown): asserts purpose is HardwareSecretPurpose {
  if (purpose !== 'hsm-pin' && purpose !== 'tpm-auth') {
    throw new InvalidInputError('share: a hardware secret has purpose "hsm-pin" or "tpm-auth"');
  }
}

function legacyTag(purpose: HardwareSecretPurpose, block: Uint8Array): Uint8Array {
  return sha256(LEGACY_DOMAIN, Uint8Array.of(0), utf8.encode(purpose), Uint8Array.of(0), block).subarray(0, TAG_BYTES);
}

/** HMAC-SHA256 (RFC 2104) under the key kept in the shared secret, truncated to 16 bytes. */
function keyedTag(purpose: HardwareSecretPurpose, key: Uint8Array, block: Uint8Array): Uint8Array {
  const h = createHmac('sha256', key);
  for (const part of [DOMAIN, Uint8Array.of(0), utf8.encode(purpose), Uint8Array.of(0), block]) h.update(part);
  return asUint8(h.digest()).subarray(0, TAG_BYTES);
}

function padded(secret: Uint8Array, version: number): Uint8Array {
  const size = BLOCK_SIZES.find((b) => b >= secret.length + 2)!;
  const block = new Uint8Array(size);
  block[0] = version;
  block[1] = secret.length;
  block.set(secret, 2);
  return block;
}

/** @internal block ‖ K ‖ HMAC tag (version 2), as described above. */
export function encodeHardwareSecret(secret: Uint8Array, purpose: HardwareSecretPurpose): Uint8Array {
  const block = padded(secret, ENCODING_VERSION);
  const key = randomBytes(MAC_KEY_BYTES);
  const out = concatBytes(block, key, keyedTag(purpose, key, block));
  wipe(block);
  wipe(key);
  return out;
}

/** @internal Test-only: the version-1 encoding (block ‖ unkeyed tag), to test that it is refused. */
export function encodeLegacyHardwareSecret(secret: Uint8Array, purpose: HardwareSecretPurpose): Uint8Array {
  const block = padded(secret, LEGACY_VERSION);
  const out = concatBytes(block, legacyTag(purpose, block));
  wipe(block);
  return out;
}

function forged(purpose: HardwareSecretPurpose): ShareError {
  return new ShareError(
    `share: the shares combined into something that is not a valid ${purpose}: at least one share is forged or ` +
      'altered, or comes from another ceremony (the secret was not used)',
  );
}

/**
 * @internal Check the verifier and return the secret; ShareError when a share was forged or
 * foreign, or (without allowLegacyVerifier) when the shares use the version-1 verifier.
 */
export function decodeHardwareSecret(
  encoded: Uint8Array,
  purpose: HardwareSecretPurpose,
  options: CombineHardwareOptions = {},
): Uint8Array {
  if (!HARDWARE_ENCODED_LENGTHS.includes(encoded.length)) throw forged(purpose);
  const blockSize = BLOCK_SIZES.find((b) => encoded.length === b + MAC_KEY_BYTES + TAG_BYTES);
  if (blockSize !== undefined) {
    const block = encoded.subarray(0, blockSize);
    const key = encoded.subarray(blockSize, blockSize + MAC_KEY_BYTES);
    const expected = keyedTag(purpose, key, block);
    const ok = constantTimeEqual(expected, encoded.subarray(blockSize + MAC_KEY_BYTES));
    wipe(expected);
    return secretOf(block, ok, ENCODING_VERSION, purpose);
  }
  // Version 1: block ‖ unkeyed tag.
  const block = encoded.subarray(0, encoded.length - TAG_BYTES);
  const expected = legacyTag(purpose, block);
  const ok = constantTimeEqual(expected, encoded.subarray(block.length));
  wipe(expected);
  if (ok && block[0] === LEGACY_VERSION && !options.allowLegacyVerifier) {
    throw new ShareError(
      `share: these ${purpose} shares use the version-1 verifier, which a forging custodian can defeat; ` +
        'combine them once with allowLegacyVerifier and split the secret again (docs/split-knowledge.md §10)',
    );
  }
  return secretOf(block, ok, LEGACY_VERSION, purpose);
}

function secretOf(block: Uint8Array, ok: boolean, version: number, purpose: HardwareSecretPurpose): Uint8Array {
  const length = block[1]!;
  if (!ok || block[0] !== version || length < 1 || length > block.length - 2) throw forged(purpose);
  return block.slice(2, 2 + length);
}

/**
 * Split an HSM user PIN or a TPM auth value into `shares` shares, any `threshold` of which
 * recombine it (defaults as for the unseal key: 5 shares, threshold 3). The caller's secret is
 * not modified; wipe it when done. Encrypt each share to its custodian with
 * `encryptShareForCustodian` before it leaves the process.
 */
export async function splitHardwareSecret(
  secret: Uint8Array,
  options: { shares?: number; threshold?: number; purpose: HardwareSecretPurpose },
): Promise<ShareSet> {
  const { shares = 5, threshold = 3, purpose } = options ?? ({} as typeof options);
  checkHardwarePurpose(purpose);
  if (!(secret instanceof Uint8Array) || secret.length < 1 || secret.length > MAX_HARDWARE_SECRET_BYTES) {
    throw new InvalidInputError(`share: a ${purpose} must be 1..${MAX_HARDWARE_SECRET_BYTES} bytes`);
  }
  const encoded = encodeHardwareSecret(secret, purpose);
  try {
    return await splitWithPurpose(encoded, { shares, threshold, purpose });
  } finally {
    wipe(encoded);
  }
}

/**
 * Recombine a PIN or auth value. `expect.purpose` is required: shares of another purpose (an
 * unseal-key share, a TPM share where an HSM PIN is expected) are refused before combining, with
 * the same precise errors as combineShares. A forged share is caught by the verifier (above).
 * Returns the secret; wipe it once the device has accepted it.
 */
export async function combineHardwareSecret(
  shares: readonly string[] | readonly ParsedShare[],
  expect: ShareExpectation & { purpose: HardwareSecretPurpose },
  options: CombineHardwareOptions = {},
): Promise<Uint8Array> {
  checkHardwarePurpose(expect?.purpose);
  const encoded = await combineWithPurpose(shares, expect, true);
  try {
    return decodeHardwareSecret(encoded, expect.purpose, options);
  } finally {
    wipe(encoded);
  }
}

/**
 * Split knowledge for hardware roots: the secret that unlocks an HSM (the PKCS#11 user PIN) or a
 * TPM object (its auth value) is split exactly like the unseal key, so no single person can log
 * in to the token. Shares carry the purpose `hsm-pin` or `tpm-auth`; an unseal-key share is
 * refused where a PIN share is expected, and the other way round.
 *
 * Two differences from the unseal key, both because these secrets are short, of variable length,
 * and checked by a device that counts failures:
 *  - Padding. The secret is encoded as `0x01 ‖ len ‖ secret ‖ zeros` in a block of 64, 128, 192 or
 *    256 bytes (the smallest that fits), so a share's length does not reveal the PIN's length.
 *  - Verifier. A 16-byte tag, the first half of SHA-256(DOMAIN ‖ 0 ‖ purpose ‖ 0 ‖ block), is
 *    appended before splitting. It is inside the shared secret, so no one without a quorum sees
 *    it (a tag outside the shares would let one custodian guess a low-entropy PIN offline). After
 *    combining, the tag is checked: a forged or foreign share (which, Shamir being linear, shifts
 *    the combined bytes by an amount the forger cannot relate to the hidden tag) is caught here,
 *    before a wrong PIN ever reaches the token and spends one of its login attempts.
 */
import { constantTimeEqual, InvalidInputError, ShareError, wipe } from '@keywarden/core';
import { concatBytes, sha256, utf8 } from './_bytes.js';
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

const ENCODING_VERSION = 0x01;
const BLOCK_SIZES = [64, 128, 192, 256] as const;
const TAG_BYTES = 16;
const DOMAIN = utf8.encode('keywarden/hardware-secret/v1');

function checkHardwarePurpose(purpose: unknown): asserts purpose is HardwareSecretPurpose {
  if (purpose !== 'hsm-pin' && purpose !== 'tpm-auth') {
    throw new InvalidInputError('share: a hardware secret has purpose "hsm-pin" or "tpm-auth"');
  }
}

function tag(purpose: HardwareSecretPurpose, block: Uint8Array): Uint8Array {
  return sha256(DOMAIN, Uint8Array.of(0), utf8.encode(purpose), Uint8Array.of(0), block).subarray(0, TAG_BYTES);
}

/** @internal block ‖ tag, as described above. */
export function encodeHardwareSecret(secret: Uint8Array, purpose: HardwareSecretPurpose): Uint8Array {
  const size = BLOCK_SIZES.find((b) => b >= secret.length + 2)!;
  const block = new Uint8Array(size);
  block[0] = ENCODING_VERSION;
  block[1] = secret.length;
  block.set(secret, 2);
  const out = concatBytes(block, tag(purpose, block));
  wipe(block);
  return out;
}

function forged(purpose: HardwareSecretPurpose): ShareError {
  return new ShareError(
    `share: the shares combined into something that is not a valid ${purpose}: at least one share is forged or ` +
      'altered, or comes from another ceremony (the secret was not used)',
  );
}

/** @internal Check the tag and return the secret; ShareError when a share was forged or foreign. */
export function decodeHardwareSecret(encoded: Uint8Array, purpose: HardwareSecretPurpose): Uint8Array {
  if (!HARDWARE_ENCODED_LENGTHS.includes(encoded.length)) throw forged(purpose);
  const block = encoded.subarray(0, encoded.length - TAG_BYTES);
  const expected = tag(purpose, block);
  const ok = constantTimeEqual(expected, encoded.subarray(block.length));
  wipe(expected);
  const length = block[1]!;
  if (!ok || block[0] !== ENCODING_VERSION || length < 1 || length > block.length - 2) throw forged(purpose);
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
): Promise<Uint8Array> {
  checkHardwarePurpose(expect?.purpose);
  const encoded = await combineWithPurpose(shares, expect, true);
  try {
    return decodeHardwareSecret(encoded, expect.purpose);
  } finally {
    wipe(encoded);
  }
}

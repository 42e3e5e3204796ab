/**
 * AES-256-GCM (NIST SP 800-38D) and HKDF-SHA256 (RFC 5869) through node:crypto, for encrypting a
 * share to a custodian. Core has the same helpers in packages/core/src/aead.ts but does not export
 * them. One shape only: 256-bit key, 96-bit nonce, 128-bit tag; every length is checked here.
 * Internal module: not exported from the package index.
 */
import { createCipheriv, createDecipheriv, hkdfSync } from 'node:crypto';
import { DecryptionError, InvalidInputError } from '@keywarden/core';
import { concatBytes } from './_bytes.js';

export const AES256_KEY_BYTES = 32;
/** SP 800-38D §8.2: 96-bit IVs are the recommended (and here the only accepted) length. */
export const GCM_NONCE_BYTES = 12;
export const GCM_TAG_BYTES = 16;

function check(key: Uint8Array, nonce: Uint8Array): void {
  if (!(key instanceof Uint8Array) || key.length !== AES256_KEY_BYTES) {
    throw new InvalidInputError(`aes-gcm: key must be ${AES256_KEY_BYTES} bytes`);
  }
  if (!(nonce instanceof Uint8Array) || nonce.length !== GCM_NONCE_BYTES) {
    throw new InvalidInputError(`aes-gcm: nonce must be ${GCM_NONCE_BYTES} bytes`);
  }
}

/** Encrypt; returns ciphertext ‖ tag. */
export function gcmSeal(key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, aad: Uint8Array): Uint8Array {
  check(key, nonce);
  const cipher = createCipheriv('aes-256-gcm', key, nonce, { authTagLength: GCM_TAG_BYTES });
  cipher.setAAD(aad);
  const head = cipher.update(plaintext);
  const tail = cipher.final();
  const out = concatBytes(head, tail, cipher.getAuthTag());
  head.fill(0);
  return out;
}

/**
 * Decrypt ciphertext ‖ tag. Any failure is the same DecryptionError(component), and no plaintext
 * is returned before the tag has been verified (SP 800-38D §7.2 step 8).
 */
export function gcmOpen(
  key: Uint8Array,
  nonce: Uint8Array,
  sealed: Uint8Array,
  aad: Uint8Array,
  component: string,
): Uint8Array {
  check(key, nonce);
  if (sealed.length < GCM_TAG_BYTES) throw new DecryptionError(component);
  const ctLen = sealed.length - GCM_TAG_BYTES;
  const decipher = createDecipheriv('aes-256-gcm', key, nonce, { authTagLength: GCM_TAG_BYTES });
  decipher.setAAD(aad);
  decipher.setAuthTag(sealed.subarray(ctLen));
  const head = decipher.update(sealed.subarray(0, ctLen));
  try {
    const tail = decipher.final();
    const out = concatBytes(head, tail);
    return out;
  } catch {
    throw new DecryptionError(component);
  } finally {
    head.fill(0);
  }
}

/** HKDF-SHA256 (RFC 5869 §2.2 extract with `salt`, §2.3 expand with `info`). */
export function hkdfSha256(ikm: Uint8Array, salt: Uint8Array, info: Uint8Array, length: number): Uint8Array {
  return new Uint8Array(hkdfSync('sha256', ikm, salt, info, length));
}

/**
 * AES-256-GCM (NIST SP 800-38D) through node:crypto, and HKDF-SHA256 (RFC 5869).
 * Keywarden uses exactly one AES-GCM shape: 256-bit key, 96-bit nonce, 128-bit tag. Every length is
 * checked here, in one place, before OpenSSL sees the bytes. XAES-256-GCM (_xaes.ts, the data-key
 * wrap suite 0x02) is this same AES-256-GCM under a derived key, so it goes through here too.
 */
import { createCipheriv, createDecipheriv, createHmac } from 'node:crypto';
import { asUint8, assertBytes, concatBytes } from './_bytes.js';
import { DecryptionError, InvalidInputError } from './errors.js';

export const AES256_KEY_BYTES = 32;
/** SP 800-38D §8.2: 96-bit IVs are the recommended (and only accepted) length. */
export const GCM_NONCE_BYTES = 12;
export const GCM_TAG_BYTES = 16;

/** Encrypt; returns ciphertext ‖ tag. */
export function gcmSeal(key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, aad: Uint8Array): Uint8Array {
  return gcmSealAfter(EMPTY, key, nonce, plaintext, aad);
}

const EMPTY = new Uint8Array(0);

/**
 * gcmSeal returning `prefix` ‖ ciphertext ‖ tag in one allocation (`prefix` is not encrypted or
 * authenticated here: put it in `aad` when it must be). For frames and single-shot bodies, whose
 * ciphertext was otherwise copied a second time to put a header in front (issue 11).
 */
export function gcmSealAfter(
  prefix: Uint8Array,
  key: Uint8Array,
  nonce: Uint8Array,
  plaintext: Uint8Array,
  aad: Uint8Array,
): Uint8Array {
  assertBytes(prefix, 'aes-gcm: prefix');
  assertBytes(key, 'aes-gcm: key', AES256_KEY_BYTES);
  assertBytes(nonce, 'aes-gcm: nonce', GCM_NONCE_BYTES);
  assertBytes(plaintext, 'aes-gcm: plaintext');
  assertBytes(aad, 'aes-gcm: associated data');
  const cipher = createCipheriv('aes-256-gcm', key, nonce, { authTagLength: GCM_TAG_BYTES });
  cipher.setAAD(aad);
  const head = cipher.update(plaintext);
  const tail = cipher.final();
  return concatBytes(prefix, head, tail, cipher.getAuthTag());
}

/**
 * Decrypt ciphertext ‖ tag. Any failure (short input, bad tag) is the same DecryptionError,
 * and no plaintext is returned before the tag has been verified.
 */
export function gcmOpen(
  key: Uint8Array,
  nonce: Uint8Array,
  sealed: Uint8Array,
  aad: Uint8Array,
  component = 'aes-gcm',
): Uint8Array {
  assertBytes(key, 'aes-gcm: key', AES256_KEY_BYTES);
  assertBytes(nonce, 'aes-gcm: nonce', GCM_NONCE_BYTES);
  assertBytes(sealed, 'aes-gcm: ciphertext');
  assertBytes(aad, 'aes-gcm: associated data');
  if (sealed.length < GCM_TAG_BYTES) throw new DecryptionError(component);
  const ctLen = sealed.length - GCM_TAG_BYTES;
  const decipher = createDecipheriv('aes-256-gcm', key, nonce, { authTagLength: GCM_TAG_BYTES });
  decipher.setAAD(aad);
  decipher.setAuthTag(sealed.subarray(ctLen));
  const head = decipher.update(sealed.subarray(0, ctLen));
  try {
    const tail = decipher.final();
    return tail.length === 0 ? asUint8(head) : concatBytes(head, tail);
  } catch {
    head.fill(0);
    throw new DecryptionError(component);
  }
}

/**
 * HKDF-Extract (RFC 5869 §2.2): PRK = HMAC-SHA256(salt, IKM). The PRK is secret; wipe it after
 * the expands. Implemented on createHmac rather than crypto.hkdfSync, which builds two KeyObjects
 * per call and is about twice as slow on the hot path (same output: Wycheproof vectors).
 */
export function hkdfExtract(salt: Uint8Array, ikm: Uint8Array): Uint8Array {
  assertBytes(ikm, 'hkdf: input key material');
  assertBytes(salt, 'hkdf: salt');
  // RFC 5869 §2.2: an empty salt is HashLen zero bytes (HMAC pads the key the same way).
  return asUint8(createHmac('sha256', salt).update(ikm).digest());
}

/** HKDF-Expand (RFC 5869 §2.3): T(i) = HMAC(PRK, T(i-1) ‖ info ‖ i), L ≤ 255·HashLen. */
export function hkdfExpand(prk: Uint8Array, info: Uint8Array, length: number): Uint8Array {
  assertBytes(prk, 'hkdf: pseudorandom key');
  assertBytes(info, 'hkdf: info');
  if (!Number.isSafeInteger(length) || length < 1 || length > 255 * 32) {
    throw new InvalidInputError('hkdf: output length must be 1..8160');
  }
  const out = new Uint8Array(length);
  let t: Uint8Array = new Uint8Array(0);
  for (let i = 1, off = 0; off < length; i++) {
    const next = asUint8(createHmac('sha256', prk).update(t).update(info).update(Uint8Array.of(i)).digest());
    t.fill(0);
    t = next;
    out.set(t.subarray(0, Math.min(t.length, length - off)), off);
    off += t.length;
  }
  t.fill(0);
  return out;
}

/** HKDF-SHA256 (RFC 5869): extract with `salt`, expand with `info` to `length` bytes. */
export function hkdfSha256(ikm: Uint8Array, salt: Uint8Array, info: Uint8Array, length: number): Uint8Array {
  if (!Number.isSafeInteger(length) || length < 1 || length > 255 * 32) {
    throw new InvalidInputError('hkdf: output length must be 1..8160');
  }
  const prk = hkdfExtract(salt, ikm);
  try {
    return hkdfExpand(prk, info, length);
  } finally {
    prk.fill(0);
  }
}

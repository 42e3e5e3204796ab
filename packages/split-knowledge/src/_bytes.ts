/**
 * Byte helpers for this package beyond those core exports (concatBytes, toBase64Url, re-exported
 * here so the package's files import from one place). Internal module.
 */
import { createHash } from 'node:crypto';
import { concatBytes, nodeRandom, toBase64Url } from '@keywarden/core';

export { concatBytes, toBase64Url };

export const utf8 = new TextEncoder();
export const utf8Decoder = new TextDecoder('utf-8', { fatal: true });

/** A view of a Buffer as a plain Uint8Array, without copying. */
export function asUint8(b: Uint8Array): Uint8Array {
  return b.constructor === Uint8Array ? b : new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

const B64URL = /^[A-Za-z0-9_-]*$/;

/**
 * Strict base64url (RFC 4648 §5, no padding): only the canonical encoding of some byte string is
 * accepted, so one share has exactly one spelling. Returns undefined instead of throwing, so that
 * callers word their own error and never echo the input.
 */
export function fromBase64UrlStrict(s: string): Uint8Array | undefined {
  if (!B64URL.test(s) || s.length % 4 === 1) return undefined;
  const decoded = Buffer.from(s, 'base64url');
  // Copy out of Node's shared Buffer pool into a buffer of our own, which the caller can wipe.
  const bytes = new Uint8Array(decoded);
  decoded.fill(0);
  if (toBase64Url(bytes) !== s) {
    bytes.fill(0);
    return undefined;
  }
  return bytes;
}

/** SHA-256 (FIPS 180-4) over the concatenation of `parts`. */
export function sha256(...parts: Uint8Array[]): Uint8Array {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return asUint8(h.digest());
}

/** Bytes from the operating system CSPRNG (node:crypto), through core's random source. */
export function randomBytes(length: number): Uint8Array {
  return nodeRandom.randomBytesSync(length);
}

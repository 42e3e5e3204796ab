/**
 * Byte helpers for this package. Core keeps its own in packages/core/src/_bytes.ts but does not
 * export them (only `wipe` and `constantTimeEqual`), so the few this package needs live here.
 * Internal module: not exported from the package index.
 */
import { createHash } from 'node:crypto';
import { nodeRandom } from '@keywarden/core';

export const utf8 = new TextEncoder();
export const utf8Decoder = new TextDecoder('utf-8', { fatal: true });

export function concatBytes(...parts: Uint8Array[]): Uint8Array {
  let total = 0;
  for (const p of parts) total += p.length;
  const out = new Uint8Array(total);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** A view of a Buffer as a plain Uint8Array, without copying. */
export function asUint8(b: Uint8Array): Uint8Array {
  return b.constructor === Uint8Array ? b : new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

export function toBase64Url(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('base64url');
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

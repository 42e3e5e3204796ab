/**
 * Byte helpers used everywhere: every length check, wipe and constant-time compare lives here.
 * Internal module (not exported from the package index except through named re-exports).
 */
import { timingSafeEqual } from 'node:crypto';
import { InvalidInputError } from './errors.js';

/** Overwrite secret bytes with zeros. JavaScript cannot guarantee no copy survives elsewhere
 * (see docs/threat-model.md), but every buffer Keywarden owns is wiped when released. */
export function wipe(...buffers: Array<Uint8Array | undefined | null>): void {
  for (const b of buffers) if (b) b.fill(0);
}

/** Constant-time equality for secrets and authenticators (length is not secret). */
export function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  return timingSafeEqual(a, b);
}

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

export function assertBytes(value: unknown, what: string, length?: number): asserts value is Uint8Array {
  if (!(value instanceof Uint8Array)) throw new InvalidInputError(`${what} must be a Uint8Array`);
  if (length !== undefined && value.length !== length) {
    throw new InvalidInputError(`${what} must be ${length} bytes, got ${value.length}`);
  }
}

export const utf8 = new TextEncoder();
export const utf8Decoder = new TextDecoder('utf-8', { fatal: true });

export function u8(n: number): Uint8Array {
  return Uint8Array.of(n & 0xff);
}
export function u16be(n: number): Uint8Array {
  return Uint8Array.of((n >>> 8) & 0xff, n & 0xff);
}
export function u32be(n: number): Uint8Array {
  return Uint8Array.of((n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff);
}

/** A view of a Buffer/Uint8Array as a plain Uint8Array without copying. */
export function asUint8(b: Uint8Array): Uint8Array {
  return b.constructor === Uint8Array ? b : new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

export function toBase64Url(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('base64url');
}
const B64URL = /^[A-Za-z0-9_-]*$/;
export function fromBase64Url(s: string, what: string): Uint8Array {
  if (!B64URL.test(s)) throw new InvalidInputError(`${what} is not base64url`);
  // Buffer.from may place small results in Node's shared allocation pool, where a secret would
  // outlive any wipe: copy into a buffer of our own and zero the pooled bytes.
  const pooled = Buffer.from(s, 'base64url');
  const out = new Uint8Array(pooled);
  pooled.fill(0);
  return out;
}

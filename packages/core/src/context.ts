/**
 * Encryption context: non-secret key/value pairs bound into every wrap and every envelope as
 * AEAD associated data. It is authenticated, never encrypted, and never stored in the envelope:
 * the caller presents the same context to decrypt (docs/format.md §Context).
 */
import { u16be, utf8 } from './_bytes.js';
import { InvalidInputError } from './errors.js';

export type EncryptionContext = Readonly<Record<string, string>>;

export const MAX_CONTEXT_PAIRS = 64;
export const MAX_CONTEXT_FIELD_BYTES = 1024;
export const MAX_CONTEXT_BYTES = 16 * 1024;

/**
 * Canonical encoding: u16 pair count, then pairs sorted by the UTF-8 bytes of the key, each as
 * u16 key length, key, u16 value length, value. Two equal contexts always encode identically.
 */
export function encodeContext(context: EncryptionContext | undefined): Uint8Array {
  if (context === undefined) return u16be(0);
  if (typeof context !== 'object' || context === null || Array.isArray(context)) {
    throw new InvalidInputError('context: must be an object of string keys and string values');
  }
  const entries = Object.entries(context);
  if (entries.length > MAX_CONTEXT_PAIRS) {
    throw new InvalidInputError(`context: at most ${MAX_CONTEXT_PAIRS} pairs`);
  }
  const encoded: Array<[Uint8Array, Uint8Array]> = [];
  for (const [k, v] of entries) {
    if (typeof v !== 'string') throw new InvalidInputError(`context: value of "${k}" must be a string`);
    const kb = utf8.encode(k);
    const vb = utf8.encode(v);
    if (kb.length === 0) throw new InvalidInputError('context: empty key');
    if (kb.length > MAX_CONTEXT_FIELD_BYTES || vb.length > MAX_CONTEXT_FIELD_BYTES) {
      throw new InvalidInputError(`context: keys and values are at most ${MAX_CONTEXT_FIELD_BYTES} bytes`);
    }
    encoded.push([kb, vb]);
  }
  encoded.sort((a, b) => Buffer.compare(a[0], b[0]));
  // One allocation, written in place: this runs on every wrap and unwrap (the hot path).
  let total = 2;
  for (const [kb, vb] of encoded) total += 4 + kb.length + vb.length;
  if (total > MAX_CONTEXT_BYTES) throw new InvalidInputError(`context: at most ${MAX_CONTEXT_BYTES} bytes encoded`);
  const out = new Uint8Array(total);
  out[0] = encoded.length >>> 8;
  out[1] = encoded.length & 0xff;
  let off = 2;
  for (const [kb, vb] of encoded) {
    out[off] = kb.length >>> 8;
    out[off + 1] = kb.length & 0xff;
    out.set(kb, off + 2);
    off += 2 + kb.length;
    out[off] = vb.length >>> 8;
    out[off + 1] = vb.length & 0xff;
    out.set(vb, off + 2);
    off += 2 + vb.length;
  }
  return out;
}

/** Parse `k=v` strings (CLI `--context`). Values may contain '='; keys may not be empty. */
export function parseContextPairs(pairs: readonly string[]): Record<string, string> {
  const out: Record<string, string> = Object.create(null);
  for (const p of pairs) {
    const i = p.indexOf('=');
    if (i <= 0) throw new InvalidInputError(`context: expected key=value, got "${p.slice(0, 64)}"`);
    const k = p.slice(0, i);
    if (Object.hasOwn(out, k)) throw new InvalidInputError(`context: duplicate key "${k}"`);
    out[k] = p.slice(i + 1);
  }
  return out;
}

/**
 * Encryption context: non-secret key/value pairs bound into every wrap and every envelope as
 * AEAD associated data. It is authenticated, never encrypted, and never stored in the envelope:
 * the caller presents the same context to decrypt (docs/format.md §3).
 */
import { u16be, utf8 } from './_bytes.js';
import { InvalidInputError } from './errors.js';

export type EncryptionContext = Readonly<Record<string, string>>;

export const MAX_CONTEXT_PAIRS = 64;
export const MAX_CONTEXT_FIELD_BYTES = 1024;
export const MAX_CONTEXT_BYTES = 16 * 1024;

/** `String.prototype.isWellFormed` (ES2024, Node ≥ 20): false for a lone surrogate. */
type MaybeWellFormed = string & { isWellFormed(): boolean };

/**
 * Canonical encoding: u16 pair count, then pairs sorted by the UTF-8 bytes of the key, each as
 * u16 key length, key, u16 value length, value. Two equal contexts always encode identically, and
 * two different contexts never do (docs/format.md §3):
 *  - only a plain object is a context (prototype Object.prototype or null): a Map, an array, a
 *    class instance or a function has no own enumerable string pairs to encode, and would otherwise
 *    encode as the empty context (fail open);
 *  - every key and value must be well-formed UTF-16: TextEncoder turns a lone surrogate into
 *    U+FFFD, so two different strings would share one encoding. Strings are not normalized: NFC and
 *    NFD spellings of the same text are different contexts.
 */
export function encodeContext(context: EncryptionContext | undefined): Uint8Array {
  if (context === undefined) return u16be(0);
  if (typeof context !== 'object' || context === null) throw notPlainObject();
  const proto = Object.getPrototypeOf(context);
  if (proto !== Object.prototype && proto !== null) throw notPlainObject();
  if (Object.getOwnPropertySymbols(context).length > 0) {
    throw new InvalidInputError('context: keys must be strings, not symbols');
  }
  const entries = Object.entries(context);
  if (entries.length > MAX_CONTEXT_PAIRS) {
    throw new InvalidInputError(`context: at most ${MAX_CONTEXT_PAIRS} pairs`);
  }
  const encoded: Array<[Uint8Array, Uint8Array]> = [];
  for (const [k, v] of entries) {
    if (typeof v !== 'string') throw new InvalidInputError(`context: value of "${printable(k)}" must be a string`);
    if (!(k as MaybeWellFormed).isWellFormed()) {
      throw new InvalidInputError('context: a key is not well-formed UTF-16 (lone surrogate)');
    }
    if (!(v as MaybeWellFormed).isWellFormed()) {
      throw new InvalidInputError(`context: value of "${printable(k)}" is not well-formed UTF-16 (lone surrogate)`);
    }
    const kb = utf8Bytes(k);
    const vb = utf8Bytes(v);
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

/**
 * UTF-8 bytes of a well-formed string. ASCII (what contexts nearly always are) is its own UTF-8, so
 * it is copied code unit by code unit without a TextEncoder call: about a tenth of an envelope
 * decryption went to encoding contexts (issue 11 profile). Same bytes either way.
 */
function utf8Bytes(s: string): Uint8Array {
  const n = s.length;
  if (n > 64) return utf8.encode(s);
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c > 0x7f) return utf8.encode(s);
    out[i] = c;
  }
  return out;
}

function notPlainObject(): InvalidInputError {
  return new InvalidInputError(
    'context: must be a plain object ({ key: "value" }) of string keys and string values, not a Map, array or class instance',
  );
}

/** A key as shown in an error message: at most 64 characters, lone surrogates replaced. */
function printable(k: string): string {
  const short = k.length > 64 ? `${k.slice(0, 64)}…` : k;
  return (short as string & { toWellFormed(): string }).toWellFormed();
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

/**
 * Context keys starting with this prefix are Keywarden's own (docs/format.md §3, §4.9): callers may
 * not use them in an envelope's context, so that an entry Keywarden adds can never collide with one
 * of the caller's, nor be supplied by a caller to imitate it. Like the AWS Encryption SDK's
 * reserved `aws-crypto-` prefix.
 */
export const RESERVED_CONTEXT_PREFIX = 'keywarden:';
/**
 * Added by the signed envelope suite to the context the DEK is wrapped under (never to the
 * envelope body's associated data): the base64url of the message's verification key. So the wrap
 * binds the key that must verify the message, and whoever can only unwrap cannot swap in a key pair
 * of their own (docs/format.md §4.9).
 */
export const VERIFICATION_KEY_CONTEXT_KEY = 'keywarden:verification-key';

/**
 * Refuse a caller's context that uses a reserved key (RESERVED_CONTEXT_PREFIX). Checked by every
 * envelope entry point (encrypt, decrypt, streams) on the caller's context, before anything else
 * happens; the data-key provider itself receives reserved keys from the envelope code.
 */
export function assertNoReservedContextKeys(context: EncryptionContext | undefined, component: string): void {
  if (context === undefined || typeof context !== 'object' || context === null) return;
  for (const k of Object.keys(context)) {
    if (k.startsWith(RESERVED_CONTEXT_PREFIX)) {
      throw new InvalidInputError(
        `${component}: context keys starting with "${RESERVED_CONTEXT_PREFIX}" are reserved for Keywarden ("${printable(k)}")`,
      );
    }
  }
}

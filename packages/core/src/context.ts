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
 * A one-entry memo of something computed from a context object (its encoding, its canonical JSON).
 * An application passes the same context object at a high rate: when `context` is the object seen
 * last, with the same own enumerable keys in the same order holding the same string values, the
 * value computed then is still exact. Only string values are compared; a context holding anything
 * else is never kept. The caller computes (and validates) on a miss, so a hit can only return what
 * a full computation on equal input returned.
 */
export class ContextMemo<T> {
  #object: object | undefined;
  #keys: string[] = [];
  #values: string[] = [];
  #value: T | undefined;

  /** The value kept for `context`, or undefined when it is not the same object with the same pairs. */
  get(context: object): T | undefined {
    if (context !== this.#object) return undefined;
    // for…in rather than Object.keys: no array per call. It also walks inherited enumerable keys:
    // any key not the object's own is a miss (the full path then refuses or encodes it).
    const keys = this.#keys;
    const values = this.#values;
    const ctx = context as Record<string, unknown>;
    let i = 0;
    for (const k in ctx) {
      if (k !== keys[i] || ctx[k] !== values[i] || !Object.hasOwn(ctx, k)) return undefined;
      i++;
    }
    return i === keys.length ? this.#value : undefined;
  }

  /** Keep `value` for `context` (when every value is a string); returns `value`. */
  set(context: object, value: T): T {
    const keys = Object.keys(context);
    const values: string[] = [];
    for (const k of keys) {
      const v = (context as Record<string, unknown>)[k];
      if (typeof v !== 'string') {
        this.#object = undefined;
        return value;
      }
      values.push(v);
    }
    this.#object = context;
    this.#keys = keys;
    this.#values = values;
    this.#value = value;
    return value;
  }
}

const encodedMemo = new ContextMemo<Uint8Array>();

/**
 * encodeContext for callers that only read the result and never keep it (the AAD of a data-key
 * wrap or unwrap is copied next to its header at once): the same context object with the same
 * pairs gets the bytes encoded last time, without the per-call arrays and sort (about 2.5 KB of
 * garbage and a tenth of an unwrap's CPU, issue 12 profile). The prototype and symbol checks run
 * on every call, as in encodeContext. Never hand these bytes to code that may write to them.
 */
export function encodeContextShared(context: EncryptionContext | undefined): Uint8Array {
  if (context === undefined || context === null || typeof context !== 'object') return encodeContext(context);
  const proto = Object.getPrototypeOf(context);
  if ((proto === Object.prototype || proto === null) && Object.getOwnPropertySymbols(context).length === 0) {
    const hit = encodedMemo.get(context);
    if (hit !== undefined) return hit;
  }
  return encodedMemo.set(context, encodeContext(context));
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

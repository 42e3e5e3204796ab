/**
 * Wrapped data keys, format v1 (docs/format.md §2 "Wrapped data key").
 *
 *   offset  size  field
 *   0       3     magic "KWK" (0x4B 0x57 0x4B)
 *   3       1     format version = 0x01
 *   4       1     suite id: 0x02 XAES-256-GCM, 192-bit random nonce (every new wrap)
 *                           0x01 AES-256-GCM, 96-bit random nonce (unwrap only)
 *   5       1     KEK id length L (1..64, ASCII [A-Za-z0-9_-])
 *   6       L     KEK id
 *   6+L     4     KEK version, u32 big-endian (≥ 1)
 *   10+L    N     nonce: N = 24 (suite 0x02) or 12 (suite 0x01)
 *   10+L+N  48    wrapped DEK: ciphertext (32) ‖ tag (16)
 *
 * Associated data = bytes [0, 10+L) ‖ canonical context. The KEK reference, the suite and the
 * context are therefore checked cryptographically: a DEK wrapped under one key, version or context
 * can never be unwrapped under another, even if a look-up table were wrong.
 *
 * Suite 0x02 derives a fresh AES-256-GCM key per wrap from the KEK and the random nonce
 * (XAES-256-GCM, _xaes.ts), so random nonces no longer wear out a KEK version after 2³² wraps
 * (SP 800-38D §8.3): no wrap counter is needed, in any process (docs/format.md §2.1).
 */
import { assertBytes, concatBytes, u32be, u8, utf8 } from './_bytes.js';
import { GCM_NONCE_BYTES, GCM_TAG_BYTES, gcmOpen, gcmSeal } from './aead.js';
import { XAES_NONCE_BYTES, type XaesKeySchedule, xaesOpen, xaesSeal } from './_xaes.js';
import { type EncryptionContext, encodeContextShared } from './context.js';
import { FormatError, InvalidInputError } from './errors.js';
import type { KeyExpectation } from './key-expectation.js';

export const WRAPPED_KEY_MAGIC = Uint8Array.of(0x4b, 0x57, 0x4b);
export const WRAPPED_KEY_VERSION = 0x01;
/** Suite 0x01: AES-256-GCM under the KEK itself, 96-bit random nonce. Unwrap only since the
 * 0x02 suite: its wraps count against SP 800-38D §8.3's 2³² random-nonce budget per KEK version. */
export const SUITE_DEK_AES256GCM = 0x01;
/** Suite 0x02: XAES-256-GCM (C2SP), 192-bit random nonce, a derived key per wrap. */
export const SUITE_DEK_XAES256GCM = 0x02;
export type WrapSuite = typeof SUITE_DEK_AES256GCM | typeof SUITE_DEK_XAES256GCM;
/** The suite every new wrap uses. */
export const DEFAULT_WRAP_SUITE: WrapSuite = SUITE_DEK_XAES256GCM;
/** Nonce length of DEFAULT_WRAP_SUITE: what a key provider draws from its CSPRNG per wrap. */
export const WRAP_NONCE_BYTES = XAES_NONCE_BYTES;
export const DEK_BYTES = 32;
export const MAX_KEY_ID_BYTES = 64;
const KEY_ID_RE = /^[A-Za-z0-9_-]{1,64}$/;
const FIXED_BYTES = 6 + 4 + DEK_BYTES + GCM_TAG_BYTES; // 58: everything but the KEK id and nonce

/** Nonce length per suite; undefined for a suite this version does not know. */
function suiteNonceBytes(suite: number): number | undefined {
  if (suite === SUITE_DEK_XAES256GCM) return XAES_NONCE_BYTES;
  if (suite === SUITE_DEK_AES256GCM) return GCM_NONCE_BYTES;
  return undefined;
}

/** Exact length of a wrapped key of `suite` whose KEK id is `idLen` bytes. */
export function wrappedKeyLength(suite: WrapSuite, idLen: number): number {
  return FIXED_BYTES + idLen + (suiteNonceBytes(suite) as number);
}

/** Hard bounds checked on both sides (house style: Tink's wrapped-key bound): 71 (suite 0x01,
 * 1-byte KEK id) ..146 (suite 0x02, 64-byte KEK id). The envelope header's W uses the same. */
export const MIN_WRAPPED_KEY_BYTES = wrappedKeyLength(SUITE_DEK_AES256GCM, 1);
export const MAX_WRAPPED_KEY_BYTES = wrappedKeyLength(SUITE_DEK_XAES256GCM, MAX_KEY_ID_BYTES);

/** Reference to one KEK version. */
export interface KekRef {
  keyId: string;
  version: number;
}

export interface ParsedWrappedKey extends KekRef {
  suite: number;
  /** Header bytes [0, 10+L): the fixed part of the associated data. */
  header: Uint8Array;
  nonce: Uint8Array;
  sealed: Uint8Array;
}

export function checkKekRef(ref: KekRef): void {
  if (typeof ref.keyId !== 'string' || !KEY_ID_RE.test(ref.keyId)) {
    throw new InvalidInputError('data key: KEK id must be 1..64 characters of [A-Za-z0-9_-]');
  }
  if (!Number.isInteger(ref.version) || ref.version < 1 || ref.version > 0xffffffff) {
    throw new InvalidInputError('data key: KEK version must be an integer in 1..2^32-1');
  }
}

function header(ref: KekRef, suite: WrapSuite): Uint8Array {
  const id = utf8.encode(ref.keyId);
  return concatBytes(WRAPPED_KEY_MAGIC, u8(WRAPPED_KEY_VERSION), u8(suite), u8(id.length), id, u32be(ref.version));
}

/**
 * Wrap a 32-byte DEK under one KEK version's material. `nonce` must be fresh from a CSPRNG and
 * as long as the suite needs (WRAP_NONCE_BYTES = 24 for the default suite 0x02; 12 for 0x01,
 * which only tests and the golden vectors of old data should still make).
 */
export function wrapDataKey(
  kek: Uint8Array,
  ref: KekRef,
  dek: Uint8Array,
  context: EncryptionContext | undefined,
  nonce: Uint8Array,
  suite: WrapSuite = DEFAULT_WRAP_SUITE,
  /** Internal (keywarden.ts): `kek`'s XAES key schedule, kept with the cached KEK. */
  schedule?: XaesKeySchedule,
): Uint8Array {
  checkKekRef(ref);
  const nonceBytes = suiteNonceBytes(suite);
  if (nonceBytes === undefined) throw new InvalidInputError(`data key: unknown wrap suite ${suite}`);
  assertBytes(dek, 'data key: DEK', DEK_BYTES);
  assertBytes(nonce, `data key: nonce of suite ${suite}`, nonceBytes);
  const h = header(ref, suite);
  const aad = concatBytes(h, encodeContextShared(context));
  const sealed =
    suite === SUITE_DEK_XAES256GCM ? xaesSeal(schedule ?? kek, nonce, dek, aad) : gcmSeal(kek, nonce, dek, aad);
  return concatBytes(h, nonce, sealed);
}

/**
 * Strict parse: magic, version, suite and every length are checked before anything is sliced,
 * and the total length must be exact. Throws FormatError; never touches key material.
 */
export function parseWrappedKey(bytes: Uint8Array): ParsedWrappedKey {
  if (!(bytes instanceof Uint8Array)) throw new InvalidInputError('data key: wrapped key must be a Uint8Array');
  if (bytes.length < MIN_WRAPPED_KEY_BYTES || bytes.length > MAX_WRAPPED_KEY_BYTES) {
    throw new FormatError('data key: wrapped key has an invalid length');
  }
  if (bytes[0] !== 0x4b || bytes[1] !== 0x57 || bytes[2] !== 0x4b)
    throw new FormatError('data key: not a Keywarden wrapped key');
  if (bytes[3] !== WRAPPED_KEY_VERSION) throw new FormatError(`data key: unsupported format version ${bytes[3]}`);
  const suite = bytes[4] as number;
  const nonceBytes = suiteNonceBytes(suite);
  if (nonceBytes === undefined) throw new FormatError(`data key: unsupported suite ${suite}`);
  const idLen = bytes[5] as number;
  if (idLen < 1 || idLen > MAX_KEY_ID_BYTES) throw new FormatError('data key: invalid KEK id length');
  // Exact length per suite, checked before anything is sliced.
  if (bytes.length !== wrappedKeyLength(suite as WrapSuite, idLen)) {
    throw new FormatError('data key: wrapped key has an invalid length');
  }
  const keyId = Buffer.from(bytes.subarray(6, 6 + idLen)).toString('latin1');
  if (!KEY_ID_RE.test(keyId)) throw new FormatError('data key: invalid KEK id');
  const hEnd = 6 + idLen + 4;
  const version = new DataView(bytes.buffer, bytes.byteOffset + 6 + idLen, 4).getUint32(0);
  if (version < 1) throw new FormatError('data key: invalid KEK version');
  return {
    keyId,
    version,
    suite,
    header: bytes.subarray(0, hEnd),
    nonce: bytes.subarray(hEnd, hEnd + nonceBytes),
    sealed: bytes.subarray(hEnd + nonceBytes),
  };
}

/** Unwrap a parsed wrapped key with the KEK material of the version it names (either suite). */
export function unwrapDataKey(
  kek: Uint8Array,
  parsed: ParsedWrappedKey,
  context: EncryptionContext | undefined,
  /** Internal (keywarden.ts): `kek`'s XAES key schedule, kept with the cached KEK. */
  schedule?: XaesKeySchedule,
): Uint8Array {
  const aad = concatBytes(parsed.header, encodeContextShared(context));
  if (parsed.suite === SUITE_DEK_XAES256GCM) {
    return xaesOpen(schedule ?? kek, parsed.nonce, parsed.sealed, aad, 'data key');
  }
  if (parsed.suite === SUITE_DEK_AES256GCM) return gcmOpen(kek, parsed.nonce, parsed.sealed, aad, 'data key');
  throw new FormatError(`data key: unsupported suite ${parsed.suite}`);
}

/** A freshly generated data key: use `plaintext`, store `wrapped` beside the data, wipe `plaintext`. */
export interface DataKey {
  plaintext: Uint8Array;
  wrapped: Uint8Array;
  keyId: string;
  version: number;
}

/** What envelope encryption needs from a key manager (Keywarden implements it). */
export interface DataKeyProvider {
  generateDataKey(key: string, context?: EncryptionContext): Promise<DataKey>;
  /**
   * Unwrap a data key. Contract: `expected` is checked first (key-expectation.ts): unless it is
   * `{ anyKeyInStore: true }`, a wrapped key under a KEK that is not one of `expected.key` is
   * refused with UnexpectedKeyError before any KEK is used.
   */
  decryptDataKey(
    wrapped: Uint8Array,
    context: EncryptionContext | undefined,
    expected: KeyExpectation,
  ): Promise<Uint8Array>;
}

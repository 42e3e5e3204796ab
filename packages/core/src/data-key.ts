/**
 * Wrapped data keys, format v1 (docs/format.md §2 "Wrapped data key").
 *
 *   offset  size  field
 *   0       3     magic "KWK" (0x4B 0x57 0x4B)
 *   3       1     format version = 0x01
 *   4       1     suite id = 0x01 (32-byte DEK wrapped with AES-256-GCM, 96-bit random nonce)
 *   5       1     KEK id length L (1..64, ASCII [A-Za-z0-9_-])
 *   6       L     KEK id
 *   6+L     4     KEK version, u32 big-endian (≥ 1)
 *   10+L    12    nonce
 *   22+L    48    wrapped DEK: AES-256-GCM ciphertext (32) ‖ tag (16)
 *
 * Associated data = bytes [0, 10+L) ‖ canonical context. The KEK reference and the context are
 * therefore checked cryptographically: a DEK wrapped under one key, version or context can never
 * be unwrapped under another, even if a look-up table were wrong.
 */
import { assertBytes, concatBytes, u32be, u8, utf8 } from './_bytes.js';
import { GCM_NONCE_BYTES, GCM_TAG_BYTES, gcmOpen, gcmSeal } from './aead.js';
import { encodeContext, type EncryptionContext } from './context.js';
import { FormatError, InvalidInputError } from './errors.js';

export const WRAPPED_KEY_MAGIC = Uint8Array.of(0x4b, 0x57, 0x4b);
export const WRAPPED_KEY_VERSION = 0x01;
export const SUITE_DEK_AES256GCM = 0x01;
export const DEK_BYTES = 32;
export const MAX_KEY_ID_BYTES = 64;
const KEY_ID_RE = /^[A-Za-z0-9_-]{1,64}$/;
/** Hard bound checked on both sides (house style: Tink's wrapped-key bound). */
export const MAX_WRAPPED_KEY_BYTES = 6 + MAX_KEY_ID_BYTES + 4 + GCM_NONCE_BYTES + DEK_BYTES + GCM_TAG_BYTES;

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

function header(ref: KekRef): Uint8Array {
  const id = utf8.encode(ref.keyId);
  return concatBytes(
    WRAPPED_KEY_MAGIC,
    u8(WRAPPED_KEY_VERSION),
    u8(SUITE_DEK_AES256GCM),
    u8(id.length),
    id,
    u32be(ref.version),
  );
}

/** Wrap a 32-byte DEK under one KEK version's material. `nonce` must be fresh from a CSPRNG. */
export function wrapDataKey(
  kek: Uint8Array,
  ref: KekRef,
  dek: Uint8Array,
  context: EncryptionContext | undefined,
  nonce: Uint8Array,
): Uint8Array {
  checkKekRef(ref);
  assertBytes(dek, 'data key: DEK', DEK_BYTES);
  const h = header(ref);
  const sealed = gcmSeal(kek, nonce, dek, concatBytes(h, encodeContext(context)));
  return concatBytes(h, nonce, sealed);
}

/**
 * Strict parse: magic, version, suite and every length are checked before anything is sliced,
 * and the total length must be exact. Throws FormatError; never touches key material.
 */
export function parseWrappedKey(bytes: Uint8Array): ParsedWrappedKey {
  if (!(bytes instanceof Uint8Array)) throw new InvalidInputError('data key: wrapped key must be a Uint8Array');
  if (bytes.length < 6 || bytes.length > MAX_WRAPPED_KEY_BYTES) {
    throw new FormatError('data key: wrapped key has an invalid length');
  }
  if (bytes[0] !== 0x4b || bytes[1] !== 0x57 || bytes[2] !== 0x4b)
    throw new FormatError('data key: not a Keywarden wrapped key');
  if (bytes[3] !== WRAPPED_KEY_VERSION) throw new FormatError(`data key: unsupported format version ${bytes[3]}`);
  const suite = bytes[4] as number;
  if (suite !== SUITE_DEK_AES256GCM) throw new FormatError(`data key: unsupported suite ${suite}`);
  const idLen = bytes[5] as number;
  if (idLen < 1 || idLen > MAX_KEY_ID_BYTES) throw new FormatError('data key: invalid KEK id length');
  const expected = 6 + idLen + 4 + GCM_NONCE_BYTES + DEK_BYTES + GCM_TAG_BYTES;
  if (bytes.length !== expected) throw new FormatError('data key: wrapped key has an invalid length');
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
    nonce: bytes.subarray(hEnd, hEnd + GCM_NONCE_BYTES),
    sealed: bytes.subarray(hEnd + GCM_NONCE_BYTES),
  };
}

/** Unwrap a parsed wrapped key with the KEK material of the version it names. */
export function unwrapDataKey(
  kek: Uint8Array,
  parsed: ParsedWrappedKey,
  context: EncryptionContext | undefined,
): Uint8Array {
  return gcmOpen(kek, parsed.nonce, parsed.sealed, concatBytes(parsed.header, encodeContext(context)), 'data key');
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
  decryptDataKey(wrapped: Uint8Array, context?: EncryptionContext): Promise<Uint8Array>;
}

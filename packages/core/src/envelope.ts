/**
 * Envelope formats v1 and v2 (docs/format.md §4, §4.10): the header codec, the key schedule with
 * key commitment, the single-shot body, the frame codec shared with stream.ts, the text form,
 * header inspection and the header replacement of a rewrap.
 *
 *   header = "KWE" ‖ version ‖ suite ‖ mode ‖ u16 W ‖ wrapped DEK (W) ‖ message id (32)
 *            ‖ commitment (32) [‖ verification key (49), suite 0x02 only] [‖ u32 frame size, framed mode only]
 *   authHeader = v1: the header; v2: the header with u16 W ‖ wrapped DEK replaced by u8 L ‖ KEK id
 *                (docs/format.md §4.10), so that the wrapped DEK can be replaced (rewrap) while
 *                every byte of the body stays valid
 *   single-shot body = nonce (12) ‖ AES-256-GCM(encKey, nonce, plaintext, authHeader ‖ context)
 *   framed body      = frames (docs/format.md §4.4; sealing and opening below, streaming in stream.ts)
 *   suite 0x02 only  = the body is followed by an ECDSA P-384 signature (96) over every byte before it
 *                      (docs/format.md §4.9, _signature.ts)
 *
 * Every length read from the bytes is bounded before it is used to slice or to wait for more input,
 * and the header is at most MAX_HEADER_BYTES, so a hostile envelope cannot make us allocate.
 *
 * Public API: encryptEnvelope, decryptEnvelope, envelopeToText, envelopeFromText, inspectEnvelope
 * and the option/info types. The other exports (header and frame codec, key schedule) are internal:
 * shared with stream.ts and the tests, not re-exported from the package index.
 */
import { createHash } from 'node:crypto';
import { assertBytes, concatBytes, constantTimeEqual, toBase64Url, u16be, u32be, u8, utf8, wipe } from './_bytes.js';
import {
  AES256_KEY_BYTES,
  GCM_NONCE_BYTES,
  GCM_TAG_BYTES,
  gcmOpen,
  gcmSeal,
  gcmSealAfter,
  hkdfExpand,
  hkdfExtract,
} from './aead.js';
import {
  MessageSigner,
  MessageVerifier,
  SIGNATURE_BYTES,
  VERIFICATION_KEY_BYTES,
  verificationKeyContextValue,
} from './_signature.js';
import {
  assertNoReservedContextKeys,
  encodeContext,
  type EncryptionContext,
  MAX_CONTEXT_BYTES,
  MAX_CONTEXT_PAIRS,
  VERIFICATION_KEY_CONTEXT_KEY,
} from './context.js';
import {
  DEK_BYTES,
  MAX_WRAPPED_KEY_BYTES,
  MIN_WRAPPED_KEY_BYTES,
  parseWrappedKey,
  type DataKey,
  type DataKeyProvider,
} from './data-key.js';
import { DecryptionError, FormatError, InvalidInputError } from './errors.js';
import { checkKeyExpectation, type KeyExpectation, toKeyExpectation } from './key-expectation.js';
import { nodeRandom } from './random.js';

// ---------------------------------------------------------------------------------------------
// Constants (docs/format.md §4.1, §4.7)

export const ENVELOPE_MAGIC = Uint8Array.of(0x4b, 0x57, 0x45); // "KWE"
/** Format v1: the whole header (wrapped DEK included) is the body's AAD; read, no longer written. */
export const ENVELOPE_VERSION_1 = 0x01;
/** Format v2 (docs/format.md §4.10): the wrapped DEK is outside the body's AAD and can be replaced. */
export const ENVELOPE_VERSION_2 = 0x02;
/** The version every new envelope is written in. */
export const ENVELOPE_VERSION = ENVELOPE_VERSION_2;
export type EnvelopeFormatVersion = typeof ENVELOPE_VERSION_1 | typeof ENVELOPE_VERSION_2;
/** AES-256-GCM data, HKDF-SHA256 derivation, key commitment, DEK wrapped as in docs/format.md §2. */
export const SUITE_AES256GCM_HKDF_COMMIT = 0x01;
/** Suite 0x01 plus a per-message ECDSA P-384 / SHA-384 signature whose verification key is in the
 * header and bound into the DEK wrap (docs/format.md §4.9). Opt-in: `signed: true`. */
export const SUITE_AES256GCM_HKDF_COMMIT_ECDSA_P384 = 0x02;
export const MODE_SINGLE_SHOT = 0x00;
export const MODE_FRAMED = 0x01;

export const MESSAGE_ID_BYTES = 32;
export const COMMITMENT_BYTES = 32;
/** Bounds of W, the "KWK" v1 blob in the header (docs/format.md §2): 71 (suite 0x01, 1-character
 * KEK id) .. 146 (suite 0x02, 64-character KEK id), defined once in data-key.ts. */
export { MIN_WRAPPED_KEY_BYTES };
/** magic (3) ‖ version ‖ suite ‖ mode ‖ u16 W: enough to know the header length. */
const PREFIX_BYTES = 8;
const FRAME_SIZE_FIELD_BYTES = 4;
export const MAX_HEADER_BYTES =
  PREFIX_BYTES +
  MAX_WRAPPED_KEY_BYTES +
  MESSAGE_ID_BYTES +
  COMMITMENT_BYTES +
  VERIFICATION_KEY_BYTES +
  FRAME_SIZE_FIELD_BYTES;
/** Suite 0x02: the signature after the body (IEEE P1363 r ‖ s, fixed length). */
export { SIGNATURE_BYTES, VERIFICATION_KEY_BYTES };
/** The reserved context pair a signed envelope adds to its DEK wrap: u16 + 26-byte key + u16 + 66-byte value. */
const VERIFICATION_KEY_PAIR_BYTES = 4 + VERIFICATION_KEY_CONTEXT_KEY.length + 66;

/** Plaintext bound for one single-shot envelope; larger data goes through createEncryptStream. */
export const MAX_SINGLE_SHOT_PLAINTEXT = 64 * 1024 * 1024;
export const MIN_FRAME_SIZE = 1024;
export const MAX_FRAME_SIZE = 4 * 1024 * 1024;
export const DEFAULT_FRAME_SIZE = 64 * 1024;
/** type (1) ‖ u32 sequence number ‖ u32 content length. */
export const FRAME_HEADER_BYTES = 9;
/** Sequence numbers start at 1 and never wrap; the last one may only be a final frame. */
export const MAX_FRAME_SEQUENCE = 0xffffffff;
const FRAME_REGULAR = 0x00;
const FRAME_FINAL = 0x01;

const INFO_DATA_KEY = utf8.encode('keywarden/v1/data-key');
const INFO_COMMIT = utf8.encode('keywarden/v1/commit');
const INFO_DATA_KEY_V2 = utf8.encode('keywarden/v2/data-key');
const INFO_COMMIT_V2 = utf8.encode('keywarden/v2/commit');
const FRAME_AAD_LABEL = utf8.encode('KWF1');

export const TEXT_PREFIX = 'kw1.';

// ---------------------------------------------------------------------------------------------
// Public types

export interface EnvelopeEncryptOptions {
  /** Name or id of the KEK that wraps this message's DEK. */
  key: string;
  /** Authenticated, never encrypted, never stored: pass the same context to decrypt. Keys starting
   * with "keywarden:" are reserved. */
  context?: EncryptionContext;
  /**
   * Sign the envelope (suite 0x02, docs/format.md §4.9): a fresh ECDSA P-384 key pair per message,
   * its verification key bound into the DEK wrap, the signature over the whole envelope. For readers
   * who may decrypt but must not be able to forge; they must decrypt with `requireSigned: true`.
   */
  signed?: boolean;
}

/**
 * Decryption takes the expected key (`key`: a KEK name or id, or a list of them) or, for tools
 * only, `anyKeyInStore: true`; one of the two is required (key-expectation.ts).
 */
export interface EnvelopeDecryptOptions extends KeyExpectation {
  /** The context given to encrypt. */
  context?: EncryptionContext;
  /**
   * Accept only signed envelopes (suite 0x02); an unsigned one is refused with FormatError before
   * any key is used. Without it both suites decrypt, and whoever can forge an unsigned envelope
   * (anyone who may unwrap data keys in this context) can send one instead of a signed one.
   */
  requireSigned?: boolean;
}

export type EnvelopeMode = 'single-shot' | 'framed';

/** Non-secret header fields. Unauthenticated claims until the envelope decrypts. */
export interface EnvelopeInfo {
  formatVersion: number;
  suite: number;
  mode: EnvelopeMode;
  keyId: string;
  keyVersion: number;
  /** Framed envelopes only. */
  frameSize?: number;
  /** Present (true) for signed envelopes (suite 0x02) only. */
  signed?: true;
}

/** A parsed header. `bytes` is a private copy of exactly the header bytes; `authBytes` what every
 * AAD and the signature cover in its place (v1: `bytes` itself; v2: the header without the wrapped
 * DEK, docs/format.md §4.10). */
export interface EnvelopeHeader extends EnvelopeInfo {
  formatVersion: EnvelopeFormatVersion;
  bytes: Uint8Array;
  authBytes: Uint8Array;
  wrappedKey: Uint8Array;
  messageId: Uint8Array;
  commitment: Uint8Array;
  /** Suite 0x02 only: the compressed P-384 verification key (49 bytes). */
  verificationKey?: Uint8Array;
}

/** The random source signature used for message ids and nonces. */
export type RandomBytes = (length: number) => Uint8Array;

/** The only source the published API uses: the OS CSPRNG. A replacement exists solely for the golden
 * vectors, behind the test-only module _testing.ts (not reachable from the package). */
export const defaultRandom: RandomBytes = (length) => nodeRandom.randomBytesSync(length);

// ---------------------------------------------------------------------------------------------
// Key schedule (docs/format.md §4.2)

export interface MessageKeys {
  /** AES-256-GCM key for the body. Secret: wipe after use. */
  encKey: Uint8Array;
  /** Key commitment stored in the header. Not secret. */
  commitment: Uint8Array;
}

/**
 * RFC 5869 HKDF-SHA256 with the message id as salt (§3.1: a random salt strengthens extraction)
 * and the suite byte in `info`, so keys of different suites are independent. The data key and the
 * commitment come from the same PRK with different labels; learning the commitment tells nothing
 * about the data key (RFC 5869 §3.2). Format v2 has its own labels and adds the KEK id to `info`
 * (docs/format.md §4.10): the commitment then commits to the DEK and to the KEK id, and v1 and v2
 * never share a key.
 */
export function deriveMessageKeys(
  dek: Uint8Array,
  messageId: Uint8Array,
  suite: number,
  formatVersion: EnvelopeFormatVersion = ENVELOPE_VERSION_1,
  keyId?: string,
): MessageKeys {
  assertBytes(dek, 'envelope: DEK', DEK_BYTES);
  assertBytes(messageId, 'envelope: message id', MESSAGE_ID_BYTES);
  // Both outputs share one extract (same IKM and salt): HKDF-SHA256(dek, messageId, info, L) each.
  const prk = hkdfExtract(messageId, dek);
  try {
    return {
      encKey: hkdfExpand(
        prk,
        keyScheduleInfo(INFO_DATA_KEY, INFO_DATA_KEY_V2, suite, formatVersion, keyId),
        AES256_KEY_BYTES,
      ),
      commitment: hkdfExpand(
        prk,
        keyScheduleInfo(INFO_COMMIT, INFO_COMMIT_V2, suite, formatVersion, keyId),
        COMMITMENT_BYTES,
      ),
    };
  } finally {
    wipe(prk);
  }
}

/** The commitment alone (deriveMessageKeys without the body key): what a rewrap checks. */
function deriveCommitment(
  dek: Uint8Array,
  messageId: Uint8Array,
  suite: number,
  formatVersion: EnvelopeFormatVersion,
  keyId: string,
): Uint8Array {
  const prk = hkdfExtract(messageId, dek);
  try {
    return hkdfExpand(prk, keyScheduleInfo(INFO_COMMIT, INFO_COMMIT_V2, suite, formatVersion, keyId), COMMITMENT_BYTES);
  } finally {
    wipe(prk);
  }
}

/** HKDF `info`: v1 label ‖ suite; v2 label ‖ suite ‖ u8 L ‖ KEK id (docs/format.md §4.2, §4.10). */
function keyScheduleInfo(
  v1: Uint8Array,
  v2: Uint8Array,
  suite: number,
  formatVersion: EnvelopeFormatVersion,
  keyId: string | undefined,
): Uint8Array {
  if (formatVersion !== ENVELOPE_VERSION_2) return concatBytes(v1, u8(suite));
  if (typeof keyId !== 'string') throw new InvalidInputError('envelope: format v2 keys need the KEK id');
  return concatBytes(v2, u8(suite), keyIdField(keyId));
}

// ---------------------------------------------------------------------------------------------
// Header codec (docs/format.md §4.1)

function modeName(mode: number): EnvelopeMode {
  return mode === MODE_FRAMED ? 'framed' : 'single-shot';
}

/**
 * Validate the fixed 8-byte prefix and return the full header length. This is the only place a
 * length is read before the header is complete, and it is bounded here (≤ MAX_HEADER_BYTES).
 */
export function headerLengthFromPrefix(prefix: Uint8Array): number {
  if (prefix.length < PREFIX_BYTES) throw new FormatError('envelope: truncated header');
  if (prefix[0] !== 0x4b || prefix[1] !== 0x57 || prefix[2] !== 0x45) {
    throw new FormatError('envelope: not a Keywarden envelope (bad magic)');
  }
  if (prefix[3] !== ENVELOPE_VERSION_1 && prefix[3] !== ENVELOPE_VERSION_2) {
    throw new FormatError(`envelope: unsupported format version ${prefix[3]}`);
  }
  const suite = prefix[4] as number;
  if (suite !== SUITE_AES256GCM_HKDF_COMMIT && suite !== SUITE_AES256GCM_HKDF_COMMIT_ECDSA_P384) {
    throw new FormatError(`envelope: unsupported suite ${suite}`);
  }
  const mode = prefix[5] as number;
  if (mode !== MODE_SINGLE_SHOT && mode !== MODE_FRAMED) throw new FormatError(`envelope: unknown mode ${mode}`);
  const w = ((prefix[6] as number) << 8) | (prefix[7] as number);
  if (w < MIN_WRAPPED_KEY_BYTES || w > MAX_WRAPPED_KEY_BYTES) {
    throw new FormatError(
      `envelope: wrapped data key length ${w} is outside ${MIN_WRAPPED_KEY_BYTES}..${MAX_WRAPPED_KEY_BYTES}`,
    );
  }
  return (
    PREFIX_BYTES +
    w +
    MESSAGE_ID_BYTES +
    COMMITMENT_BYTES +
    (suite === SUITE_AES256GCM_HKDF_COMMIT_ECDSA_P384 ? VERIFICATION_KEY_BYTES : 0) +
    (mode === MODE_FRAMED ? FRAME_SIZE_FIELD_BYTES : 0)
  );
}

/** Bytes after the body: the signature of suite 0x02, nothing for suite 0x01. */
export function trailerLength(suite: number): number {
  return suite === SUITE_AES256GCM_HKDF_COMMIT_ECDSA_P384 ? SIGNATURE_BYTES : 0;
}

export function checkFrameSize(frameSize: number, what: string): void {
  if (!Number.isSafeInteger(frameSize) || frameSize < MIN_FRAME_SIZE || frameSize > MAX_FRAME_SIZE) {
    throw new InvalidInputError(`envelope: ${what} must be an integer in ${MIN_FRAME_SIZE}..${MAX_FRAME_SIZE}`);
  }
}

/** The length of the envelope header at the start of `bytes` (at least its first 8 bytes), from
 * the prefix alone: for reading a header from a file before the rest (keywarden rewrap). */
export function envelopeHeaderLength(bytes: Uint8Array): number {
  assertBytes(bytes, 'envelope: envelope');
  return headerLengthFromPrefix(bytes);
}

/** u8 L ‖ KEK id (ASCII, 1..64 characters, checked by the "KWK" parser): the KEK id as format v2
 * binds it (docs/format.md §4.10). */
function keyIdField(keyId: string): Uint8Array {
  return concatBytes(u8(keyId.length), utf8.encode(keyId));
}

/**
 * What the body's AAD and the signature cover in place of the header (docs/format.md §4.10):
 * v1, the header itself; v2, the header with `u16 W ‖ wrapped DEK` replaced by `u8 L ‖ KEK id`.
 */
function authenticatedHeader(header: Uint8Array, formatVersion: number, w: number, keyId: string): Uint8Array {
  if (formatVersion === ENVELOPE_VERSION_1) return header;
  return concatBytes(header.subarray(0, 6), keyIdField(keyId), header.subarray(PREFIX_BYTES + w));
}

/**
 * Parse the header at the start of `bytes` (which may hold more: the body). Strict: every field is
 * checked, the wrapped DEK is parsed as a complete "KWK" v1 blob of exactly W bytes, and the frame
 * size must be within MIN_FRAME_SIZE..min(maxFrameSize, MAX_FRAME_SIZE). Throws FormatError.
 */
export function parseHeader(bytes: Uint8Array, maxFrameSize: number = MAX_FRAME_SIZE): EnvelopeHeader {
  const length = headerLengthFromPrefix(bytes);
  if (bytes.length < length) throw new FormatError('envelope: truncated header');
  const header = bytes.slice(0, length); // private copy: the caller may reuse its buffer
  const formatVersion = header[3] as EnvelopeFormatVersion;
  const mode = header[5] as number;
  const w = ((header[6] as number) << 8) | (header[7] as number);
  const wrappedKey = header.subarray(PREFIX_BYTES, PREFIX_BYTES + w);
  let keyId: string;
  let keyVersion: number;
  try {
    ({ keyId, version: keyVersion } = parseWrappedKey(wrappedKey));
  } catch (cause) {
    throw new FormatError('envelope: invalid wrapped data key', { cause });
  }
  let off = PREFIX_BYTES + w;
  const messageId = header.subarray(off, off + MESSAGE_ID_BYTES);
  off += MESSAGE_ID_BYTES;
  const commitment = header.subarray(off, off + COMMITMENT_BYTES);
  off += COMMITMENT_BYTES;
  const suite = header[4] as number;
  let verificationKey: Uint8Array | undefined;
  if (suite === SUITE_AES256GCM_HKDF_COMMIT_ECDSA_P384) {
    verificationKey = header.subarray(off, off + VERIFICATION_KEY_BYTES);
    off += VERIFICATION_KEY_BYTES;
    // SEC 1 §2.3.3 compressed form only; whether the point is on the curve is checked when the key
    // is imported (MessageVerifier), before any data key is unwrapped.
    if (verificationKey[0] !== 0x02 && verificationKey[0] !== 0x03) {
      throw new FormatError('envelope: invalid verification key');
    }
  }
  const parsed: EnvelopeHeader = {
    formatVersion,
    suite,
    mode: modeName(mode),
    keyId,
    keyVersion,
    bytes: header,
    authBytes: authenticatedHeader(header, formatVersion, w, keyId),
    wrappedKey,
    messageId,
    commitment,
  };
  if (verificationKey) parsed.verificationKey = verificationKey;
  if (mode === MODE_FRAMED) {
    const frameSize = readU32(header, off);
    const limit = Math.min(maxFrameSize, MAX_FRAME_SIZE);
    if (frameSize < MIN_FRAME_SIZE || frameSize > limit) {
      throw new FormatError(`envelope: frame size ${frameSize} is outside ${MIN_FRAME_SIZE}..${limit}`);
    }
    parsed.frameSize = frameSize;
  }
  return parsed;
}

function encodeHeader(
  formatVersion: EnvelopeFormatVersion,
  suite: number,
  mode: number,
  wrappedKey: Uint8Array,
  messageId: Uint8Array,
  commitment: Uint8Array,
  verificationKey: Uint8Array | undefined,
  frameSize: number | undefined,
): Uint8Array {
  return concatBytes(
    ENVELOPE_MAGIC,
    u8(formatVersion),
    u8(suite),
    u8(mode),
    u16be(wrappedKey.length),
    wrappedKey,
    messageId,
    commitment,
    verificationKey ?? new Uint8Array(0),
    mode === MODE_FRAMED ? u32be(frameSize as number) : new Uint8Array(0),
  );
}

function readU32(b: Uint8Array, off: number): number {
  return new DataView(b.buffer, b.byteOffset + off, 4).getUint32(0);
}

// ---------------------------------------------------------------------------------------------
// Starting and opening a message (shared by the single-shot API and the streams)

/** A message being encrypted: its header, its data key and the canonical context bytes. */
export interface SealingMessage {
  header: Uint8Array;
  /** What the body's AAD and the signature cover in place of the header (v2: without the wrapped DEK). */
  authHeader: Uint8Array;
  /** Secret: the owner wipes it. */
  encKey: Uint8Array;
  contextBytes: Uint8Array;
  /** Suite 0x02 only: the message's signing key, already fed the header. The owner signs the rest of
   * the envelope with it, or disposes of it. */
  signer?: MessageSigner;
}

function drawRandom(random: RandomBytes, length: number, what: string): Uint8Array {
  const bytes = random(length);
  assertBytes(bytes, `envelope: random ${what}`, length);
  return bytes;
}

export function checkEncryptOptions(options: EnvelopeEncryptOptions): Uint8Array {
  if (typeof options !== 'object' || options === null) throw new InvalidInputError('envelope: options are required');
  if (typeof options.key !== 'string' || options.key.length === 0) {
    throw new InvalidInputError('envelope: options.key must be a non-empty key name or id');
  }
  if (options.signed !== undefined && typeof options.signed !== 'boolean') {
    throw new InvalidInputError('envelope: options.signed must be true, false or absent');
  }
  const contextBytes = encodeContext(options.context);
  assertNoReservedContextKeys(options.context, 'envelope');
  if (options.signed === true) {
    // The DEK of a signed envelope is wrapped under the context plus one reserved pair (§4.9):
    // leave room for it within the context limits of §3.
    const pairs = ((contextBytes[0] as number) << 8) | (contextBytes[1] as number);
    if (pairs + 1 > MAX_CONTEXT_PAIRS || contextBytes.length + VERIFICATION_KEY_PAIR_BYTES > MAX_CONTEXT_BYTES) {
      throw new InvalidInputError(
        `envelope: the context of a signed envelope is limited to ${MAX_CONTEXT_PAIRS - 1} pairs and ${MAX_CONTEXT_BYTES - VERIFICATION_KEY_PAIR_BYTES} bytes encoded (one pair is reserved for the verification key)`,
      );
    }
  }
  return contextBytes;
}

/** Check the decryption options shared by decryptEnvelope and createDecryptStream. */
export function checkRequireSigned(options: EnvelopeDecryptOptions): boolean {
  if (options.requireSigned !== undefined && typeof options.requireSigned !== 'boolean') {
    throw new InvalidInputError('envelope: options.requireSigned must be true, false or absent');
  }
  assertNoReservedContextKeys(options.context, 'envelope');
  return options.requireSigned === true;
}

/** Refuse an unsigned envelope when signed ones are required: visible without a key (§4.9). */
export function checkSignedRequirement(header: EnvelopeHeader, requireSigned: boolean): void {
  if (requireSigned && header.suite !== SUITE_AES256GCM_HKDF_COMMIT_ECDSA_P384) {
    throw new FormatError(
      `envelope: the envelope is not signed (suite ${header.suite}), and signed envelopes are required`,
    );
  }
}

/**
 * The context the DEK is wrapped under: the caller's, plus, for a signed envelope, the reserved pair
 * that carries the verification key (§4.9). The caller's context holds no reserved key (checked).
 */
function wrapContext(
  context: EncryptionContext | undefined,
  verificationKey: Uint8Array | undefined,
): EncryptionContext | undefined {
  if (!verificationKey) return context;
  return { ...context, [VERIFICATION_KEY_CONTEXT_KEY]: verificationKeyContextValue(verificationKey) };
}

/** A verifier for a signed envelope, already fed the header; undefined for suite 0x01. FormatError
 * when the verification key is not a point on P-384. */
export function startVerifier(header: EnvelopeHeader): MessageVerifier | undefined {
  if (!header.verificationKey) return undefined;
  const verifier = new MessageVerifier(header.verificationKey);
  verifier.update(header.authBytes);
  return verifier;
}

function checkProvider(provider: DataKeyProvider): void {
  if (
    typeof provider !== 'object' ||
    provider === null ||
    typeof provider.generateDataKey !== 'function' ||
    typeof provider.decryptDataKey !== 'function'
  ) {
    throw new InvalidInputError('envelope: provider must implement DataKeyProvider');
  }
}

/**
 * Get a fresh DEK from the provider, draw the message id, derive the message keys and build the
 * header. Postconditions on the provider's answer are checked (32-byte DEK, well-formed wrapped
 * key within MAX_WRAPPED_KEY_BYTES) so a faulty provider cannot produce an unreadable envelope.
 * The DEK is wiped before returning.
 */
export async function beginMessage(
  provider: DataKeyProvider,
  options: EnvelopeEncryptOptions,
  mode: typeof MODE_SINGLE_SHOT | typeof MODE_FRAMED,
  frameSize: number | undefined,
  random: RandomBytes,
  formatVersion: EnvelopeFormatVersion = ENVELOPE_VERSION,
): Promise<SealingMessage> {
  checkProvider(provider);
  const contextBytes = checkEncryptOptions(options);
  if (typeof random !== 'function') throw new InvalidInputError('envelope: random must be a function');
  if (mode === MODE_FRAMED) checkFrameSize(frameSize as number, 'frameSize');
  const signed = options.signed === true;
  const suite = signed ? SUITE_AES256GCM_HKDF_COMMIT_ECDSA_P384 : SUITE_AES256GCM_HKDF_COMMIT;
  // Drawn before the DEK is requested: the key pair is made, and its public half bound into the wrap.
  const messageId = drawRandom(random, MESSAGE_ID_BYTES, 'message id');
  const signer = signed ? MessageSigner.generate(random) : undefined;
  let dataKey: DataKey;
  try {
    dataKey = await provider.generateDataKey(options.key, wrapContext(options.context, signer?.verificationKey));
  } catch (err) {
    signer?.dispose();
    throw err;
  }
  if (typeof dataKey !== 'object' || dataKey === null || !(dataKey.plaintext instanceof Uint8Array)) {
    signer?.dispose();
    throw new InvalidInputError('envelope: the provider returned no data key');
  }
  let ok = false;
  try {
    assertBytes(dataKey.plaintext, 'envelope: DEK from the provider', DEK_BYTES);
    assertBytes(dataKey.wrapped, 'envelope: wrapped DEK from the provider');
    let keyId: string;
    try {
      keyId = parseWrappedKey(dataKey.wrapped).keyId;
    } catch (cause) {
      throw new FormatError('envelope: the provider returned an invalid wrapped data key', { cause });
    }
    const { encKey, commitment } = deriveMessageKeys(dataKey.plaintext, messageId, suite, formatVersion, keyId);
    const header = encodeHeader(
      formatVersion,
      suite,
      mode,
      dataKey.wrapped,
      messageId,
      commitment,
      signer?.verificationKey,
      frameSize,
    );
    const authHeader = authenticatedHeader(header, formatVersion, dataKey.wrapped.length, keyId);
    const message: SealingMessage = { header, authHeader, encKey, contextBytes };
    if (signer) {
      signer.update(authHeader);
      message.signer = signer;
    }
    ok = true;
    return message;
  } finally {
    wipe(dataKey.plaintext);
    if (!ok) signer?.dispose();
  }
}

/**
 * Unwrap the DEK through the provider, recompute the commitment and compare it in constant time
 * with the header's, then return the body key (the caller wipes it). No data is decrypted before
 * the commitment matches. Authentication failures of the provider become the envelope's single
 * DecryptionError; operational errors (unknown key, disabled version, sealed store) pass through.
 */
export async function openMessageKey(
  provider: DataKeyProvider,
  header: EnvelopeHeader,
  context: EncryptionContext | undefined,
  expected: KeyExpectation,
): Promise<Uint8Array> {
  const dek = await unwrapHeaderKey(provider, header, context, expected);
  try {
    const { encKey, commitment } = deriveMessageKeys(
      dek,
      header.messageId,
      header.suite,
      header.formatVersion,
      header.keyId,
    );
    if (!constantTimeEqual(commitment, header.commitment)) {
      wipe(encKey);
      throw new DecryptionError('envelope');
    }
    return encKey;
  } finally {
    wipe(dek);
  }
}

/**
 * Unwrap the header's DEK (under the wrap context: the caller's, plus the verification key of a
 * signed envelope) and check the key commitment against it in constant time; return the DEK (the
 * caller wipes it). For a rewrap (Keywarden.rewrapEnvelope), which wraps the same DEK again and so
 * must know it is the envelope's; it derives no body key.
 */
export async function openCommittedDataKey(
  provider: DataKeyProvider,
  header: EnvelopeHeader,
  context: EncryptionContext | undefined,
  expected: KeyExpectation,
): Promise<Uint8Array> {
  const dek = await unwrapHeaderKey(provider, header, context, expected);
  let ok = false;
  try {
    const commitment = deriveCommitment(dek, header.messageId, header.suite, header.formatVersion, header.keyId);
    if (!constantTimeEqual(commitment, header.commitment)) throw new DecryptionError('envelope');
    ok = true;
    return dek;
  } finally {
    if (!ok) wipe(dek);
  }
}

/** The provider's unwrap of the header's DEK: authentication failures become the envelope's single
 * DecryptionError, other errors pass through; the answer is checked (32 bytes). */
async function unwrapHeaderKey(
  provider: DataKeyProvider,
  header: EnvelopeHeader,
  context: EncryptionContext | undefined,
  expected: KeyExpectation,
): Promise<Uint8Array> {
  checkProvider(provider);
  let dek: Uint8Array;
  try {
    dek = await provider.decryptDataKey(header.wrappedKey, wrapContext(context, header.verificationKey), expected);
  } catch (err) {
    if (DecryptionError.isInstance(err)) throw new DecryptionError('envelope');
    throw err;
  }
  if (!(dek instanceof Uint8Array))
    throw new InvalidInputError('envelope: the provider returned a DEK that is not bytes');
  try {
    assertBytes(dek, 'envelope: DEK from the provider', DEK_BYTES);
  } catch (err) {
    wipe(dek);
    throw err;
  }
  return dek;
}

/** The context a header's DEK is wrapped under (the caller's, plus a signed envelope's
 * verification key, §4.9): what a rewrap wraps the DEK under again. */
export function headerWrapContext(
  header: EnvelopeHeader,
  context: EncryptionContext | undefined,
): EncryptionContext | undefined {
  return wrapContext(context, header.verificationKey);
}

/**
 * A format v2 header with its wrapped DEK replaced (docs/format.md §4.10): same version, suite,
 * mode, message id, commitment, verification key and frame size. `wrappedKey` must be a "KWK" blob
 * under the same KEK id (FormatError otherwise: a different KEK id changes the authenticated header
 * and the commitment, so the body would no longer open).
 */
export function replaceWrappedKey(header: EnvelopeHeader, wrappedKey: Uint8Array): Uint8Array {
  if (header.formatVersion !== ENVELOPE_VERSION_2) {
    throw new FormatError('envelope: only a format v2 header can have its wrapped data key replaced');
  }
  let keyId: string;
  try {
    keyId = parseWrappedKey(wrappedKey).keyId;
  } catch (cause) {
    throw new FormatError('envelope: invalid replacement wrapped data key', { cause });
  }
  if (keyId !== header.keyId) throw new FormatError('envelope: the replacement data key is under another KEK');
  const mode = header.mode === 'framed' ? MODE_FRAMED : MODE_SINGLE_SHOT;
  const out = encodeHeader(
    ENVELOPE_VERSION_2,
    header.suite,
    mode,
    wrappedKey,
    header.messageId,
    header.commitment,
    header.verificationKey,
    header.frameSize,
  );
  // Postcondition: only the wrapped DEK changed; what the body authenticates is byte-identical.
  if (!constantTimeEqual(authenticatedHeader(out, ENVELOPE_VERSION_2, wrappedKey.length, keyId), header.authBytes)) {
    throw new FormatError('envelope: the rewrapped header does not authenticate the same body');
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Frame codec (docs/format.md §4.4)

export interface FrameHeader {
  final: boolean;
  seq: number;
  length: number;
}

/** NIST SP 800-38D §8.2.1 deterministic construction: 8-byte zero fixed field ‖ u32 invocation field. */
export function frameNonce(seq: number): Uint8Array {
  const nonce = new Uint8Array(GCM_NONCE_BYTES);
  new DataView(nonce.buffer).setUint32(8, seq);
  return nonce;
}

/** "KWF1" ‖ SHA-256(header ‖ context): computed once per message, so a large context costs once. */
export function frameAadPrefix(header: Uint8Array, contextBytes: Uint8Array): Uint8Array {
  const digest = createHash('sha256').update(header).update(contextBytes).digest();
  return concatBytes(FRAME_AAD_LABEL, digest);
}

function encodeFrameHeader(final: boolean, seq: number, length: number): Uint8Array {
  return concatBytes(u8(final ? FRAME_FINAL : FRAME_REGULAR), u32be(seq), u32be(length));
}

/**
 * Check a frame header against the position it must have. Everything here is visible without a
 * key, so violations are FormatError (docs/format.md §4.6). The length is bounded by the frame
 * size before the caller waits for, or slices, the frame's body.
 */
export function parseFrameHeader(bytes: Uint8Array, frameSize: number, expectedSeq: number): FrameHeader {
  if (bytes.length < FRAME_HEADER_BYTES) throw new FormatError('envelope: truncated frame');
  const type = bytes[0] as number;
  if (type !== FRAME_REGULAR && type !== FRAME_FINAL) throw new FormatError(`envelope: unknown frame type ${type}`);
  const final = type === FRAME_FINAL;
  const seq = readU32(bytes, 1);
  if (seq !== expectedSeq) throw new FormatError('envelope: frame out of sequence');
  if (!final && seq === MAX_FRAME_SEQUENCE) throw new FormatError('envelope: frame sequence number overflow');
  const length = readU32(bytes, 5);
  if (final ? length > frameSize : length !== frameSize) {
    throw new FormatError(
      final
        ? 'envelope: final frame longer than the frame size'
        : 'envelope: regular frame length is not the frame size',
    );
  }
  return { final, seq, length };
}

/** Seals the frames of one message in order. Owns `encKey` and wipes it in dispose(). */
export class FrameSealer {
  private seq: number;
  private finished = false;

  /** `firstSeq` is 1 in the format; other values exist only to test the overflow guard. */
  constructor(
    private readonly encKey: Uint8Array,
    private readonly aadPrefix: Uint8Array,
    private readonly frameSize: number,
    firstSeq = 1,
  ) {
    this.seq = firstSeq;
  }

  /** Regular frames carry exactly frameSize bytes; the final frame 0..frameSize. */
  seal(content: Uint8Array, final: boolean): Uint8Array {
    if (this.finished) throw new InvalidInputError('envelope: the final frame was already written');
    if (final ? content.length > this.frameSize : content.length !== this.frameSize) {
      throw new InvalidInputError('envelope: frame content length does not fit the frame size');
    }
    // A regular frame at the last sequence number would leave no number for the final frame.
    if (this.seq < 1 || this.seq > MAX_FRAME_SEQUENCE || (!final && this.seq === MAX_FRAME_SEQUENCE)) {
      throw new InvalidInputError(
        'envelope: message too long for this frame size (frame sequence number would overflow); use a larger frameSize',
      );
    }
    const head = encodeFrameHeader(final, this.seq, content.length);
    const aad = concatBytes(this.aadPrefix, head);
    // frame = header ‖ ciphertext ‖ tag, written once (no second copy of the ciphertext).
    const frame = gcmSealAfter(head, this.encKey, frameNonce(this.seq), content, aad);
    this.seq += 1;
    if (final) this.dispose();
    return frame;
  }

  get done(): boolean {
    return this.finished;
  }

  dispose(): void {
    this.finished = true;
    wipe(this.encKey);
  }
}

/**
 * Opens the frames of one message in order: readHeader() validates the next frame header (before
 * its body is awaited), open() verifies the tag and only then returns the plaintext.
 * Owns `encKey` and wipes it in dispose() (called automatically after the final frame).
 */
export class FrameOpener {
  private expectedSeq = 1;
  private pending: FrameHeader | undefined;
  private finished = false;

  constructor(
    private readonly encKey: Uint8Array,
    private readonly aadPrefix: Uint8Array,
    private readonly frameSize: number,
  ) {}

  get done(): boolean {
    return this.finished;
  }

  readHeader(bytes: Uint8Array): FrameHeader {
    if (this.finished) throw new FormatError('envelope: data after the final frame');
    if (this.pending) throw new InvalidInputError('envelope: frame header read twice');
    this.pending = parseFrameHeader(bytes, this.frameSize, this.expectedSeq);
    return this.pending;
  }

  /** `sealed` is exactly the pending frame's ciphertext ‖ tag. */
  open(sealed: Uint8Array): Uint8Array {
    const frame = this.pending;
    if (!frame) throw new InvalidInputError('envelope: no frame header read');
    if (sealed.length !== frame.length + GCM_TAG_BYTES) throw new FormatError('envelope: truncated frame');
    const aad = concatBytes(this.aadPrefix, encodeFrameHeader(frame.final, frame.seq, frame.length));
    const plaintext = gcmOpen(this.encKey, frameNonce(frame.seq), sealed, aad, 'envelope');
    this.pending = undefined;
    this.expectedSeq += 1;
    if (frame.final) this.dispose();
    return plaintext;
  }

  dispose(): void {
    this.finished = true;
    wipe(this.encKey);
  }
}

interface FrameSpan {
  headerAt: number;
  bodyAt: number;
  bodyEnd: number;
}

/**
 * Structural pass over an in-memory framed body, with no key: sequence, types, lengths, exactly one
 * final frame, then exactly `trailer` bytes (the signature of suite 0x02) and nothing after them.
 * Lets decryptEnvelope reject malformed input before asking the provider to unwrap anything.
 */
function scanFrames(body: Uint8Array, frameSize: number, trailer: number): FrameSpan[] {
  const spans: FrameSpan[] = [];
  let off = 0;
  for (let seq = 1; ; seq++) {
    if (body.length - off < FRAME_HEADER_BYTES) {
      throw new FormatError('envelope: truncated (the data ended before the final frame)');
    }
    const frame = parseFrameHeader(body.subarray(off, off + FRAME_HEADER_BYTES), frameSize, seq);
    const bodyAt = off + FRAME_HEADER_BYTES;
    const bodyEnd = bodyAt + frame.length + GCM_TAG_BYTES;
    if (bodyEnd > body.length) throw new FormatError('envelope: truncated (the data ended before the final frame)');
    spans.push({ headerAt: off, bodyAt, bodyEnd });
    off = bodyEnd;
    if (frame.final) break;
  }
  if (trailer > 0 && body.length - off < trailer) {
    throw new FormatError('envelope: truncated (the signature after the final frame is missing)');
  }
  if (off + trailer !== body.length) {
    throw new FormatError(trailer > 0 ? 'envelope: data after the signature' : 'envelope: data after the final frame');
  }
  return spans;
}

// ---------------------------------------------------------------------------------------------
// Single-shot body (docs/format.md §4.3)

const SINGLE_SHOT_OVERHEAD = GCM_NONCE_BYTES + GCM_TAG_BYTES;
export const MAX_SINGLE_SHOT_BODY = SINGLE_SHOT_OVERHEAD + MAX_SINGLE_SHOT_PLAINTEXT;

/** `length` counts everything after the header, the signature of suite 0x02 included. */
export function checkSingleShotBodyLength(length: number, suite: number): void {
  const trailer = trailerLength(suite);
  if (length < SINGLE_SHOT_OVERHEAD + trailer) throw new FormatError('envelope: truncated single-shot body');
  if (length > MAX_SINGLE_SHOT_BODY + trailer)
    throw new FormatError('envelope: single-shot body exceeds the size limit');
}

/**
 * Verify a suite 0x02 signature over `signedParts` (everything before the signature, header
 * included) with the header's key: any failure is the envelope's single DecryptionError. Returns
 * without doing anything for suite 0x01.
 */
export function verifyEnvelopeSignature(
  header: EnvelopeHeader,
  signedParts: readonly Uint8Array[],
  signature: Uint8Array,
): void {
  const verifier = startVerifier(header);
  if (!verifier) return;
  for (const part of signedParts) verifier.update(part);
  if (!verifier.verify(signature)) throw new DecryptionError('envelope');
}

/** Open a single-shot body whose length has been checked. Wipes nothing it does not own. */
export function openSingleShotBody(
  encKey: Uint8Array,
  header: Uint8Array,
  contextBytes: Uint8Array,
  body: Uint8Array,
): Uint8Array {
  const nonce = body.subarray(0, GCM_NONCE_BYTES);
  return gcmOpen(encKey, nonce, body.subarray(GCM_NONCE_BYTES), concatBytes(header, contextBytes), 'envelope');
}

// ---------------------------------------------------------------------------------------------
// Public API

/**
 * Encrypt `plaintext` (≤ 64 MiB) into a single-shot envelope under a fresh DEK from `provider`.
 * Guarantee: confidentiality and integrity of the plaintext, integrity of the header and of
 * `options.context`, and key commitment (the envelope decrypts under one DEK only). The message id
 * and the nonce always come from the OS CSPRNG: there is no way to choose them here.
 */
export function encryptEnvelope(
  provider: DataKeyProvider,
  plaintext: Uint8Array,
  options: EnvelopeEncryptOptions,
): Promise<Uint8Array> {
  return encryptEnvelopeWithRandom(provider, plaintext, options, defaultRandom);
}

/**
 * encryptEnvelope with the message id (first call, 32 bytes), for a signed envelope the P-384
 * signing key (next call, 48 bytes) and the nonce (last call, 12 bytes) drawn from `random`. Internal: the published API passes the CSPRNG; only _testing.ts (golden
 * vectors) passes anything else, because a repeated source repeats GCM nonces.
 */
export async function encryptEnvelopeWithRandom(
  provider: DataKeyProvider,
  plaintext: Uint8Array,
  options: EnvelopeEncryptOptions,
  random: RandomBytes,
  formatVersion: EnvelopeFormatVersion = ENVELOPE_VERSION,
): Promise<Uint8Array> {
  // Preconditions: everything the caller controls is checked before a DEK is generated.
  assertBytes(plaintext, 'envelope: plaintext');
  if (plaintext.length > MAX_SINGLE_SHOT_PLAINTEXT) {
    throw new InvalidInputError(
      `envelope: single-shot plaintext is limited to ${MAX_SINGLE_SHOT_PLAINTEXT} bytes; use createEncryptStream for larger data`,
    );
  }
  if (formatVersion !== ENVELOPE_VERSION_1 && formatVersion !== ENVELOPE_VERSION_2) {
    throw new InvalidInputError('envelope: unknown format version');
  }
  const message = await beginMessage(provider, options, MODE_SINGLE_SHOT, undefined, random, formatVersion);
  try {
    const nonce = drawRandom(random, GCM_NONCE_BYTES, 'nonce');
    const aad = concatBytes(message.authHeader, message.contextBytes);
    // Unsigned: header ‖ nonce ‖ ciphertext ‖ tag in one allocation.
    if (!message.signer) return gcmSealAfter(concatBytes(message.header, nonce), message.encKey, nonce, plaintext, aad);
    const sealed = gcmSeal(message.encKey, nonce, plaintext, aad);
    // §4.9: the signature covers every byte before it, the header as authHeader (§4.10) (the signer
    // was already fed it).
    message.signer.update(nonce);
    message.signer.update(sealed);
    return concatBytes(message.header, nonce, sealed, message.signer.sign());
  } finally {
    wipe(message.encKey);
    message.signer?.dispose();
  }
}

/**
 * Decrypt an envelope held in memory, whichever mode produced it (single-shot, or framed by
 * createEncryptStream), if its data key is under the expected key (`options.key`, or deliberately
 * `options.anyKeyInStore: true`). Returns the plaintext only when every check passed
 * (docs/format.md §4.5). InvalidInputError when no expected key is given; UnexpectedKeyError (from
 * the provider) for data under another key; FormatError for malformed bytes, and for an unsigned
 * envelope when `options.requireSigned` is true; DecryptionError('envelope') for any authentication
 * failure, a bad signature included. A signed envelope's signature is verified before any key is
 * used, and nothing is returned unless it verifies.
 */
export async function decryptEnvelope(
  provider: DataKeyProvider,
  envelope: Uint8Array,
  options: EnvelopeDecryptOptions,
): Promise<Uint8Array> {
  assertBytes(envelope, 'envelope: envelope');
  if (typeof options !== 'object' || options === null)
    throw new InvalidInputError('envelope: options must be an object');
  const expected = toKeyExpectation(checkKeyExpectation(options, 'envelope'));
  const contextBytes = encodeContext(options.context);
  const requireSigned = checkRequireSigned(options);
  const header = parseHeader(envelope);
  checkSignedRequirement(header, requireSigned);
  const trailer = trailerLength(header.suite);
  const afterHeader = envelope.subarray(header.bytes.length);
  // Suite 0x02: the signature is verified (§4.9) after the structural checks and before any key is
  // used, so nothing is unwrapped for bytes that do not verify, and nothing is returned unverified.

  if (header.mode === 'single-shot') {
    checkSingleShotBodyLength(afterHeader.length, header.suite);
    const body = afterHeader.subarray(0, afterHeader.length - trailer);
    verifyEnvelopeSignature(header, [body], afterHeader.subarray(body.length));
    const encKey = await openMessageKey(provider, header, options.context, expected);
    try {
      return openSingleShotBody(encKey, header.authBytes, contextBytes, body);
    } finally {
      wipe(encKey);
    }
  }

  const frameSize = header.frameSize as number;
  const spans = scanFrames(afterHeader, frameSize, trailer);
  const body = afterHeader.subarray(0, afterHeader.length - trailer);
  verifyEnvelopeSignature(header, [body], afterHeader.subarray(body.length));
  const encKey = await openMessageKey(provider, header, options.context, expected);
  const opener = new FrameOpener(encKey, frameAadPrefix(header.authBytes, contextBytes), frameSize);
  const parts: Uint8Array[] = [];
  try {
    for (const span of spans) {
      opener.readHeader(body.subarray(span.headerAt, span.bodyAt));
      parts.push(opener.open(body.subarray(span.bodyAt, span.bodyEnd)));
    }
    return concatBytes(...parts);
  } finally {
    wipe(...parts);
    opener.dispose();
  }
}

/** Compact text form for text columns and JSON: "kw1." ‖ base64url (RFC 4648 §5), no padding. */
export function envelopeToText(envelope: Uint8Array): string {
  assertBytes(envelope, 'envelope: envelope');
  return TEXT_PREFIX + toBase64Url(envelope);
}

const BASE64URL_BODY = /^[A-Za-z0-9_-]+$/;

/**
 * Strict inverse of envelopeToText: exact prefix, base64url alphabet only, no padding, canonical
 * (no impossible length, no stray bits), so one envelope has exactly one text form.
 */
export function envelopeFromText(text: string): Uint8Array {
  if (typeof text !== 'string') throw new InvalidInputError('envelope: text form must be a string');
  if (!text.startsWith(TEXT_PREFIX)) throw new FormatError('envelope: text form must start with "kw1."');
  const body = text.slice(TEXT_PREFIX.length);
  if (body.length === 0 || body.length % 4 === 1 || !BASE64URL_BODY.test(body)) {
    throw new FormatError('envelope: text form is not unpadded base64url');
  }
  const bytes = new Uint8Array(Buffer.from(body, 'base64url'));
  if (toBase64Url(bytes) !== body) throw new FormatError('envelope: text form is not canonical base64url');
  return bytes;
}

/**
 * Read the non-secret header fields without any key (CLI display, finding envelopes to rewrap).
 * Parses the header strictly but authenticates nothing: the values are claims until decryption.
 */
export function inspectEnvelope(envelope: Uint8Array): EnvelopeInfo {
  assertBytes(envelope, 'envelope: envelope');
  const h = parseHeader(envelope);
  const info: EnvelopeInfo = {
    formatVersion: h.formatVersion,
    suite: h.suite,
    mode: h.mode,
    keyId: h.keyId,
    keyVersion: h.keyVersion,
  };
  if (h.frameSize !== undefined) info.frameSize = h.frameSize;
  if (h.suite === SUITE_AES256GCM_HKDF_COMMIT_ECDSA_P384) info.signed = true;
  return info;
}

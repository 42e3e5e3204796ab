/**
 * Streaming envelope encryption and decryption as node:stream Transforms (docs/format.md §4.4, §5).
 * The byte format (header, frames, key schedule) lives in envelope.ts; this file only moves bytes:
 * it buffers at most about one frame, and it releases a frame's plaintext only after that frame's
 * AES-GCM tag has been verified (NIST SP 800-38D §7.2: no output before the tag check).
 *
 * Caveat that no streaming AEAD avoids: a decryptor that releases verified frames before the end
 * cannot know yet whether the stream will be truncated. Truncation is detected (the final frame is
 * missing) and reported as an error at the end; consumers must treat their output as incomplete
 * until the stream finishes without error.
 *
 * Signed envelopes (suite 0x02, docs/format.md §4.9) sharpen this: each frame is still released once
 * its AES-GCM tag verifies (so it was made by someone who holds the message's DEK), but whether the
 * message's SIGNATURE verifies is known only at the end. A reader who can unwrap data keys can
 * therefore make a stream whose frames are released and which then fails at the end. A consumer of a
 * signed stream must not act on any output until the stream ends without error (as with the AWS
 * Encryption SDK's streaming decryption of signed messages); to be given nothing before the
 * signature verifies, use decryptEnvelope (in memory) instead.
 */
import { Transform, type TransformCallback } from 'node:stream';
import { wipe } from './_bytes.js';
import { GCM_TAG_BYTES } from './aead.js';
import { encodeContext, type EncryptionContext } from './context.js';
import type { DataKeyProvider } from './data-key.js';
import {
  DEFAULT_FRAME_SIZE,
  ENVELOPE_VERSION,
  ENVELOPE_VERSION_1,
  ENVELOPE_VERSION_2,
  type EnvelopeFormatVersion,
  FRAME_HEADER_BYTES,
  FrameOpener,
  FrameSealer,
  MAX_FRAME_SIZE,
  MAX_SINGLE_SHOT_BODY,
  MODE_FRAMED,
  SIGNATURE_BYTES,
  beginMessage,
  checkEncryptOptions,
  checkFrameSize,
  checkRequireSigned,
  checkSignedRequirement,
  checkSingleShotBodyLength,
  defaultRandom,
  frameAadPrefix,
  headerLengthFromPrefix,
  openMessageKey,
  openSingleShotBody,
  parseHeader,
  startVerifier,
  trailerLength,
  verifyEnvelopeSignature,
  type EnvelopeDecryptOptions,
  type EnvelopeEncryptOptions,
  type EnvelopeHeader,
  type FrameHeader,
  type RandomBytes,
} from './envelope.js';
import { ClosedError, DecryptionError, FormatError, InvalidInputError } from './errors.js';
import type { MessageSigner, MessageVerifier } from './_signature.js';
import { checkKeyExpectation, type KeyExpectation, toKeyExpectation } from './key-expectation.js';

export interface EncryptStreamOptions extends EnvelopeEncryptOptions {
  /** Plaintext bytes per frame, 1 KiB..4 MiB (default 64 KiB). Part of the envelope header. */
  frameSize?: number;
}

export interface DecryptStreamOptions extends EnvelopeDecryptOptions {
  /** Refuse envelopes whose header asks for larger frames (bounds memory); 1 KiB..4 MiB, default 4 MiB. */
  maxFrameSize?: number;
}

/**
 * A FIFO of owned byte chunks. Input chunks are copied in (the writer may reuse its buffer once
 * the write callback ran); with `wipeConsumed`, each private copy is zeroed once fully read, so
 * plaintext does not linger in memory the stream owns.
 */
class ByteQueue {
  private chunks: Uint8Array[] = [];
  private head = 0;
  private offset = 0;
  length = 0;

  constructor(private readonly wipeConsumed: boolean) {}

  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.chunks.push(Uint8Array.prototype.slice.call(chunk));
    this.length += chunk.length;
  }

  /** Copy of the first `n` bytes, not consumed. */
  peek(n: number): Uint8Array {
    return this.read(n, false);
  }

  /** Remove and return exactly `n` bytes (n ≤ length) in a fresh array. */
  take(n: number): Uint8Array {
    return this.read(n, true);
  }

  clear(): void {
    if (this.wipeConsumed) wipe(...this.chunks.slice(this.head));
    this.chunks = [];
    this.head = 0;
    this.offset = 0;
    this.length = 0;
  }

  private read(n: number, consume: boolean): Uint8Array {
    if (n > this.length) throw new RangeError('ByteQueue: not enough bytes');
    const out = new Uint8Array(n);
    let filled = 0;
    let head = this.head;
    let offset = this.offset;
    while (filled < n) {
      const chunk = this.chunks[head] as Uint8Array;
      const k = Math.min(chunk.length - offset, n - filled);
      out.set(chunk.subarray(offset, offset + k), filled);
      filled += k;
      offset += k;
      if (offset === chunk.length) {
        if (consume && this.wipeConsumed) wipe(chunk);
        head += 1;
        offset = 0;
      }
    }
    if (consume) {
      this.head = head;
      this.offset = offset;
      this.length -= n;
      // Compact now and then so that many tiny writes stay linear overall.
      if (this.head > 64 && this.head * 2 > this.chunks.length) {
        this.chunks = this.chunks.slice(this.head);
        this.head = 0;
      }
    }
    return out;
  }
}

/** Run an async step and report it to a stream callback exactly once. */
function settle(step: () => Promise<void>, callback: TransformCallback): void {
  step().then(
    () => callback(),
    (err: unknown) => callback(err instanceof Error ? err : new Error(String(err))),
  );
}

class EnvelopeEncryptStream extends Transform {
  private sealer: FrameSealer | undefined;
  /** Signed envelopes only: fed every byte pushed, signs at the end. */
  private signer: MessageSigner | undefined;
  private readonly plaintext = new ByteQueue(true);

  constructor(
    private readonly provider: DataKeyProvider,
    private readonly options: EnvelopeEncryptOptions,
    private readonly frameSize: number,
    private readonly random: RandomBytes,
    private readonly formatVersion: EnvelopeFormatVersion,
  ) {
    super();
  }

  /** The DEK is requested on the first write or at the end (an empty stream is a valid message). */
  private async start(): Promise<FrameSealer> {
    if (this.sealer) return this.sealer;
    const message = await beginMessage(
      this.provider,
      this.options,
      MODE_FRAMED,
      this.frameSize,
      this.random,
      this.formatVersion,
    );
    if (this.destroyed) {
      // Destroyed while the provider was working: nobody will dispose of the key but us.
      wipe(message.encKey);
      message.signer?.dispose();
      throw new ClosedError('envelope: the stream was destroyed');
    }
    // The frames authenticate the header as authHeader (v2: without the wrapped DEK, §4.10).
    this.sealer = new FrameSealer(
      message.encKey,
      frameAadPrefix(message.authHeader, message.contextBytes),
      this.frameSize,
    );
    this.signer = message.signer; // already fed the header
    this.push(message.header);
    return this.sealer;
  }

  /** Push a sealed frame, and feed it to the signature of a signed envelope (§4.9). */
  private pushFrame(frame: Uint8Array): void {
    this.signer?.update(frame);
    this.push(frame);
  }

  override _transform(chunk: Uint8Array, _encoding: BufferEncoding, callback: TransformCallback): void {
    settle(async () => {
      const sealer = await this.start();
      this.plaintext.push(chunk);
      // Emit a regular frame only when more bytes are known to follow, so the last frame is always
      // the final one and the layout depends only on the total length (docs/format.md §4.4).
      while (this.plaintext.length > this.frameSize) {
        const content = this.plaintext.take(this.frameSize);
        try {
          this.pushFrame(sealer.seal(content, false));
        } finally {
          wipe(content);
        }
      }
    }, callback);
  }

  override _flush(callback: TransformCallback): void {
    settle(async () => {
      const sealer = await this.start();
      const content = this.plaintext.take(this.plaintext.length);
      try {
        this.pushFrame(sealer.seal(content, true));
      } finally {
        wipe(content);
      }
      // Signed envelopes end with the signature over everything before it.
      if (this.signer) this.push(this.signer.sign());
    }, callback);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.sealer?.dispose();
    this.signer?.dispose();
    this.plaintext.clear();
    callback(error);
  }
}

type DecryptState = 'header' | 'frames' | 'single-shot' | 'signature' | 'done';

class EnvelopeDecryptStream extends Transform {
  private state: DecryptState = 'header';
  private readonly input = new ByteQueue(false);
  private header: EnvelopeHeader | undefined;
  private opener: FrameOpener | undefined;
  private frame: FrameHeader | undefined;
  /** Signed framed envelopes: fed the header and every frame as it arrives, checked at the end. */
  private verifier: MessageVerifier | undefined;

  constructor(
    private readonly provider: DataKeyProvider,
    private readonly context: EncryptionContext | undefined,
    private readonly contextBytes: Uint8Array,
    private readonly maxFrameSize: number,
    private readonly expected: KeyExpectation,
    private readonly requireSigned: boolean,
  ) {
    super();
  }

  override _transform(chunk: Uint8Array, _encoding: BufferEncoding, callback: TransformCallback): void {
    settle(() => this.accept(chunk), callback);
  }

  private async accept(chunk: Uint8Array): Promise<void> {
    switch (this.state) {
      case 'done':
        if (chunk.length > 0) throw new FormatError('envelope: data after the final frame');
        return;
      case 'signature':
        this.input.push(chunk);
        this.checkSignatureLength();
        return;
      case 'single-shot':
        // Single-shot bodies are bounded (docs/format.md §4.3), so buffering one is bounded too.
        if (this.input.length + chunk.length > this.singleShotLimit()) {
          throw new FormatError('envelope: single-shot body exceeds the size limit');
        }
        this.input.push(chunk);
        return;
      case 'header':
        this.input.push(chunk);
        if (await this.readHeader()) this.readFrames();
        return;
      case 'frames':
        this.input.push(chunk);
        this.readFrames();
        return;
    }
  }

  /** True once a framed header has been read and its message key opened. */
  private async readHeader(): Promise<boolean> {
    if (this.input.length < 8) return false;
    // Validates magic, version, suite, mode and the wrapped-key length before waiting for more.
    const length = headerLengthFromPrefix(this.input.peek(8));
    if (this.input.length < length) return false;
    const header = parseHeader(this.input.take(length), this.maxFrameSize);
    checkSignedRequirement(header, this.requireSigned);
    this.header = header;
    if (header.mode === 'single-shot') {
      this.state = 'single-shot';
      if (this.input.length > this.singleShotLimit()) {
        throw new FormatError('envelope: single-shot body exceeds the size limit');
      }
      return false;
    }
    // A malformed verification key is refused here, before any data key is unwrapped.
    this.verifier = startVerifier(header);
    const encKey = await openMessageKey(this.provider, header, this.context, this.expected);
    if (this.destroyed) {
      wipe(encKey);
      throw new ClosedError('envelope: the stream was destroyed');
    }
    this.opener = new FrameOpener(
      encKey,
      frameAadPrefix(header.authBytes, this.contextBytes),
      header.frameSize as number,
    );
    this.state = 'frames';
    return true;
  }

  /** Open every complete frame in the buffer; each frame header is checked before its body is awaited. */
  private readFrames(): void {
    const opener = this.opener as FrameOpener;
    for (;;) {
      if (opener.done) {
        if (this.verifier) {
          // Signed: the signature follows the final frame, and is checked at the end of the input.
          this.state = 'signature';
          this.checkSignatureLength();
          return;
        }
        if (this.input.length > 0) throw new FormatError('envelope: data after the final frame');
        this.state = 'done';
        return;
      }
      if (!this.frame) {
        if (this.input.length < FRAME_HEADER_BYTES) return;
        const head = this.input.take(FRAME_HEADER_BYTES);
        this.frame = opener.readHeader(head);
        this.verifier?.update(head);
      }
      const sealedLength = this.frame.length + GCM_TAG_BYTES;
      if (this.input.length < sealedLength) return;
      const sealed = this.input.take(sealedLength);
      const plaintext = opener.open(sealed);
      this.verifier?.update(sealed);
      this.frame = undefined;
      if (plaintext.length > 0) this.push(plaintext);
    }
  }

  /** The most a single-shot body of this envelope's suite can be, its signature included. */
  private singleShotLimit(): number {
    return MAX_SINGLE_SHOT_BODY + trailerLength((this.header as EnvelopeHeader).suite);
  }

  /** After the final frame of a signed envelope: at most the signature's bytes, nothing more. */
  private checkSignatureLength(): void {
    if (this.input.length > SIGNATURE_BYTES) throw new FormatError('envelope: data after the signature');
  }

  override _flush(callback: TransformCallback): void {
    settle(async () => {
      if (this.state === 'done') return;
      if (this.state === 'signature') {
        // Truncation that removes the signature (or part of it) is detected here, at the end.
        if (this.input.length !== SIGNATURE_BYTES) {
          throw new FormatError('envelope: truncated (the signature after the final frame is missing)');
        }
        const verified = (this.verifier as MessageVerifier).verify(this.input.take(SIGNATURE_BYTES));
        if (!verified) throw new DecryptionError('envelope');
        this.state = 'done';
        return;
      }
      if (this.state === 'single-shot') {
        const header = this.header as EnvelopeHeader;
        checkSingleShotBodyLength(this.input.length, header.suite);
        const trailer = trailerLength(header.suite);
        const body = this.input.take(this.input.length - trailer);
        // Suite 0x02: nothing is unwrapped or released before the signature verifies (§4.9).
        verifyEnvelopeSignature(header, [body], this.input.take(trailer));
        const encKey = await openMessageKey(this.provider, header, this.context, this.expected);
        try {
          this.push(openSingleShotBody(encKey, header.authBytes, this.contextBytes, body));
        } finally {
          wipe(encKey);
        }
        this.state = 'done';
        return;
      }
      if (this.state === 'header') throw new FormatError('envelope: truncated header');
      throw new FormatError('envelope: truncated (the data ended before the final frame)');
    }, callback);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.opener?.dispose();
    this.input.clear();
    callback(error);
  }
}

/**
 * A Transform that turns plaintext into a framed envelope (docs/format.md §4.4). The DEK is
 * requested from `provider` on the first write (or at the end for an empty input). Options are
 * checked now, synchronously. The message id always comes from the OS CSPRNG.
 */
export function createEncryptStream(provider: DataKeyProvider, options: EncryptStreamOptions): Transform {
  return createEncryptStreamWithRandom(provider, options, defaultRandom);
}

/** createEncryptStream with the 32-byte message id (and, when signed, the 48-byte signing key)
 * drawn from `random`, and for the v1 golden vectors the format version. Internal: only _testing.ts
 * (golden vectors) passes anything but the CSPRNG and the current version. */
export function createEncryptStreamWithRandom(
  provider: DataKeyProvider,
  options: EncryptStreamOptions,
  random: RandomBytes,
  formatVersion: EnvelopeFormatVersion = ENVELOPE_VERSION,
): Transform {
  checkEncryptOptions(options);
  const frameSize = options.frameSize ?? DEFAULT_FRAME_SIZE;
  checkFrameSize(frameSize, 'frameSize');
  if (typeof random !== 'function') throw new InvalidInputError('envelope: random must be a function');
  // Snapshot the options: the DEK is requested later, and must be bound to the context checked now.
  const { key, context, signed } = options;
  const snapshot: EnvelopeEncryptOptions = context === undefined ? { key } : { key, context: { ...context } };
  if (signed === true) snapshot.signed = true;
  if (formatVersion !== ENVELOPE_VERSION_1 && formatVersion !== ENVELOPE_VERSION_2) {
    throw new InvalidInputError('envelope: unknown format version');
  }
  return new EnvelopeEncryptStream(provider, snapshot, frameSize, random, formatVersion);
}

/**
 * A Transform that decrypts an envelope of either mode. Framed envelopes are decrypted frame by
 * frame in bounded memory; single-shot envelopes (≤ 64 MiB of plaintext) are buffered and
 * decrypted at the end of the input. The expected key (`options.key`, or deliberately
 * `options.anyKeyInStore: true`) is required, as for decryptEnvelope. Errors: FormatError for
 * malformed or truncated input, DecryptionError('envelope') for any authentication failure.
 *
 * Signed envelopes (suite 0x02): a signed single-shot envelope is released only after its signature
 * verifies; a signed FRAMED envelope releases each frame once its tag verifies and checks the
 * signature at the end, so the stream may emit data and then fail. Do not act on the output of a
 * signed stream (or of any stream) until it ends without error. `requireSigned: true` refuses
 * unsigned envelopes when the header arrives, before any key is used.
 */
export function createDecryptStream(provider: DataKeyProvider, options: DecryptStreamOptions): Transform {
  if (typeof options !== 'object' || options === null)
    throw new InvalidInputError('envelope: options must be an object');
  // A private copy, checked now: the provider is asked later, once the header has arrived.
  const expected = toKeyExpectation(checkKeyExpectation(options, 'envelope'));
  const contextBytes = encodeContext(options.context);
  const requireSigned = checkRequireSigned(options);
  const maxFrameSize = options.maxFrameSize ?? MAX_FRAME_SIZE;
  checkFrameSize(maxFrameSize, 'maxFrameSize');
  const context = options.context === undefined ? undefined : { ...options.context };
  return new EnvelopeDecryptStream(provider, context, contextBytes, maxFrameSize, expected, requireSigned);
}

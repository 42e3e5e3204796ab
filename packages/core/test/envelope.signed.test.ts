/**
 * The signed envelope suite 0x02 (docs/format.md §4.9, src/_signature.ts): ECDSA P-384 / SHA-384,
 * a key pair per message, its verification key in the header and bound into the DEK wrap through
 * the reserved context key, the signature over every byte before it, in both modes and through
 * every API. Test names repeat the contract text of §4.9.
 *
 * The forging tests play a reader who may UNWRAP data keys (decryptDataKey) but not wrap new ones:
 * the unsigned control shows that such a reader forges suite 0x01 envelopes; every attempt against
 * suite 0x02 must fail.
 */
import { createHash } from 'node:crypto';
import { Readable, type Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { concatBytes, toBase64Url } from '../src/_bytes.js';
import { MessageSigner, SIGNATURE_BYTES, VERIFICATION_KEY_BYTES } from '../src/_signature.js';
import { encryptEnvelopeForTestVectors } from '../src/_testing.js';
import { gcmSeal } from '../src/aead.js';
import { encodeContext, type EncryptionContext, VERIFICATION_KEY_CONTEXT_KEY } from '../src/context.js';
import { SUITE_DEK_XAES256GCM, type DataKey, type DataKeyProvider } from '../src/data-key.js';
import {
  decryptEnvelope,
  deriveMessageKeys,
  encryptEnvelope,
  inspectEnvelope,
  parseHeader,
  type EnvelopeHeader,
} from '../src/envelope.js';
import {
  DecryptionError,
  FormatError,
  InvalidInputError,
  KeyNotFoundError,
  UnexpectedKeyError,
} from '../src/errors.js';
import type { KeyExpectation } from '../src/key-expectation.js';
import { defaultRandom } from '../src/envelope.js';
import { createDecryptStream, createEncryptStream } from '../src/stream.js';
import { DataKeyCache } from '../src/data-key-cache.js';
import { StaticKekProvider, counting } from './vectors/make-golden.js';

const KEY = 'signed-kek';
const F = 1024;
const context = { tenant: 'acme', table: 'invoices' };
const provider = StaticKekProvider.withRandomKek(KEY, 1, SUITE_DEK_XAES256GCM);
/** P-384 group order (SP 800-186 §3.2.1.4). */
const N = BigInt('0xffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973');

/** Counts calls and records the contexts the provider is asked to wrap and unwrap under. */
class RecordingProvider implements DataKeyProvider {
  unwrapped = 0;
  readonly wrapContexts: Array<EncryptionContext | undefined> = [];
  readonly unwrapContexts: Array<EncryptionContext | undefined> = [];
  constructor(readonly inner: DataKeyProvider) {}
  async generateDataKey(key: string, ctx?: EncryptionContext): Promise<DataKey> {
    this.wrapContexts.push(ctx);
    return this.inner.generateDataKey(key, ctx);
  }
  async decryptDataKey(
    wrapped: Uint8Array,
    ctx: EncryptionContext | undefined,
    expected: KeyExpectation,
  ): Promise<Uint8Array> {
    this.unwrapped++;
    this.unwrapContexts.push(ctx);
    return this.inner.decryptDataKey(wrapped, ctx, expected);
  }
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

function* chunked(bytes: Uint8Array, size: number): Generator<Buffer> {
  for (let off = 0; off < bytes.length; off += size) yield Buffer.from(bytes.subarray(off, off + size));
}

/** Push `input` through `transform`; collect what it emitted even when it fails. */
async function run(transform: Transform, input: Uint8Array, size = input.length || 1) {
  const out: Buffer[] = [];
  let error: unknown;
  try {
    await pipeline(Readable.from(chunked(input, size)), transform, async (source) => {
      for await (const chunk of source) out.push(chunk as Buffer);
    });
  } catch (err) {
    error = err;
  }
  return { output: new Uint8Array(Buffer.concat(out)), error };
}

async function ok(transform: Transform, input: Uint8Array, size?: number): Promise<Uint8Array> {
  const { output, error } = await run(transform, input, size);
  if (error) throw error;
  return output;
}

const encryptSigned = (plaintext: Uint8Array, p: DataKeyProvider = provider) =>
  encryptEnvelope(p, plaintext, { key: KEY, context, signed: true });
const encryptSignedStream = (plaintext: Uint8Array, size?: number) =>
  ok(createEncryptStream(provider, { key: KEY, context, frameSize: F, signed: true }), plaintext, size);
const same = (a: Uint8Array, b: Uint8Array) => expect(Buffer.compare(a, b)).toBe(0);

function flipBit(bytes: Uint8Array, bit: number): Uint8Array {
  const copy = bytes.slice();
  copy[bit >> 3]! ^= 1 << (bit & 7);
  return copy;
}

// ---------------------------------------------------------------------------------------------
// Building forgeries by hand (docs/format.md §4.1, §4.2, §4.3, §4.9), as a reader would.

const u16 = (n: number) => Uint8Array.of(n >> 8, n & 0xff);
const u32 = (n: number) => Uint8Array.of(n >>> 24, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff);

function forgeHeader(suite: number, h: EnvelopeHeader, commitment: Uint8Array, vk?: Uint8Array): Uint8Array {
  return concatBytes(
    Uint8Array.of(0x4b, 0x57, 0x45, 0x01, suite, h.mode === 'framed' ? 1 : 0),
    u16(h.wrappedKey.length),
    h.wrappedKey,
    h.messageId,
    commitment,
    vk ?? new Uint8Array(0),
    h.mode === 'framed' ? u32(h.frameSize as number) : new Uint8Array(0),
  );
}

/** A single-shot envelope of `suite` around a known DEK and a given wrapped DEK, signed with
 * `signer` (suite 0x02) — what anyone holding that DEK can build without touching any KEK. */
function forgeSingleShot(
  suite: 1 | 2,
  template: EnvelopeHeader,
  dek: Uint8Array,
  plaintext: Uint8Array,
  signer?: MessageSigner,
  keepVerificationKey?: Uint8Array,
): Uint8Array {
  const { encKey, commitment } = deriveMessageKeys(dek, template.messageId, suite);
  const vk = suite === 2 ? (keepVerificationKey ?? signer?.verificationKey) : undefined;
  const header = forgeHeader(suite, { ...template, mode: 'single-shot' }, commitment, vk);
  const nonce = counting(0x30, 12);
  const sealed = gcmSeal(encKey, nonce, plaintext, concatBytes(header, encodeContext(context)));
  const unsigned = concatBytes(header, nonce, sealed);
  if (suite === 1) return unsigned;
  if (!signer) return concatBytes(unsigned, new Uint8Array(SIGNATURE_BYTES));
  signer.update(unsigned);
  return concatBytes(unsigned, signer.sign());
}

/** The DEK of an envelope, obtained the way a reader with unwrap permission obtains it. */
async function unwrapAsReader(envelope: Uint8Array): Promise<{ header: EnvelopeHeader; dek: Uint8Array }> {
  const header = parseHeader(envelope);
  const wrapCtx = header.verificationKey
    ? { ...context, [VERIFICATION_KEY_CONTEXT_KEY]: toBase64Url(header.verificationKey) }
    : context;
  return { header, dek: await provider.decryptDataKey(header.wrappedKey, wrapCtx, { key: KEY }) };
}

const decrypt = (envelope: Uint8Array, extra: { requireSigned?: boolean } = {}, p: DataKeyProvider = provider) =>
  decryptEnvelope(p, envelope, { key: KEY, context, ...extra });

// ---------------------------------------------------------------------------------------------

describe('suite 0x02: layout and round trips (docs/format.md §4.9)', () => {
  it.each([0, 1, 100, 5000])(
    'a signed single-shot envelope of %i bytes round-trips in memory and through the stream',
    async (n) => {
      const plaintext = counting(n, n);
      const envelope = await encryptSigned(plaintext);
      same(await decrypt(envelope, { requireSigned: true }), plaintext);
      same(await ok(createDecryptStream(provider, { key: KEY, context, requireSigned: true }), envelope, 7), plaintext);
    },
  );

  it.each([0, 1, F - 1, F, F + 1, 3 * F, 3 * F + 5])(
    'a signed framed envelope of %i bytes round-trips through the stream and in memory',
    async (n) => {
      const plaintext = counting(n + 3, n);
      const envelope = await encryptSignedStream(plaintext, 333);
      same(
        await ok(createDecryptStream(provider, { key: KEY, context, requireSigned: true }), envelope, 100),
        plaintext,
      );
      same(await ok(createDecryptStream(provider, { key: KEY, context }), envelope, 1), plaintext);
      same(await decrypt(envelope, { requireSigned: true }), plaintext);
    },
  );

  it('the header is 121 + W bytes (single-shot), the envelope header + 12 + n + 16 + 96; inspect says suite 2, signed', async () => {
    const envelope = await encryptSigned(new Uint8Array(100));
    const h = parseHeader(envelope);
    expect(h.suite).toBe(2);
    expect(h.bytes.length).toBe(121 + h.wrappedKey.length);
    expect(h.verificationKey?.length).toBe(VERIFICATION_KEY_BYTES);
    expect([2, 3]).toContain(h.verificationKey?.[0]);
    expect(envelope.length).toBe(h.bytes.length + 12 + 100 + 16 + 96);
    expect(inspectEnvelope(envelope)).toEqual({
      formatVersion: 2,
      suite: 2,
      mode: 'single-shot',
      keyId: KEY,
      keyVersion: 1,
      signed: true,
    });
    const framed = await encryptSignedStream(new Uint8Array(0));
    expect(parseHeader(framed).bytes.length).toBe(125 + h.wrappedKey.length);
    expect(inspectEnvelope(framed)).toMatchObject({ suite: 2, mode: 'framed', frameSize: F, signed: true });
    // The unsigned suite is unchanged and says nothing about signing.
    expect(inspectEnvelope(await encryptEnvelope(provider, new Uint8Array(1), { key: KEY }))).not.toHaveProperty(
      'signed',
    );
  });

  it('the signing key pair is fresh for every message', async () => {
    const a = parseHeader(await encryptSigned(new Uint8Array(1)));
    const b = parseHeader(await encryptSigned(new Uint8Array(1)));
    expect(a.verificationKey).not.toEqual(b.verificationKey);
  });

  it('the signature is over every byte before it (the header as its format v2 authenticated form), with the header key, and is low-s (s ≤ n/2)', async () => {
    for (let i = 0; i < 8; i++) {
      const envelope = await encryptSigned(counting(i, 40));
      const sig = envelope.subarray(envelope.length - 96);
      const s = BigInt(`0x${Buffer.from(sig.subarray(48)).toString('hex')}`);
      expect(s <= N >> 1n).toBe(true);
      // Raw node:crypto, from the document: SHA-384 ECDSA over authHeader ‖ body, P1363 r ‖ s, where
      // authHeader is the header with u16 W ‖ wrapped DEK replaced by u8 L ‖ KEK id (§4.10).
      const { createPublicKey, verify } = await import('node:crypto');
      const header = parseHeader(envelope);
      const w = (envelope[6]! << 8) | envelope[7]!;
      const authHeader = concatBytes(
        envelope.subarray(0, 6),
        Uint8Array.of(KEY.length),
        new TextEncoder().encode(KEY),
        envelope.subarray(8 + w, header.bytes.length),
      );
      const signed = concatBytes(authHeader, envelope.subarray(header.bytes.length, envelope.length - 96));
      const vk = header.verificationKey as Uint8Array;
      const spki = concatBytes(Buffer.from('3046301006072a8648ce3d020106052b81040022033200', 'hex'), vk);
      const key = createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' });
      expect(verify('sha384', signed, { key, dsaEncoding: 'ieee-p1363' }, sig)).toBe(true);
    }
  });

  it('the DEK of a signed envelope is wrapped under the context plus the reserved verification-key pair; unsigned ones under the context alone', async () => {
    const recording = new RecordingProvider(provider);
    const envelope = await encryptSigned(new Uint8Array(3), recording);
    const vk = parseHeader(envelope).verificationKey as Uint8Array;
    expect(recording.wrapContexts[0]).toEqual({ ...context, 'keywarden:verification-key': toBase64Url(vk) });
    await decrypt(envelope, {}, recording);
    expect(recording.unwrapContexts[0]).toEqual(recording.wrapContexts[0]);
    await encryptEnvelope(recording, new Uint8Array(3), { key: KEY, context });
    expect(recording.wrapContexts[1]).toEqual(context);
    // So the signed envelope's DEK does not unwrap under the caller's context alone.
    const h = parseHeader(envelope);
    expect(
      DecryptionError.isInstance(await rejection(provider.decryptDataKey(h.wrappedKey, context, { key: KEY }))),
    ).toBe(true);
  });

  it('the deterministic test source is asked for the message id, the 48-byte signing key, then the nonce', async () => {
    const sizes: number[] = [];
    const random = (n: number) => {
      sizes.push(n);
      return defaultRandom(n);
    };
    const envelope = await encryptEnvelopeForTestVectors(
      provider,
      new Uint8Array(5),
      { key: KEY, context, signed: true },
      random,
    );
    expect(sizes).toEqual([32, 48, 12]);
    expect(await decrypt(envelope)).toEqual(new Uint8Array(5));
  });

  it('a signing key out of range (0 or ≥ n) is drawn again (FIPS 186-5 §A.2.2); a source that never gives one is refused', () => {
    const draws = [new Uint8Array(48), new Uint8Array(48).fill(0xff), counting(1, 48)];
    let i = 0;
    const signer = MessageSigner.generate(() => (draws[i++] as Uint8Array).slice());
    expect(i).toBe(3);
    expect(signer.verificationKey.length).toBe(49);
    const err = (() => {
      try {
        MessageSigner.generate(() => new Uint8Array(48));
      } catch (e) {
        return e;
      }
    })();
    expect(InvalidInputError.isInstance(err)).toBe(true);
  });
});

describe('options and the reserved context prefix "keywarden:" (docs/format.md §3, §4.9)', () => {
  it('a caller context with a key starting with "keywarden:" is refused by encrypt, decrypt and both streams', async () => {
    const bad = { 'keywarden:verification-key': 'x', tenant: 'acme' };
    for (const signed of [true, false]) {
      expect(
        InvalidInputError.isInstance(
          await rejection(encryptEnvelope(provider, new Uint8Array(1), { key: KEY, context: bad, signed })),
        ),
      ).toBe(true);
    }
    const envelope = await encryptSigned(new Uint8Array(1));
    const recording = new RecordingProvider(provider);
    const err = await rejection(decryptEnvelope(recording, envelope, { key: KEY, context: bad }));
    expect(InvalidInputError.isInstance(err)).toBe(true);
    expect((err as Error).message).toMatch(/^envelope: context keys starting with "keywarden:" are reserved/);
    expect(recording.unwrapped).toBe(0);
    expect(() => createEncryptStream(provider, { key: KEY, context: { 'keywarden:x': '' } })).toThrow(/reserved/);
    expect(() => createDecryptStream(provider, { key: KEY, context: { 'keywarden:x': '' } })).toThrow(/reserved/);
    // Only the prefix is reserved.
    const fine = { 'keywarden-tenant': 'a', 'x:keywarden:': 'b' };
    same(
      await decryptEnvelope(
        provider,
        await encryptEnvelope(provider, Uint8Array.of(9), { key: KEY, context: fine, signed: true }),
        { key: KEY, context: fine },
      ),
      Uint8Array.of(9),
    );
  });

  it('a signed envelope leaves room for the reserved pair: 63 pairs are accepted, 64 refused with a clear message', async () => {
    const pairs = (n: number) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, 'v']));
    const ctx63 = pairs(63);
    const envelope = await encryptEnvelope(provider, Uint8Array.of(1), { key: KEY, context: ctx63, signed: true });
    same(await decryptEnvelope(provider, envelope, { key: KEY, context: ctx63 }), Uint8Array.of(1));
    const err = await rejection(
      encryptEnvelope(provider, Uint8Array.of(1), { key: KEY, context: pairs(64), signed: true }),
    );
    expect(InvalidInputError.isInstance(err)).toBe(true);
    expect((err as Error).message).toMatch(/^envelope: the context of a signed envelope is limited to 63 pairs/);
    // Unsigned envelopes keep the full 64.
    await encryptEnvelope(provider, Uint8Array.of(1), { key: KEY, context: pairs(64) });
  });

  it('signed and requireSigned must be booleans', async () => {
    const e1 = await rejection(
      encryptEnvelope(provider, Uint8Array.of(1), { key: KEY, signed: 'yes' as unknown as boolean }),
    );
    expect(InvalidInputError.isInstance(e1)).toBe(true);
    const envelope = await encryptSigned(Uint8Array.of(1));
    const e2 = await rejection(
      decryptEnvelope(provider, envelope, { key: KEY, context, requireSigned: 1 as unknown as boolean }),
    );
    expect(InvalidInputError.isInstance(e2)).toBe(true);
    expect(() => createDecryptStream(provider, { key: KEY, requireSigned: 'no' as unknown as boolean })).toThrow(
      InvalidInputError,
    );
  });
});

describe('requireSigned: an unsigned envelope is refused before any key is used', () => {
  it('in memory and through the stream, both modes, with FormatError and no unwrap', async () => {
    const single = await encryptEnvelope(provider, counting(0, 10), { key: KEY, context });
    const framed = await ok(createEncryptStream(provider, { key: KEY, context, frameSize: F }), counting(0, 10));
    for (const envelope of [single, framed]) {
      const recording = new RecordingProvider(provider);
      const err = await rejection(decrypt(envelope, { requireSigned: true }, recording));
      expect(FormatError.isInstance(err)).toBe(true);
      expect((err as Error).message).toBe(
        'envelope: the envelope is not signed (suite 1), and signed envelopes are required',
      );
      const streamed = await run(createDecryptStream(recording, { key: KEY, context, requireSigned: true }), envelope);
      expect(FormatError.isInstance(streamed.error)).toBe(true);
      expect(streamed.output.length).toBe(0);
      expect(recording.unwrapped).toBe(0);
      // Without the requirement both suites decrypt (old data keeps working).
      same(await decrypt(envelope), counting(0, 10));
    }
  });
});

describe('a reader who can unwrap data keys cannot forge a signed envelope', () => {
  it('control: against the unsigned suite, the same reader forges a new plaintext that decrypts as authentic', async () => {
    const original = await encryptEnvelope(provider, new TextEncoder().encode('pay 10'), { key: KEY, context });
    const { header, dek } = await unwrapAsReader(original);
    const forged = forgeSingleShot(1, header, dek, new TextEncoder().encode('pay 1000000'));
    expect(new TextDecoder().decode(await decrypt(forged))).toBe('pay 1000000');
  });

  it('keeping the header (and its verification key) and changing the body fails: no private key to sign it', async () => {
    const original = await encryptSigned(new TextEncoder().encode('pay 10'));
    const { header, dek } = await unwrapAsReader(original);
    const vk = header.verificationKey as Uint8Array;
    // With a signature by another key, and with an all-zero signature.
    const other = MessageSigner.generate(defaultRandom);
    for (const forged of [
      forgeSingleShot(2, header, dek, new TextEncoder().encode('pay 1000000'), other, vk),
      forgeSingleShot(2, header, dek, new TextEncoder().encode('pay 1000000'), undefined, vk),
    ]) {
      expect(DecryptionError.isInstance(await rejection(decrypt(forged)))).toBe(true);
    }
  });

  it("re-signing with a key pair of the reader's own fails: the wrapped DEK is bound to the original verification key", async () => {
    const original = await encryptSigned(new TextEncoder().encode('pay 10'));
    const { header, dek } = await unwrapAsReader(original);
    const own = MessageSigner.generate(defaultRandom);
    const forged = forgeSingleShot(2, header, dek, new TextEncoder().encode('pay 1000000'), own);
    // The forgery is well-formed and its signature verifies; only the wrap binding refuses it.
    const recording = new RecordingProvider(provider);
    expect(DecryptionError.isInstance(await rejection(decrypt(forged, {}, recording)))).toBe(true);
    expect(recording.unwrapped).toBe(1);
  });

  it('stripping the signature (re-labelling as suite 0x01 around the same wrapped DEK) fails, and requireSigned refuses it before unwrapping', async () => {
    const original = await encryptSigned(new TextEncoder().encode('pay 10'));
    const { header, dek } = await unwrapAsReader(original);
    const stripped = forgeSingleShot(1, header, dek, new TextEncoder().encode('pay 1000000'));
    expect(DecryptionError.isInstance(await rejection(decrypt(stripped)))).toBe(true);
    const recording = new RecordingProvider(provider);
    expect(FormatError.isInstance(await rejection(decrypt(stripped, { requireSigned: true }, recording)))).toBe(true);
    expect(recording.unwrapped).toBe(0);
  });

  it("an unsigned envelope's wrapped DEK cannot be carried into a signed envelope (it is not bound to any verification key)", async () => {
    const unsigned = await encryptEnvelope(provider, Uint8Array.of(1), { key: KEY, context });
    const { header, dek } = await unwrapAsReader(unsigned);
    const forged = forgeSingleShot(
      2,
      header,
      dek,
      new TextEncoder().encode('pay 1000000'),
      MessageSigner.generate(defaultRandom),
    );
    expect(DecryptionError.isInstance(await rejection(decrypt(forged, { requireSigned: true })))).toBe(true);
  });

  it('a high-s copy of a valid signature ((r, n − s), also valid ECDSA) is refused: one signature per message', async () => {
    const envelope = await encryptSigned(Uint8Array.of(7));
    const at = envelope.length - 48;
    const s = BigInt(`0x${Buffer.from(envelope.subarray(at)).toString('hex')}`);
    const high = envelope.slice();
    high.set(Buffer.from((N - s).toString(16).padStart(96, '0'), 'hex'), at);
    expect(DecryptionError.isInstance(await rejection(decrypt(high)))).toBe(true);
  });
});

describe('tampering and truncation of signed envelopes', () => {
  it('every single-bit flip of a signed single-shot envelope is refused, without returning anything (UnexpectedKeyError or KeyNotFoundError only inside the KEK reference)', async () => {
    const envelope = await encryptSigned(counting(0, 3));
    // Format v2: the signature does not cover the wrapped DEK (so that it can be rewrapped, §4.10), so
    // a flip in the KEK id or version reaches the expected-key check or the provider, which refuse it.
    const idFrom = 8 + 6;
    const idTo = idFrom + KEY.length + 4;
    for (let bit = 0; bit < envelope.length * 8; bit++) {
      const err = await rejection(decrypt(flipBit(envelope, bit)));
      const inKeyId = bit >> 3 >= idFrom && bit >> 3 < idTo;
      const refused =
        FormatError.isInstance(err) ||
        DecryptionError.isInstance(err) ||
        (inKeyId && (UnexpectedKeyError.isInstance(err) || KeyNotFoundError.isInstance(err)));
      expect(refused, `bit ${bit}: ${String(err)}`).toBe(true);
    }
  });

  it('every single-bit flip of a signed framed envelope is refused by the stream (FormatError or DecryptionError; UnexpectedKeyError or KeyNotFoundError only inside the KEK reference)', async () => {
    const envelope = await encryptSignedStream(counting(0, 3));
    const decryptor = () => createDecryptStream(provider, { key: KEY, context });
    // The stream unwraps when the header arrives and verifies the signature at the end, so a flip in
    // the KEK id or version names another key first (docs/format.md §4.5, steps 3-4).
    const idFrom = 8 + 6;
    const idTo = idFrom + KEY.length + 4;
    // Every bit after the header (frames, signature); one bit per header byte (all of them are
    // flipped in memory by the single-shot test above and by envelope.property.test.ts).
    const headerLength = parseHeader(envelope).bytes.length;
    const bits = [
      ...Array.from({ length: headerLength }, (_, i) => i * 8 + (i % 8)),
      ...Array.from({ length: (envelope.length - headerLength) * 8 }, (_, i) => headerLength * 8 + i),
    ];
    for (const bit of bits) {
      const { error } = await run(decryptor(), flipBit(envelope, bit));
      const inKeyId = bit >> 3 >= idFrom && bit >> 3 < idTo;
      const refused =
        FormatError.isInstance(error) ||
        DecryptionError.isInstance(error) ||
        (inKeyId && (UnexpectedKeyError.isInstance(error) || KeyNotFoundError.isInstance(error)));
      expect(refused, `bit ${bit}: ${String(error)}`).toBe(true);
    }
  });

  it('removing the signature, or any part of it, is detected in both modes and by both decryptors', async () => {
    const single = await encryptSigned(counting(0, 300));
    const framed = await encryptSignedStream(counting(0, 2 * F + 300));
    for (const envelope of [single, framed]) {
      for (const cut of [1, 48, 95, 96, 97]) {
        const truncated = envelope.subarray(0, envelope.length - cut);
        const e1 = await rejection(decrypt(truncated));
        expect(FormatError.isInstance(e1) || DecryptionError.isInstance(e1), `cut ${cut}`).toBe(true);
        const { error } = await run(createDecryptStream(provider, { key: KEY, context }), truncated, 500);
        expect(FormatError.isInstance(error) || DecryptionError.isInstance(error), `cut ${cut}`).toBe(true);
      }
    }
    // Exactly at the end of the final frame: the framed stream says what is missing.
    const atFinal = framed.subarray(0, framed.length - 96);
    const { error } = await run(createDecryptStream(provider, { key: KEY, context }), atFinal);
    expect((error as Error).message).toBe('envelope: truncated (the signature after the final frame is missing)');
    expect(((await rejection(decrypt(atFinal))) as Error).message).toBe(
      'envelope: truncated (the signature after the final frame is missing)',
    );
  });

  it('bytes after the signature are refused', async () => {
    const framed = await encryptSignedStream(counting(0, 10));
    const longer = concatBytes(framed, Uint8Array.of(0));
    expect(((await rejection(decrypt(longer))) as Error).message).toBe('envelope: data after the signature');
    const { error } = await run(createDecryptStream(provider, { key: KEY, context }), longer);
    expect((error as Error).message).toBe('envelope: data after the signature');
    const single = await encryptSigned(counting(0, 10));
    expect(DecryptionError.isInstance(await rejection(decrypt(concatBytes(single, Uint8Array.of(0)))))).toBe(true);
  });

  it('a signed framed stream releases frames as their tags verify and fails at the END on a bad signature (the documented caveat); in memory nothing is returned', async () => {
    const plaintext = counting(1, 3 * F + 10);
    const envelope = await encryptSignedStream(plaintext);
    const bad = flipBit(envelope, envelope.length * 8 - 1);
    const stream = createDecryptStream(provider, { key: KEY, context });
    const released: Buffer[] = [];
    stream.on('data', (chunk: Buffer) => released.push(chunk));
    const failed = new Promise<unknown>((resolve) => stream.on('error', resolve));
    // Everything but the signature: every frame is verified by its tag and released.
    await new Promise<void>((resolve, reject) =>
      stream.write(Buffer.from(bad.subarray(0, bad.length - 96)), (e) => (e ? reject(e) : resolve())),
    );
    same(new Uint8Array(Buffer.concat(released)), plaintext);
    stream.end(Buffer.from(bad.subarray(bad.length - 96)));
    expect(DecryptionError.isInstance(await failed)).toBe(true);
    expect(DecryptionError.isInstance(await rejection(decrypt(bad)))).toBe(true);
  });

  it('a signed single-shot envelope through the stream releases nothing before its signature verifies', async () => {
    const envelope = await encryptSigned(counting(1, 3000));
    const bad = flipBit(envelope, envelope.length * 8 - 1);
    const recording = new RecordingProvider(provider);
    const { output, error } = await run(createDecryptStream(recording, { key: KEY, context }), bad, 100);
    expect(DecryptionError.isInstance(error)).toBe(true);
    expect(output.length).toBe(0);
    expect(recording.unwrapped).toBe(0); // verified before any key is used
  });

  it('a verification key that is not a point on P-384, or not in compressed form, is a FormatError before any unwrap', async () => {
    const envelope = await encryptSigned(Uint8Array.of(1));
    const h = parseHeader(envelope);
    const at = h.bytes.length - VERIFICATION_KEY_BYTES;
    const recording = new RecordingProvider(provider);
    const uncompressed = envelope.slice();
    uncompressed[at] = 0x04;
    expect(FormatError.isInstance(await rejection(decrypt(uncompressed, {}, recording)))).toBe(true);
    // Find an x with no point on the curve (about half of all x values).
    let notOnCurve: Uint8Array | undefined;
    for (let i = 0; !notOnCurve && i < 64; i++) {
      const candidate = envelope.slice();
      candidate.set(createHash('sha384').update(Uint8Array.of(i)).digest(), at + 1);
      const err = await rejection(decrypt(candidate, {}, recording));
      if (FormatError.isInstance(err)) notOnCurve = candidate;
      else expect(DecryptionError.isInstance(err)).toBe(true);
    }
    expect(notOnCurve).toBeDefined();
    const { error } = await run(createDecryptStream(recording, { key: KEY, context }), notOnCurve as Uint8Array);
    expect((error as Error).message).toMatch(/^envelope: invalid verification key/);
    expect(recording.unwrapped).toBe(0);
  });
});

describe('signed envelopes and the data-key cache', () => {
  it("a DataKeyCache never caches a signed message's data key (its wrap context is unique to the message): it bypasses", async () => {
    const cache = new DataKeyCache(provider, { maxAgeMs: 60_000 });
    for (let i = 0; i < 3; i++) {
      const envelope = await cache.encrypt(counting(i, 10), { key: KEY, context, signed: true });
      same(await decrypt(envelope, { requireSigned: true }), counting(i, 10));
    }
    expect(cache.stats.encryptBypasses).toBe(3);
    expect(cache.stats.dataKeysGenerated).toBe(0);
    // Unsigned messages in the same context still share a cached data key.
    await cache.encrypt(Uint8Array.of(1), { key: KEY, context });
    await cache.encrypt(Uint8Array.of(2), { key: KEY, context });
    expect(cache.stats.dataKeysGenerated).toBe(1);
    expect(cache.stats.encryptBypasses).toBe(3);
    await cache.close();
  });
});

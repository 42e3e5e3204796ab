/**
 * Tampering properties (fast-check) for envelope format v1 (docs/format.md §4.4–§4.6): for random
 * plaintexts and contexts, every single-bit flip, every truncation and any appended bytes are
 * rejected — with FormatError or DecryptionError, never with a result — in memory and through the
 * decrypt stream; frames reordered, duplicated, dropped, swapped between messages, or re-labelled
 * as final are rejected.
 *
 * One exception is allowed and checked precisely: a flip inside the KEK id or KEK version of the
 * wrapped DEK can name another, unknown key; the provider then says KeyNotFoundError (an operational
 * error the envelope passes through, docs/format.md §4.5). It is still a rejection.
 */
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { EncryptionContext } from '../src/context.js';
import { decryptEnvelope, encryptEnvelope, parseHeader } from '../src/envelope.js';
import { DecryptionError, FormatError, KeyNotFoundError, UnexpectedKeyError } from '../src/errors.js';
import { createDecryptStream, createEncryptStream } from '../src/stream.js';
import { StaticKekProvider } from './vectors/make-golden.js';

const KEY = 'prop-kek';
const F = 1024;
const provider = StaticKekProvider.withRandomKek(KEY);
// A fixed seed keeps CI reproducible; fast-check prints the seed and path of any failure.
const params = { seed: 0x6b77_6531, numRuns: 8 };

const contextArb: fc.Arbitrary<EncryptionContext> = fc.dictionary(
  fc.string({ minLength: 1, maxLength: 12 }),
  fc.string({ maxLength: 16 }),
  { maxKeys: 4 },
);

type Outcome = 'format' | 'decrypt' | 'key-not-found' | 'unexpected-key';

/** Run a decryption that must fail; return which kind of rejection it was. Any result is a bug. */
async function rejectionKind(p: Promise<unknown>): Promise<Outcome> {
  try {
    await p;
  } catch (err) {
    if (FormatError.isInstance(err)) return 'format';
    if (DecryptionError.isInstance(err)) return 'decrypt';
    if (KeyNotFoundError.isInstance(err)) return 'key-not-found';
    if (UnexpectedKeyError.isInstance(err)) return 'unexpected-key';
    throw err;
  }
  throw new Error('a tampered envelope was accepted');
}

async function streamDecrypt(envelope: Uint8Array, context: EncryptionContext): Promise<Uint8Array> {
  const out: Buffer[] = [];
  const source = Readable.from(envelope.length > 0 ? [Buffer.from(envelope)] : []);
  await pipeline(source, createDecryptStream(provider, { key: KEY, context }), async (s) => {
    for await (const c of s) out.push(c as Buffer);
  });
  return new Uint8Array(Buffer.concat(out));
}

async function streamEncrypt(plaintext: Uint8Array, context: EncryptionContext): Promise<Uint8Array> {
  const out: Buffer[] = [];
  const source = Readable.from(plaintext.length > 0 ? [Buffer.from(plaintext)] : []);
  await pipeline(source, createEncryptStream(provider, { key: KEY, context, frameSize: F }), async (s) => {
    for await (const c of s) out.push(c as Buffer);
  });
  return new Uint8Array(Buffer.concat(out));
}

/** Byte range [from, to) of the KEK id and KEK version inside the envelope's wrapped DEK. */
function kekRefRange(envelope: Uint8Array): [number, number] {
  const idLength = envelope[8 + 5] as number;
  return [8 + 6, 8 + 6 + idLength + 4];
}

function flipBit(bytes: Uint8Array, bit: number): Uint8Array {
  const copy = bytes.slice();
  copy[bit >> 3]! ^= 1 << (bit & 7);
  return copy;
}

/** Every single-bit flip is rejected; KeyNotFoundError or UnexpectedKeyError (another KEK id than
 * the expected one) only inside the KEK reference. */
async function checkAllBitFlips(
  envelope: Uint8Array,
  decrypt: (bytes: Uint8Array) => Promise<unknown>,
  bits: Iterable<number>,
): Promise<void> {
  const [from, to] = kekRefRange(envelope);
  for (const bit of bits) {
    const kind = await rejectionKind(decrypt(flipBit(envelope, bit)));
    if (kind === 'key-not-found' || kind === 'unexpected-key') {
      expect(bit >> 3 >= from && bit >> 3 < to, `bit ${bit}`).toBe(true);
    }
  }
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

describe('single-shot envelopes', () => {
  it('every single-bit flip is rejected', async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ maxLength: 48 }), contextArb, async (plaintext, context) => {
        const envelope = await encryptEnvelope(provider, plaintext, { key: KEY, context });
        await checkAllBitFlips(
          envelope,
          (b) => decryptEnvelope(provider, b, { key: KEY, context }),
          range(envelope.length * 8),
        );
      }),
      params,
    );
  });

  it('every truncation and any appended bytes are rejected, in memory and through the stream', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.uint8Array({ maxLength: 120 }),
        contextArb,
        fc.uint8Array({ minLength: 1, maxLength: 40 }),
        async (plaintext, context, extra) => {
          const envelope = await encryptEnvelope(provider, plaintext, { key: KEY, context });
          for (let n = 0; n < envelope.length; n++) {
            const cut = envelope.subarray(0, n);
            await rejectionKind(decryptEnvelope(provider, cut, { key: KEY, context }));
            await rejectionKind(streamDecrypt(cut, context));
          }
          const longer = new Uint8Array(Buffer.concat([envelope, extra]));
          expect(await rejectionKind(decryptEnvelope(provider, longer, { key: KEY, context }))).toBe('decrypt');
          expect(await rejectionKind(streamDecrypt(longer, context))).toBe('decrypt');
        },
      ),
      params,
    );
  });

  it('every bit flip of the wrapped DEK blob is rejected, and a wrapped DEK from another message too', async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ maxLength: 64 }), contextArb, async (plaintext, context) => {
        const a = await encryptEnvelope(provider, plaintext, { key: KEY, context });
        const b = await encryptEnvelope(provider, plaintext, { key: KEY, context });
        const w = parseHeader(a).wrappedKey.length;
        await checkAllBitFlips(
          a,
          (x) => decryptEnvelope(provider, x, { key: KEY, context }),
          range(w * 8).map((i) => 64 + i),
        );
        // Same KEK, same context, valid wrapped DEK — but another message's DEK: the commitment refuses it.
        const spliced = a.slice();
        spliced.set(parseHeader(b).wrappedKey, 8);
        expect(await rejectionKind(decryptEnvelope(provider, spliced, { key: KEY, context }))).toBe('decrypt');
      }),
      params,
    );
  });
});

describe('framed envelopes', () => {
  it('every single-bit flip is rejected (in memory); sampled flips through the stream', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.uint8Array({ maxLength: F + 200 }),
        contextArb,
        fc.array(fc.nat(), { minLength: 20, maxLength: 20 }),
        async (plaintext, context, samples) => {
          const envelope = await streamEncrypt(plaintext, context);
          const bits = envelope.length * 8;
          await checkAllBitFlips(envelope, (b) => decryptEnvelope(provider, b, { key: KEY, context }), range(bits));
          await checkAllBitFlips(
            envelope,
            (b) => streamDecrypt(b, context),
            samples.map((s) => s % bits),
          );
        },
      ),
      { ...params, numRuns: 4 },
    );
  });

  it('every truncation (including at each frame boundary) and appended bytes are rejected', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 0, max: 3 * F + 10 }),
        contextArb,
        fc.uint8Array({ minLength: 1, maxLength: 30 }),
        async (n, context, extra) => {
          const envelope = await streamEncrypt(new Uint8Array(n).fill(0x61), context);
          for (let cut = 0; cut < envelope.length; cut++) {
            expect(
              await rejectionKind(decryptEnvelope(provider, envelope.subarray(0, cut), { key: KEY, context })),
            ).toBe('format');
          }
          for (const boundary of frameBoundaries(envelope)) {
            expect(await rejectionKind(streamDecrypt(envelope.subarray(0, boundary), context))).toBe('format');
          }
          const longer = new Uint8Array(Buffer.concat([envelope, extra]));
          expect(await rejectionKind(decryptEnvelope(provider, longer, { key: KEY, context }))).toBe('format');
          expect(await rejectionKind(streamDecrypt(longer, context))).toBe('format');
        },
      ),
      params,
    );
  });
});

/** Offsets where the header or a non-final frame ends. */
function frameBoundaries(envelope: Uint8Array): number[] {
  const { frames, headerLength } = split(envelope);
  const out = [headerLength];
  let off = headerLength;
  for (const f of frames.slice(0, -1)) out.push((off += f.length));
  return out;
}

function split(envelope: Uint8Array): { header: Uint8Array; headerLength: number; frames: Uint8Array[] } {
  const header = parseHeader(envelope).bytes;
  const frames: Uint8Array[] = [];
  let off = header.length;
  while (off < envelope.length) {
    const len = new DataView(envelope.buffer, envelope.byteOffset + off + 5, 4).getUint32(0);
    frames.push(envelope.slice(off, off + 25 + len));
    off += 25 + len;
  }
  return { header, headerLength: header.length, frames };
}

const join = (header: Uint8Array, frames: Uint8Array[]) => new Uint8Array(Buffer.concat([header, ...frames]));

/** Rewrite a frame's type and sequence fields (what an attacker can do without the key). */
function relabel(frame: Uint8Array, seq: number, final?: boolean): Uint8Array {
  const copy = frame.slice();
  new DataView(copy.buffer).setUint32(1, seq);
  if (final !== undefined) copy[0] = final ? 1 : 0;
  return copy;
}

describe('frame manipulation', () => {
  // 2..6 frames: at least one regular frame before the final one.
  const plaintextArb = fc.integer({ min: F + 1, max: 5 * F + 100 }).map((n) => new Uint8Array(n).fill(0x5a));

  /**
   * Rejected in memory and through the stream, as FormatError or DecryptionError; with `expected`,
   * both must be that kind. (Without it the two may differ: the in-memory decryptor checks the
   * whole structure before any key is used, the stream checks frame by frame.)
   */
  async function bothRejected(bytes: Uint8Array, context: EncryptionContext, expected?: Outcome): Promise<void> {
    const kinds = [
      await rejectionKind(decryptEnvelope(provider, bytes, { key: KEY, context })),
      await rejectionKind(streamDecrypt(bytes, context)),
    ];
    for (const kind of kinds) {
      expect(kind).not.toBe('key-not-found');
      if (expected) expect(kind).toBe(expected);
    }
  }

  it('reordered frames are rejected, even with their sequence numbers rewritten', async () => {
    await fc.assert(
      fc.asyncProperty(plaintextArb, contextArb, fc.nat(), fc.nat(), async (plaintext, context, x, y) => {
        const { header, frames } = split(await streamEncrypt(plaintext, context));
        const i = x % frames.length;
        const j = (i + 1 + (y % (frames.length - 1))) % frames.length;
        const swapped = frames.slice();
        [swapped[i], swapped[j]] = [swapped[j]!, swapped[i]!];
        await bothRejected(join(header, swapped), context, 'format');
        // Fix up the visible sequence numbers: the nonce and AAD still bind each frame to its place.
        const renumbered = swapped.map((f, k) => relabel(f, k + 1));
        await bothRejected(join(header, renumbered), context);
      }),
      params,
    );
  });

  it('duplicated frames are rejected', async () => {
    await fc.assert(
      fc.asyncProperty(plaintextArb, contextArb, fc.nat(), async (plaintext, context, x) => {
        const { header, frames } = split(await streamEncrypt(plaintext, context));
        const i = x % frames.length;
        const duplicated = [...frames.slice(0, i + 1), frames[i]!, ...frames.slice(i + 1)];
        await bothRejected(join(header, duplicated), context, 'format');
        const renumbered = duplicated.map((f, k) => relabel(f, k + 1));
        await bothRejected(join(header, renumbered), context);
      }),
      params,
    );
  });

  it('dropped frames are rejected, even with the sequence renumbered or a regular frame relabelled final', async () => {
    await fc.assert(
      fc.asyncProperty(plaintextArb, contextArb, fc.nat(), async (plaintext, context, x) => {
        const { header, frames } = split(await streamEncrypt(plaintext, context));
        const i = x % frames.length;
        const dropped = frames.filter((_, k) => k !== i);
        await bothRejected(join(header, dropped), context, 'format');
        const renumbered = dropped.map((f, k) => relabel(f, k + 1));
        await bothRejected(join(header, renumbered), context);
        // Truncate at a frame boundary and pretend the last kept frame was the final one: the type
        // byte is in the frame AAD, so the forgery fails authentication.
        const kept = frames.slice(0, Math.max(1, i));
        if (kept.length < frames.length) {
          const forged = [...kept.slice(0, -1), relabel(kept.at(-1)!, kept.length, true)];
          await bothRejected(join(header, forged), context, 'decrypt');
        }
      }),
      params,
    );
  });

  it('frames swapped in from another message (same key, same context, same position) are rejected', async () => {
    await fc.assert(
      fc.asyncProperty(plaintextArb, contextArb, fc.nat(), async (plaintext, context, x) => {
        const a = split(await streamEncrypt(plaintext, context));
        const b = split(await streamEncrypt(plaintext, context));
        const i = x % a.frames.length;
        const mixed = a.frames.slice();
        mixed[i] = b.frames[i]!;
        await bothRejected(join(a.header, mixed), context, 'decrypt');
        // And b's frames under a's header.
        await bothRejected(join(a.header, b.frames), context, 'decrypt');
      }),
      params,
    );
  });

  it('frames of the same message under another context are rejected', async () => {
    await fc.assert(
      fc.asyncProperty(plaintextArb, contextArb, async (plaintext, context) => {
        const envelope = await streamEncrypt(plaintext, context);
        const other = { ...context, '\u0000extra': 'x' };
        await bothRejected(envelope, other, 'decrypt');
      }),
      params,
    );
  });
});

describe('signed envelopes (suite 0x02, docs/format.md §4.9)', () => {
  const signedStreamEncrypt = async (plaintext: Uint8Array, context: EncryptionContext) => {
    const out: Buffer[] = [];
    const source = Readable.from(plaintext.length > 0 ? [Buffer.from(plaintext)] : []);
    await pipeline(
      source,
      createEncryptStream(provider, { key: KEY, context, frameSize: F, signed: true }),
      async (s) => {
        for await (const c of s) out.push(c as Buffer);
      },
    );
    return new Uint8Array(Buffer.concat(out));
  };

  it('round-trip in both modes and through both decryptors with requireSigned; sampled flips, every cut at a frame boundary or inside the signature, and appended bytes are rejected', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.uint8Array({ maxLength: 2 * F + 100 }),
        contextArb,
        fc.array(fc.nat(), { minLength: 16, maxLength: 16 }),
        fc.uint8Array({ minLength: 1, maxLength: 20 }),
        async (plaintext, context, samples, extra) => {
          const single = await encryptEnvelope(provider, plaintext, { key: KEY, context, signed: true });
          const framed = await signedStreamEncrypt(plaintext, context);
          const options = { key: KEY, context, requireSigned: true };
          for (const envelope of [single, framed]) {
            expect(parseHeader(envelope).suite).toBe(2);
            expect(Buffer.compare(await decryptEnvelope(provider, envelope, options), plaintext)).toBe(0);
            expect(Buffer.compare(await streamDecrypt(envelope, context), plaintext)).toBe(0);
            const bits = envelope.length * 8;
            await checkAllBitFlips(
              envelope,
              (b) => decryptEnvelope(provider, b, options),
              samples.map((s) => s % bits),
            );
            const cuts = [0, 1, 48, 95, 96, 97].map((k) => envelope.length - k).filter((n) => n >= 0);
            for (const n of cuts.slice(1)) {
              await rejectionKind(decryptEnvelope(provider, envelope.subarray(0, n), options));
              await rejectionKind(streamDecrypt(envelope.subarray(0, n), context));
            }
            const longer = new Uint8Array(Buffer.concat([envelope, extra]));
            await rejectionKind(decryptEnvelope(provider, longer, options));
            await rejectionKind(streamDecrypt(longer, context));
          }
          for (const boundary of frameBoundaries(framed.subarray(0, framed.length - 96))) {
            expect(await rejectionKind(streamDecrypt(framed.subarray(0, boundary), context))).toBe('format');
          }
        },
      ),
      params,
    );
  });
});

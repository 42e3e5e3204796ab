/**
 * Framed streaming (src/stream.ts, docs/format.md §4.4, §5): round trips at every frame boundary,
 * odd chunkings, both modes through both decryptors, bounded parsing, no plaintext before its tag
 * verified, truncation and trailing data, and the sequence-number guard.
 */
import { randomBytes } from 'node:crypto';
import { Readable, type Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import {
  FrameSealer,
  MAX_FRAME_SEQUENCE,
  MAX_SINGLE_SHOT_BODY,
  decryptEnvelope,
  encryptEnvelope,
  frameAadPrefix,
  inspectEnvelope,
  parseFrameHeader,
  parseHeader,
} from '../src/envelope.js';
import { DecryptionError, FormatError, InvalidInputError, KeyNotFoundError } from '../src/errors.js';
import type { KeyExpectation } from '../src/key-expectation.js';
import { createDecryptStream, createEncryptStream } from '../src/stream.js';
import { StaticKekProvider, counting } from './vectors/make-golden.js';

const KEY = 'stream-kek';
const F = 1024;
const provider = StaticKekProvider.withRandomKek(KEY);
const context = { tenant: 'acme', object: 'exports/2024.csv' };

function* chunked(bytes: Uint8Array, sizes: readonly number[]): Generator<Buffer> {
  let off = 0;
  for (let i = 0; off < bytes.length; i++) {
    const n = sizes[i % sizes.length] as number;
    yield Buffer.from(bytes.subarray(off, off + n));
    off += n;
  }
}

/** Push `input` through `transform` in chunks of the given sizes (cycled); collect the output. */
async function run(transform: Transform, input: Uint8Array, sizes: readonly number[] = [input.length || 1]) {
  const out: Buffer[] = [];
  await pipeline(Readable.from(chunked(input, sizes)), transform, async (source) => {
    for await (const chunk of source) out.push(chunk as Buffer);
  });
  return new Uint8Array(Buffer.concat(out));
}

const encrypt = (plaintext: Uint8Array, sizes?: number[], frameSize = F) =>
  run(createEncryptStream(provider, { key: KEY, context, frameSize }), plaintext, sizes);
const decrypt = (envelope: Uint8Array, sizes?: number[], p = provider) =>
  run(createDecryptStream(p, { key: KEY, context }), envelope, sizes);

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

function same(a: Uint8Array, b: Uint8Array): void {
  expect(a.length).toBe(b.length);
  expect(Buffer.compare(a, b)).toBe(0);
}

/** Split a framed envelope into its header and frames (test-side parser, trusting the bytes). */
function splitFrames(envelope: Uint8Array): { header: Uint8Array; frames: Uint8Array[] } {
  const header = parseHeader(envelope).bytes;
  const frames: Uint8Array[] = [];
  let off = header.length;
  while (off < envelope.length) {
    const len = new DataView(envelope.buffer, envelope.byteOffset + off + 5, 4).getUint32(0);
    frames.push(envelope.subarray(off, off + 9 + len + 16));
    off += 9 + len + 16;
  }
  return { header, frames };
}

describe('round trips', () => {
  const sizes = [0, 1, F - 1, F, F + 1, 2 * F - 1, 2 * F, 2 * F + 1, 3 * F + 17];

  it.each(sizes)('%i bytes, written whole and one byte at a time', async (n) => {
    const plaintext = new Uint8Array(randomBytes(n));
    const whole = await encrypt(plaintext);
    const bytewise = await encrypt(plaintext, [1]);
    same(await decrypt(whole), plaintext);
    same(await decrypt(bytewise, [1]), plaintext);
    same(await decrypt(whole, [7, 1, 333, 1500]), plaintext);
    same(await decryptEnvelope(provider, whole, { key: KEY, context }), plaintext);
    // The frame layout depends only on the length, never on the chunking (docs/format.md §4.4).
    expect(bytewise.length).toBe(whole.length);
    const { frames } = splitFrames(whole);
    expect(frames).toHaveLength(Math.max(1, Math.ceil(n / F)));
    expect(frames.at(-1)![0]).toBe(0x01);
    for (const f of frames.slice(0, -1)) expect(f[0]).toBe(0x00);
  });

  it('several MB in odd chunks with the default 64 KiB frame size', async () => {
    const plaintext = new Uint8Array(randomBytes(5 * 1024 * 1024 + 123));
    const envelope = await run(createEncryptStream(provider, { key: KEY, context }), plaintext, [65_537, 1, 100_003]);
    expect(inspectEnvelope(envelope).frameSize).toBe(64 * 1024);
    same(await decrypt(envelope, [4096, 77_777]), plaintext);
  });

  it('3 MB with 1 KiB frames (thousands of frames, sequence numbers in order)', async () => {
    const plaintext = new Uint8Array(randomBytes(3 * 1024 * 1024 + 5));
    const envelope = await encrypt(plaintext, [10_000]);
    same(await decrypt(envelope, [65_536]), plaintext);
  });

  it('the default frame size and no context work', async () => {
    const envelope = await run(createEncryptStream(provider, { key: KEY }), counting(0, 300));
    same(await run(createDecryptStream(provider, { key: KEY }), envelope), counting(0, 300));
  });
});

describe('one decryptor for both modes', () => {
  it('decryptEnvelope decrypts framed envelopes held in memory', async () => {
    const plaintext = counting(1, 5000);
    same(await decryptEnvelope(provider, await encrypt(plaintext), { key: KEY, context }), plaintext);
  });

  it('createDecryptStream decrypts single-shot envelopes (buffered, bounded), fed one byte at a time', async () => {
    for (const n of [0, 1, 3000]) {
      const plaintext = counting(n, n);
      const envelope = await encryptEnvelope(provider, plaintext, { key: KEY, context });
      same(await decrypt(envelope, [1]), plaintext);
    }
  });

  it('a single-shot stream longer than the single-shot bound is a FormatError before it is buffered', async () => {
    const envelope = await encryptEnvelope(provider, new Uint8Array(1), { key: KEY, context });
    const header = parseHeader(envelope).bytes;
    const stream = createDecryptStream(provider, { key: KEY, context });
    const err = await rejection(feed(stream, [header, new Uint8Array(MAX_SINGLE_SHOT_BODY + 1)]));
    expect(FormatError.isInstance(err)).toBe(true);
  });

  it('a wrong context through the stream is a DecryptionError, for both modes', async () => {
    const framed = await encrypt(counting(0, 2000));
    const single = await encryptEnvelope(provider, counting(0, 2000), { key: KEY, context });
    for (const envelope of [framed, single]) {
      const err = await rejection(
        run(createDecryptStream(provider, { key: KEY, context: { tenant: 'other' } }), envelope),
      );
      expect(DecryptionError.isInstance(err)).toBe(true);
    }
  });
});

/** Write chunks to a fresh-or-given transform without ending it; resolve with the first error. */
function feed(stream: Transform, chunks: Uint8Array[], end = false): Promise<never> {
  return new Promise((_resolve, reject) => {
    stream.on('error', reject);
    stream.on('data', () => {});
    for (const c of chunks) stream.write(c);
    if (end) stream.end();
  });
}

describe('bounded, incremental parsing', () => {
  it('an oversized wrapped-DEK length is refused from the 8-byte prefix, before more input arrives', async () => {
    const stream = createDecryptStream(provider, { key: KEY });
    const err = await rejection(feed(stream, [Uint8Array.of(0x4b, 0x57, 0x45, 0x01, 0x01, 0x01, 0xff, 0xff)]));
    expect(FormatError.isInstance(err)).toBe(true);
    expect((err as Error).message).toMatch(/^envelope: wrapped data key length 65535/);
  });

  it.each([
    ['version', 3, 0x03],
    ['suite', 4, 0x07],
    ['mode', 5, 0x05],
    ['magic', 1, 0x00],
  ])('an unknown %s is refused from the prefix', async (_what, index, value) => {
    const prefix = Uint8Array.of(0x4b, 0x57, 0x45, 0x01, 0x01, 0x01, 0x00, 80);
    prefix[index] = value;
    expect(FormatError.isInstance(await rejection(feed(createDecryptStream(provider, { key: KEY }), [prefix])))).toBe(
      true,
    );
  });

  it('a header asking for frames larger than maxFrameSize is a FormatError', async () => {
    const envelope = await run(createEncryptStream(provider, { key: KEY, frameSize: 8192 }), new Uint8Array(10));
    const err = await rejection(run(createDecryptStream(provider, { key: KEY, maxFrameSize: 4096 }), envelope));
    expect(FormatError.isInstance(err)).toBe(true);
    expect((err as Error).message).toMatch(/frame size 8192/);
    same(await run(createDecryptStream(provider, { key: KEY, maxFrameSize: 8192 }), envelope), new Uint8Array(10));
  });

  it('a frame length field over the frame size is refused before the frame body is awaited', async () => {
    const envelope = await encrypt(counting(0, 3 * F));
    const { header, frames } = splitFrames(envelope);
    const forged = frames[0]!.slice(0, 9);
    new DataView(forged.buffer).setUint32(5, 0xffffffff);
    const err = await rejection(feed(createDecryptStream(provider, { key: KEY, context }), [header, forged]));
    expect(FormatError.isInstance(err)).toBe(true);
  });

  it('the first frame is released as soon as it verifies, before the rest of the input arrives', async () => {
    const plaintext = counting(0, 5 * F);
    const { header, frames } = splitFrames(await encrypt(plaintext));
    const stream = createDecryptStream(provider, { key: KEY, context });
    const first = new Promise<Buffer>((resolve) => stream.once('data', resolve));
    stream.write(header);
    stream.write(frames[0]!);
    same(new Uint8Array(await first), plaintext.subarray(0, F));
    stream.destroy();
  });

  it('no plaintext of a tampered frame is ever emitted', async () => {
    const plaintext = counting(0, 4 * F);
    const envelope = await encrypt(plaintext);
    const { header, frames } = splitFrames(envelope);
    const bad = frames[1]!.slice();
    bad[bad.length - 1]! ^= 0x80; // last tag byte of frame 2
    const stream = createDecryptStream(provider, { key: KEY, context });
    const out: Buffer[] = [];
    stream.on('data', (c: Buffer) => out.push(c));
    const err = await rejection(feed(stream, [header, frames[0]!, bad, ...frames.slice(2)], true));
    expect(DecryptionError.isInstance(err)).toBe(true);
    same(new Uint8Array(Buffer.concat(out)), plaintext.subarray(0, F));
  });
});

describe('end of stream', () => {
  it('a stream that ends before the final frame is a FormatError (truncation at a frame boundary)', async () => {
    const envelope = await encrypt(counting(0, 3 * F + 5));
    const { header, frames } = splitFrames(envelope);
    for (let k = 0; k < frames.length; k++) {
      const truncated = Buffer.concat([header, ...frames.slice(0, k)]);
      const err = await rejection(decrypt(new Uint8Array(truncated)));
      expect(FormatError.isInstance(err)).toBe(true);
      expect((err as Error).message).toMatch(/truncated/);
    }
  });

  it('a stream that ends inside the header is a FormatError', async () => {
    const envelope = await encrypt(counting(0, 10));
    for (const n of [1, 7, 8, 50]) {
      expect(FormatError.isInstance(await rejection(decrypt(envelope.subarray(0, n))))).toBe(true);
    }
  });

  it('data after the final frame is a FormatError, in the same chunk or a later one', async () => {
    const envelope = await encrypt(counting(0, 2 * F + 3));
    const extended = Buffer.concat([envelope, Uint8Array.of(0)]);
    expect(FormatError.isInstance(await rejection(decrypt(new Uint8Array(extended))))).toBe(true);
    expect(FormatError.isInstance(await rejection(decrypt(new Uint8Array(extended), [envelope.length])))).toBe(true);
  });
});

describe('options and providers', () => {
  it.each([0, 1, 1023, 4 * 1024 * 1024 + 1, 1024.5, Number.NaN])(
    'frameSize %s is refused synchronously with InvalidInputError',
    (frameSize) => {
      expect(() => createEncryptStream(provider, { key: KEY, frameSize })).toThrow(InvalidInputError);
    },
  );

  it('maxFrameSize outside 1 KiB..4 MiB is refused', () => {
    expect(() => createDecryptStream(provider, { key: KEY, maxFrameSize: 100 })).toThrow(InvalidInputError);
  });

  it('a missing key or malformed context is refused synchronously', () => {
    expect(() => createEncryptStream(provider, { key: '' })).toThrow(InvalidInputError);
    expect(() => createEncryptStream(provider, { key: KEY, context: { a: 1 } as never })).toThrow(InvalidInputError);
    expect(() => createDecryptStream(provider, { key: KEY, context: { a: 1 } as never })).toThrow(InvalidInputError);
  });

  it('provider errors end the encrypt stream with that error', async () => {
    const err = await rejection(run(createEncryptStream(provider, { key: 'unknown-kek' }), counting(0, 10)));
    expect(KeyNotFoundError.isInstance(err)).toBe(true);
  });

  it('destroying the stream while the provider is still working ends cleanly', async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const slow = {
      generateDataKey: async (key: string, ctx?: Record<string, string>) => {
        await gate;
        return provider.generateDataKey(key, ctx);
      },
      decryptDataKey: (w: Uint8Array, ctx: Record<string, string> | undefined, e: KeyExpectation) =>
        provider.decryptDataKey(w, ctx, e),
    };
    const stream = createEncryptStream(slow, { key: KEY, frameSize: F });
    const closed = new Promise((resolve) => stream.once('close', resolve));
    const output: Buffer[] = [];
    stream.on('data', (c: Buffer) => output.push(c));
    stream.on('error', () => {});
    stream.write(counting(0, 10));
    stream.destroy();
    release();
    await closed;
    await new Promise((resolve) => setTimeout(resolve, 10));
    expect(output).toHaveLength(0);
  });

  it('the options are snapshotted: mutating the context after creation changes nothing', async () => {
    const ctx: Record<string, string> = { tenant: 'a' };
    const stream = createEncryptStream(provider, { key: KEY, context: ctx, frameSize: F });
    ctx.tenant = 'b';
    const envelope = await run(stream, counting(0, 10));
    same(await decryptEnvelope(provider, envelope, { key: KEY, context: { tenant: 'a' } }), counting(0, 10));
  });
});

describe('sequence numbers never wrap (docs/format.md §4.4)', () => {
  const key = () => new Uint8Array(32).fill(7);
  const prefix = frameAadPrefix(new Uint8Array(1), new Uint8Array(2));

  it('the sealer refuses a regular frame at the last sequence number but allows the final one', () => {
    expect(() => new FrameSealer(key(), prefix, F, MAX_FRAME_SEQUENCE).seal(new Uint8Array(F), false)).toThrow(
      InvalidInputError,
    );
    const last = new FrameSealer(key(), prefix, F, MAX_FRAME_SEQUENCE).seal(new Uint8Array(3), true);
    expect(parseFrameHeader(last, F, MAX_FRAME_SEQUENCE)).toEqual({ final: true, seq: MAX_FRAME_SEQUENCE, length: 3 });
  });

  it('the decoder refuses a regular frame at the last sequence number', () => {
    const head = Uint8Array.of(0x00, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x04, 0x00);
    expect(() => parseFrameHeader(head, F, MAX_FRAME_SEQUENCE)).toThrow(FormatError);
  });

  it('the sealer refuses anything after the final frame', () => {
    const sealer = new FrameSealer(key(), prefix, F);
    sealer.seal(new Uint8Array(0), true);
    expect(() => sealer.seal(new Uint8Array(0), true)).toThrow(InvalidInputError);
  });
});

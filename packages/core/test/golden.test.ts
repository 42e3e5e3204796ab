/**
 * Golden vectors for envelope format v1 (docs/format.md §9). The committed file
 * test/vectors/golden-v1.json is the reference: this test reads it and never writes it.
 *
 * Three independent checks per vector:
 * 1. the committed envelope decrypts (in memory, through the decrypt stream, from the text form);
 * 2. re-encrypting the committed inputs with the real code gives the committed bytes, byte for byte;
 * 3. the committed bytes are rebuilt from docs/format.md with raw node:crypto only (no envelope.ts),
 *    so the implementation and the document cannot drift apart together.
 */
import { createCipheriv, createHash, hkdfSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { encodeContext } from '../src/context.js';
import { wrapDataKey } from '../src/data-key.js';
import { decryptEnvelope, envelopeFromText, envelopeToText, inspectEnvelope } from '../src/envelope.js';
import { createDecryptStream } from '../src/stream.js';
import {
  GOLDEN_INPUTS,
  GOLDEN_KEK,
  StaticKekProvider,
  buildGoldenFile,
  buildVector,
  fromHex,
  hex,
  serializeGoldenFile,
  type GoldenFile,
  type GoldenInputs,
  type GoldenVector,
} from './vectors/make-golden.js';

const committedText = readFileSync(new URL('./vectors/golden-v1.json', import.meta.url), 'utf8');
const golden = JSON.parse(committedText) as GoldenFile;

function providerFor(file: GoldenFile): StaticKekProvider {
  return new StaticKekProvider([
    { keyId: file.kek.keyId, version: file.kek.version, material: fromHex(file.kek.material) },
  ]);
}

function inputsOf(v: GoldenVector): GoldenInputs {
  const { wrappedKey, encKey, commitment, header, envelope, text, ...rest } = v;
  return rest;
}

async function decryptThroughStream(provider: StaticKekProvider, bytes: Uint8Array, context: Record<string, string>) {
  const out: Buffer[] = [];
  await pipeline(Readable.from([Buffer.from(bytes)]), createDecryptStream(provider, { context }), async (source) => {
    for await (const chunk of source) out.push(chunk as Buffer);
  });
  return new Uint8Array(Buffer.concat(out));
}

const u16 = (n: number) => Uint8Array.of(n >> 8, n & 0xff);
const u32 = (n: number) => {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n);
  return b;
};
const cat = (...parts: Uint8Array[]) => new Uint8Array(Buffer.concat(parts));
const ascii = (s: string) => new Uint8Array(Buffer.from(s, 'utf8'));

function gcm(key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, aad: Uint8Array): Uint8Array {
  const c = createCipheriv('aes-256-gcm', key, nonce, { authTagLength: 16 });
  c.setAAD(aad);
  return cat(c.update(plaintext), c.final(), c.getAuthTag());
}

/** docs/format.md §4, written out again with node:crypto primitives only. */
function rebuildFromSpec(file: GoldenFile, v: GoldenVector): Uint8Array {
  const dek = fromHex(v.dek);
  const messageId = fromHex(v.messageId);
  const kek = fromHex(file.kek.material);
  const ctx = encodeContext(v.context);
  const wrapped = wrapDataKey(kek, file.kek, dek, v.context, fromHex(v.wrapNonce)); // §2 (data-key.ts)
  const hkdf = (label: string) =>
    new Uint8Array(hkdfSync('sha256', dek, messageId, cat(ascii(label), Uint8Array.of(0x01)), 32));
  const encKey = hkdf('keywarden/v1/data-key');
  const commitment = hkdf('keywarden/v1/commit');
  expect(hex(encKey)).toBe(v.encKey);
  expect(hex(commitment)).toBe(v.commitment);
  const framed = v.mode === 'framed';
  const header = cat(
    Uint8Array.of(0x4b, 0x57, 0x45, 0x01, 0x01, framed ? 0x01 : 0x00),
    u16(wrapped.length),
    wrapped,
    messageId,
    commitment,
    framed ? u32(v.frameSize as number) : new Uint8Array(0),
  );
  expect(hex(header)).toBe(v.header);
  const plaintext = fromHex(v.plaintext);
  if (!framed) {
    const nonce = fromHex(v.nonce as string);
    return cat(header, nonce, gcm(encKey, nonce, plaintext, cat(header, ctx)));
  }
  const frameSize = v.frameSize as number;
  const prefix = cat(ascii('KWF1'), createHash('sha256').update(header).update(ctx).digest());
  const parts: Uint8Array[] = [header];
  let off = 0;
  for (let seq = 1; ; seq++) {
    const final = plaintext.length - off <= frameSize;
    const content = plaintext.subarray(off, final ? plaintext.length : off + frameSize);
    const frameHead = cat(Uint8Array.of(final ? 1 : 0), u32(seq), u32(content.length));
    const nonce = cat(new Uint8Array(8), u32(seq));
    parts.push(frameHead, gcm(encKey, nonce, content, cat(prefix, frameHead)));
    off += content.length;
    if (final) break;
  }
  return cat(...parts);
}

describe('golden vectors v1 (test/vectors/golden-v1.json)', () => {
  it('the committed file is test-only material and covers both modes, with and without context', () => {
    expect(golden.description).toMatch(/TEST VECTORS ONLY/);
    expect(golden.kek.material).toBe(hex(Uint8Array.from({ length: 32 }, (_, i) => i)));
    const kinds = golden.vectors.map((v) => `${v.mode}/${Object.keys(v.context).length > 0 ? 'ctx' : 'empty'}`);
    expect(new Set(kinds)).toEqual(new Set(['single-shot/ctx', 'single-shot/empty', 'framed/ctx', 'framed/empty']));
  });

  it('the generator reproduces the committed file exactly (no silent format change)', async () => {
    expect(serializeGoldenFile(await buildGoldenFile())).toBe(committedText);
    expect(golden.kek).toEqual(GOLDEN_KEK);
    expect(golden.vectors.map(inputsOf)).toEqual(GOLDEN_INPUTS);
  });

  for (const v of golden.vectors) {
    describe(v.name, () => {
      const envelope = fromHex(v.envelope);
      const plaintext = fromHex(v.plaintext);

      it('decrypts the committed bytes in memory, through the stream, and from the text form', async () => {
        const provider = providerFor(golden);
        expect(hex(await decryptEnvelope(provider, envelope, { context: v.context }))).toBe(v.plaintext);
        expect(hex(await decryptThroughStream(provider, envelope, v.context))).toBe(v.plaintext);
        expect(envelopeToText(envelope)).toBe(v.text);
        expect(envelopeFromText(v.text)).toEqual(envelope);
        expect(plaintext.length).toBe(v.plaintext.length / 2);
      });

      it('re-encrypts deterministically to the committed bytes', async () => {
        const rebuilt = await buildVector(golden.kek, inputsOf(v));
        expect(rebuilt.envelope).toBe(v.envelope);
        expect(rebuilt).toEqual(v);
      });

      it('matches docs/format.md rebuilt with raw node:crypto', () => {
        expect(hex(rebuildFromSpec(golden, v))).toBe(v.envelope);
      });

      it('inspectEnvelope reads the header fields', () => {
        const info = inspectEnvelope(envelope);
        expect(info).toEqual({
          formatVersion: 1,
          suite: 1,
          mode: v.mode,
          keyId: golden.kek.keyId,
          keyVersion: golden.kek.version,
          ...(v.mode === 'framed' ? { frameSize: v.frameSize } : {}),
        });
      });
    });
  }
});

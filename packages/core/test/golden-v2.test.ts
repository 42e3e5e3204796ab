/**
 * Golden vectors for envelope format v2 (docs/format.md §4.10, §9). The committed file
 * test/vectors/golden-v2.json is the reference: this test reads it and never writes it.
 *
 * Per vector: the committed envelope decrypts (in memory, through the stream, from the text form);
 * the real code rebuilds it byte for byte; and it is rebuilt from the document with raw
 * node:crypto (HKDF labels with the KEK id, the authenticated header without the wrapped DEK, the
 * body), with the wrapped DEK taken from the v1 vector of the same inputs, whose every byte
 * golden.test.ts rebuilds from §2. The rewrap vectors must keep the body byte-identical and decrypt
 * under the new KEK version only.
 */
import { createCipheriv, createHash, createPublicKey, hkdfSync, verify } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { encodeContext } from '../src/context.js';
import { DecryptionError } from '../src/errors.js';
import { decryptEnvelope, envelopeFromText, envelopeToText, inspectEnvelope, parseHeader } from '../src/envelope.js';
import { createDecryptStream } from '../src/stream.js';
import { type GoldenFile, type GoldenVector, StaticKekProvider, fromHex, hex } from './vectors/make-golden.js';
import {
  type GoldenV2File,
  REWRAP_INPUTS,
  V2_INPUTS,
  buildGoldenV2File,
  serializeGoldenV2File,
} from './vectors/make-golden-v2.js';

const committedText = readFileSync(new URL('./vectors/golden-v2.json', import.meta.url), 'utf8');
const golden = JSON.parse(committedText) as GoldenV2File;
const v1 = JSON.parse(readFileSync(new URL('./vectors/golden-v1.json', import.meta.url), 'utf8')) as GoldenFile;

const providerOf = (kek: GoldenFile['kek']) =>
  new StaticKekProvider([{ keyId: kek.keyId, version: kek.version, material: fromHex(kek.material) }]);

const cat = (...parts: Uint8Array[]) => new Uint8Array(Buffer.concat(parts));
const ascii = (s: string) => new Uint8Array(Buffer.from(s, 'utf8'));
const u16 = (n: number) => Uint8Array.of(n >> 8, n & 0xff);
const u32 = (n: number) => {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n);
  return b;
};

function gcm(key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, aad: Uint8Array): Uint8Array {
  const c = createCipheriv('aes-256-gcm', key, nonce, { authTagLength: 16 });
  c.setAAD(aad);
  return cat(c.update(plaintext), c.final(), c.getAuthTag());
}

async function throughStream(provider: StaticKekProvider, bytes: Uint8Array, context: Record<string, string>) {
  const out: Buffer[] = [];
  await pipeline(
    Readable.from([Buffer.from(bytes)]),
    createDecryptStream(provider, { key: golden.kek.keyId, context }),
    async (source) => {
      for await (const chunk of source) out.push(chunk as Buffer);
    },
  );
  return hex(new Uint8Array(Buffer.concat(out)));
}

/** docs/format.md §4.10 with node:crypto primitives only; the wrapped DEK is given. */
function rebuildFromSpec(kek: GoldenFile['kek'], v: GoldenVector, wrapped: Uint8Array): Uint8Array {
  const dek = fromHex(v.dek);
  const messageId = fromHex(v.messageId);
  const keyIdField = cat(Uint8Array.of(kek.keyId.length), ascii(kek.keyId));
  const hkdf = (label: string) =>
    new Uint8Array(hkdfSync('sha256', dek, messageId, cat(ascii(label), Uint8Array.of(0x01), keyIdField), 32));
  const encKey = hkdf('keywarden/v2/data-key');
  const commitment = hkdf('keywarden/v2/commit');
  expect(hex(encKey)).toBe(v.encKey);
  expect(hex(commitment)).toBe(v.commitment);
  const framed = v.mode === 'framed';
  const prefix = Uint8Array.of(0x4b, 0x57, 0x45, 0x02, 0x01, framed ? 0x01 : 0x00);
  const tail = cat(messageId, commitment, framed ? u32(v.frameSize as number) : new Uint8Array(0));
  const header = cat(prefix, u16(wrapped.length), wrapped, tail);
  const authHeader = cat(prefix, keyIdField, tail);
  expect(hex(header)).toBe(v.header);
  expect(hex(authHeader)).toBe(v.authHeader);
  const ctx = encodeContext(v.context);
  const plaintext = fromHex(v.plaintext);
  if (!framed) {
    const nonce = fromHex(v.nonce as string);
    return cat(header, nonce, gcm(encKey, nonce, plaintext, cat(authHeader, ctx)));
  }
  const frameSize = v.frameSize as number;
  const aadPrefix = cat(ascii('KWF1'), createHash('sha256').update(authHeader).update(ctx).digest());
  const parts: Uint8Array[] = [header];
  let off = 0;
  for (let seq = 1; ; seq++) {
    const final = plaintext.length - off <= frameSize;
    const content = plaintext.subarray(off, final ? plaintext.length : off + frameSize);
    const frameHead = cat(Uint8Array.of(final ? 1 : 0), u32(seq), u32(content.length));
    parts.push(frameHead, gcm(encKey, cat(new Uint8Array(8), u32(seq)), content, cat(aadPrefix, frameHead)));
    off += content.length;
    if (final) break;
  }
  return cat(...parts);
}

describe('golden vectors v2 (test/vectors/golden-v2.json, docs/format.md §4.10)', () => {
  it('the committed file is test-only material, built from the v1 inputs, and the generator reproduces it (up to the signature)', async () => {
    expect(golden.description).toMatch(/TEST VECTORS ONLY/);
    expect(golden.kek).toEqual(v1.kek);
    const rebuilt = await buildGoldenV2File();
    const { signed: rebuiltSigned, ...rest } = rebuilt;
    const { signed: committedSigned, ...committedRest } = golden;
    expect(serializeGoldenV2File({ ...rebuilt, signed: committedSigned })).toBe(committedText);
    expect(rest).toEqual(committedRest);
    expect(golden.vectors.map((v) => v.name)).toEqual(V2_INPUTS.map((v) => v.name));
    expect(golden.rewraps.map((r) => r.name)).toEqual(REWRAP_INPUTS.map((r) => r.name));
    // Signed: every byte before the randomized signature.
    for (const [i, s] of rebuiltSigned.entries()) {
      const c = committedSigned[i]!;
      expect(s.header).toBe(c.header);
      expect(s.envelope.slice(0, -192)).toBe(c.envelope.slice(0, -192));
    }
  });

  for (const [i, v] of golden.vectors.entries()) {
    describe(v.name, () => {
      const envelope = fromHex(v.envelope);

      it('decrypts the committed bytes in memory, through the stream, and from the text form', async () => {
        const provider = providerOf(golden.kek);
        const options = { key: golden.kek.keyId, context: v.context };
        expect(hex(await decryptEnvelope(provider, envelope, options))).toBe(v.plaintext);
        expect(await throughStream(provider, envelope, v.context)).toBe(v.plaintext);
        expect(envelopeToText(envelope)).toBe(v.text);
        expect(envelopeFromText(v.text)).toEqual(envelope);
        expect(inspectEnvelope(envelope)).toMatchObject({ formatVersion: 2, keyVersion: golden.kek.version });
      });

      it('has the wrapped DEK of the v1 vector with the same inputs ("KWK" is unchanged) and matches §4.10 rebuilt with raw node:crypto', () => {
        const same = v1.vectors[i]!;
        expect(v.name).toBe(`v2, ${same.name}`);
        expect(v.wrappedKey).toBe(same.wrappedKey);
        expect(v.envelope).not.toBe(same.envelope);
        expect(hex(rebuildFromSpec(golden.kek, v, fromHex(same.wrappedKey)))).toBe(v.envelope);
      });
    });
  }

  for (const s of golden.signed) {
    it(`${s.name}: decrypts with requireSigned, and its signature verifies (raw node:crypto) over authHeader ‖ body`, async () => {
      const envelope = fromHex(s.envelope);
      const provider = providerOf(golden.kek);
      const plain = await decryptEnvelope(provider, envelope, {
        key: golden.kek.keyId,
        context: s.context,
        requireSigned: true,
      });
      expect(hex(plain)).toBe(s.plaintext);
      const header = parseHeader(envelope);
      const w = (envelope[6]! << 8) | envelope[7]!;
      const authHeader = cat(
        envelope.subarray(0, 6),
        Uint8Array.of(golden.kek.keyId.length),
        ascii(golden.kek.keyId),
        envelope.subarray(8 + w, header.bytes.length),
      );
      const spki = cat(fromHex('3046301006072a8648ce3d020106052b81040022033200'), fromHex(s.verificationKey));
      const key = createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' });
      const signed = cat(authHeader, envelope.subarray(header.bytes.length, envelope.length - 96));
      expect(verify('sha384', signed, { key, dsaEncoding: 'ieee-p1363' }, fromHex(s.signature))).toBe(true);
    });
  }

  for (const r of golden.rewraps) {
    it(`${r.name}: the body is byte-identical, only W and the wrapped DEK changed, and it decrypts under the new version only`, async () => {
      const source = golden.vectors[r.from]!;
      const before = fromHex(source.envelope);
      const after = fromHex(r.envelope);
      const headerBefore = fromHex(source.header);
      const headerAfter = fromHex(r.header);
      expect(hex(after.subarray(headerAfter.length))).toBe(hex(before.subarray(headerBefore.length)));
      const wrapped = fromHex(r.wrappedKey);
      const w = fromHex(source.wrappedKey).length;
      expect(hex(headerAfter)).toBe(
        hex(cat(headerBefore.subarray(0, 6), u16(wrapped.length), wrapped, headerBefore.subarray(8 + w))),
      );
      expect(inspectEnvelope(after)).toMatchObject({ formatVersion: 2, keyVersion: golden.kekNext.version });
      const options = { key: golden.kek.keyId, context: source.context };
      expect(hex(await decryptEnvelope(providerOf(golden.kekNext), after, options))).toBe(source.plaintext);
      expect(await throughStream(providerOf(golden.kekNext), after, source.context)).toBe(source.plaintext);
      // The old version's material does not open the new wrap (the test provider refuses the version
      // it does not hold; with the old material under the new version number the unwrap fails).
      const wrongMaterial = providerOf({ ...golden.kekNext, material: golden.kek.material });
      await expect(decryptEnvelope(wrongMaterial, after, options)).rejects.toSatisfy(DecryptionError.isInstance);
    });
  }
});

/**
 * Golden vectors for envelope format v1 and wrapped data keys (docs/format.md §9). The committed
 * file test/vectors/golden-v1.json is the reference: this test reads it and never writes it.
 *
 * Three independent checks per vector:
 * 1. the committed envelope decrypts (in memory, through the decrypt stream, from the text form);
 * 2. re-encrypting the committed inputs with the real code gives the committed bytes, byte for byte;
 * 3. the committed bytes are rebuilt from docs/format.md with raw node:crypto only (no envelope.ts,
 *    no data-key.ts, no _xaes.ts), so the implementation and the document cannot drift apart
 *    together.
 * The first five envelopes wrap their DEK with suite 0x01 and pin that old data keeps decrypting;
 * the later ones and the `wrappedKeys` use suite 0x02, which every new wrap uses.
 *
 * The signed envelope suite 0x02 has its own file, test/vectors/golden-signed-v1.json: ECDSA
 * signatures are randomized, so it pins decryption and every byte before the signature, and check 2
 * compares a rebuild with the committed envelope up to its last 96 bytes (docs/format.md §9).
 */
import {
  createCipheriv,
  createDecipheriv,
  createECDH,
  createHash,
  createPublicKey,
  hkdfSync,
  verify,
} from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { encodeContext } from '../src/context.js';
import { parseWrappedKey, unwrapDataKey } from '../src/data-key.js';
import { DecryptionError, FormatError } from '../src/errors.js';
import { decryptEnvelope, envelopeFromText, envelopeToText, inspectEnvelope } from '../src/envelope.js';
import { createDecryptStream } from '../src/stream.js';
import {
  GOLDEN_INPUTS,
  GOLDEN_KEK,
  StaticKekProvider,
  WRAPPED_KEY_INPUTS,
  buildGoldenFile,
  buildVector,
  buildWrappedKeyVector,
  fromHex,
  hex,
  serializeGoldenFile,
  type GoldenFile,
  type GoldenInputs,
  type GoldenVector,
  type WrappedKeyVector,
} from './vectors/make-golden.js';
import {
  SIGNED_GOLDEN_INPUTS,
  type SignedGoldenFile,
  type SignedGoldenInputs,
  type SignedGoldenVector,
  buildSignedVector,
} from './vectors/make-golden-signed.js';

const committedText = readFileSync(new URL('./vectors/golden-v1.json', import.meta.url), 'utf8');
const golden = JSON.parse(committedText) as GoldenFile;

function providerFor(file: GoldenFile): StaticKekProvider {
  return new StaticKekProvider([
    { keyId: file.kek.keyId, version: file.kek.version, material: fromHex(file.kek.material) },
  ]);
}

function wrappedInputsOf(v: WrappedKeyVector) {
  const { aad, derivedKey, wrapped, ...rest } = v;
  return rest;
}

function inputsOf(v: GoldenVector): GoldenInputs {
  const { wrappedKey, encKey, commitment, header, envelope, text, ...rest } = v;
  return rest;
}

async function decryptThroughStream(provider: StaticKekProvider, bytes: Uint8Array, context: Record<string, string>) {
  const out: Buffer[] = [];
  await pipeline(
    Readable.from([Buffer.from(bytes)]),
    createDecryptStream(provider, { key: golden.kek.keyId, context }),
    async (source) => {
      for await (const chunk of source) out.push(chunk as Buffer);
    },
  );
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

/** AES-256 of one block as single-block CBC: AES_K(block ⊕ iv). */
function aesCbcBlock(key: Uint8Array, iv: Uint8Array, block: Uint8Array): Uint8Array {
  const c = createCipheriv('aes-256-cbc', key, iv).setAutoPadding(false);
  return cat(c.update(block), c.final());
}

/** docs/format.md §2.1 (XAES-256-GCM key derivation), written out again: CMAC's K1 by BigInt
 * doubling in GF(2¹²⁸), each one-block CMAC as CBC with K1 as the IV. */
function xaesSubkeyFromSpec(kek: Uint8Array, nonce: Uint8Array): Uint8Array {
  const l = BigInt(`0x${hex(aesCbcBlock(kek, new Uint8Array(16), new Uint8Array(16)))}`);
  const k1n = ((l << 1n) & ((1n << 128n) - 1n)) ^ (l >> 127n === 1n ? 0x87n : 0n);
  const k1 = fromHex(k1n.toString(16).padStart(32, '0'));
  const m = (i: number) => cat(Uint8Array.of(0x00, i, 0x58, 0x00), nonce.subarray(0, 12));
  return cat(aesCbcBlock(kek, k1, m(1)), aesCbcBlock(kek, k1, m(2)));
}

/** docs/format.md §2, written out again with node:crypto primitives only. */
function kwkFromSpec(
  kek: Uint8Array,
  ref: { keyId: string; version: number },
  suite: number,
  dek: Uint8Array,
  context: Record<string, string>,
  nonce: Uint8Array,
): Uint8Array {
  expect(nonce.length).toBe(suite === 0x02 ? 24 : 12);
  const header = cat(
    Uint8Array.of(0x4b, 0x57, 0x4b, 0x01, suite, ref.keyId.length),
    ascii(ref.keyId),
    u32(ref.version),
  );
  const aad = cat(header, encodeContext(context));
  const sealed =
    suite === 0x02 ? gcm(xaesSubkeyFromSpec(kek, nonce), nonce.subarray(12), dek, aad) : gcm(kek, nonce, dek, aad);
  return cat(header, nonce, sealed);
}

/** docs/format.md §4, written out again with node:crypto primitives only. */
function rebuildFromSpec(file: GoldenFile, v: GoldenVector): Uint8Array {
  const dek = fromHex(v.dek);
  const messageId = fromHex(v.messageId);
  const kek = fromHex(file.kek.material);
  const ctx = encodeContext(v.context);
  const wrapped = kwkFromSpec(kek, file.kek, v.wrapSuite ?? 0x01, dek, v.context, fromHex(v.wrapNonce)); // §2
  expect(hex(wrapped)).toBe(v.wrappedKey);
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
        expect(hex(await decryptEnvelope(provider, envelope, { key: golden.kek.keyId, context: v.context }))).toBe(
          v.plaintext,
        );
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

describe('golden wrapped data keys (golden-v1.json `wrappedKeys`, docs/format.md §2)', () => {
  const kek = fromHex(golden.kek.material);

  it('cover both suites at both KEK id lengths: 83, 146, 71 and 134 bytes', () => {
    expect(golden.wrappedKeys.map(wrappedInputsOf)).toEqual(WRAPPED_KEY_INPUTS);
    expect(golden.wrappedKeys.map((v) => [v.suite, v.wrapped.length / 2])).toEqual([
      [2, 83],
      [2, 146],
      [1, 71],
      [1, 134],
    ]);
  });

  it('the envelopes include both suites, and suite 0x02 only where the vector says so', () => {
    const suites = golden.vectors.map((v) => fromHex(v.wrappedKey)[4]);
    expect(suites).toEqual(golden.vectors.map((v) => v.wrapSuite ?? 1));
    expect(new Set(suites)).toEqual(new Set([1, 2]));
  });

  for (const v of golden.wrappedKeys) {
    describe(v.name, () => {
      const wrapped = fromHex(v.wrapped);

      it('unwraps to the committed DEK, and wraps again to the committed bytes', () => {
        const parsed = parseWrappedKey(wrapped);
        expect({ suite: parsed.suite, keyId: parsed.keyId, version: parsed.version }).toEqual({
          suite: v.suite,
          keyId: v.keyId,
          version: v.version,
        });
        expect(hex(unwrapDataKey(kek, parsed, v.context))).toBe(v.dek);
        expect(buildWrappedKeyVector(golden.kek, wrappedInputsOf(v))).toEqual(v);
      });

      it('matches docs/format.md rebuilt with raw node:crypto (derived key included)', () => {
        const nonce = fromHex(v.nonce);
        if (v.suite === 2) expect(hex(xaesSubkeyFromSpec(kek, nonce))).toBe(v.derivedKey);
        else expect(v.derivedKey).toBeUndefined();
        const rebuilt = kwkFromSpec(kek, v, v.suite, fromHex(v.dek), v.context, nonce);
        expect(hex(rebuilt)).toBe(v.wrapped);
        expect(hex(rebuilt.subarray(0, 10 + v.keyId.length)) + hex(encodeContext(v.context))).toBe(v.aad);
      });

      it('the sealed DEK opens with raw AES-256-GCM under the documented key and nonce', () => {
        const nonce = fromHex(v.nonce);
        const [key, iv] = v.suite === 2 ? [fromHex(v.derivedKey as string), nonce.subarray(12)] : [kek, nonce];
        const sealed = wrapped.subarray(wrapped.length - 48);
        const d = createDecipheriv('aes-256-gcm', key, iv, { authTagLength: 16 });
        d.setAAD(fromHex(v.aad));
        d.setAuthTag(sealed.subarray(32));
        expect(hex(cat(d.update(sealed.subarray(0, 32)), d.final()))).toBe(v.dek);
      });

      it('another context does not unwrap it', () => {
        const other: Record<string, string> = Object.keys(v.context).length > 0 ? {} : { tenant: 'acme' };
        let error: unknown;
        try {
          unwrapDataKey(kek, parseWrappedKey(wrapped), other);
        } catch (e) {
          error = e;
        }
        expect(DecryptionError.isInstance(error)).toBe(true);
      });
    });
  }
});

// ---------------------------------------------------------------------------------------------
// Signed suite 0x02 (docs/format.md §4.9): test/vectors/golden-signed-v1.json.

const signedGolden = JSON.parse(
  readFileSync(new URL('./vectors/golden-signed-v1.json', import.meta.url), 'utf8'),
) as SignedGoldenFile;

function signedInputsOf(v: SignedGoldenVector): SignedGoldenInputs {
  const { verificationKey, wrapContext, wrappedKey, encKey, commitment, header, signature, envelope, text, ...rest } =
    v;
  return rest;
}

/** docs/format.md §4.9 with raw node:crypto: the envelope minus its signature, and the key that must verify it. */
function rebuildSignedFromSpec(
  file: SignedGoldenFile,
  v: SignedGoldenVector,
): { unsigned: Uint8Array; vk: Uint8Array } {
  const ecdh = createECDH('secp384r1');
  ecdh.setPrivateKey(fromHex(v.signingKey));
  const vk = new Uint8Array(ecdh.getPublicKey(undefined, 'compressed'));
  expect(hex(vk)).toBe(v.verificationKey);
  const wrapContext = { ...v.context, 'keywarden:verification-key': Buffer.from(vk).toString('base64url') };
  expect(v.wrapContext).toEqual(wrapContext);
  const dek = fromHex(v.dek);
  const messageId = fromHex(v.messageId);
  const wrapped = kwkFromSpec(fromHex(file.kek.material), file.kek, 0x02, dek, wrapContext, fromHex(v.wrapNonce));
  expect(hex(wrapped)).toBe(v.wrappedKey);
  const hkdf = (label: string) =>
    new Uint8Array(hkdfSync('sha256', dek, messageId, cat(ascii(label), Uint8Array.of(0x02)), 32));
  const encKey = hkdf('keywarden/v1/data-key');
  const commitment = hkdf('keywarden/v1/commit');
  expect(hex(encKey)).toBe(v.encKey);
  expect(hex(commitment)).toBe(v.commitment);
  const framed = v.mode === 'framed';
  const header = cat(
    Uint8Array.of(0x4b, 0x57, 0x45, 0x01, 0x02, framed ? 0x01 : 0x00),
    u16(wrapped.length),
    wrapped,
    messageId,
    commitment,
    vk,
    framed ? u32(v.frameSize as number) : new Uint8Array(0),
  );
  expect(hex(header)).toBe(v.header);
  const ctx = encodeContext(v.context); // the body's AAD carries the caller's context only
  const plaintext = fromHex(v.plaintext);
  if (!framed) {
    const nonce = fromHex(v.nonce as string);
    return { unsigned: cat(header, nonce, gcm(encKey, nonce, plaintext, cat(header, ctx))), vk };
  }
  const frameSize = v.frameSize as number;
  const prefix = cat(ascii('KWF1'), createHash('sha256').update(header).update(ctx).digest());
  const parts: Uint8Array[] = [header];
  let off = 0;
  for (let seq = 1; ; seq++) {
    const final = plaintext.length - off <= frameSize;
    const content = plaintext.subarray(off, final ? plaintext.length : off + frameSize);
    const frameHead = cat(Uint8Array.of(final ? 1 : 0), u32(seq), u32(content.length));
    parts.push(frameHead, gcm(encKey, cat(new Uint8Array(8), u32(seq)), content, cat(prefix, frameHead)));
    off += content.length;
    if (final) break;
  }
  return { unsigned: cat(...parts), vk };
}

const P384_N = BigInt(
  '0xffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973',
);

describe('golden vectors of the signed suite 0x02 (test/vectors/golden-signed-v1.json, docs/format.md §4.9)', () => {
  it("the committed file is test-only material, covers both modes with and without context, and its inputs are the generator's", () => {
    expect(signedGolden.description).toMatch(/TEST VECTORS ONLY/);
    expect(signedGolden.kek).toEqual(GOLDEN_KEK);
    expect(signedGolden.vectors.map(signedInputsOf)).toEqual(SIGNED_GOLDEN_INPUTS);
    const kinds = signedGolden.vectors.map((v) => `${v.mode}/${Object.keys(v.context).length > 0 ? 'ctx' : 'empty'}`);
    expect(new Set(kinds)).toEqual(new Set(['single-shot/ctx', 'single-shot/empty', 'framed/ctx', 'framed/empty']));
  });

  for (const v of signedGolden.vectors) {
    describe(v.name, () => {
      const envelope = fromHex(v.envelope);
      const options = { key: signedGolden.kek.keyId, context: v.context, requireSigned: true };

      it('the committed bytes decrypt and verify, in memory (requireSigned), through the stream and from the text form', async () => {
        const provider = providerFor(signedGolden as unknown as GoldenFile);
        expect(hex(await decryptEnvelope(provider, envelope, options))).toBe(v.plaintext);
        expect(hex(await decryptThroughStream(provider, envelope, v.context))).toBe(v.plaintext);
        expect(envelopeFromText(v.text)).toEqual(envelope);
        expect(inspectEnvelope(envelope)).toMatchObject({ suite: 2, mode: v.mode, signed: true });
      });

      it('matches docs/format.md rebuilt with raw node:crypto, and the committed low-s signature verifies with raw node:crypto', () => {
        const { unsigned, vk } = rebuildSignedFromSpec(signedGolden, v);
        expect(hex(unsigned) + v.signature).toBe(v.envelope);
        const spki = cat(fromHex('3046301006072a8648ce3d020106052b81040022033200'), vk);
        const key = createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' });
        const signature = fromHex(v.signature);
        expect(verify('sha384', unsigned, { key, dsaEncoding: 'ieee-p1363' }, signature)).toBe(true);
        expect(BigInt(`0x${v.signature.slice(96)}`) <= P384_N >> 1n).toBe(true);
      });

      it('re-encrypting the committed inputs gives the committed bytes except the (randomized) signature, which verifies too', async () => {
        const rebuilt = await buildSignedVector(signedGolden.kek, signedInputsOf(v));
        const { signature, envelope: rebuiltEnvelope, text, ...rest } = rebuilt;
        const { signature: _s, envelope: committedEnvelope, text: _t, ...committedRest } = v;
        expect(rest).toEqual(committedRest);
        expect(rebuiltEnvelope.slice(0, -192)).toBe(committedEnvelope.slice(0, -192));
        const provider = providerFor(signedGolden as unknown as GoldenFile);
        expect(hex(await decryptEnvelope(provider, fromHex(rebuiltEnvelope), options))).toBe(v.plaintext);
      });

      it('flipping any byte of the committed envelope (one bit per byte, all bit positions in turn) fails', async () => {
        const provider = providerFor(signedGolden as unknown as GoldenFile);
        for (let i = 0; i < envelope.length; i++) {
          const copy = envelope.slice();
          copy[i] = (copy[i] as number) ^ (1 << (i % 8));
          let error: unknown;
          try {
            await decryptEnvelope(provider, copy, options);
          } catch (e) {
            error = e;
          }
          expect(
            DecryptionError.isInstance(error) || FormatError.isInstance(error),
            `byte ${i}: ${String(error)}`,
          ).toBe(true);
        }
      });
    });
  }
});

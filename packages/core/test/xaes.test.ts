/**
 * XAES-256-GCM (src/_xaes.ts) against the published C2SP vectors (test/vectors/c2sp/, see the
 * README there): both vectors with every intermediate value of the key derivation (L, K1, M1, M2,
 * Kₓ, Nₓ), and the accumulated randomized test over 10 000 iterations. The 1 000 000-iteration
 * hash is checked only when KW_XAES_1M=1 (about a minute and several hundred MB of SHAKE output; too slow
 * for CI's time budget, see the skip reason below).
 */
import { createCipheriv, createDecipheriv, createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { XAES_NONCE_BYTES, xaesDeriveKey, xaesOpen, xaesSeal } from '../src/_xaes.js';
import { DecryptionError, InvalidInputError } from '../src/errors.js';

interface XaesVector {
  comment: string;
  key: string;
  nonce: string;
  L: string;
  K1: string;
  M1: string;
  M2: string;
  Kx: string;
  Nx: string;
  plaintext: string;
  aad: string;
  ciphertext: string;
}
interface XaesFile {
  source: string;
  licence: string;
  vectors: XaesVector[];
  accumulated: { rngStreamStart: string; results: { iterations: number; hash: string }[] };
}

const file = JSON.parse(readFileSync(new URL('./vectors/c2sp/xaes-256-gcm.json', import.meta.url), 'utf8')) as XaesFile;
const fromHex = (s: string) => new Uint8Array(Buffer.from(s, 'hex'));
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

/** AES-256 of one block, straight from node:crypto, to check the published intermediates. */
function aesBlock(key: Uint8Array, block: Uint8Array): Uint8Array {
  const c = createCipheriv('aes-256-ecb', key, null).setAutoPadding(false);
  return new Uint8Array(Buffer.concat([c.update(block), c.final()]));
}

describe('XAES-256-GCM: C2SP test vectors (test/vectors/c2sp/xaes-256-gcm.json)', () => {
  it('the copy names its source and licence and holds both MSB₁(L) cases', () => {
    expect(file.source).toMatch(/c2sp\.org\/XAES-256-GCM/);
    expect(file.licence).toMatch(/CC BY 4\.0/);
    expect(file.vectors.map((v) => fromHex(v.L)[0]! >> 7)).toEqual([0, 1]);
  });

  for (const v of file.vectors) {
    describe(v.comment, () => {
      const key = fromHex(v.key);
      const nonce = fromHex(v.nonce);

      it('the published intermediates are what AES-256 gives (L, K1, M1, M2)', () => {
        const l = aesBlock(key, new Uint8Array(16));
        expect(hex(l)).toBe(v.L);
        // Each Kₓ half is AES_K(Mi ⊕ K1): decrypting it gives back Mi ⊕ K1, whatever K1 is.
        const d = createDecipheriv('aes-256-ecb', key, null).setAutoPadding(false);
        const mx = new Uint8Array(Buffer.concat([d.update(fromHex(v.Kx)), d.final()]));
        const k1 = fromHex(v.K1);
        const m1 = fromHex(v.M1);
        const m2 = fromHex(v.M2);
        expect(hex(mx.subarray(0, 16).map((b, i) => b ^ k1[i]!))).toBe(v.M1);
        expect(hex(mx.subarray(16).map((b, i) => b ^ k1[i]!))).toBe(v.M2);
        expect(hex(m1.subarray(4))).toBe(hex(nonce.subarray(0, 12)));
        expect(hex(m2.subarray(4))).toBe(hex(nonce.subarray(0, 12)));
      });

      it('xaesDeriveKey returns Kₓ, and Nₓ is N[12:]', () => {
        expect(hex(xaesDeriveKey(key, nonce))).toBe(v.Kx);
        expect(hex(nonce.subarray(12))).toBe(v.Nx);
      });

      it('xaesSeal gives the published ciphertext ‖ tag, and xaesOpen returns the plaintext', () => {
        const sealed = xaesSeal(key, nonce, fromHex(v.plaintext), fromHex(v.aad));
        expect(hex(sealed)).toBe(v.ciphertext);
        expect(hex(xaesOpen(key, nonce, sealed, fromHex(v.aad)))).toBe(v.plaintext);
      });

      it('xaesOpen refuses every single-bit flip of the ciphertext, tag, nonce and aad', () => {
        const sealed = fromHex(v.ciphertext);
        const aad = fromHex(v.aad.length > 0 ? v.aad : '00');
        const good = v.aad.length > 0 ? aad : new Uint8Array(0);
        const flips: Array<() => unknown> = [];
        for (const target of ['sealed', 'nonce', 'aad'] as const) {
          const base = target === 'sealed' ? sealed : target === 'nonce' ? nonce : good;
          for (let bit = 0; bit < base.length * 8; bit++) {
            const bad = base.slice();
            bad[bit >> 3]! ^= 1 << (bit & 7);
            flips.push(() =>
              xaesOpen(
                key,
                target === 'nonce' ? bad : nonce,
                target === 'sealed' ? bad : sealed,
                target === 'aad' ? bad : good,
              ),
            );
          }
        }
        if (v.aad.length === 0) flips.push(() => xaesOpen(key, nonce, sealed, aad)); // aad added
        let refused = 0;
        for (const f of flips) {
          try {
            f();
          } catch (e) {
            if (DecryptionError.isInstance(e)) refused++;
          }
        }
        expect(refused).toBe(flips.length);
        expect(flips.length).toBeGreaterThan((sealed.length + nonce.length) * 8 - 1);
      });
    });
  }

  it('refuses any nonce that is not 24 bytes and any key that is not 32 bytes (InvalidInputError)', () => {
    const key = new Uint8Array(32).fill(1);
    for (const n of [0, 12, 16, 23, 25, 32]) {
      expect(() => xaesSeal(key, new Uint8Array(n), new Uint8Array(1), new Uint8Array(0))).toThrow(InvalidInputError);
    }
    for (const k of [0, 16, 24, 31, 33]) {
      expect(() => xaesDeriveKey(new Uint8Array(k), new Uint8Array(XAES_NONCE_BYTES))).toThrow(InvalidInputError);
    }
  });
});

/**
 * The deterministic RNG of the accumulated test: one SHAKE-128 instance with empty input, read as
 * a stream. node:crypto has no incremental squeeze, but a SHAKE output is a prefix of every longer
 * output, so the stream is computed ahead and recomputed twice as long whenever it runs out.
 */
class ShakeStream {
  #buf: Uint8Array;
  #pos = 0;
  constructor(bytes: number) {
    this.#buf = ShakeStream.#squeeze(bytes);
  }
  static #squeeze(bytes: number): Uint8Array {
    return new Uint8Array(createHash('shake128', { outputLength: bytes }).digest());
  }
  read(n: number): Uint8Array {
    while (this.#pos + n > this.#buf.length) this.#buf = ShakeStream.#squeeze(this.#buf.length * 2);
    const out = this.#buf.subarray(this.#pos, this.#pos + n);
    this.#pos += n;
    return out;
  }
}

function accumulated(iterations: number): string {
  // Per iteration 32 + 24 + 2 + two lengths of 0..255: about 312 bytes on average.
  const rng = new ShakeStream(iterations * 320);
  const digest = createHash('shake128', { outputLength: 32 });
  for (let i = 0; i < iterations; i++) {
    const key = rng.read(32);
    const nonce = rng.read(24);
    const plaintext = rng.read(rng.read(1)[0]!);
    const aad = rng.read(rng.read(1)[0]!);
    const sealed = xaesSeal(key, nonce, plaintext, aad);
    const opened = xaesOpen(key, nonce, sealed, aad);
    if (Buffer.compare(opened, plaintext) !== 0) throw new Error(`iteration ${i}: round trip failed`);
    digest.update(sealed);
  }
  return digest.digest('hex');
}

describe('XAES-256-GCM: C2SP accumulated randomized tests', () => {
  it('the deterministic RNG starts with the published bytes', () => {
    expect(hex(new ShakeStream(16).read(16))).toBe(file.accumulated.rngStreamStart);
  });

  const tenK = file.accumulated.results.find((r) => r.iterations === 10_000)!;
  it('10 000 iterations (seal, open, hash) give the published hash', () => {
    expect(accumulated(tenK.iterations)).toBe(tenK.hash);
  });

  const oneM = file.accumulated.results.find((r) => r.iterations === 1_000_000)!;
  // Skip reason: ~1 minute of CPU and a 320–640 MB SHAKE buffer on the 2 shared CI cores; run by hand
  // with KW_XAES_1M=1 when _xaes.ts changes.
  it.runIf(process.env.KW_XAES_1M === '1')(
    '1 000 000 iterations give the published hash (KW_XAES_1M=1)',
    () => {
      expect(accumulated(oneM.iterations)).toBe(oneM.hash);
    },
    600_000,
  );
});

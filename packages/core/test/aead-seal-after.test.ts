/**
 * gcmSealAfter (aead.ts): prefix ‖ gcmSeal(...) in one allocation, for frames and single-shot bodies
 * (issue 11). Same ciphertext and tag as gcmSeal, the prefix copied (not aliased), lengths checked.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { gcmOpen, gcmSeal, gcmSealAfter } from '../src/aead.js';
import { InvalidInputError } from '../src/errors.js';

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

describe('gcmSealAfter', () => {
  it('is the prefix followed by exactly what gcmSeal returns, for empty to 100 KiB plaintexts', () => {
    const key = new Uint8Array(randomBytes(32));
    const nonce = new Uint8Array(randomBytes(12));
    const aad = new Uint8Array(randomBytes(40));
    for (const n of [0, 1, 15, 16, 17, 4096, 100 * 1024]) {
      const pt = new Uint8Array(randomBytes(n));
      for (const prefix of [new Uint8Array(0), new Uint8Array(randomBytes(9))]) {
        const out = gcmSealAfter(prefix, key, nonce, pt, aad);
        expect(hex(out)).toBe(hex(prefix) + hex(gcmSeal(key, nonce, pt, aad)));
        expect(hex(gcmOpen(key, nonce, out.subarray(prefix.length), aad))).toBe(hex(pt));
        expect(out.buffer).not.toBe(prefix.buffer);
      }
    }
  });

  it('checks the prefix and the key, nonce lengths like gcmSeal', () => {
    const ok = new Uint8Array(12);
    expect(() => gcmSealAfter('x' as unknown as Uint8Array, new Uint8Array(32), ok, ok, ok)).toThrow(InvalidInputError);
    expect(() => gcmSealAfter(ok, new Uint8Array(16), ok, ok, ok)).toThrow(InvalidInputError);
    expect(() => gcmSealAfter(ok, new Uint8Array(32), new Uint8Array(16), ok, ok)).toThrow(InvalidInputError);
  });
});

/**
 * XaesKeySchedule (src/_xaes.ts): one key's AES-256-ECB context kept for many XAES-256-GCM subkey
 * derivations (issue 11, hot path). Contract: it derives exactly what xaesDeriveKey derives (the
 * C2SP vectors, and thousands of random nonces on one schedule interleaved with another key's), wraps
 * and unwraps data keys interchangeably with the plain key, and once destroyed it refuses to derive
 * rather than derive anything.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { XaesKeySchedule, xaesDeriveKey, xaesOpen, xaesSeal } from '../src/_xaes.js';
import { parseWrappedKey, unwrapDataKey, wrapDataKey } from '../src/data-key.js';
import { KeyMaterialError } from '../src/errors.js';

interface XaesVector {
  comment: string;
  key: string;
  nonce: string;
  Kx: string;
  plaintext: string;
  aad: string;
  ciphertext: string;
}
const file = JSON.parse(readFileSync(new URL('./vectors/c2sp/xaes-256-gcm.json', import.meta.url), 'utf8')) as {
  vectors: XaesVector[];
};
const fromHex = (s: string) => new Uint8Array(Buffer.from(s, 'hex'));
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

describe('XaesKeySchedule', () => {
  for (const v of file.vectors) {
    it(`derives the C2SP Kₓ and reproduces the ciphertext (${v.comment})`, () => {
      const schedule = new XaesKeySchedule(fromHex(v.key));
      const nonce = fromHex(v.nonce);
      // Twice on the same schedule: nothing carries over from one derivation to the next.
      expect(hex(schedule.derive(nonce))).toBe(v.Kx);
      expect(hex(schedule.derive(nonce))).toBe(v.Kx);
      const plaintext = fromHex(v.plaintext);
      const aad = fromHex(v.aad);
      const sealed = xaesSeal(schedule, nonce, plaintext, aad);
      expect(hex(sealed)).toBe(v.ciphertext);
      expect(hex(xaesOpen(schedule, nonce, sealed, aad))).toBe(hex(plaintext));
      schedule.destroy();
    });
  }

  it('derives what xaesDeriveKey derives for 2 000 random nonces, interleaved with another key', () => {
    const k1 = new Uint8Array(randomBytes(32));
    const k2 = new Uint8Array(randomBytes(32));
    const s1 = new XaesKeySchedule(k1);
    const s2 = new XaesKeySchedule(k2);
    for (let i = 0; i < 2000; i++) {
      const n = new Uint8Array(randomBytes(24));
      expect(hex(s1.derive(n))).toBe(hex(xaesDeriveKey(k1, n)));
      expect(hex(s2.derive(n))).toBe(hex(xaesDeriveKey(k2, n)));
    }
    s1.destroy();
    s2.destroy();
  });

  it('wraps and unwraps data keys interchangeably with the plain KEK', () => {
    const kek = new Uint8Array(randomBytes(32));
    const schedule = new XaesKeySchedule(kek);
    const dek = new Uint8Array(randomBytes(32));
    const ref = { keyId: 'kek_test', version: 3 };
    const ctx = { tenant: 'acme' };
    const a = wrapDataKey(kek, ref, dek, ctx, new Uint8Array(randomBytes(24)), undefined, schedule);
    const b = wrapDataKey(kek, ref, dek, ctx, new Uint8Array(randomBytes(24)));
    expect(hex(unwrapDataKey(kek, parseWrappedKey(a), ctx))).toBe(hex(dek));
    expect(hex(unwrapDataKey(kek, parseWrappedKey(b), ctx, schedule))).toBe(hex(dek));
    schedule.destroy();
  });

  it('once destroyed, it refuses to derive, wrap or unwrap (KeyMaterialError), and destroy() is idempotent', () => {
    const kek = new Uint8Array(randomBytes(32));
    const schedule = new XaesKeySchedule(kek);
    const ref = { keyId: 'kek_test', version: 1 };
    const wrapped = wrapDataKey(kek, ref, new Uint8Array(randomBytes(32)), undefined, new Uint8Array(randomBytes(24)));
    expect(schedule.destroyed).toBe(false);
    schedule.destroy();
    schedule.destroy();
    expect(schedule.destroyed).toBe(true);
    expect(() => schedule.derive(new Uint8Array(24))).toThrow(KeyMaterialError);
    expect(() =>
      wrapDataKey(kek, ref, new Uint8Array(32).fill(1), undefined, new Uint8Array(24), undefined, schedule),
    ).toThrow(KeyMaterialError);
    expect(() => unwrapDataKey(kek, parseWrappedKey(wrapped), undefined, schedule)).toThrow(KeyMaterialError);
  });

  it('checks its key and nonce lengths', () => {
    expect(() => new XaesKeySchedule(new Uint8Array(16))).toThrow(/32 bytes/);
    const s = new XaesKeySchedule(new Uint8Array(randomBytes(32)));
    expect(() => s.derive(new Uint8Array(12))).toThrow(/24 bytes/);
    s.destroy();
  });
});

/**
 * Weak-key refusal (src/weak-key.ts): every weak class is refused with its reason; uniformly random
 * keys are never refused; wrong lengths are refused; messages never carry the bytes; the thresholds
 * are the exact 2^-40 tails the source comment claims.
 *
 * The acceptance property draws from crypto.randomBytes, not fast-check: fast-check's byte
 * generators are deliberately biased towards small and repeated values (that is how they find
 * bugs), so "random" arrays from it are often genuinely weak and would be refused correctly.
 * fast-check is used for the properties that must hold for *every* input.
 */
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { InvalidInputError, KeywardenError, WeakKeyMaterialError } from '../src/errors.js';
import {
  assertStrongKeyMaterial,
  isWeakKeyMaterial,
  WEAK_KEY_FALSE_POSITIVE_TARGET,
  type WeakKeyReason,
  weakKeyThresholds,
} from '../src/weak-key.js';

const ascii = (s: string) => new Uint8Array(Buffer.from(s, 'latin1'));
const TEXT_REASONS: readonly WeakKeyReason[] = ['hex-text', 'base64-text', 'printable-text'];
const isTextByte = (b: number) => (b >= 0x20 && b <= 0x7e) || b === 0x09 || b === 0x0a || b === 0x0d;

function caught(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error('expected a throw');
}

/** A deterministic, non-random filler (xorshift32) so the examples do not depend on luck. */
function filler(seed: number, length: number, map: (x: number) => number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = map(x);
  }
  return out;
}

/** Asserts the error is a one-line WeakKeyMaterialError that reveals nothing of `material`. */
function expectRefusedWithoutLeak(material: Uint8Array, reason: WeakKeyReason, expectedLength = 32): string {
  expect(isWeakKeyMaterial(material, { expectedLength })).toBe(reason);
  const err = caught(() => assertStrongKeyMaterial(material, { expectedLength }));
  expect(err).toBeInstanceOf(WeakKeyMaterialError);
  expect(WeakKeyMaterialError.isInstance(err)).toBe(true);
  expect(KeywardenError.isInstance(err, 'KW_WEAK_KEY')).toBe(true);
  const message = (err as Error).message;
  expect(message).toMatch(/^weak-key: [^\r\n]+$/);
  expect(message).toContain(`[${reason}]`);
  expectNoLeak(message, material);
  return message;
}

function expectNoLeak(message: string, material: Uint8Array): void {
  const buf = Buffer.from(material);
  const lower = message.toLowerCase();
  // Any 4 bytes in hex, any 3 bytes in base64, any 10 characters of the material as text,
  // any 3 consecutive byte values in decimal: none may appear in the message.
  const hex = buf.toString('hex');
  for (let i = 0; i + 8 <= hex.length; i += 2) expect(lower).not.toContain(hex.slice(i, i + 8));
  const b64 = buf.toString('base64');
  for (let i = 0; i + 4 <= b64.length - 2; i += 4) expect(message).not.toContain(b64.slice(i, i + 4));
  const text = buf.toString('latin1');
  for (let i = 0; i + 10 <= text.length; i++) expect(message).not.toContain(text.slice(i, i + 10));
  for (let i = 0; i + 3 <= material.length; i++) {
    const three = Array.from(material.subarray(i, i + 3));
    expect(message).not.toContain(three.join(','));
    expect(message).not.toContain(three.join(', '));
    expect(message).not.toContain(three.join(' '));
  }
}

describe('assertStrongKeyMaterial: refuses each weak class with its reason', () => {
  it('wrong length (default 32 bytes): shorter, longer, empty', () => {
    for (const n of [0, 1, 16, 31, 33, 64]) {
      const m = expectRefusedWithoutLeak(new Uint8Array(randomBytes(n)), 'wrong-length');
      expect(m).toBe(`weak-key: key material must be 32 bytes, got ${n} [wrong-length]`);
    }
    expectRefusedWithoutLeak(new Uint8Array(randomBytes(32)), 'wrong-length', 16);
    expectRefusedWithoutLeak(new Uint8Array(randomBytes(63)), 'wrong-length', 64);
  });

  it('all bytes equal', () => {
    for (const b of [0x00, 0xff, 0x41, 0x5a, 0x80])
      expectRefusedWithoutLeak(new Uint8Array(32).fill(b), 'repeating-pattern');
  });

  it('a short pattern repeated (period 2..16)', () => {
    for (const period of [2, 3, 4, 7, 8, 15, 16]) {
      const pattern = new Uint8Array(randomBytes(period));
      const m = new Uint8Array(32);
      for (let i = 0; i < 32; i++) m[i] = pattern[i % period] as number;
      expectRefusedWithoutLeak(m, 'repeating-pattern');
    }
    // DEAD BEEF DEAD BEEF …
    expectRefusedWithoutLeak(new Uint8Array(Buffer.from('deadbeef'.repeat(8), 'hex')), 'repeating-pattern');
  });

  it('a run of identical bytes: a short key zero- or 0xff-padded to length', () => {
    const key = new Uint8Array(32);
    key.set(filler(7, 25, (x) => 0x80 | (x & 0x7f)));
    expectRefusedWithoutLeak(key, 'repeating-pattern'); // 25 bytes + 7 zeros
    const ff = new Uint8Array(32).fill(0xff);
    ff.set(filler(9, 24, (x) => x & 0x7f));
    expectRefusedWithoutLeak(ff, 'repeating-pattern'); // 24 bytes + 8 × 0xff
  });

  it('arithmetic sequences with any constant step mod 256', () => {
    for (const [start, step] of [
      [0, 1],
      [0x31, 255],
      [0x10, 3],
      [200, 7],
      [1, 129],
    ] as const) {
      const m = new Uint8Array(32);
      for (let i = 0; i < 32; i++) m[i] = (start + i * step) & 0xff;
      expectRefusedWithoutLeak(m, 'arithmetic-sequence');
    }
  });

  it('near-arithmetic sequences: a counting sequence with a few bytes changed', () => {
    const m = new Uint8Array(32);
    for (let i = 0; i < 32; i++) m[i] = i;
    m[5] = 200;
    m[17] = 99;
    m[28] = 250;
    expectRefusedWithoutLeak(m, 'arithmetic-sequence');
  });

  it('hex text passed as bytes (the ASCII of a hex string)', () => {
    expectRefusedWithoutLeak(ascii(randomBytes(16).toString('hex')), 'hex-text');
    expectRefusedWithoutLeak(ascii(randomBytes(16).toString('hex').toUpperCase()), 'hex-text');
    expectRefusedWithoutLeak(ascii(randomBytes(8).toString('hex')), 'hex-text', 16);
    expectRefusedWithoutLeak(ascii(randomBytes(32).toString('hex')), 'hex-text', 64);
  });

  it('base64 text passed as bytes (standard, padded, url-safe)', () => {
    for (const s of [
      'u7Kq9Zr2Xw0pL4mN8sD1fG6hJ3vB5cYt',
      'Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA==',
      'Kq9-Zr2_Xw0pL4mN8sD1fG6hJ3vB5cYt',
    ]) {
      expect(s).toHaveLength(32);
      expectRefusedWithoutLeak(ascii(s), 'base64-text');
    }
    // Random base64 text is always refused as text; which text reason depends on whether it happens
    // to contain upper case, lower case and digits.
    for (let i = 0; i < 200; i++) {
      expect(TEXT_REASONS).toContain(isWeakKeyMaterial(ascii(randomBytes(24).toString('base64'))));
      expect(TEXT_REASONS).toContain(isWeakKeyMaterial(ascii(randomBytes(24).toString('base64url'))));
    }
  });

  it('printable ASCII: passwords and passphrases', () => {
    for (const s of [
      'my-super-secret-password-123456!',
      'correct horse battery staple 123',
      'thequickbrownfoxjumpsoverthelazy',
      'Tr0ub4dor&3 is not a good key!!\n',
    ]) {
      expect(s).toHaveLength(32);
      expectRefusedWithoutLeak(ascii(s), 'printable-text');
    }
    expectRefusedWithoutLeak(ascii('hunter2 Passw0rd'), 'printable-text', 16);
    // The reason is a hint, the refusal is what matters: a mixed-case alphanumeric password cannot be
    // told apart from base64 text, and is reported as such.
    expectRefusedWithoutLeak(ascii('hunter2-Passw0rd'), 'base64-text', 16);
    const dickens = 'It was the best of times, it was the worst of times, it was the age of wisdom'.slice(0, 64);
    expectRefusedWithoutLeak(ascii(dickens), 'printable-text', 64);
  });

  it('too few distinct byte values', () => {
    // 32 bytes drawn from only 10 values (0x80..0x89): no pattern, no run, not text.
    const m = filler(0x1234, 32, (x) => 0x80 + (x % 10));
    expectRefusedWithoutLeak(m, 'few-distinct-bytes');
    expectRefusedWithoutLeak(
      filler(0x99, 64, (x) => 0xa0 + (x % 30)),
      'few-distinct-bytes',
      64,
    );
  });

  it('low empirical Shannon entropy with enough distinct values (one value dominates)', () => {
    // 0x00 fourteen times, interleaved with 18 distinct high bytes: 19 distinct values (≥ 18) but
    // H = 5 − 14·log2(14)/32 ≈ 3.33 bits < 3.92.
    const m = new Uint8Array(32);
    let other = 0;
    for (let i = 0; i < 32; i++)
      m[i] = [0, 3, 5, 8, 10, 13, 15, 18, 20, 23, 25, 28, 30, 31].includes(i) ? 0 : 0x90 + 5 * other++;
    expect(new Set(m).size).toBeGreaterThanOrEqual(weakKeyThresholds(32).minDistinctBytes);
    expectRefusedWithoutLeak(m, 'low-entropy');
  });

  it('names what was refused, on one line, and refuses bad options as InvalidInputError', () => {
    const err = caught(() => assertStrongKeyMaterial(new Uint8Array(32), { what: 'import: KEK material' }));
    expect((err as Error).message).toBe(
      'weak-key: import: KEK material refused: it repeats a short pattern or a run of identical bytes [repeating-pattern]',
    );
    const k = new Uint8Array(randomBytes(32));
    for (const expectedLength of [0, 15, 65, 32.5, Number.NaN]) {
      expect(() => assertStrongKeyMaterial(k, { expectedLength })).toThrow(InvalidInputError);
    }
    for (const what of ['', 'two\nlines', 'x'.repeat(65)]) {
      expect(() => assertStrongKeyMaterial(k, { what })).toThrow(InvalidInputError);
    }
    expect(() => assertStrongKeyMaterial('0'.repeat(32) as unknown as Uint8Array)).toThrow(InvalidInputError);
    expect(() => isWeakKeyMaterial([1, 2, 3] as unknown as Uint8Array)).toThrow(InvalidInputError);
  });
});

describe('assertStrongKeyMaterial: never refuses uniformly random keys', () => {
  it('accepts 100,000 keys of 32 bytes from crypto.randomBytes', () => {
    const all = randomBytes(32 * 100_000);
    for (let i = 0; i < 100_000; i++) {
      const key = new Uint8Array(all.buffer, all.byteOffset + 32 * i, 32);
      if (isWeakKeyMaterial(key) !== undefined) {
        // Report the reason only: the key is random test data, but the habit matters.
        expect.fail(`random 32-byte key #${i} refused as ${isWeakKeyMaterial(key)}`);
      }
    }
    expect(() => assertStrongKeyMaterial(new Uint8Array(randomBytes(32)))).not.toThrow();
  });

  it('accepts 20,000 keys each of 24 and 64 bytes', () => {
    for (const n of [24, 64]) {
      const all = randomBytes(n * 20_000);
      let refused = 0;
      for (let i = 0; i < 20_000; i++) {
        if (isWeakKeyMaterial(new Uint8Array(all.buffer, all.byteOffset + n * i, n), { expectedLength: n })) refused++;
      }
      expect(refused, `${n}-byte keys refused`).toBe(0);
    }
  });

  it('16-byte keys: the only possible refusal is the documented text rule (P ≈ 2.1e-7 per key)', () => {
    const all = randomBytes(16 * 100_000);
    for (let i = 0; i < 100_000; i++) {
      const key = new Uint8Array(all.buffer, all.byteOffset + 16 * i, 16);
      const reason = isWeakKeyMaterial(key, { expectedLength: 16 });
      if (reason !== undefined) {
        expect(TEXT_REASONS).toContain(reason);
        expect(key.every(isTextByte)).toBe(true);
      }
    }
  });
});

describe('assertStrongKeyMaterial: properties for every input (fast-check)', () => {
  const params = { seed: 0x77_6b_65_79, numRuns: 300 };

  it('throws only WeakKeyMaterialError, agrees with isWeakKeyMaterial, and never leaks bytes', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 80 }), (bytes) => {
        const reason = isWeakKeyMaterial(bytes);
        const err = reason === undefined ? undefined : caught(() => assertStrongKeyMaterial(bytes));
        if (reason === undefined) {
          expect(() => assertStrongKeyMaterial(bytes)).not.toThrow();
          return;
        }
        expect(WeakKeyMaterialError.isInstance(err)).toBe(true);
        expect((err as Error).message).toContain(`[${reason}]`);
        expectNoLeak((err as Error).message, bytes);
      }),
      params,
    );
  });

  it('every array of the wrong length is refused as wrong-length', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 0, maxLength: 100 }).filter((b) => b.length !== 32),
        (bytes) => isWeakKeyMaterial(bytes) === 'wrong-length',
      ),
      params,
    );
  });

  it('every pattern of period ≤ 16 repeated to the key length is refused', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 1, maxLength: 16 }), fc.constantFrom(24, 32, 64), (pattern, n) => {
        const m = new Uint8Array(n);
        for (let i = 0; i < n; i++) m[i] = pattern[i % pattern.length] as number;
        if (pattern.length > n - 8) return true; // too few repeats to be a pattern (see MIN_REPEATED_BYTES)
        return isWeakKeyMaterial(m, { expectedLength: n }) === 'repeating-pattern';
      }),
      params,
    );
  });

  it('every arithmetic sequence is refused (as a pattern when the step has a short period)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 255 }), (start, step) => {
        const m = new Uint8Array(32);
        for (let i = 0; i < 32; i++) m[i] = (start + i * step) & 0xff;
        // step·p ≡ 0 mod 256 for some p ≤ 16 exactly when 256/gcd(step, 256) ≤ 16.
        const reason = isWeakKeyMaterial(m);
        return reason === 'arithmetic-sequence' || reason === 'repeating-pattern';
      }),
      params,
    );
  });

  it('every printable-ASCII string of key length is refused as text', () => {
    fc.assert(
      fc.property(fc.constantFrom(16, 32, 64), fc.integer({ min: 0, max: 2 ** 31 - 1 }), (n, seed) => {
        const m = filler(seed, n, (x) => 0x20 + (x % 95));
        const reason = isWeakKeyMaterial(m, { expectedLength: n });
        // A printable string can also be a repeating pattern or arithmetic sequence; both are refusals.
        return reason !== undefined && [...TEXT_REASONS, 'repeating-pattern', 'arithmetic-sequence'].includes(reason);
      }),
      params,
    );
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0x20, max: 0x7e }), { minLength: 32, maxLength: 32 }), (codes) => {
        return isWeakKeyMaterial(Uint8Array.from(codes)) !== undefined;
      }),
      params,
    );
  });
});

/**
 * Exact tails, recomputed independently of the source: enumerate every count profile (integer
 * partition λ of n into at most 256 parts); the probability that n uniform bytes have that profile
 * is 256!/(256−k)!/∏ m_j! · n!/∏ λ_i! / 256^n (k parts, m_j parts of size j). The distinct-value
 * thresholds come from a different method in the source (occupancy recurrence), so agreement here
 * checks both. All lengths 16..64 were checked this way once (13 s); the test runs a sample.
 */
describe('weak-key thresholds are the exact 2^-40 tails', () => {
  const LOG_FACT = [0];
  for (let i = 1; i <= 256; i++) LOG_FACT[i] = (LOG_FACT[i - 1] as number) + Math.log(i);
  const lf = (i: number) => LOG_FACT[i] as number;

  function tails(n: number, hCut: readonly number[], dCut: readonly number[]) {
    const hTail = hCut.map(() => 0);
    const dTail = dCut.map(() => 0);
    const base = lf(256) + lf(n) - n * Math.log(256);
    const visit = (
      rem: number,
      max: number,
      k: number,
      logPartFact: number,
      sumPLog2P: number,
      logMultFact: number,
      last: number,
      run: number,
    ): void => {
      if (rem === 0) {
        if (k > 256) return;
        const p = Math.exp(base - lf(256 - k) - logMultFact - logPartFact);
        const h = Math.log2(n) - sumPLog2P / n;
        hCut.forEach((c, i) => {
          if (h < c) hTail[i] = (hTail[i] as number) + p;
        });
        dCut.forEach((c, i) => {
          if (k < c) dTail[i] = (dTail[i] as number) + p;
        });
        return;
      }
      for (let q = Math.min(rem, max); q >= 1; q--) {
        const r = q === last ? run + 1 : 1;
        visit(rem - q, q, k + 1, logPartFact + lf(q), sumPLog2P + q * Math.log2(q), logMultFact + Math.log(r), q, r);
      }
    };
    visit(n, n, 0, 0, 0, 0, 0, 0);
    return { hTail, dTail };
  }

  it('pins the thresholds for 16, 24, 32 and 64 bytes', () => {
    expect(weakKeyThresholds(16)).toEqual({ minDistinctBytes: 8, minDistinctSteps: 7, minEntropyBits: 2.6 });
    expect(weakKeyThresholds(24)).toEqual({ minDistinctBytes: 13, minDistinctSteps: 12, minEntropyBits: 3.4 });
    expect(weakKeyThresholds(32)).toEqual({ minDistinctBytes: 18, minDistinctSteps: 17, minEntropyBits: 3.92 });
    expect(weakKeyThresholds(64)).toEqual({ minDistinctBytes: 38, minDistinctSteps: 38, minEntropyBits: 5.04 });
  });

  it.each([16, 17, 24, 31, 32, 40, 48, 64])(
    'n = %i: each threshold fires with P ≤ 2^-40, and is the tightest such',
    (n) => {
      const t = weakKeyThresholds(n);
      const { hTail, dTail } = tails(
        n,
        [t.minEntropyBits, t.minEntropyBits + 0.01],
        [t.minDistinctBytes, t.minDistinctBytes + 1],
      );
      const [hAt, hAbove] = hTail as [number, number];
      const [dAt, dAbove] = dTail as [number, number];
      expect(hAt).toBeLessThanOrEqual(WEAK_KEY_FALSE_POSITIVE_TARGET);
      expect(hAbove).toBeGreaterThan(WEAK_KEY_FALSE_POSITIVE_TARGET); // the table is rounded down by < 0.01 bit
      expect(dAt).toBeLessThanOrEqual(WEAK_KEY_FALSE_POSITIVE_TARGET);
      expect(dAbove).toBeGreaterThan(WEAK_KEY_FALSE_POSITIVE_TARGET);
      // The step check uses the distinct-value threshold for n − 1 values.
      if (n > 16) expect(t.minDistinctSteps).toBe(weakKeyThresholds(n - 1).minDistinctBytes);
    },
  );
});

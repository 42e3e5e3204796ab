/**
 * Wycheproof X25519 (XdhComp, testvectors_v1/x25519_test.json) through the ECDH helper that
 * encrypts shares to X25519 custodians. Every vector is used; none is skipped:
 *  - a shared secret that is all zero (low-order public key; flag ZeroSharedSecret) must be
 *    refused by the helper (RFC 7748 §6.1), whatever Wycheproof's result says ("acceptable");
 *  - every other valid or acceptable vector must give exactly the expected shared secret;
 *  - an invalid vector must throw (this file has none, and the test says so by counting).
 */
import { readFileSync } from 'node:fs';
import { generateKeyPairSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  x25519PrivateKeyFromRaw,
  x25519PublicKeyFromRaw,
  x25519RawPublicKey,
  x25519SharedSecret,
} from '../src/_x25519.js';

interface XdhTest {
  tcId: number;
  comment: string;
  flags: string[];
  public: string;
  private: string;
  shared: string;
  result: 'valid' | 'acceptable' | 'invalid';
}
interface XdhFile {
  algorithm: string;
  numberOfTests: number;
  testGroups: Array<{ type: string; curve: string; tests: XdhTest[] }>;
}

const file = JSON.parse(
  readFileSync(new URL('../../core/test/vectors/wycheproof/x25519_test.json', import.meta.url), 'utf8'),
) as XdhFile;
const hex = (s: string) => new Uint8Array(Buffer.from(s, 'hex'));

describe('x25519SharedSecret against Wycheproof x25519_test.json', () => {
  it('computes every valid and acceptable shared secret exactly, and refuses every all-zero one', () => {
    expect(file.algorithm).toBe('XDH');
    const counts = { exact: 0, refusedZero: 0, invalidThrown: 0 };
    let total = 0;
    for (const group of file.testGroups) {
      expect(group.curve).toBe('curve25519');
      for (const t of group.tests) {
        total++;
        const label = `tcId ${t.tcId} (${t.comment}; ${t.flags.join(',')})`;
        const priv = x25519PrivateKeyFromRaw(hex(t.private));
        const pub = x25519PublicKeyFromRaw(hex(t.public));
        const zero = /^(00)+$/.test(t.shared);
        if (t.result === 'invalid' || zero) {
          expect(() => x25519SharedSecret(priv, pub), label).toThrow(/low-order/);
          if (zero) counts.refusedZero++;
          else counts.invalidThrown++;
          continue;
        }
        expect(Buffer.from(x25519SharedSecret(priv, pub)).toString('hex'), label).toBe(t.shared);
        counts.exact++;
      }
    }
    expect(total).toBe(file.numberOfTests);
    // 518 vectors: 31 with an all-zero shared secret (ZeroSharedSecret), no invalid ones.
    expect(counts).toEqual({ exact: 487, refusedZero: 31, invalidThrown: 0 });
  });

  it('round-trips raw keys and agrees with itself on fresh key pairs', () => {
    const a = generateKeyPairSync('x25519');
    const b = generateKeyPairSync('x25519');
    const rawA = x25519RawPublicKey(a.publicKey);
    expect(rawA).toHaveLength(32);
    expect(x25519RawPublicKey(x25519PublicKeyFromRaw(rawA))).toEqual(rawA);
    expect(x25519SharedSecret(a.privateKey, b.publicKey)).toEqual(x25519SharedSecret(b.privateKey, a.publicKey));
  });

  it('refuses keys of the wrong type or length', () => {
    const ed = generateKeyPairSync('ed25519');
    const x = generateKeyPairSync('x25519');
    expect(() => x25519SharedSecret(x.privateKey, ed.publicKey)).toThrow(/X25519 keys/);
    expect(() => x25519PublicKeyFromRaw(new Uint8Array(31))).toThrow(/32 bytes/);
    expect(() => x25519PrivateKeyFromRaw(new Uint8Array(33))).toThrow(/32 bytes/);
  });
});

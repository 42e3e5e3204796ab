/**
 * ECDSA P-384 / SHA-384 of the signed envelope suite (src/_signature.ts, docs/format.md §4.9),
 * checked against Project Wycheproof's `ecdsa_secp384r1_sha384_p1363_test.json` (IEEE P1363 r ‖ s,
 * the encoding the suite uses; test/vectors/README.md) and against node:crypto round trips.
 *
 * Every case is counted. The one deliberate difference from Wycheproof's verdicts: a signature with
 * s > n/2 is "valid" ECDSA but refused by Keywarden's low-s rule (one signature per message); each
 * such case must be accepted by raw node:crypto with the same key, so that the low-s rule is the
 * only reason it is refused.
 */
import { createPublicKey, generateKeyPairSync, sign, verify } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  MessageSigner,
  MessageVerifier,
  SIGNATURE_BYTES,
  VERIFICATION_KEY_BYTES,
  importVerificationKey,
} from '../src/_signature.js';
import { defaultRandom } from '../src/envelope.js';
import { FormatError } from '../src/errors.js';

interface EcdsaGroup {
  publicKey: { curve: string; wx: string; wy: string; uncompressed: string };
  publicKeyDer: string;
  sha: string;
  type: string;
  tests: Array<{ tcId: number; comment: string; flags: string[]; msg: string; sig: string; result: string }>;
}

const FILE = 'ecdsa_secp384r1_sha384_p1363_test.json';
const vectors = JSON.parse(readFileSync(new URL(`./vectors/wycheproof/${FILE}`, import.meta.url), 'utf8')) as {
  numberOfTests: number;
  testGroups: EcdsaGroup[];
};
const N = BigInt('0xffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973');
const fromHex = (s: string) => new Uint8Array(Buffer.from(s, 'hex'));
const big = (s: string) => BigInt(`0x${s || '0'}`);
const pad48 = (n: bigint) => n.toString(16).padStart(96, '0');

/** SEC 1 §2.3.3 compressed form of the group's key: 0x02 (y even) or 0x03 (y odd) ‖ x. */
function compressed(group: EcdsaGroup): Uint8Array {
  const y = big(group.publicKey.wy);
  return fromHex(`${y & 1n ? '03' : '02'}${pad48(big(group.publicKey.wx))}`);
}

describe(`Wycheproof ${FILE} through MessageVerifier (compressed key, low-s rule)`, () => {
  it('every case: valid ones verify (high-s ones are refused by the low-s rule only), invalid ones are refused', () => {
    const counts = { valid: 0, validHighSRefused: 0, invalid: 0 };
    for (const group of vectors.testGroups) {
      expect([group.publicKey.curve, group.sha, group.type]).toEqual(['secp384r1', 'SHA-384', 'EcdsaP1363Verify']);
      const vk = compressed(group);
      // The compressed key decompresses to Wycheproof's point.
      const jwk = importVerificationKey(vk).export({ format: 'jwk' });
      expect(big(Buffer.from(jwk.y as string, 'base64url').toString('hex'))).toBe(big(group.publicKey.wy));
      const raw = createPublicKey({ key: Buffer.from(group.publicKeyDer, 'hex'), format: 'der', type: 'spki' });
      for (const t of group.tests) {
        const sig = fromHex(t.sig);
        const verifier = new MessageVerifier(vk);
        verifier.update(fromHex(t.msg));
        const accepted = verifier.verify(sig);
        const label = `tcId ${t.tcId} (${t.comment})`;
        if (t.result === 'valid') {
          const highS = sig.length === SIGNATURE_BYTES && big(Buffer.from(sig.subarray(48)).toString('hex')) > N >> 1n;
          if (highS) {
            expect(accepted, label).toBe(false);
            expect(verify('sha384', fromHex(t.msg), { key: raw, dsaEncoding: 'ieee-p1363' }, sig), label).toBe(true);
            counts.validHighSRefused++;
          } else {
            expect(accepted, label).toBe(true);
            counts.valid++;
          }
        } else {
          expect(t.result, label).toBe('invalid');
          expect(accepted, label).toBe(false);
          counts.invalid++;
        }
      }
    }
    expect(counts.valid + counts.validHighSRefused + counts.invalid).toBe(vectors.numberOfTests);
    // Pinned: a refresh of the file must update these (test/vectors/README.md).
    expect(vectors.numberOfTests).toBe(280);
    expect(counts.invalid).toBe(87);
    expect(counts.valid + counts.validHighSRefused).toBe(193);
    expect(counts.validHighSRefused).toBeGreaterThan(0);
  });
});

describe('MessageSigner / MessageVerifier round trips with node:crypto', () => {
  it('a fresh signer signs low-s signatures that MessageVerifier and raw node:crypto both accept', () => {
    for (let i = 0; i < 16; i++) {
      const signer = MessageSigner.generate(defaultRandom);
      expect(signer.verificationKey.length).toBe(VERIFICATION_KEY_BYTES);
      const data = defaultRandom(1 + i * 37);
      signer.update(data.subarray(0, 5));
      signer.update(data.subarray(5));
      const sig = signer.sign();
      expect(sig.length).toBe(SIGNATURE_BYTES);
      expect(big(Buffer.from(sig.subarray(48)).toString('hex')) <= N >> 1n).toBe(true);
      const verifier = new MessageVerifier(signer.verificationKey);
      verifier.update(data);
      expect(verifier.verify(sig)).toBe(true);
      const key = importVerificationKey(signer.verificationKey);
      expect(verify('sha384', data, { key, dsaEncoding: 'ieee-p1363' }, sig)).toBe(true);
      // Another message, or a signature by another key, does not verify.
      const other = new MessageVerifier(signer.verificationKey);
      other.update(concat(data, Uint8Array.of(0)));
      expect(other.verify(sig)).toBe(false);
      // A signer signs once; its private key is gone afterwards.
      expect(() => signer.sign()).toThrow(/already signed/);
    }
  });

  it('signatures by node:crypto key pairs verify through the compressed-key path (both y parities)', () => {
    // At least 12 key pairs, and on until both parities were seen (12 alone miss one parity once in
    // 2048 runs; 200 miss it with probability 2^-199).
    const parities = new Set<number>();
    for (let i = 0; i < 200 && (i < 12 || parities.size < 2); i++) {
      const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'secp384r1' });
      const jwk = publicKey.export({ format: 'jwk' });
      const y = big(Buffer.from(jwk.y as string, 'base64url').toString('hex'));
      const x = Buffer.from(jwk.x as string, 'base64url');
      const vk = concat(Uint8Array.of(y & 1n ? 3 : 2), x);
      parities.add(vk[0] as number);
      const data = defaultRandom(64);
      let sig: Uint8Array = new Uint8Array(sign('sha384', data, { key: privateKey, dsaEncoding: 'ieee-p1363' }));
      const s = big(Buffer.from(sig.subarray(48)).toString('hex'));
      if (s > N >> 1n) sig = concat(sig.subarray(0, 48), fromHex(pad48(N - s)));
      const verifier = new MessageVerifier(vk);
      verifier.update(data);
      expect(verifier.verify(sig)).toBe(true);
    }
    expect(parities.size).toBe(2);
  });

  it('malformed verification keys are FormatError: wrong length, uncompressed prefix, x ≥ p', () => {
    const good = MessageSigner.generate(defaultRandom).verificationKey;
    const p = BigInt(
      '0xfffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000ffffffff',
    );
    for (const bad of [
      good.subarray(0, 48),
      concat(good, Uint8Array.of(0)),
      concat(Uint8Array.of(4), good.subarray(1)),
      concat(Uint8Array.of(0), good.subarray(1)),
      fromHex(`02${pad48(p)}`),
      fromHex(`03${pad48(p + 1n)}`),
    ]) {
      expect(() => importVerificationKey(bad)).toThrow(FormatError);
    }
  });

  it('a signature of the wrong length is refused, not parsed', () => {
    const signer = MessageSigner.generate(defaultRandom);
    signer.update(Uint8Array.of(1));
    const sig = signer.sign();
    for (const bad of [sig.subarray(0, 95), concat(sig, Uint8Array.of(0)), new Uint8Array(0)]) {
      const verifier = new MessageVerifier(signer.verificationKey);
      verifier.update(Uint8Array.of(1));
      expect(verifier.verify(bad)).toBe(false);
    }
  });
});

function concat(...parts: Uint8Array[]): Uint8Array {
  return new Uint8Array(Buffer.concat(parts));
}

/**
 * Project Wycheproof vectors (test/vectors/README.md), every group and every case:
 *
 * - AES-GCM through gcmSeal/gcmOpen (src/aead.ts);
 * - HKDF-SHA256 through hkdfSha256 (src/aead.ts);
 * - HMAC-SHA256 through node:crypto createHmac — the PRF under HKDF (RFC 5869 §2), checked so a
 *   runtime whose HMAC disagrees fails here and not only inside HKDF;
 * - X25519 and RSA-OAEP-2048 (SHA-256, MGF1-SHA-256) purely at the node:crypto level. Keywarden
 *   has no X25519 or RSA code yet: the split-knowledge work will encrypt shares to custodians with
 *   them, and these tests pin down how node behaves and the policy its helper must keep, so that
 *   helper can reuse them (and `x25519SharedSecretOrRefuse` below) instead of rediscovering them.
 *
 * Each case ends in exactly one bucket, and every file must account for all its cases:
 *   passed   — a valid (or acceptable-and-accepted) case produced exactly the expected output;
 *   rejected — an invalid (or acceptable-but-refused-by-policy) case was refused as required;
 *   refused  — the case uses parameters Keywarden deliberately does not accept, and our function
 *              refused them with InvalidInputError (asserted, not skipped);
 *   skipped  — not run, with the reason recorded in code (SKIP_REASONS); currently none.
 */
import {
  type KeyObject,
  constants,
  createHmac,
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  type JsonWebKey,
  privateDecrypt,
  publicEncrypt,
} from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { constantTimeEqual } from '../src/_bytes.js';
import { gcmOpen, gcmSeal, hkdfSha256 } from '../src/aead.js';
import { DecryptionError, InvalidInputError, KeywardenError } from '../src/errors.js';

// --- loading ---------------------------------------------------------------------------------

type Result = 'valid' | 'invalid' | 'acceptable';
interface Case {
  tcId: number;
  comment: string;
  flags: string[];
  result: Result;
}
interface VectorFile<G> {
  algorithm: string;
  numberOfTests: number;
  testGroups: G[];
}

const VECTORS = new URL('./vectors/wycheproof/', import.meta.url);
function load<G>(name: string): VectorFile<G> {
  return JSON.parse(readFileSync(new URL(name, VECTORS), 'utf8')) as VectorFile<G>;
}
const hex = (s: string) => new Uint8Array(Buffer.from(s, 'hex'));
const toHex = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
const b64url = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('base64url');

/** Cases not run, by file and tcId, each with its reason. Empty today: every case runs. */
const SKIP_REASONS: Readonly<Record<string, Readonly<Record<number, string>>>> = {};

class Tally {
  passed = 0;
  rejected = 0;
  refused = 0;
  readonly skipped: Record<string, number> = {};
  constructor(readonly file: VectorFile<unknown>) {}
  skip(reason: string): void {
    this.skipped[reason] = (this.skipped[reason] ?? 0) + 1;
  }
  get total(): number {
    return this.passed + this.rejected + this.refused + Object.values(this.skipped).reduce((a, b) => a + b, 0);
  }
  /** Every case of the file is in exactly one bucket. */
  expectComplete(): void {
    const groupCases = this.file.testGroups.reduce<number>((n, g) => n + (g as { tests: unknown[] }).tests.length, 0);
    expect(groupCases).toBe(this.file.numberOfTests);
    expect(this.total).toBe(this.file.numberOfTests);
  }
}

function skipReason(fileName: string, t: Case): string | undefined {
  return SKIP_REASONS[fileName]?.[t.tcId];
}

// --- AES-GCM -----------------------------------------------------------------------------------

interface AeadCase extends Case {
  key: string;
  iv: string;
  aad: string;
  msg: string;
  ct: string;
  tag: string;
}
interface AeadGroup {
  keySize: number;
  ivSize: number;
  tagSize: number;
  tests: AeadCase[];
}

describe('Wycheproof AES-GCM (aes_gcm_test.json) through gcmSeal/gcmOpen', () => {
  const FILE = 'aes_gcm_test.json';
  const file = load<AeadGroup>(FILE);
  const tally = new Tally(file);

  it('every group and case', () => {
    for (const g of file.testGroups) {
      // Keywarden accepts exactly one AES-GCM shape: 256-bit keys, 96-bit nonces (the recommended
      // IV length, NIST SP 800-38D §8.2) and full 128-bit tags (§5.2.1.2). Other groups are not
      // skipped: gcmSeal and gcmOpen must REFUSE them with InvalidInputError before OpenSSL sees
      // the bytes (AES-128/192 keys, 8..2056-bit IVs, the zero-length IVs of the invalid cases).
      // gcmSeal/gcmOpen have no tag-length parameter, so a tagSize other than 128 cannot even be
      // requested; there is no such group in this file.
      const inProfile = g.keySize === 256 && g.ivSize === 96 && g.tagSize === 128;
      for (const t of g.tests) {
        const where = `${FILE} tcId ${t.tcId} (${t.result}; ${t.flags.join(',')})`;
        const reason = skipReason(FILE, t);
        if (reason) {
          tally.skip(reason);
          continue;
        }
        const [key, iv, aad, msg, sealed] = [hex(t.key), hex(t.iv), hex(t.aad), hex(t.msg), hex(t.ct + t.tag)];
        if (!inProfile) {
          expect(() => gcmSeal(key, iv, msg, aad), where).toThrow(InvalidInputError);
          expect(() => gcmOpen(key, iv, sealed, aad), where).toThrow(InvalidInputError);
          tally.refused++;
        } else if (t.result === 'valid') {
          expect(toHex(gcmSeal(key, iv, msg, aad)), where).toBe(t.ct + t.tag);
          expect(toHex(gcmOpen(key, iv, sealed, aad)), where).toBe(t.msg);
          tally.passed++;
        } else {
          expect(t.result, where).toBe('invalid');
          // Our own encryption of msg must not produce the vector's (modified) ciphertext ‖ tag,
          // and opening it must fail with the one, uninformative DecryptionError.
          expect(toHex(gcmSeal(key, iv, msg, aad)), where).not.toBe(t.ct + t.tag);
          let err: unknown;
          try {
            gcmOpen(key, iv, sealed, aad);
          } catch (e) {
            err = e;
          }
          expect(err, where).toBeInstanceOf(DecryptionError);
          expect(KeywardenError.isInstance(err, 'KW_DECRYPT'), where).toBe(true);
          expect((err as Error).message).toBe(
            'aes-gcm: decryption failed (wrong key or context, or the data was modified)',
          );
          tally.rejected++;
        }
      }
    }
    tally.expectComplete();
    // Pinned so a different copy of the vectors is noticed: 39 valid + 27 invalid in the
    // 256/96/128 group, every other group (250 cases) refused.
    expect({ passed: tally.passed, rejected: tally.rejected, refused: tally.refused }).toEqual({
      passed: 39,
      rejected: 27,
      refused: 250,
    });
  });
});

// --- HKDF-SHA256 -------------------------------------------------------------------------------

interface HkdfCase extends Case {
  ikm: string;
  salt: string;
  info: string;
  size: number;
  okm: string;
}

describe('Wycheproof HKDF-SHA256 (hkdf_sha256_test.json) through hkdfSha256', () => {
  const FILE = 'hkdf_sha256_test.json';
  const file = load<{ keySize: number; tests: HkdfCase[] }>(FILE);
  const tally = new Tally(file);

  it('every group and case', () => {
    for (const g of file.testGroups) {
      for (const t of g.tests) {
        const where = `${FILE} tcId ${t.tcId} (${t.result}; ${t.flags.join(',')})`;
        const reason = skipReason(FILE, t);
        if (reason) {
          tally.skip(reason);
          continue;
        }
        const run = () => hkdfSha256(hex(t.ikm), hex(t.salt), hex(t.info), t.size);
        if (t.result === 'valid') {
          // Includes empty salts (RFC 5869 §2.2: HashLen zero bytes) and the maximal 255·32 bytes.
          expect(toHex(run()), where).toBe(t.okm);
          tally.passed++;
        } else {
          // SizeTooLarge: 8161 > 255·HashLen bytes (RFC 5869 §2.3) is refused before node sees it.
          expect(run, where).toThrow(InvalidInputError);
          tally.rejected++;
        }
      }
    }
    tally.expectComplete();
    expect({ passed: tally.passed, rejected: tally.rejected }).toEqual({ passed: 83, rejected: 3 });
  });
});

// --- HMAC-SHA256 -------------------------------------------------------------------------------

interface MacCase extends Case {
  key: string;
  msg: string;
  tag: string;
}

/** Verify a (possibly truncated, RFC 2104 §5) HMAC-SHA256 tag in constant time. */
function hmacSha256Verify(key: Uint8Array, msg: Uint8Array, tag: Uint8Array, tagBytes: number): boolean {
  const full = createHmac('sha256', key).update(msg).digest();
  return tag.length === tagBytes && constantTimeEqual(new Uint8Array(full.subarray(0, tagBytes)), tag);
}

describe('Wycheproof HMAC-SHA256 (hmac_sha256_test.json) through node:crypto createHmac', () => {
  const FILE = 'hmac_sha256_test.json';
  const file = load<{ keySize: number; tagSize: number; tests: MacCase[] }>(FILE);
  const tally = new Tally(file);

  it('every group and case, with tags truncated to the group tagSize', () => {
    for (const g of file.testGroups) {
      const tagBytes = g.tagSize / 8;
      for (const t of g.tests) {
        const where = `${FILE} tcId ${t.tcId} (${t.result}; keySize ${g.keySize}, tagSize ${g.tagSize})`;
        const reason = skipReason(FILE, t);
        if (reason) {
          tally.skip(reason);
          continue;
        }
        const ok = hmacSha256Verify(hex(t.key), hex(t.msg), hex(t.tag), tagBytes);
        if (t.result === 'valid') {
          expect(ok, where).toBe(true);
          tally.passed++;
        } else {
          expect(ok, where).toBe(false);
          tally.rejected++;
        }
      }
    }
    tally.expectComplete();
    expect({ passed: tally.passed, rejected: tally.rejected }).toEqual({ passed: 66, rejected: 108 });
  });
});

// --- X25519 (node:crypto level, for the split-knowledge custodian helper) ----------------------

interface XdhCase extends Case {
  public: string;
  private: string;
  shared: string;
}

/**
 * Raw 32-byte X25519 private keys as KeyObjects through PKCS#8 DER (RFC 8410 §7), as the
 * split-knowledge custodian helper does: no public key travels with the private one. (A private
 * OKP JWK also carries `x`; Node 20 ignores it and derives the public key from `d`, Node 24 refuses
 * a mismatch — checked below — so `x` of a private JWK is never trusted either way.)
 */
const X25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b656e04220420', 'hex');
function x25519PrivateKey(raw: Uint8Array): KeyObject {
  return createPrivateKey({ key: Buffer.concat([X25519_PKCS8_PREFIX, raw]), format: 'der', type: 'pkcs8' });
}
function x25519PublicKey(raw: Uint8Array): KeyObject {
  return createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x: b64url(raw) }, format: 'jwk' });
}

type NodeXdh = { threw: string } | { secret: Uint8Array };
function nodeX25519(privateRaw: Uint8Array, publicRaw: Uint8Array): NodeXdh {
  try {
    const secret = diffieHellman({ privateKey: x25519PrivateKey(privateRaw), publicKey: x25519PublicKey(publicRaw) });
    return { secret: new Uint8Array(secret) };
  } catch (e) {
    return { threw: (e as { code?: string }).code ?? String(e) };
  }
}

const isAllZero = (b: Uint8Array) => b.reduce((acc, x) => acc | x, 0) === 0;

/**
 * The policy the split-knowledge custodian helper must implement (reference, not product code):
 * refuse an all-zero shared secret (RFC 7748 §6.1: the check MAY be done, and here it MUST be —
 * a low-order public key would otherwise make the "secret" that encrypts a share publicly known),
 * whether the runtime already refuses it (OpenSSL 3 does) or returns the zeros (a runtime that
 * does not check). Twist points and non-canonical public keys are accepted: RFC 7748 §5 defines
 * the result, and an ephemeral-static exchange with a fresh private key does not leak it.
 */
function x25519SharedSecretOrRefuse(privateRaw: Uint8Array, publicRaw: Uint8Array): Uint8Array | 'refused' {
  if (privateRaw.length !== 32 || publicRaw.length !== 32) return 'refused';
  const r = nodeX25519(privateRaw, publicRaw);
  if ('threw' in r) return 'refused';
  if (isAllZero(r.secret)) {
    r.secret.fill(0);
    return 'refused';
  }
  return r.secret;
}

describe('Wycheproof X25519 (x25519_test.json) through node:crypto diffieHellman', () => {
  const FILE = 'x25519_test.json';
  const file = load<{ curve: string; tests: XdhCase[] }>(FILE);
  const tally = new Tally(file);

  it('the public key comes from d, and a private JWK whose x does not match d is never trusted', () => {
    const d = hex('c8a9d5a91091ad851c668b0736c1c9a02936c0d3ad62670858088047ba057475');
    const a = createPublicKey(x25519PrivateKey(d)).export({ format: 'jwk' });
    expect(a.x).toBe('X2S0HM6Kaz1qOHYwiPYVpJd9QiKIrkK0mrOlfi_Nb20'); // RFC 7748 X25519(d, 9)
    let b: string | undefined;
    try {
      b = createPublicKey(
        createPrivateKey({
          key: { kty: 'OKP', crv: 'X25519', d: b64url(d), x: b64url(new Uint8Array(32).fill(0x11)) },
          format: 'jwk',
        }),
      ).export({ format: 'jwk' }).x;
    } catch (e) {
      expect((e as { code?: string }).code).toBe('ERR_CRYPTO_INVALID_JWK'); // newer Node: refused
    }
    if (b !== undefined) expect(b).toBe(a.x); // Node 20: the wrong x is ignored, d decides
  });

  it('every case: valid → exact secret; acceptable → exact secret, or refused when all-zero', () => {
    for (const g of file.testGroups) {
      expect(g.curve).toBe('curve25519');
      for (const t of g.tests) {
        const where = `${FILE} tcId ${t.tcId} (${t.result}; ${t.flags.join(',')})`;
        const reason = skipReason(FILE, t);
        if (reason) {
          tally.skip(reason);
          continue;
        }
        const [priv, pub] = [hex(t.private), hex(t.public)];
        const node = nodeX25519(priv, pub);
        const policy = x25519SharedSecretOrRefuse(priv, pub);
        if (t.flags.includes('ZeroSharedSecret')) {
          // Low-order public keys (LowOrderPublic, SmallPublicKey): the shared secret is zero.
          expect(t.result, where).toBe('acceptable');
          expect(t.shared, where).toBe('00'.repeat(32));
          // Node 20 / OpenSSL 3.0 throws ERR_OSSL_FAILED_DURING_DERIVATION for all 31 of them;
          // a runtime may instead return the zeros. It must never return anything else.
          if ('secret' in node) expect(isAllZero(node.secret), where).toBe(true);
          expect(policy, where).toBe('refused');
          tally.rejected++;
        } else {
          // valid, and acceptable Twist / NonCanonicalPublic / SpecialPublicKey / EdgeCase*: the
          // RFC 7748 result, exactly.
          expect('secret' in node ? toHex(node.secret) : node, where).toBe(t.shared);
          expect(policy === 'refused' ? policy : toHex(policy), where).toBe(t.shared);
          tally.passed++;
        }
      }
    }
    tally.expectComplete();
    expect({ passed: tally.passed, rejected: tally.rejected }).toEqual({ passed: 487, rejected: 31 });
  });
});

// --- RSA-OAEP-2048, SHA-256, MGF1-SHA-256 (node:crypto level) ----------------------------------

interface OaepCase extends Case {
  msg: string;
  ct: string;
  label: string;
}
interface OaepGroup {
  keySize: number;
  sha: string;
  mgf: string;
  mgfSha: string;
  privateKeyJwk: JsonWebKey;
  tests: OaepCase[];
}

function oaepDecrypt(key: KeyObject, ct: Uint8Array, label: Uint8Array): Uint8Array {
  return new Uint8Array(
    privateDecrypt({ key, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256', oaepLabel: label }, ct),
  );
}

describe('Wycheproof RSA-OAEP-2048 SHA-256/MGF1-SHA-256 through node:crypto privateDecrypt', () => {
  const FILE = 'rsa_oaep_2048_sha256_mgf1sha256_test.json';
  const file = load<OaepGroup>(FILE);
  const tally = new Tally(file);

  it('every case: valid → exact message (labels via oaepLabel); invalid → throws', () => {
    const paddingErrors = new Set<string>();
    for (const g of file.testGroups) {
      // node's oaepHash sets both the OAEP hash and the MGF1 hash, so only groups where they are
      // equal can be expressed; this file has one such group.
      const expressible = g.keySize === 2048 && g.sha === 'SHA-256' && g.mgf === 'MGF1' && g.mgfSha === 'SHA-256';
      const key = createPrivateKey({ key: g.privateKeyJwk, format: 'jwk' });
      const pub = createPublicKey(key);
      for (const t of g.tests) {
        const where = `${FILE} tcId ${t.tcId} (${t.result}; ${t.comment || t.flags.join(',')})`;
        const reason =
          skipReason(FILE, t) ??
          (expressible ? undefined : 'OAEP hash ≠ MGF1 hash or not 2048-bit: not expressible in node');
        if (reason) {
          tally.skip(reason);
          continue;
        }
        const [ct, label] = [hex(t.ct), hex(t.label)];
        if (t.result === 'valid') {
          expect(toHex(oaepDecrypt(key, ct, label)), where).toBe(t.msg);
          // The direction the custodian helper uses: encrypt to the public key, same label.
          const again = publicEncrypt(
            { key: pub, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256', oaepLabel: label },
            hex(t.msg),
          );
          expect(toHex(oaepDecrypt(key, new Uint8Array(again), label)), where).toBe(t.msg);
          // A different label must not decrypt (the label is authenticated by the padding check).
          expect(() => oaepDecrypt(key, ct, hex(`${t.label}00`)), where).toThrow();
          tally.passed++;
        } else {
          let err: unknown;
          try {
            oaepDecrypt(key, ct, label);
          } catch (e) {
            err = e;
          }
          expect(err, where).toBeInstanceOf(Error);
          if (t.flags.includes('InvalidOaepPadding')) {
            paddingErrors.add(`${(err as { code?: string }).code}: ${(err as Error).message}`);
          }
          tally.rejected++;
        }
      }
    }
    tally.expectComplete();
    expect({ passed: tally.passed, rejected: tally.rejected }).toEqual({ passed: 18, rejected: 19 });
    // Manger's attack needs to tell padding failures apart: every InvalidOaepPadding case fails
    // with the same error, so a helper that passes node's error through (or, better, replaces it
    // with one DecryptionError) adds no message oracle. Timing is OpenSSL's responsibility.
    expect([...paddingErrors]).toHaveLength(1);
  });
});

import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { verifySignature } from '../src/index.js';

/**
 * Wycheproof signature-verification vectors (C2SP/wycheproof testvectors_v1, see
 * vectors/wycheproof/README.md for the commit) through verifySignature, the one function pki
 * verifies CSR, certificate and CRL signatures with. Every case's expected result is asserted.
 *
 * Policy for "acceptable" cases: refused. The only ones in these files are RSA PKCS#1 v1.5
 * DigestInfo encodings without the NULL hash parameters (flag MissingNull); RFC 8017 §9.2 note 1
 * gives the DigestInfo with NULL, and accepting a second encoding buys nothing but a wider
 * malleability surface, so verifySignature takes the strict side and the tests pin it.
 */
interface WycheproofFile {
  algorithm: string;
  numberOfTests: number;
  testGroups: Array<{
    publicKeyDer: string;
    sha: string;
    tests: Array<{
      tcId: number;
      msg: string;
      sig: string;
      result: 'valid' | 'invalid' | 'acceptable';
      flags: string[];
    }>;
  }>;
}

const hex = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'hex'));

function load(name: string): WycheproofFile {
  return JSON.parse(readFileSync(new URL(`./vectors/wycheproof/${name}`, import.meta.url), 'utf8')) as WycheproofFile;
}

/** Runs every case; returns the counts by expected result and the tcIds whose outcome differs from policy. */
function run(file: WycheproofFile, sha: string, oid: string) {
  const counts = { valid: 0, invalid: 0, acceptable: 0 };
  const wrong: number[] = [];
  const acceptableFlags = new Set<string>();
  for (const group of file.testGroups) {
    expect(group.sha).toBe(sha);
    const spki = hex(group.publicKeyDer);
    for (const t of group.tests) {
      counts[t.result]++;
      const ok = verifySignature(spki, oid, hex(t.msg), hex(t.sig));
      // valid → verifies; invalid and acceptable → refused (see the policy above).
      if (ok !== (t.result === 'valid')) wrong.push(t.tcId);
      if (t.result === 'acceptable') for (const f of t.flags) acceptableFlags.add(f);
    }
  }
  expect(counts.valid + counts.invalid + counts.acceptable).toBe(file.numberOfTests);
  return { counts, wrong, acceptableFlags: [...acceptableFlags].sort() };
}

const CASES = [
  {
    name: 'ECDSA P-256 / SHA-256 (DER signatures)',
    file: 'ecdsa_secp256r1_sha256_test.json',
    algorithm: 'ECDSA',
    sha: 'SHA-256',
    oid: '1.2.840.10045.4.3.2',
    counts: { valid: 174, invalid: 310, acceptable: 0 },
    acceptableFlags: [],
  },
  {
    name: 'ECDSA P-384 / SHA-384 (DER signatures)',
    file: 'ecdsa_secp384r1_sha384_test.json',
    algorithm: 'ECDSA',
    sha: 'SHA-384',
    oid: '1.2.840.10045.4.3.3',
    counts: { valid: 194, invalid: 310, acceptable: 0 },
    acceptableFlags: [],
  },
  {
    name: 'RSASSA-PKCS1-v1_5 2048 / SHA-256',
    file: 'rsa_signature_2048_sha256_test.json',
    algorithm: 'RSASSA-PKCS1-v1_5',
    sha: 'SHA-256',
    oid: '1.2.840.113549.1.1.11',
    counts: { valid: 9, invalid: 249, acceptable: 1 },
    acceptableFlags: ['MissingNull'],
  },
  {
    name: 'RSASSA-PKCS1-v1_5 3072 / SHA-384',
    file: 'rsa_signature_3072_sha384_test.json',
    algorithm: 'RSASSA-PKCS1-v1_5',
    sha: 'SHA-384',
    oid: '1.2.840.113549.1.1.12',
    counts: { valid: 7, invalid: 251, acceptable: 1 },
    acceptableFlags: ['MissingNull'],
  },
] as const;

describe('Wycheproof signature vectors through verifySignature', () => {
  for (const c of CASES) {
    it(`${c.name}: valid cases verify, invalid and acceptable ones are refused; counts pinned`, () => {
      const file = load(c.file);
      expect(file.algorithm).toBe(c.algorithm);
      const r = run(file, c.sha, c.oid);
      expect(r.wrong).toEqual([]);
      expect(r.counts).toEqual(c.counts);
      expect(r.acceptableFlags).toEqual(c.acceptableFlags);
    });
  }

  it('the same signature under another hash or another key family is refused (no algorithm substitution)', () => {
    for (const [name, oid, others] of [
      [
        'ecdsa_secp256r1_sha256_test.json',
        '1.2.840.10045.4.3.2',
        ['1.2.840.10045.4.3.3', '1.2.840.113549.1.1.11', '1.2.840.10045.4.1'],
      ],
      [
        'rsa_signature_2048_sha256_test.json',
        '1.2.840.113549.1.1.11',
        ['1.2.840.113549.1.1.12', '1.2.840.113549.1.1.5', '1.2.840.10045.4.3.2', '1.2.840.113549.1.1.10'],
      ],
    ] as const) {
      const group = load(name).testGroups[0];
      const t = group?.tests.find((x) => x.result === 'valid');
      if (!group || !t) throw new Error(`${name}: no valid case`);
      expect(verifySignature(hex(group.publicKeyDer), oid, hex(t.msg), hex(t.sig))).toBe(true);
      for (const other of others) {
        expect(verifySignature(hex(group.publicKeyDer), other, hex(t.msg), hex(t.sig))).toBe(false);
      }
    }
  });
});

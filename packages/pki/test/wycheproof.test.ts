import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { verifySignature } from '../src/index.js';

interface EcdsaFile {
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

describe('Wycheproof ECDSA P-256 / SHA-256 (DER signatures): verifySignature', () => {
  it('every valid case verifies, every invalid case is refused; the counts are pinned', () => {
    const file = JSON.parse(
      readFileSync(new URL('./vectors/wycheproof/ecdsa_secp256r1_sha256_test.json', import.meta.url), 'utf8'),
    ) as EcdsaFile;
    const counts = { valid: 0, invalid: 0, acceptable: 0 };
    const wrong: number[] = [];
    for (const group of file.testGroups) {
      expect(group.sha).toBe('SHA-256');
      const spki = hex(group.publicKeyDer);
      for (const t of group.tests) {
        counts[t.result]++;
        const ok = verifySignature(spki, '1.2.840.10045.4.3.2', hex(t.msg), hex(t.sig));
        // "acceptable" cases (none in this file) could go either way; every other one must match.
        if (t.result !== 'acceptable' && ok !== (t.result === 'valid')) wrong.push(t.tcId);
      }
    }
    expect(wrong).toEqual([]);
    expect(counts.valid + counts.invalid + counts.acceptable).toBe(file.numberOfTests);
    expect(counts).toEqual({ valid: 174, invalid: 310, acceptable: 0 });
  });

  it('the same signature under another hash or another key family is refused (no algorithm substitution)', () => {
    const file = JSON.parse(
      readFileSync(new URL('./vectors/wycheproof/ecdsa_secp256r1_sha256_test.json', import.meta.url), 'utf8'),
    ) as EcdsaFile;
    const group = file.testGroups[0];
    const t = group?.tests.find((c) => c.result === 'valid');
    if (!group || !t) throw new Error('no valid case');
    expect(verifySignature(hex(group.publicKeyDer), '1.2.840.10045.4.3.2', hex(t.msg), hex(t.sig))).toBe(true);
    expect(verifySignature(hex(group.publicKeyDer), '1.2.840.10045.4.3.3', hex(t.msg), hex(t.sig))).toBe(false);
    expect(verifySignature(hex(group.publicKeyDer), '1.2.840.113549.1.1.11', hex(t.msg), hex(t.sig))).toBe(false);
    expect(verifySignature(hex(group.publicKeyDer), '1.2.840.10045.4.1', hex(t.msg), hex(t.sig))).toBe(false);
  });
});

/**
 * Wycheproof RSA-OAEP-2048 with SHA-256 and MGF1-SHA-256
 * (testvectors_v1/rsa_oaep_2048_sha256_mgf1sha256_test.json) through the OAEP helper that unwraps
 * the AES key of a share encrypted to an RSA custodian. Every vector is used: valid ones must
 * decrypt to exactly the message (with their label), invalid ones must throw the one generic
 * DecryptionError. There are no "acceptable" vectors in this file.
 */
import { readFileSync } from 'node:fs';
import { createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { DecryptionError } from '@keywarden/core';
import { describe, expect, it } from 'vitest';
import { checkRsaKey, rsaOaepDecrypt, rsaOaepEncrypt } from '../src/_rsa-oaep.js';

interface OaepTest {
  tcId: number;
  comment: string;
  flags: string[];
  msg: string;
  ct: string;
  label: string;
  result: 'valid' | 'acceptable' | 'invalid';
}
interface OaepFile {
  algorithm: string;
  numberOfTests: number;
  testGroups: Array<{
    keySize: number;
    sha: string;
    mgf: string;
    mgfSha: string;
    privateKeyPem: string;
    tests: OaepTest[];
  }>;
}

const file = JSON.parse(
  readFileSync(
    new URL('../../core/test/vectors/wycheproof/rsa_oaep_2048_sha256_mgf1sha256_test.json', import.meta.url),
    'utf8',
  ),
) as OaepFile;
const hex = (s: string) => new Uint8Array(Buffer.from(s, 'hex'));

describe('rsaOaepDecrypt against Wycheproof rsa_oaep_2048_sha256_mgf1sha256_test.json', () => {
  it('decrypts every valid vector exactly and refuses every invalid one', () => {
    expect(file.algorithm).toBe('RSAES-OAEP');
    const counts = { valid: 0, invalid: 0 };
    let total = 0;
    for (const group of file.testGroups) {
      expect([group.keySize, group.sha, group.mgf, group.mgfSha]).toEqual([2048, 'SHA-256', 'MGF1', 'SHA-256']);
      const key = createPrivateKey(group.privateKeyPem);
      for (const t of group.tests) {
        total++;
        const label = `tcId ${t.tcId} (${t.comment}; ${t.flags.join(',')})`;
        expect(t.result, label).not.toBe('acceptable');
        if (t.result === 'valid') {
          expect(Buffer.from(rsaOaepDecrypt(key, hex(t.ct), hex(t.label))).toString('hex'), label).toBe(t.msg);
          counts.valid++;
        } else {
          let thrown: unknown;
          try {
            rsaOaepDecrypt(key, hex(t.ct), hex(t.label));
          } catch (err) {
            thrown = err;
          }
          expect(DecryptionError.isInstance(thrown), label).toBe(true);
          expect((thrown as Error).message).toBe(
            'rsa-oaep: decryption failed (wrong key or context, or the data was modified)',
          );
          counts.invalid++;
        }
      }
    }
    expect(total).toBe(file.numberOfTests);
    expect(counts).toEqual({ valid: 18, invalid: 19 });
  });

  it('round-trips with its own encrypt, and the label is bound', () => {
    const key = createPrivateKey(file.testGroups[0]!.privateKeyPem);
    const pub = createPublicKey(key);
    const label = new TextEncoder().encode('keywarden/share-to-custodian/v1');
    const msg = new Uint8Array(32).fill(7);
    const ct = rsaOaepEncrypt(pub, msg, label);
    expect(ct).toHaveLength(256);
    expect(rsaOaepDecrypt(key, ct, label)).toEqual(msg);
    expect(() => rsaOaepDecrypt(key, ct, new Uint8Array(0))).toThrow(/decryption failed/);
  });

  it('refuses RSA keys under 2048 bits and non-RSA keys', () => {
    const small = generateKeyPairSync('rsa', { modulusLength: 1024 });
    expect(() => checkRsaKey(small.publicKey)).toThrow('custodian: RSA key is 1024 bits; at least 2048 are required');
    expect(() => rsaOaepEncrypt(small.publicKey, new Uint8Array(32), new Uint8Array(0))).toThrow(/1024 bits/);
    expect(() => checkRsaKey(generateKeyPairSync('x25519').publicKey)).toThrow('custodian: not an RSA key');
  });
});

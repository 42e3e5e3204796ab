import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { randomBytes } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { x25519PublicKeyFromRaw } from '../src/_x25519.js';
import {
  custodianKeyFingerprint,
  custodianPublicKey,
  decryptShareForCustodian,
  encryptShareForCustodian,
  readEncryptedShareHeaders,
  splitSecret,
} from '../src/index.js';
import { expectKwError, payloadOf } from './_helpers.js';

interface Pems {
  publicPem: string;
  privatePem: string;
}
function pems(pair: { publicKey: KeyObject; privateKey: KeyObject }): Pems {
  return {
    publicPem: pair.publicKey.export({ type: 'spki', format: 'pem' }) as string,
    privatePem: pair.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string,
  };
}

// Keys are generated at test time: no private key is committed.
let x1: Pems;
let x2: Pems;
let rsa: Pems;
let shares: string[];

beforeAll(async () => {
  x1 = pems(generateKeyPairSync('x25519'));
  x2 = pems(generateKeyPairSync('x25519'));
  rsa = pems(generateKeyPairSync('rsa', { modulusLength: 2048 }));
  shares = (await splitSecret(new Uint8Array(randomBytes(32)), { shares: 5, threshold: 3, purpose: 'unseal-key' }))
    .encoded;
});

/** Replace one header line of an armored share. */
function setHeader(armored: string, name: string, value: string): string {
  const re = new RegExp(`^${name}: .*$`, 'm');
  expect(armored).toMatch(re);
  return armored.replace(re, `${name}: ${value}`);
}

/** Flip one base64 character of the body (line `line` after the blank line, position `at`). */
function tamperBody(armored: string, line = 0, at = 10): string {
  const lines = armored.split('\n');
  const i = lines.indexOf('') + 1 + line;
  const l = lines[i]!;
  lines[i] = l.slice(0, at) + (l[at] === 'A' ? 'B' : 'A') + l.slice(at + 1);
  return lines.join('\n');
}

describe('encryptShareForCustodian / decryptShareForCustodian', () => {
  it('X25519: round-trips, and the armor shows authenticated headers but no share', () => {
    const armored = encryptShareForCustodian(shares[1]!, x1.publicPem);
    expect(armored.startsWith('-----BEGIN KEYWARDEN ENCRYPTED SHARE-----\n')).toBe(true);
    expect(armored.trimEnd().endsWith('-----END KEYWARDEN ENCRYPTED SHARE-----')).toBe(true);
    expect(armored).toContain('Algorithm: X25519-HKDF-SHA256-AES-256-GCM');
    expect(armored).toContain(`Share-Set: ${shares[1]!.split('.')[2]}`);
    expect(armored).toContain('Index: 2 of 5');
    expect(armored).toContain('Threshold: 3');
    expect(armored).toContain('Purpose: unseal-key');
    expect(armored).toContain(`Recipient: ${custodianKeyFingerprint(x1.publicPem)}`);
    expect(armored).not.toContain('kwshare1');
    expect(armored).not.toContain(payloadOf(shares[1]!).slice(0, 8));
    expect(decryptShareForCustodian(armored, x1.privatePem)).toBe(shares[1]);
    // Fresh ephemeral key and nonce every time.
    expect(encryptShareForCustodian(shares[1]!, x1.publicPem)).not.toBe(armored);
  });

  it('RSA-OAEP-2048 and 3072: round-trip', () => {
    const armored = encryptShareForCustodian(shares[0]!, rsa.publicPem);
    expect(armored).toContain('Algorithm: RSA-OAEP-SHA256-AES-256-GCM');
    expect(decryptShareForCustodian(armored, rsa.privatePem)).toBe(shares[0]);
    const big = pems(generateKeyPairSync('rsa', { modulusLength: 3072 }));
    expect(decryptShareForCustodian(encryptShareForCustodian(shares[4]!, big.publicPem), big.privatePem)).toBe(
      shares[4],
    );
  });

  it('accepts a pre-checked key, CRLF line endings and surrounding text', () => {
    const key = custodianPublicKey(x2.publicPem);
    expect(key.algorithm).toBe('X25519-HKDF-SHA256-AES-256-GCM');
    const armored = encryptShareForCustodian(`  ${shares[2]}\n`, key);
    const mangled = `Forwarded by mail:\r\n\r\n${armored.replace(/\n/g, '\r\n')}\r\n-- \r\nsignature`;
    expect(decryptShareForCustodian(mangled, x2.privatePem)).toBe(shares[2]);
  });

  it('an encrypted private key needs its passphrase', () => {
    const pair = generateKeyPairSync('x25519');
    const locked = pair.privateKey.export({
      type: 'pkcs8',
      format: 'pem',
      cipher: 'aes-256-cbc',
      passphrase: 'correct horse',
    }) as string;
    const armored = encryptShareForCustodian(
      shares[3]!,
      pair.publicKey.export({ type: 'spki', format: 'pem' }) as string,
    );
    expect(decryptShareForCustodian(armored, locked, { passphrase: 'correct horse' })).toBe(shares[3]);
    expect(() => decryptShareForCustodian(armored, locked)).toThrow(
      'custodian: the private key is encrypted; give its passphrase',
    );
    expect(() => decryptShareForCustodian(armored, locked, { passphrase: 'wrong' })).toThrow(
      /could not be read \(not a PEM private key, or a wrong passphrase\)/,
    );
  });

  it('the fingerprint is the same from the public and the private PEM', () => {
    const fp = custodianKeyFingerprint(rsa.publicPem);
    expect(fp).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(custodianKeyFingerprint(rsa.privatePem)).toBe(fp);
    expect(readEncryptedShareHeaders(encryptShareForCustodian(shares[0]!, rsa.publicPem))).toEqual({
      version: 1,
      algorithm: 'RSA-OAEP-SHA256-AES-256-GCM',
      purpose: 'unseal-key',
      shareSetId: shares[0]!.split('.')[2],
      index: 1,
      shares: 5,
      threshold: 3,
      recipient: fp,
    });
  });
});

describe('custodian errors', () => {
  it('the wrong private key is told so, with both fingerprints', async () => {
    const armored = encryptShareForCustodian(shares[0]!, x1.publicPem);
    const fp1 = custodianKeyFingerprint(x1.publicPem);
    for (const other of [x2, rsa]) {
      await expectKwError(
        () => decryptShareForCustodian(armored, other.privatePem),
        'KW_SHARE',
        `share: this encrypted share is not for this private key (recipient fingerprint ${fp1}, this key is ${custodianKeyFingerprint(other.publicPem)})`,
        shares,
      );
    }
  });

  it('a tampered body fails with the one generic decryption error', async () => {
    for (const pair of [x1, rsa]) {
      const armored = encryptShareForCustodian(shares[4]!, pair.publicPem);
      for (const [line, at] of [
        [0, 0],
        [0, 10],
        [0, 50],
        [1, 5],
        [-2, 0],
      ] as const) {
        const bodyLines = armored.split('\n').length - armored.split('\n').indexOf('') - 3;
        const l = line < 0 ? bodyLines + line + 1 : line;
        if (l < 0 || l > bodyLines) continue;
        await expectKwError(
          () => decryptShareForCustodian(tamperBody(armored, l, at), pair.privatePem),
          'KW_DECRYPT',
          'share: decryption failed (wrong key or context, or the data was modified)',
          shares,
        );
      }
    }
  });

  it('relabelled headers (index, set, threshold, purpose, algorithm) fail to decrypt', async () => {
    const armored = encryptShareForCustodian(shares[1]!, x1.publicPem);
    const otherSet = (
      await splitSecret(new Uint8Array(randomBytes(32)), { shares: 5, threshold: 3, purpose: 'unseal-key' })
    ).shareSetId;
    const relabels: Array<[string, string]> = [
      ['Index', '3 of 5'],
      ['Index', '2 of 6'],
      ['Share-Set', otherSet],
      ['Threshold', '2'],
      ['Purpose', 'hsm-pin'],
      ['Algorithm', 'RSA-OAEP-SHA256-AES-256-GCM'],
    ];
    for (const [name, value] of relabels) {
      await expectKwError(
        () => decryptShareForCustodian(setHeader(armored, name, value), x1.privatePem),
        'KW_DECRYPT',
        'share: decryption failed (wrong key or context, or the data was modified)',
        shares,
      );
    }
    // Swapping bodies between two shares for the same custodian fails too.
    const other = encryptShareForCustodian(shares[2]!, x1.publicPem);
    const headOf = (a: string) => a.slice(0, a.indexOf('\n\n'));
    const bodyOf = (a: string) => a.slice(a.indexOf('\n\n'));
    await expectKwError(
      () => decryptShareForCustodian(headOf(armored) + bodyOf(other), x1.privatePem),
      'KW_DECRYPT',
      /decryption failed/,
      shares,
    );
    // Pointing the Recipient at another key makes the real recipient's key refuse it.
    await expectKwError(
      () =>
        decryptShareForCustodian(setHeader(armored, 'Recipient', custodianKeyFingerprint(x2.publicPem)), x1.privatePem),
      'KW_SHARE',
      /^share: this encrypted share is not for this private key/,
      shares,
    );
  });

  it('a low-order ephemeral key in the body, or a low-order custodian key, is refused', async () => {
    const armored = encryptShareForCustodian(shares[0]!, x1.publicPem);
    const lines = armored.split('\n');
    const start = lines.indexOf('') + 1;
    const end = lines.indexOf('-----END KEYWARDEN ENCRYPTED SHARE-----');
    const body = Buffer.from(lines.slice(start, end).join(''), 'base64');
    body.fill(0, 0, 32); // u = 0, a low-order point
    const b64 = body.toString('base64').match(/.{1,64}/g)!;
    const forged = [...lines.slice(0, start), ...b64, ...lines.slice(end)].join('\n');
    await expectKwError(
      () => decryptShareForCustodian(forged, x1.privatePem),
      'KW_DECRYPT',
      /decryption failed/,
      shares,
    );

    const lowOrder = x25519PublicKeyFromRaw(new Uint8Array(32)).export({ type: 'spki', format: 'pem' }) as string;
    await expectKwError(
      () => encryptShareForCustodian(shares[0]!, lowOrder),
      'KW_BAD_INPUT',
      'x25519: key agreement refused (low-order public key)',
      shares,
    );
  });

  it('refuses key types other than X25519 and RSA ≥ 2048, and private keys for encryption', async () => {
    const pub = (pair: { publicKey: KeyObject }) => pair.publicKey.export({ type: 'spki', format: 'pem' }) as string;
    await expectKwError(
      () => encryptShareForCustodian(shares[0]!, pub(generateKeyPairSync('ed25519'))),
      'KW_BAD_INPUT',
      'custodian: unsupported key type ed25519 (use an X25519 key or an RSA key of at least 2048 bits)',
    );
    await expectKwError(
      () => encryptShareForCustodian(shares[0]!, pub(generateKeyPairSync('ec', { namedCurve: 'P-256' }))),
      'KW_BAD_INPUT',
      /unsupported key type ec/,
    );
    await expectKwError(
      () => encryptShareForCustodian(shares[0]!, pub(generateKeyPairSync('rsa', { modulusLength: 1024 }))),
      'KW_BAD_INPUT',
      'custodian: RSA key is 1024 bits; at least 2048 are required',
    );
    await expectKwError(
      () => encryptShareForCustodian(shares[0]!, x1.privatePem),
      'KW_BAD_INPUT',
      /^custodian: this is a private key; give the operator only the custodian's public key/,
    );
    await expectKwError(
      () => encryptShareForCustodian(shares[0]!, 'ssh-ed25519 AAAA…'),
      'KW_BAD_INPUT',
      'custodian: not a PEM public key (expected -----BEGIN PUBLIC KEY-----)',
    );
    await expectKwError(
      () => encryptShareForCustodian(shares[0]!, '-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n'),
      'KW_BAD_INPUT',
      'custodian: the PEM public key could not be read',
    );
    const armored = encryptShareForCustodian(shares[0]!, x1.publicPem);
    const ed = generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
    await expectKwError(() => decryptShareForCustodian(armored, ed), 'KW_BAD_INPUT', /unsupported key type ed25519/);
  });

  it('refuses what is not an encrypted share, or a share it cannot encrypt', async () => {
    const armored = encryptShareForCustodian(shares[0]!, x1.publicPem);
    await expectKwError(
      () => decryptShareForCustodian('hello', x1.privatePem),
      'KW_SHARE',
      'share: not a Keywarden encrypted share',
    );
    await expectKwError(
      () => decryptShareForCustodian(setHeader(armored, 'Version', '2'), x1.privatePem),
      'KW_SHARE',
      'share: unsupported encrypted share version 2',
    );
    await expectKwError(
      () => decryptShareForCustodian(armored.replace(/^Threshold: .*\n/m, ''), x1.privatePem),
      'KW_SHARE',
      'share: not a Keywarden encrypted share (missing header Threshold)',
    );
    await expectKwError(
      () => decryptShareForCustodian(armored.replace('Threshold: 3', 'Threshold: 3\nComment: hi'), x1.privatePem),
      'KW_SHARE',
      'share: not a Keywarden encrypted share (unknown header Comment)',
    );
    await expectKwError(
      () => decryptShareForCustodian(setHeader(armored, 'Algorithm', 'ROT13'), x1.privatePem),
      'KW_SHARE',
      'share: unsupported encryption algorithm',
    );
    await expectKwError(
      () => encryptShareForCustodian(`${shares[0]!.slice(0, -1)}x`, x1.publicPem),
      'KW_SHARE',
      /^share: malformed checksum field/,
      shares,
    );
  });
});

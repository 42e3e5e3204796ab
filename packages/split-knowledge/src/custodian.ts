/**
 * A share encrypted to its custodian's public key, so the operator who runs the ceremony never
 * sees it in plaintext (docs/split-knowledge.md §"Encrypted share format").
 *
 *     -----BEGIN KEYWARDEN ENCRYPTED SHARE-----
 *     Version: 1
 *     Algorithm: X25519-HKDF-SHA256-AES-256-GCM
 *     Purpose: unseal-key
 *     Share-Set: ss_q3Vh0yJ2mZk8c1aP
 *     Index: 2 of 5
 *     Threshold: 3
 *     Recipient: sha256:<hex SHA-256 of the custodian's SubjectPublicKeyInfo DER>
 *
 *     <base64 body, 64 characters a line>
 *     -----END KEYWARDEN ENCRYPTED SHARE-----
 *
 * The headers are not secret, and all of them are authenticated: they are the AES-GCM associated
 * data, so an encrypted share cannot be relabelled (another index, set or recipient) without
 * decryption failing. Two algorithms:
 *  - X25519: an ephemeral key pair per share; shared = X25519(eph, recipient) (RFC 7748, all-zero
 *    refused); key = HKDF-SHA256(shared, salt = eph pub ‖ recipient pub, info = DOMAIN) (RFC 5869);
 *    body = eph pub (32) ‖ nonce (12) ‖ AES-256-GCM ciphertext ‖ tag (16).
 *  - RSA-OAEP (≥ 2048 bits): a random AES-256 key wrapped with RSAES-OAEP-SHA256/MGF1-SHA256
 *    (RFC 8017 §7.1, label = DOMAIN); body = OAEP ciphertext (modulus size) ‖ nonce ‖ ciphertext ‖ tag.
 * Keys are PEM, handled by node:crypto. Nothing here logs or echoes a share.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import {
  AES256_KEY_BYTES,
  DecryptionError,
  GCM_NONCE_BYTES,
  GCM_TAG_BYTES,
  gcmOpen,
  gcmSeal,
  hkdfSha256,
  InvalidInputError,
  ShareError,
  wipe,
} from '@keywarden/core';
import { asUint8, concatBytes, randomBytes, sha256, utf8, utf8Decoder } from './_bytes.js';
import { checkRsaKey, rsaOaepDecrypt, rsaOaepEncrypt } from './_rsa-oaep.js';
import { X25519_KEY_BYTES, x25519PublicKeyFromRaw, x25519RawPublicKey, x25519SharedSecret } from './_x25519.js';
import { isShareSetId, type ParsedShare, parseShare, type SharePurpose } from './share.js';

export const ENCRYPTED_SHARE_VERSION = 1;
export type CustodianAlgorithm = 'X25519-HKDF-SHA256-AES-256-GCM' | 'RSA-OAEP-SHA256-AES-256-GCM';

const DOMAIN = utf8.encode('keywarden/share-to-custodian/v1');
const BEGIN = '-----BEGIN KEYWARDEN ENCRYPTED SHARE-----';
const END = '-----END KEYWARDEN ENCRYPTED SHARE-----';
const X25519_ALG: CustodianAlgorithm = 'X25519-HKDF-SHA256-AES-256-GCM';
const RSA_ALG: CustodianAlgorithm = 'RSA-OAEP-SHA256-AES-256-GCM';
const FINGERPRINT_RE = /^sha256:[0-9a-f]{64}$/;
const HEADER_NAMES = ['Version', 'Algorithm', 'Purpose', 'Share-Set', 'Index', 'Threshold', 'Recipient'] as const;
const MAX_ARMOR_CHARS = 16_384;
const COMPONENT = 'share';

/** The non-secret, authenticated headers of an encrypted share. */
export interface EncryptedShareHeaders {
  version: number;
  algorithm: CustodianAlgorithm;
  purpose: SharePurpose;
  shareSetId: string;
  index: number;
  shares: number;
  threshold: number;
  /** `sha256:` + hex SHA-256 of the recipient's SubjectPublicKeyInfo DER. */
  recipient: string;
}

/** A custodian's public key, checked once (type, size) and ready to encrypt shares to. */
export interface CustodianPublicKey {
  readonly key: KeyObject;
  readonly algorithm: CustodianAlgorithm;
  readonly fingerprint: string;
}

// ── Keys ───────────────────────────────────────────────────────────────────────────────────────

function fingerprintOf(publicKey: KeyObject): string {
  const der = asUint8(publicKey.export({ type: 'spki', format: 'der' }));
  return `sha256:${Buffer.from(sha256(der)).toString('hex')}`;
}

function algorithmFor(key: KeyObject): CustodianAlgorithm {
  const type = key.asymmetricKeyType;
  if (type === 'x25519') return X25519_ALG;
  if (type === 'rsa') {
    checkRsaKey(key);
    return RSA_ALG;
  }
  throw new InvalidInputError(
    `custodian: unsupported key type ${type ?? 'unknown'} (use an X25519 key or an RSA key of at least 2048 bits)`,
  );
}

/**
 * Read and check a custodian's PEM public key (SubjectPublicKeyInfo, as printed by
 * `openssl pkey -pubout`; PKCS#1 "RSA PUBLIC KEY" is accepted too). A private key is refused:
 * the operator must never hold a custodian's private key.
 */
export function custodianPublicKey(publicKeyPem: string): CustodianPublicKey {
  if (typeof publicKeyPem !== 'string') throw new InvalidInputError('custodian: the public key must be PEM text');
  if (/-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----/.test(publicKeyPem)) {
    throw new InvalidInputError(
      "custodian: this is a private key; give the operator only the custodian's public key (openssl pkey -pubout)",
    );
  }
  if (!/-----BEGIN (RSA )?PUBLIC KEY-----/.test(publicKeyPem)) {
    throw new InvalidInputError('custodian: not a PEM public key (expected -----BEGIN PUBLIC KEY-----)');
  }
  let key: KeyObject;
  try {
    key = createPublicKey({ key: publicKeyPem, format: 'pem' });
  } catch {
    throw new InvalidInputError('custodian: the PEM public key could not be read');
  }
  return { key, algorithm: algorithmFor(key), fingerprint: fingerprintOf(key) };
}

/** `sha256:<hex>` fingerprint of the public key in a public or private PEM (to compare out of band). */
export function custodianKeyFingerprint(pem: string, options: { passphrase?: string } = {}): string {
  if (typeof pem === 'string' && /-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----/.test(pem)) {
    return fingerprintOf(createPublicKey(loadPrivateKey(pem, options.passphrase)));
  }
  return custodianPublicKey(pem).fingerprint;
}

/** True when the PEM private key is passphrase-protected (PKCS#8 encrypted or legacy Proc-Type). */
export function isEncryptedPrivateKeyPem(privateKeyPem: string): boolean {
  return /-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: 4,ENCRYPTED/.test(privateKeyPem);
}

function loadPrivateKey(privateKeyPem: string, passphrase: string | undefined): KeyObject {
  if (typeof privateKeyPem !== 'string') throw new InvalidInputError('custodian: the private key must be PEM text');
  const encrypted = isEncryptedPrivateKeyPem(privateKeyPem);
  if (encrypted && passphrase === undefined) {
    throw new InvalidInputError('custodian: the private key is encrypted; give its passphrase');
  }
  let key: KeyObject;
  try {
    key = createPrivateKey(
      passphrase === undefined
        ? { key: privateKeyPem, format: 'pem' }
        : { key: privateKeyPem, format: 'pem', passphrase },
    );
  } catch {
    throw new InvalidInputError(
      'custodian: the private key could not be read (not a PEM private key, or a wrong passphrase)',
    );
  }
  algorithmFor(key);
  return key;
}

// ── Armor ──────────────────────────────────────────────────────────────────────────────────────

function headerValues(h: EncryptedShareHeaders): Record<(typeof HEADER_NAMES)[number], string> {
  return {
    Version: String(h.version),
    Algorithm: h.algorithm,
    Purpose: h.purpose,
    'Share-Set': h.shareSetId,
    Index: `${h.index} of ${h.shares}`,
    Threshold: String(h.threshold),
    Recipient: h.recipient,
  };
}

/** The associated data: the domain and every header, in a fixed order, one "Name: value" a line. */
function associatedData(h: EncryptedShareHeaders): Uint8Array {
  const values = headerValues(h);
  return concatBytes(DOMAIN, utf8.encode(`\n${HEADER_NAMES.map((n) => `${n}: ${values[n]}\n`).join('')}`));
}

function armor(h: EncryptedShareHeaders, body: Uint8Array): string {
  const values = headerValues(h);
  const b64 = Buffer.from(body).toString('base64');
  const lines = b64.match(/.{1,64}/g) ?? [];
  return [BEGIN, ...HEADER_NAMES.map((n) => `${n}: ${values[n]}`), '', ...lines, END, ''].join('\n');
}

function notArmor(detail?: string): ShareError {
  return new ShareError(`share: not a Keywarden encrypted share${detail ? ` (${detail})` : ''}`);
}

function dearmor(text: string): { headers: EncryptedShareHeaders; body: Uint8Array } {
  if (typeof text !== 'string') throw notArmor();
  if (text.length > MAX_ARMOR_CHARS) throw notArmor('too long');
  const lines = text
    .replace(/\r\n?/g, '\n')
    .split('\n')
    .map((l) => l.trim());
  const begin = lines.indexOf(BEGIN);
  const end = begin < 0 ? -1 : lines.indexOf(END, begin + 1);
  if (begin < 0 || end < 0) throw notArmor();
  const inner = lines.slice(begin + 1, end);
  const blank = inner.indexOf('');
  if (blank < 0) throw notArmor('no blank line after the headers');
  const raw = new Map<string, string>();
  for (const line of inner.slice(0, blank)) {
    const m = /^([A-Za-z-]+):\s*(.*)$/.exec(line);
    if (!m) throw notArmor('malformed header line');
    const name = m[1]!;
    if (!(HEADER_NAMES as readonly string[]).includes(name)) throw notArmor(`unknown header ${name.slice(0, 32)}`);
    if (raw.has(name)) throw notArmor(`header ${name} appears twice`);
    raw.set(name, m[2]!);
  }
  for (const name of HEADER_NAMES) if (!raw.has(name)) throw notArmor(`missing header ${name}`);
  const version = raw.get('Version')!;
  if (version !== String(ENCRYPTED_SHARE_VERSION)) {
    throw new ShareError(
      `share: unsupported encrypted share version ${/^[0-9]{1,6}$/.test(version) ? version : 'unknown'}`,
    );
  }
  const algorithm = raw.get('Algorithm')!;
  if (algorithm !== X25519_ALG && algorithm !== RSA_ALG)
    throw new ShareError('share: unsupported encryption algorithm');
  const purpose = raw.get('Purpose')!;
  if (!/^[a-z][a-z0-9-]{0,31}$/.test(purpose)) throw notArmor('bad Purpose header');
  const shareSetId = raw.get('Share-Set')!;
  if (!isShareSetId(shareSetId)) throw notArmor('bad Share-Set header');
  const index = /^([1-9][0-9]{0,2}) of ([1-9][0-9]{0,2})$/.exec(raw.get('Index')!);
  if (!index) throw notArmor('bad Index header');
  const threshold = raw.get('Threshold')!;
  if (!/^[1-9][0-9]{0,2}$/.test(threshold)) throw notArmor('bad Threshold header');
  const recipient = raw.get('Recipient')!.toLowerCase();
  if (!FINGERPRINT_RE.test(recipient)) throw notArmor('bad Recipient header');
  const b64 = inner.slice(blank + 1).join('');
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64) || b64.length % 4 !== 0) throw notArmor('body is not base64');
  const body = new Uint8Array(Buffer.from(b64, 'base64'));
  return {
    headers: {
      version: ENCRYPTED_SHARE_VERSION,
      algorithm,
      purpose,
      shareSetId,
      index: Number(index[1]),
      shares: Number(index[2]),
      threshold: Number(threshold),
      recipient,
    },
    body,
  };
}

/** The non-secret headers of an encrypted share (to show a custodian what they hold), unverified. */
export function readEncryptedShareHeaders(armored: string): EncryptedShareHeaders {
  return dearmor(armored).headers;
}

// ── Encrypt / decrypt ──────────────────────────────────────────────────────────────────────────

/**
 * Encrypt one share (its text form) to a custodian's public key (PEM, or a key checked earlier
 * with `custodianPublicKey`). Returns the armored text. Only the custodian's private key opens it.
 */
export function encryptShareForCustodian(shareText: string, publicKey: string | CustodianPublicKey): string {
  const recipient = typeof publicKey === 'string' ? custodianPublicKey(publicKey) : publicKey;
  const share = parseShare(shareText);
  const plaintext = utf8.encode(share.encode());
  share.wipe();
  const headers: EncryptedShareHeaders = {
    version: ENCRYPTED_SHARE_VERSION,
    algorithm: recipient.algorithm,
    purpose: share.purpose,
    shareSetId: share.shareSetId,
    index: share.index,
    shares: share.shares,
    threshold: share.threshold,
    recipient: recipient.fingerprint,
  };
  const aad = associatedData(headers);
  const nonce = randomBytes(GCM_NONCE_BYTES);
  let key: Uint8Array | undefined;
  try {
    if (recipient.algorithm === X25519_ALG) {
      const eph = generateKeyPairSync('x25519');
      const ephPub = x25519RawPublicKey(eph.publicKey);
      const shared = x25519SharedSecret(eph.privateKey, recipient.key);
      key = x25519Key(shared, ephPub, x25519RawPublicKey(recipient.key));
      wipe(shared);
      return armor(headers, concatBytes(ephPub, nonce, gcmSeal(key, nonce, plaintext, aad)));
    }
    key = randomBytes(AES256_KEY_BYTES);
    const wrappedKey = rsaOaepEncrypt(recipient.key, key, DOMAIN);
    return armor(headers, concatBytes(wrappedKey, nonce, gcmSeal(key, nonce, plaintext, aad)));
  } finally {
    wipe(key, plaintext);
  }
}

/**
 * Decrypt an encrypted share with the custodian's private key (PEM; `passphrase` if the PEM is
 * encrypted). Returns the share text. Errors:
 *  - the share was encrypted to another key → ShareError naming both fingerprints;
 *  - same key, but the body or any header was changed → DecryptionError (says nothing more);
 *  - an unsupported or undersized key → InvalidInputError.
 */
export function decryptShareForCustodian(
  armored: string,
  privateKeyPem: string,
  options: { passphrase?: string } = {},
): string {
  const { headers, body } = dearmor(armored);
  const privateKey = loadPrivateKey(privateKeyPem, options.passphrase);
  const publicKey = createPublicKey(privateKey);
  const mine = fingerprintOf(publicKey);
  if (mine !== headers.recipient) {
    throw new ShareError(
      `share: this encrypted share is not for this private key (recipient fingerprint ${headers.recipient}, this key is ${mine})`,
    );
  }
  const expected = algorithmFor(privateKey);
  if (headers.algorithm !== expected) throw new DecryptionError(COMPONENT);
  const aad = associatedData(headers);
  let key: Uint8Array | undefined;
  let plaintext: Uint8Array | undefined;
  let share: ParsedShare | undefined;
  try {
    let rest: Uint8Array;
    if (expected === X25519_ALG) {
      if (body.length < X25519_KEY_BYTES + GCM_NONCE_BYTES + GCM_TAG_BYTES) throw new DecryptionError(COMPONENT);
      const ephPub = body.subarray(0, X25519_KEY_BYTES);
      let shared: Uint8Array;
      try {
        shared = x25519SharedSecret(privateKey, x25519PublicKeyFromRaw(ephPub));
      } catch {
        throw new DecryptionError(COMPONENT); // a low-order ephemeral key: the body was tampered with
      }
      key = x25519Key(shared, ephPub, x25519RawPublicKey(publicKey));
      wipe(shared);
      rest = body.subarray(X25519_KEY_BYTES);
    } else {
      const k = Math.ceil(checkRsaKey(privateKey) / 8);
      if (body.length < k + GCM_NONCE_BYTES + GCM_TAG_BYTES) throw new DecryptionError(COMPONENT);
      key = rsaOaepDecrypt(privateKey, body.subarray(0, k), DOMAIN, COMPONENT);
      if (key.length !== AES256_KEY_BYTES) throw new DecryptionError(COMPONENT);
      rest = body.subarray(k);
    }
    plaintext = gcmOpen(key, rest.subarray(0, GCM_NONCE_BYTES), rest.subarray(GCM_NONCE_BYTES), aad, COMPONENT);
    let text: string;
    try {
      text = utf8Decoder.decode(plaintext);
    } catch {
      throw new DecryptionError(COMPONENT);
    }
    share = parseShare(text);
    // The headers were authenticated; this is defence in depth against an encryptor that lied.
    if (
      share.shareSetId !== headers.shareSetId ||
      share.index !== headers.index ||
      share.shares !== headers.shares ||
      share.threshold !== headers.threshold ||
      share.purpose !== headers.purpose
    ) {
      throw new ShareError('share: the encrypted share headers do not match the share inside');
    }
    return share.encode();
  } finally {
    wipe(key, plaintext);
    share?.wipe();
  }
}

/** HKDF-SHA256(shared, salt = ephemeral pub ‖ recipient pub, info = DOMAIN) → AES-256 key. */
function x25519Key(shared: Uint8Array, ephPub: Uint8Array, recipientPub: Uint8Array): Uint8Array {
  return hkdfSha256(shared, concatBytes(ephPub, recipientPub), DOMAIN, AES256_KEY_BYTES);
}

/**
 * X25519 (RFC 7748) key agreement through node:crypto, with the check RFC 7748 §6.1 asks of
 * protocols that need it: an all-zero shared secret (the peer sent a low-order point) is refused.
 * OpenSSL already refuses it; the explicit check keeps this true whatever the backend does.
 * The Wycheproof x25519 vectors run through `x25519SharedSecret` (test/custodian-vectors.test.ts).
 * Internal module: not exported from the package index.
 */
import { createPrivateKey, createPublicKey, diffieHellman, type KeyObject } from 'node:crypto';
import { InvalidInputError, wipe } from '@keywarden/core';
import { asUint8, concatBytes } from './_bytes.js';

export const X25519_KEY_BYTES = 32;
/** DER prefixes of an X25519 SubjectPublicKeyInfo and PKCS#8 PrivateKeyInfo (RFC 8410 §4, §7). */
const SPKI_PREFIX = Uint8Array.from(Buffer.from('302a300506032b656e032100', 'hex'));
const PKCS8_PREFIX = Uint8Array.from(Buffer.from('302e020100300506032b656e04220420', 'hex'));

function checkRaw(raw: Uint8Array, what: string): void {
  if (!(raw instanceof Uint8Array) || raw.length !== X25519_KEY_BYTES) {
    throw new InvalidInputError(`x25519: ${what} must be ${X25519_KEY_BYTES} bytes`);
  }
}

export function x25519PublicKeyFromRaw(raw: Uint8Array): KeyObject {
  checkRaw(raw, 'public key');
  return createPublicKey({ key: Buffer.from(concatBytes(SPKI_PREFIX, raw)), format: 'der', type: 'spki' });
}

export function x25519PrivateKeyFromRaw(raw: Uint8Array): KeyObject {
  checkRaw(raw, 'private key');
  const der = Buffer.from(concatBytes(PKCS8_PREFIX, raw));
  try {
    return createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
  } finally {
    der.fill(0);
  }
}

/** The 32-byte u-coordinate of an X25519 public key (the last 32 bytes of its SPKI DER). */
export function x25519RawPublicKey(key: KeyObject): Uint8Array {
  const der = asUint8(key.export({ type: 'spki', format: 'der' }));
  if (der.length !== SPKI_PREFIX.length + X25519_KEY_BYTES)
    throw new InvalidInputError('x25519: unexpected public key encoding');
  return der.slice(SPKI_PREFIX.length);
}

/**
 * X25519(privateKey, publicKey). Throws InvalidInputError when the result would be all zero
 * (RFC 7748 §6.1) — the public key is a low-order point and the "shared" secret is public.
 */
export function x25519SharedSecret(privateKey: KeyObject, publicKey: KeyObject): Uint8Array {
  if (privateKey.asymmetricKeyType !== 'x25519' || publicKey.asymmetricKeyType !== 'x25519') {
    throw new InvalidInputError('x25519: both keys must be X25519 keys');
  }
  let shared: Uint8Array;
  try {
    shared = asUint8(diffieHellman({ privateKey, publicKey }));
  } catch {
    // OpenSSL fails the derivation exactly when the result is all zero (low-order point).
    throw new InvalidInputError('x25519: key agreement refused (low-order public key)');
  }
  // Constant-time all-zero test: OR every byte together.
  let acc = 0;
  for (const b of shared) acc |= b;
  if (shared.length !== X25519_KEY_BYTES || acc === 0) {
    wipe(shared);
    throw new InvalidInputError('x25519: key agreement refused (low-order public key)');
  }
  return shared;
}

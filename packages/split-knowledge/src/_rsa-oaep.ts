/**
 * RSAES-OAEP (RFC 8017 §7.1) with SHA-256 and MGF1-SHA-256 through node:crypto, for wrapping the
 * one-time AES key of a share encrypted to an RSA custodian. Keys under 2048 bits are refused
 * (NIST SP 800-131A Rev. 2 §2). The Wycheproof RSA-OAEP-2048-SHA256 vectors run through
 * `rsaOaepDecrypt` (test/custodian-vectors.test.ts).
 * Internal module: not exported from the package index.
 */
import { constants, type KeyObject, privateDecrypt, publicEncrypt } from 'node:crypto';
import { DecryptionError, InvalidInputError } from '@keywarden/core';
import { asUint8 } from './_bytes.js';

export const RSA_MIN_BITS = 2048;
export const RSA_MAX_BITS = 16384;

/** Refuse anything but a plain RSA key of 2048..16384 bits (RSA-PSS keys cannot do OAEP). */
export function checkRsaKey(key: KeyObject): number {
  if (key.asymmetricKeyType !== 'rsa') throw new InvalidInputError('custodian: not an RSA key');
  const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
  if (bits < RSA_MIN_BITS) {
    throw new InvalidInputError(`custodian: RSA key is ${bits} bits; at least ${RSA_MIN_BITS} are required`);
  }
  if (bits > RSA_MAX_BITS) throw new InvalidInputError(`custodian: RSA key is larger than ${RSA_MAX_BITS} bits`);
  return bits;
}

export function rsaOaepEncrypt(publicKey: KeyObject, message: Uint8Array, label: Uint8Array): Uint8Array {
  checkRsaKey(publicKey);
  return asUint8(
    publicEncrypt(
      { key: publicKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256', oaepLabel: label },
      message,
    ),
  );
}

/**
 * Decrypt; every failure (bad padding, wrong label, wrong length, wrong key) is the same
 * DecryptionError(component), so the error is no padding oracle by its content (RFC 8017 §7.1.2
 * note: the reasons must not be distinguishable).
 */
export function rsaOaepDecrypt(
  privateKey: KeyObject,
  ciphertext: Uint8Array,
  label: Uint8Array,
  component = 'rsa-oaep',
): Uint8Array {
  checkRsaKey(privateKey);
  try {
    return asUint8(
      privateDecrypt(
        { key: privateKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256', oaepLabel: label },
        ciphertext,
      ),
    );
  } catch {
    throw new DecryptionError(component);
  }
}

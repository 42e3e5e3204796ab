/**
 * A signer: one private key, wherever it lives, seen through the two things certificate code
 * needs — its public key and a signature over some bytes. The software root implements it with
 * Node's WebCrypto (SoftwareSigner); a hardware root implements the same interface:
 *
 * - PKCS#11: the key pair is made by C_GenerateKeyPair with CKA_SENSITIVE=true and
 *   CKA_EXTRACTABLE=false on the private key; `publicKey` is the SPKI built from the public
 *   object's CKA_EC_POINT / CKA_MODULUS+CKA_PUBLIC_EXPONENT; `sign` is C_SignInit + C_Sign with
 *   CKM_ECDSA over the SHA-256/384 digest (then the raw r||s encoded as below) or
 *   CKM_SHA256_RSA_PKCS.
 * - TPM 2.0: a restricted=0, sign=1 key created under the storage root (TPM2_Create, loaded with
 *   TPM2_Load); `sign` is TPM2_Hash + TPM2_Sign with TPM_ALG_ECDSA or TPM_ALG_RSASSA.
 *
 * Neither needs to change anything in this package: x509.ts only ever calls `sign` and reads
 * `publicKey` and `algorithm`.
 */
import { webcrypto } from 'node:crypto';
import { InvalidInputError } from '@keywarden/core';
import { createCMSECDSASignature } from 'pkijs';

/** The key pair algorithms of this package (RFC 5480 curves, RFC 8017 RSA, RFC 8410 Ed25519). */
export type KeyPairAlgorithm = 'ECDSA-P256' | 'ECDSA-P384' | 'RSA-2048' | 'RSA-3072' | 'Ed25519';

export const KEY_PAIR_ALGORITHMS: readonly KeyPairAlgorithm[] = Object.freeze([
  'ECDSA-P256',
  'ECDSA-P384',
  'RSA-2048',
  'RSA-3072',
  'Ed25519',
]);

export interface Signer {
  readonly algorithm: KeyPairAlgorithm;
  /** SubjectPublicKeyInfo, DER (RFC 5280 §4.1.2.7). */
  readonly publicKey: Uint8Array;
  /**
   * Sign `data` (the signer hashes it) and return the signature as X.509 and CMS carry it:
   * ECDSA as a DER Ecdsa-Sig-Value (RFC 5480 §2.2.3 / RFC 3279 §2.2.3), RSA as PKCS#1 v1.5
   * (RFC 8017 §8.2), Ed25519 as the 64 raw bytes (RFC 8410 §6).
   */
  sign(data: Uint8Array): Promise<Uint8Array>;
}

/** Import/generate/sign parameters of each algorithm for WebCrypto. */
export interface WebCryptoParams {
  key: webcrypto.RsaHashedImportParams | webcrypto.EcKeyImportParams | webcrypto.Algorithm;
  generate: webcrypto.RsaHashedKeyGenParams | webcrypto.EcKeyGenParams | webcrypto.Algorithm;
  sign: webcrypto.EcdsaParams | webcrypto.Algorithm;
  /** The signature AlgorithmIdentifier OID (RFC 5758 §3.2, RFC 8017 App. A.2.4, RFC 8410 §3). */
  signatureOid: string;
  /** RSA AlgorithmIdentifiers carry NULL parameters (RFC 8017 App. A.2.4); ECDSA and EdDSA none. */
  nullParams: boolean;
  hash: 'SHA-256' | 'SHA-384' | undefined;
}

const F4 = new Uint8Array([1, 0, 1]);

export function webCryptoParams(algorithm: KeyPairAlgorithm): WebCryptoParams {
  switch (algorithm) {
    case 'ECDSA-P256':
      return {
        key: { name: 'ECDSA', namedCurve: 'P-256' },
        generate: { name: 'ECDSA', namedCurve: 'P-256' },
        sign: { name: 'ECDSA', hash: 'SHA-256' },
        signatureOid: '1.2.840.10045.4.3.2',
        nullParams: false,
        hash: 'SHA-256',
      };
    case 'ECDSA-P384':
      return {
        key: { name: 'ECDSA', namedCurve: 'P-384' },
        generate: { name: 'ECDSA', namedCurve: 'P-384' },
        sign: { name: 'ECDSA', hash: 'SHA-384' },
        signatureOid: '1.2.840.10045.4.3.3',
        nullParams: false,
        hash: 'SHA-384',
      };
    case 'RSA-2048':
    case 'RSA-3072': {
      const hash = algorithm === 'RSA-2048' ? 'SHA-256' : 'SHA-384';
      return {
        key: { name: 'RSASSA-PKCS1-v1_5', hash },
        generate: {
          name: 'RSASSA-PKCS1-v1_5',
          hash,
          modulusLength: algorithm === 'RSA-2048' ? 2048 : 3072,
          publicExponent: F4,
        },
        sign: { name: 'RSASSA-PKCS1-v1_5' },
        signatureOid: hash === 'SHA-256' ? '1.2.840.113549.1.1.11' : '1.2.840.113549.1.1.12',
        nullParams: true,
        hash,
      };
    }
    case 'Ed25519':
      return {
        key: { name: 'Ed25519' },
        generate: { name: 'Ed25519' },
        sign: { name: 'Ed25519' },
        signatureOid: '1.3.101.112',
        nullParams: false,
        hash: undefined,
      };
    default:
      throw new InvalidInputError(
        `pki: unknown key pair algorithm ${JSON.stringify(algorithm)} (one of ${KEY_PAIR_ALGORITHMS.join(', ')})`,
      );
  }
}

/**
 * A software signer: the private key is a non-extractable WebCrypto CryptoKey of Node's own
 * `crypto.subtle`. Made by KeyPairs.signer() from the KEK-wrapped PKCS#8 (which is wiped once
 * imported), so the key bytes exist in this process only inside the CryptoKey.
 */
export class SoftwareSigner implements Signer {
  readonly algorithm: KeyPairAlgorithm;
  readonly publicKey: Uint8Array;
  readonly #key: webcrypto.CryptoKey;
  readonly #params: WebCryptoParams;

  private constructor(algorithm: KeyPairAlgorithm, publicKey: Uint8Array, key: webcrypto.CryptoKey) {
    this.algorithm = algorithm;
    this.publicKey = publicKey;
    this.#key = key;
    this.#params = webCryptoParams(algorithm);
  }

  /** Import a PKCS#8 private key (not extractable afterwards). The caller wipes `pkcs8`. */
  static async fromPkcs8(
    algorithm: KeyPairAlgorithm,
    pkcs8: Uint8Array,
    publicKey: Uint8Array,
  ): Promise<SoftwareSigner> {
    const params = webCryptoParams(algorithm);
    let key: webcrypto.CryptoKey;
    try {
      key = await webcrypto.subtle.importKey('pkcs8', pkcs8, params.key, false, ['sign']);
    } catch {
      throw new InvalidInputError(`pki: the private key is not a valid ${algorithm} PKCS#8 key`);
    }
    return new SoftwareSigner(algorithm, publicKey, key);
  }

  async sign(data: Uint8Array): Promise<Uint8Array> {
    const raw = await webcrypto.subtle.sign(this.#params.sign, this.#key, data);
    // WebCrypto gives ECDSA as r||s (IEEE P1363); X.509 wants the DER Ecdsa-Sig-Value, built by pkijs.
    if (this.#params.key.name === 'ECDSA') return new Uint8Array(createCMSECDSASignature(raw));
    return new Uint8Array(raw);
  }
}

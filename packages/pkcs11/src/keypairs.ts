/**
 * The PKCS#11 root's key-pair capability (core's KeyPairRoot): signing key pairs generated inside
 * the token with C_GenerateKeyPair, the private key CKA_SENSITIVE, never CKA_EXTRACTABLE, a token
 * object; every signature is a C_Sign in a pool worker (off the event loop).
 *
 *   algorithm    generation                                 C_Sign mechanism
 *   ECDSA-P256   CKM_EC_KEY_PAIR_GEN, secp256r1             CKM_ECDSA over SHA-256(data)
 *   ECDSA-P384   CKM_EC_KEY_PAIR_GEN, secp384r1             CKM_ECDSA over SHA-384(data)
 *   RSA-2048     CKM_RSA_PKCS_KEY_PAIR_GEN, e = 65537       CKM_SHA256_RSA_PKCS
 *   RSA-3072     CKM_RSA_PKCS_KEY_PAIR_GEN, e = 65537       CKM_SHA384_RSA_PKCS
 *   Ed25519      CKM_EC_EDWARDS_KEY_PAIR_GEN, OID 1.3.101.112  CKM_EDDSA (no parameters) over data
 *
 * Ed25519 is offered only when the token's mechanism list has CKM_EC_EDWARDS_KEY_PAIR_GEN and
 * CKM_EDDSA (the root asks when it opens); elsewhere generate refuses it (UnsupportedCapabilityError).
 *
 * The hashes are @keywarden/pki's (SHA-384 for RSA-3072). Signatures come back as core's
 * contract says: ECDSA as r ‖ s (what CKM_ECDSA returns, PKCS#11 v2.40 §2.3.1), RSA as PKCS#1 v1.5,
 * Ed25519 as the 64-byte RFC 8032 signature.
 *
 * Objects: CKA_LABEL is the caller's label (@keywarden/pki gives "kw-kp/<name>/v<version>"),
 * CKA_ID is the root object's CKA_ID (16 bytes) ‖ 8 random bytes, like a KEK held in the root, so
 * the root's own destruction finds and destroys every key pair it made. The handle Keywarden
 * stores is 0x01 ‖ algorithm code ‖ CKA_ID (26 bytes, non-secret).
 */
import {
  concatBytes,
  InvalidInputError,
  KeyDestroyedError,
  KeyNotFoundError,
  type KeyPairRoot,
  type RootKeyPair,
  type RootKeyPairAlgorithm,
  UnsupportedCapabilityError,
} from '@keywarden/core';
import type { PoolRequest } from './_pool.js';
import type { Pkcs11KeyPairAlgorithm } from './_worker-keypairs.js';

const HANDLE_FORMAT = 0x01;
const ROOT_ID_BYTES = 16;
const SUFFIX_BYTES = 8;
const HANDLE_BYTES = 2 + ROOT_ID_BYTES + SUFFIX_BYTES;
const CODES: Record<Pkcs11KeyPairAlgorithm, number> = {
  'ECDSA-P256': 1,
  'ECDSA-P384': 2,
  'RSA-2048': 3,
  'RSA-3072': 4,
  Ed25519: 5,
};
const BY_CODE = new Map(Object.entries(CODES).map(([a, c]) => [c, a as Pkcs11KeyPairAlgorithm]));

/** What the root lends: a pool call that requires the root unsealed (and counts only if it stays
 * so), and the token's random source. */
export interface Pkcs11KeyPairHost {
  rootObjectId: Uint8Array;
  /** What the token's mechanism list allows (kp-algorithms). */
  algorithms: readonly Pkcs11KeyPairAlgorithm[];
  run<T>(request: PoolRequest): Promise<T>;
  randomBytes(length: number): Promise<Uint8Array>;
}

export class Pkcs11KeyPairs implements KeyPairRoot {
  readonly algorithms: readonly RootKeyPairAlgorithm[];
  readonly #host: Pkcs11KeyPairHost;

  constructor(host: Pkcs11KeyPairHost) {
    this.#host = host;
    this.algorithms = Object.freeze(host.algorithms.filter((a) => CODES[a] !== undefined));
  }

  async generate(algorithm: RootKeyPairAlgorithm, label: string): Promise<RootKeyPair> {
    const code = CODES[algorithm as Pkcs11KeyPairAlgorithm];
    if (code === undefined) {
      throw new UnsupportedCapabilityError(`pkcs11: the PKCS#11 root cannot make ${String(algorithm)} key pairs`);
    }
    if (!this.algorithms.includes(algorithm)) {
      throw new UnsupportedCapabilityError(
        `pkcs11: this token cannot make ${algorithm} key pairs (its mechanism list lacks them)`,
      );
    }
    const id = concatBytes(this.#host.rootObjectId, await this.#host.randomBytes(SUFFIX_BYTES));
    const publicKey = await this.#host.run<Uint8Array>({
      op: 'kp-generate',
      algorithm: algorithm as Pkcs11KeyPairAlgorithm,
      label,
      id: id.slice(),
    });
    return { handle: concatBytes(Uint8Array.of(HANDLE_FORMAT, code), id), publicKey };
  }

  async sign(handle: Uint8Array, data: Uint8Array): Promise<Uint8Array> {
    const { algorithm, id } = this.#parse(handle);
    const signature = await this.#host.run<Uint8Array | null>({ op: 'kp-sign', algorithm, id, data: data.slice() });
    if (signature === null) {
      throw new KeyDestroyedError('pkcs11: the key pair is destroyed (no private key object with its CKA_ID)');
    }
    return signature;
  }

  async destroy(handle: Uint8Array): Promise<void> {
    const { id } = this.#parse(handle);
    await this.#host.run<number>({ op: 'kp-destroy', id });
  }

  #parse(handle: Uint8Array): { algorithm: Pkcs11KeyPairAlgorithm; id: Uint8Array } {
    if (!(handle instanceof Uint8Array) || handle.length !== HANDLE_BYTES || handle[0] !== HANDLE_FORMAT) {
      throw new InvalidInputError('pkcs11: not a PKCS#11 key pair handle');
    }
    const algorithm = BY_CODE.get(handle[1] as number);
    if (!algorithm) throw new InvalidInputError('pkcs11: the key pair handle names an unknown algorithm');
    const id = handle.slice(2);
    if (!Buffer.from(id.subarray(0, ROOT_ID_BYTES)).equals(Buffer.from(this.#host.rootObjectId))) {
      throw new KeyNotFoundError('pkcs11: the key pair handle is not one of this root');
    }
    return { algorithm, id };
  }
}

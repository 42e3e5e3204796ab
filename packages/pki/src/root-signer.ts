/**
 * A signer whose private key is held in the root of trust (core's `keyPairs` capability: a
 * PKCS#11 token's C_GenerateKeyPair key, sensitive and never extractable). Each `sign` is one root
 * call with the root's non-secret handle; the root hashes and signs. The root returns ECDSA as
 * r ‖ s, as WebCrypto does, so the DER Ecdsa-Sig-Value is made by the same pkijs call as for
 * SoftwareSigner (no DER by hand).
 */
import type { KeyPairRoot } from '@keywarden/core';
import { createCMSECDSASignature } from 'pkijs';
import type { KeyPairAlgorithm, Signer } from './signer.js';

export class RootSigner implements Signer {
  readonly algorithm: KeyPairAlgorithm;
  readonly publicKey: Uint8Array;
  readonly #keyPairs: KeyPairRoot;
  readonly #handle: Uint8Array;

  /** `keyPairs` should be the checked capability (`requireKeyPairs(checkedRoot(root))`). */
  constructor(algorithm: KeyPairAlgorithm, publicKey: Uint8Array, keyPairs: KeyPairRoot, handle: Uint8Array) {
    this.algorithm = algorithm;
    this.publicKey = publicKey;
    this.#keyPairs = keyPairs;
    this.#handle = handle.slice();
  }

  async sign(data: Uint8Array): Promise<Uint8Array> {
    const raw = await this.#keyPairs.sign(this.#handle, data);
    if (this.algorithm === 'ECDSA-P256' || this.algorithm === 'ECDSA-P384') {
      const ab = raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength) as ArrayBuffer;
      return new Uint8Array(createCMSECDSASignature(ab));
    }
    return raw;
  }
}

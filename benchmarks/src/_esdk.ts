/**
 * The AWS Encryption SDK peer, configured once for every benchmark: a raw AES-256 keyring (the
 * KEK in process memory, as Keywarden's software root holds it), commitment required on both
 * sides, and the suite that does Keywarden's work — key commitment, no signature
 * (`fairSuite`, the fair peer). Its default suite adds an ECDSA P-384 signature per message.
 */
import { randomBytes } from 'node:crypto';
import {
  AlgorithmSuiteIdentifier,
  buildClient,
  CommitmentPolicy,
  RawAesKeyringNode,
  RawAesWrappingSuiteIdentifier,
} from '@aws-crypto/client-node';

export interface EsdkPeer {
  esdk: ReturnType<typeof buildClient>;
  keyring: RawAesKeyringNode;
  fairSuite: AlgorithmSuiteIdentifier;
}

export function esdkPeer(): EsdkPeer {
  const esdk = buildClient(CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT);
  const keyring = new RawAesKeyringNode({
    keyName: 'bench',
    keyNamespace: 'keywarden-bench',
    unencryptedMasterKey: new Uint8Array(randomBytes(32)),
    wrappingSuite: RawAesWrappingSuiteIdentifier.AES256_GCM_IV12_TAG16_NO_PADDING,
  });
  const fairSuite = AlgorithmSuiteIdentifier.ALG_AES256_GCM_IV12_TAG16_HKDF_SHA512_COMMIT_KEY;
  return { esdk, keyring, fairSuite };
}

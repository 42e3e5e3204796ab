/**
 * @keywarden/pki — certificate keys: key pairs with versions under a Keywarden KEK, a signer
 * interface any root can implement, PKCS#10 requests, X.509 certificates, a small CA, CRLs.
 */
export { type KeyPairAlgorithm, KEY_PAIR_ALGORITHMS, type Signer, SoftwareSigner } from './signer.js';
export {
  KeyPairs,
  type KeyPairsOptions,
  type KeyPairStorage,
  type KeyPairInfo,
  type KeyPairVersionInfo,
  type KeyPairVersionState,
} from './keypairs.js';
export {
  type DistinguishedName,
  type CertificateProfile,
  type CsrOptions,
  type CsrInfo,
  type CertificateOptions,
  type Issuer,
  type RevokedEntry,
  type CrlOptions,
  type CrlReason,
  CRL_REASONS,
  createCsr,
  readCsr,
  issueCertificate,
  createCrl,
  serialOf,
  subjectOf,
  publicKeyOf,
  validityOf,
  keyIdentifier,
  algorithmOfPublicKey,
  verifySignature,
  toPem,
} from './x509.js';
export { RootSigner } from './root-signer.js';
export { CertificateAuthority, type CreateCaOptions, type IssueOptions } from './ca.js';
export {
  Certificates,
  type CertificatesOptions,
  type HeldCertificate,
  type RenewOptions,
  fromPem,
} from './certificates.js';
export {
  AuditCheckpointer,
  type CheckpointerOptions,
  type CheckpointInfo,
  type CheckpointVerifyOptions,
  type CheckpointVerifyResult,
  type WriteCheckpointOptions,
  CHECKPOINT_OP,
  signerKeyId,
  verifyCheckpoints,
  writeCheckpoint,
} from './checkpoint.js';

/**
 * @keywarden/split-knowledge — Shamir M-of-N split of the unseal key (and of HSM PINs and TPM
 * auth values), shares encrypted to custodians, quorum unseal, rekey, and the quorum gate.
 * The ceremony for the people who run it: docs/split-knowledge.md.
 */
export {
  type SharePurpose,
  type ShareSetInfo,
  type ShareSet,
  type ShareFields,
  type ShareExpectation,
  ParsedShare,
  splitSecret,
  combineShares,
  parseShare,
  encodeShare,
  checkSplitParameters,
  SHARE_FORMAT_VERSION,
  MIN_SHARES,
  MAX_SHARES,
  MIN_THRESHOLD,
  MAX_SECRET_BYTES,
} from './share.js';
export {
  type CustodianAlgorithm,
  type CustodianPublicKey,
  type EncryptedShareHeaders,
  ENCRYPTED_SHARE_VERSION,
  custodianPublicKey,
  custodianKeyFingerprint,
  isEncryptedPrivateKeyPem,
  encryptShareForCustodian,
  decryptShareForCustodian,
  readEncryptedShareHeaders,
} from './custodian.js';
export {
  type UnsealSessionOptions,
  type UnsealProgress,
  UnsealSession,
  DEFAULT_UNSEAL_TIMEOUT_MS,
} from './unseal-session.js';
export {
  type ShareSetOptions,
  type HandOut,
  type SplitRoot,
  type ShamirUnseal,
  DEFAULT_SHARES,
  DEFAULT_THRESHOLD,
  initSplitRoot,
  unsealWithShares,
  unsealSessionFor,
  unsealWithSession,
  requireQuorum,
  rekey,
  type RotateRootResult,
  rotateRoot,
  destroyRootWithQuorum,
} from './ceremony.js';
export { shareCommitment, checkShareCommitment } from './commitment.js';
export {
  type CeremonyKind,
  type HandOutRecord,
  type PendingCeremony,
  type PendingState,
  PENDING_CEREMONY_META,
  StagedCeremony,
  stageInit,
  stageRekey,
  handOutDigest,
  readPendingCeremony,
  pendingCeremonyState,
  verifyPendingCeremony,
  activatePendingCeremony,
  abortPendingCeremony,
  finishActivatedCeremony,
  recordedCommitments,
  checkShareAgainstStore,
} from './staged-ceremony.js';
export {
  type HardwareSecretPurpose,
  type CombineHardwareOptions,
  MAX_HARDWARE_SECRET_BYTES,
  splitHardwareSecret,
  combineHardwareSecret,
} from './hardware-secret.js';
export { SHARE_PURPOSE_OF_SECRET, unsealRootWithQuorum } from './root-unseal.js';

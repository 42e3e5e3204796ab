/**
 * @keywarden/core — key hierarchy (root → KEK → DEK), envelope encryption, software root of trust.
 */
export * from './errors.js';
export { wipe, constantTimeEqual, concatBytes, toBase64Url } from './_bytes.js';
/** The primitives (one shape each: AES-256-GCM with 96-bit nonces, HKDF-SHA256), for sibling
 * packages that must not re-implement them; every length is checked inside. */
export { gcmSeal, gcmOpen, hkdfSha256, AES256_KEY_BYTES, GCM_NONCE_BYTES, GCM_TAG_BYTES } from './aead.js';
export { type RandomSource, NodeRandomSource, nodeRandom } from './random.js';
export {
  type EncryptionContext,
  encodeContext,
  parseContextPairs,
  MAX_CONTEXT_PAIRS,
  MAX_CONTEXT_FIELD_BYTES,
  MAX_CONTEXT_BYTES,
} from './context.js';
export {
  type RootKind,
  type RootDescription,
  type KeyWrapper,
  type Sealable,
  type UnsealSecretDescription,
  type Destroyable,
  type KekInRoot,
  type RootOfTrust,
  CheckedRoot,
  checkedRoot,
  isKekInRootRecord,
  KEK_IN_ROOT_MAGIC,
  MAX_ROOT_WRAPPED_BYTES,
  MIN_ROOT_MATERIAL_BYTES,
  MAX_ROOT_MATERIAL_BYTES,
  requireRandom,
  requireSealable,
  requireDestroyable,
  requireKekInRoot,
  type KeyPairRoot,
  type RootKeyPair,
  type RootKeyPairAlgorithm,
  ROOT_KEY_PAIR_ALGORITHMS,
  requireKeyPairs,
} from './root.js';
export {
  type OpenRootOptions,
  type RootOpener,
  type RootBackend,
  type RootRecordHooks,
  type RootSecretHooks,
  type RootSecretOptions,
  rootSecretHooks,
  registerRootBackend,
  unregisterRootBackend,
  rootSchemes,
  rootUriScheme,
  openRoot,
  recordedRootBackend,
} from './root-registry.js';
export { type Pkcs11Uri, type Pkcs11ObjectType, parsePkcs11Uri, readPkcs11Pin } from './pkcs11-uri.js';
export type {
  KeyScope,
  KeyVersionState,
  KeyRecord,
  KeyVersionRecord,
  KeyStore,
  RootRewrap,
  RootUpdate,
  KeyLifecycle,
  KeyUpdate,
  RotationPolicy,
} from './keystore.js';
export { MemoryKeyStore } from './memory-store.js';
export {
  SoftwareRoot,
  type SealedRootDocument,
  type UnsealMethod,
  ROOT_META_NAME,
  ROOT_TOMBSTONE_META_NAME,
  ROOT_DESTROYED_MESSAGE,
  ROOT_DESTRUCTION_INTERRUPTED_MESSAGE,
  ROOT_MISSING_MESSAGE,
  UNSEAL_KEY_BYTES,
  encodeSealedRoot,
  decodeSealedRoot,
  encodeUnsealKey,
  decodeUnsealKey,
  destroySoftwareRootRecord,
} from './software-root.js';
export {
  SealedKeyPairs,
  type SealedKeyPairRecord,
  KEY_PAIR_KEY_META_NAME,
  KEY_PAIR_KEY_NEXT_META_NAME,
  KEY_PAIR_META_PREFIX,
  keyPairMetaName,
  privateKeyAad,
  stageKeyPairKeyMove,
  finishKeyPairKeyMove,
} from './sealed-key-pairs.js';
export {
  type DataKey,
  type DataKeyProvider,
  type KekRef,
  type ParsedWrappedKey,
  type WrapSuite,
  DEK_BYTES,
  MAX_WRAPPED_KEY_BYTES,
  MIN_WRAPPED_KEY_BYTES,
  SUITE_DEK_AES256GCM,
  SUITE_DEK_XAES256GCM,
  WRAP_NONCE_BYTES,
  parseWrappedKey,
  wrapDataKey,
  unwrapDataKey,
} from './data-key.js';
export { type KeyExpectation, MAX_EXPECTED_KEYS } from './key-expectation.js';
export {
  type EnvelopeEncryptOptions,
  type EnvelopeDecryptOptions,
  type EnvelopeInfo,
  type EnvelopeMode,
  MAX_SINGLE_SHOT_PLAINTEXT,
  TEXT_PREFIX,
  DEFAULT_FRAME_SIZE,
  MAX_FRAME_SIZE,
  encryptEnvelope,
  decryptEnvelope,
  envelopeToText,
  envelopeFromText,
  envelopeHeaderLength,
  inspectEnvelope,
} from './envelope.js';
export {
  type EncryptStreamOptions,
  type DecryptStreamOptions,
  createEncryptStream,
  createDecryptStream,
} from './stream.js';
export { assertStrongKeyMaterial, isWeakKeyMaterial, type WeakKeyReason, weakKeyThresholds } from './weak-key.js';
export {
  Keywarden,
  type KeywardenOptions,
  type CacheOptions,
  type KeyInfo,
  type KeyVersionInfo,
  type CreateKeyOptions,
  type KekMode,
  DEK_WRAPS_PER_KEK_VERSION,
  kekAad,
  type LifecycleOptions,
  type DisableOptions,
  type CompromiseOptions,
  type DestroyOptions,
  type CompromiseReport,
  type RotationDue,
  DEFAULT_ROTATION,
  DEFAULT_DESTROY_GRACE_MS,
} from './keywarden.js';
export {
  DataKeyCache,
  type DataKeyCacheOptions,
  type DataKeyCacheStats,
  type DataKeyUsage,
  type CacheableProvider,
} from './data-key-cache.js';
export {
  type RewrapResult,
  type DestroyRootOptions,
  type DestroyRootResult,
  rewrapUnderNewRoot,
  destroyRoot,
  finishStagedRootMoves,
} from './root-rotation.js';
export {
  type RootTombstone,
  type RootState,
  readRootState,
  consentMethodOf,
  makeRootTombstone,
  verifyRootTombstone,
  encodeRootTombstone,
  decodeRootTombstone,
} from './root-tombstone.js';
export * as keyStoreChecks from './keystore-checks.js';
export {
  rewrapRecords,
  type RewrapRecord,
  type RewrapUpdate,
  type RewrapProgress,
  type RewrapJobOptions,
  type RewrapJobLease,
} from './rewrap-job.js';
export {
  JobLease,
  type JobLeaseOptions,
  type LeaseGrant,
  type LeaseRefusal,
  type LeaseStore,
  supportsLeases,
  releaseDeadHolder,
} from './job-lease.js';
export {
  ROOT_ROTATION_LEASE,
  runRootRotationJob,
  type RootRotationJobOptions,
  type RootRotationJobResult,
} from './root-rotation-job.js';
export * from './audit/index.js';
export * from './policy/index.js';
export {
  type AuditOption,
  type PolicyOption,
  auditLogOf,
  principalOf,
  policyOf,
  updatePolicy,
  recordAudit,
} from './guard.js';
export {
  type RedactOptions,
  type Redactor,
  REDACTED,
  DEFAULT_REDACT_FIELDS,
  createRedactor,
  redactSecrets,
  redactValue,
  pinoRedaction,
  createRedactTransform,
} from './redact.js';

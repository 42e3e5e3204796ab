/**
 * @keywarden/tpm: a root of trust in a TPM 2.0 (docs/tpm.md). Importing this entry registers the
 * "tpm:" scheme with @keywarden/core's root registry.
 */
import './register.js';

export { openTpmRoot, tpmRootBackend } from './backend.js';
export {
  decodeTpmRecord,
  encodeTpmRecord,
  splitSealedBlob,
  TPM_ROOT_META_NAME,
  TPM_TOMBSTONE_META_NAME,
  TpmPcrPolicyError,
  TpmRoot,
  type TpmRootCreateOptions,
  type TpmRootOptions,
  type TpmRootRecord,
} from './root.js';
export { parseTpmUri, type TpmUri } from './uri.js';
export { TpmKeyPairs, type TpmKeyPairAttributes } from './keypairs.js';

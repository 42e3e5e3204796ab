/**
 * Keywarden's typed errors. One base class with a stable `code`, one subclass per kind.
 *
 * Rules every message follows (docs/threat-model.md):
 * - it starts with the component (`envelope: …`, `keystore: …`, `root: …`);
 * - it never carries key material, plaintext, wrapped keys, PINs or shares;
 * - a decryption failure never says which check failed.
 *
 * `isInstance()` matches by a global brand and code, so it works across two copies of this
 * package in one process (a bundled CLI beside an application's own copy).
 */

const BRAND = Symbol.for('keywarden.error');

export type KeywardenErrorCode =
  | 'KW_DECRYPT'
  | 'KW_FORMAT'
  | 'KW_BAD_INPUT'
  | 'KW_WEAK_KEY'
  | 'KW_KEY_MATERIAL'
  | 'KW_UNEXPECTED_KEY'
  | 'KW_KEY_NOT_FOUND'
  | 'KW_KEY_EXISTS'
  | 'KW_KEY_STATE'
  | 'KW_KEYSTORE_SEALED'
  | 'KW_UNSEAL'
  | 'KW_UNSUPPORTED'
  | 'KW_USAGE_LIMIT'
  | 'KW_STORE'
  | 'KW_STORE_CORRUPT'
  | 'KW_NATIVE_ADDON'
  | 'KW_STORE_REPLACED'
  | 'KW_ROOT_DESTROYED'
  | 'KW_ROOT_MISSING'
  | 'KW_SHARE'
  | 'KW_ROOT_CONTRACT'
  | 'KW_ROOT_SCHEME'
  | 'KW_AGENT'
  | 'KW_AGENT_UNAVAILABLE'
  | 'KW_AGENT_PROTOCOL'
  | 'KW_AGENT_VERSION'
  | 'KW_CLOSED'
  | 'KW_KEY_COMPROMISED'
  | 'KW_KEY_RETIRED'
  | 'KW_KEY_DESTROYED'
  | 'KW_CONFLICT'
  | 'KW_ROOT_UNAVAILABLE'
  | 'KW_ROOT_DEVICE'
  | 'KW_ROOT_LOCKOUT'
  | 'KW_CEREMONY'
  | 'KW_CEREMONY_PENDING'
  | 'KW_DENIED'
  | 'KW_AUDIT';

export class KeywardenError extends Error {
  readonly code: KeywardenErrorCode;
  readonly [BRAND] = true;

  constructor(code: KeywardenErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }

  /** True for any Keywarden error (optionally of one code), whichever copy of the package threw it. */
  static isInstance(value: unknown, code?: KeywardenErrorCode): value is KeywardenError {
    if (typeof value !== 'object' || value === null) return false;
    if ((value as Record<symbol, unknown>)[BRAND] !== true) return false;
    return code === undefined || (value as KeywardenError).code === code;
  }
}

function defineError<C extends KeywardenErrorCode>(code: C, name: string) {
  const cls = class extends KeywardenError {
    constructor(message: string, options?: { cause?: unknown }) {
      super(code, message, options);
    }
    static override isInstance(value: unknown): value is KeywardenError & { code: C } {
      return KeywardenError.isInstance(value, code);
    }
  };
  Object.defineProperty(cls, 'name', { value: name });
  return cls;
}

/**
 * Authenticated decryption failed: wrong key, wrong version, wrong context, or tampered data.
 * Deliberately does not say which; the message is always the same.
 */
export class DecryptionError extends defineError('KW_DECRYPT', 'DecryptionError') {
  constructor(component = 'envelope') {
    super(`${component}: decryption failed (wrong key or context, or the data was modified)`);
  }
}
/** Bytes that are not a well-formed Keywarden object: bad magic, unknown version or suite, bad length. */
export class FormatError extends defineError('KW_FORMAT', 'FormatError') {}
/** A caller passed something unusable: wrong type, out-of-range option, malformed context. */
export class InvalidInputError extends defineError('KW_BAD_INPUT', 'InvalidInputError') {}
/** Imported key material was refused as weak (wrong length, repeated, password-like, low entropy). */
export class WeakKeyMaterialError extends defineError('KW_WEAK_KEY', 'WeakKeyMaterialError') {}
/**
 * Key material that can never be right (all zeros, wrong length) reached a wrap or unwrap. This is
 * an internal fault (for example a buffer wiped while still in use), refused so that nothing is ever
 * wrapped under, or unwrapped with, a key that anyone could guess.
 */
export class KeyMaterialError extends defineError('KW_KEY_MATERIAL', 'KeyMaterialError') {}
/**
 * Data under a KEK other than the one the caller expects (issue 16, item 2). The message names only
 * the KEK id that the data itself carries in the clear, never that key's name.
 */
export class UnexpectedKeyError extends defineError('KW_UNEXPECTED_KEY', 'UnexpectedKeyError') {}
export class KeyNotFoundError extends defineError('KW_KEY_NOT_FOUND', 'KeyNotFoundError') {}
export class KeyExistsError extends defineError('KW_KEY_EXISTS', 'KeyExistsError') {}
/** The key or version exists but its state forbids the operation (disabled, compromised, destroyed). */
export class KeyStateError extends defineError('KW_KEY_STATE', 'KeyStateError') {}
/** The root of trust is sealed: key operations are refused until it is unsealed. */
export class KeystoreSealedError extends defineError('KW_KEYSTORE_SEALED', 'KeystoreSealedError') {}
/** The unseal secret (key file, environment variable, quorum of shares) did not open the root. */
export class UnsealError extends defineError('KW_UNSEAL', 'UnsealError') {}
/** A capability the backend does not have was asked for (never a silent no-op). */
export class UnsupportedCapabilityError extends defineError('KW_UNSUPPORTED', 'UnsupportedCapabilityError') {}
/** A key version reached its usage budget (for example the AES-GCM random-nonce limit). */
export class UsageLimitError extends defineError('KW_USAGE_LIMIT', 'UsageLimitError') {}
/** The key store failed (I/O, corruption, schema mismatch). */
export class KeyStoreError extends defineError('KW_STORE', 'KeyStoreError') {}
/**
 * The key store's file is damaged (an integrity check failed, or SQLite reported corruption), or is
 * not a key store at all (empty, another program's file). Nothing was changed; the message says how
 * to check, repair or restore it.
 */
export class StoreCorruptError extends defineError('KW_STORE_CORRUPT', 'StoreCorruptError') {}
/**
 * A native addon a package needs (better-sqlite3 for the SQLite store) is missing or was built for
 * another Node.js: its install script was skipped (pnpm's unapproved build scripts, npm's
 * `--ignore-scripts`) or Node.js was upgraded since. The message names the package, the cause and
 * the fix.
 */
export class NativeAddonError extends defineError('KW_NATIVE_ADDON', 'NativeAddonError') {}
/**
 * The database under a long-lived process is no longer the one it opened (the file or its WAL was
 * deleted, moved or replaced). Writing on would lose data: the process must stop and start again.
 */
export class StoreReplacedError extends defineError('KW_STORE_REPLACED', 'StoreReplacedError') {}
/** The store records that its root was destroyed (an explicit tombstone, root-tombstone.ts). */
export class RootDestroyedError extends defineError('KW_ROOT_DESTROYED', 'RootDestroyedError') {}
/**
 * The store has no root and no record of a destruction: it is damaged or was never initialized.
 * Never read as "destroyed".
 */
export class RootMissingError extends defineError('KW_ROOT_MISSING', 'RootMissingError') {}
/** A Shamir share is malformed, corrupted, duplicated or from another share set. */
export class ShareError extends defineError('KW_SHARE', 'ShareError') {}
/**
 * A root backend broke the contract every root must honour (root.ts): an oversize wrapped blob, key
 * material of the wrong length, an id that changed. An internal fault of the backend, refused before
 * its output is used.
 */
export class RootContractError extends defineError('KW_ROOT_CONTRACT', 'RootContractError') {}
/** A root URI names a scheme no backend is registered for (root-registry.ts). */
export class UnknownRootSchemeError extends defineError('KW_ROOT_SCHEME', 'UnknownRootSchemeError') {}
/** The key agent (@keywarden/agent) failed or refused: cannot listen, connection lost, no answer in time. */
export class AgentError extends defineError('KW_AGENT', 'AgentError') {}
/** No key agent answers on the socket (no socket file, or one nobody listens on). */
export class AgentUnavailableError extends defineError('KW_AGENT_UNAVAILABLE', 'AgentUnavailableError') {}
/** A request or response that is not the agent protocol (docs/agent-protocol.md). */
export class AgentProtocolError extends defineError('KW_AGENT_PROTOCOL', 'AgentProtocolError') {}
/** Client and agent share no protocol version (docs/agent-protocol.md §hello). */
export class AgentVersionError extends defineError('KW_AGENT_VERSION', 'AgentVersionError') {}
/** The object was closed and its key material wiped. */
export class ClosedError extends defineError('KW_CLOSED', 'ClosedError') {}
/**
 * The key version was marked compromised: it never decrypts (or encrypts) again, whatever its other
 * settings. Irreversible (docs/lifecycle.md).
 */
export class KeyCompromisedError extends defineError('KW_KEY_COMPROMISED', 'KeyCompromisedError') {}
/** The key version is below the key's minimum decryption version (retired, like Vault transit's
 * `min_decryption_version`). Reversible by lowering the minimum. */
export class KeyVersionRetiredError extends defineError('KW_KEY_RETIRED', 'KeyVersionRetiredError') {}
/** The key version (or the whole key) was destroyed: its material is gone and what it protected is
 * unrecoverable (crypto-shredding). */
export class KeyDestroyedError extends defineError('KW_KEY_DESTROYED', 'KeyDestroyedError') {}
/**
 * Another process changed the same thing first (two rotations of one key, two rekeys of one store):
 * this call lost the compare-and-swap and changed nothing. Read the current state and retry if
 * still wanted.
 */
export class ConflictError extends defineError('KW_CONFLICT', 'ConflictError') {}
/**
 * The root's device cannot be reached or is not there: the PKCS#11 token is missing or was
 * re-initialised, the module was finalized, the TPM does not answer within the deadline. Retrying
 * later may succeed; nothing was changed.
 */
export class RootUnavailableError extends defineError('KW_ROOT_UNAVAILABLE', 'RootUnavailableError') {}
/**
 * The root's device refused or failed an operation (a PKCS#11 CKR code, a TPM response code). The
 * message names the device function and the decoded code, never a secret.
 */
export class RootDeviceError extends defineError('KW_ROOT_DEVICE', 'RootDeviceError') {}
/** The root's device locked itself after failed authentications (PKCS#11 CKR_PIN_LOCKED, the TPM's
 * dictionary-attack lockout). */
export class RootLockoutError extends defineError('KW_ROOT_LOCKOUT', 'RootLockoutError') {}
/** A key-store ceremony (init, rekey, root rotation or destruction) cannot go on as asked. */
export class CeremonyError extends defineError('KW_CEREMONY', 'CeremonyError') {}
/** An earlier ceremony on this store was interrupted and must be resumed or abandoned first. */
export class CeremonyPendingError extends defineError('KW_CEREMONY_PENDING', 'CeremonyPendingError') {}
/** The acting principal's policy does not allow this operation on this key (docs/policy.md). Default deny. */
export class AccessDeniedError extends defineError('KW_DENIED', 'AccessDeniedError') {}
/** The audit record of an operation could not be written, so the operation was refused (fail closed, docs/audit.md). */
export class AuditError extends defineError('KW_AUDIT', 'AuditError') {}

/**
 * PKCS#11 return values (CKR_*) as Keywarden's typed errors (house style §4: "pkcs11: C_Login:
 * CKR_PIN_INCORRECT"). Each class extends the core error with the same stable code and adds the
 * PKCS#11 function (`fn`) and the CKR name (`ckr`), so generic code and the agent's protocol keep
 * working on codes while an operator reads what the token said. No message carries a PIN, a key
 * or data: only the function, the CKR name and Keywarden's own words.
 *
 * The table maps every CKR code of PKCS#11 v2.40 §11.1 (and v3.0's additions pkcs11js knows) to one
 * of four kinds:
 *   unavailable  the token or module cannot be reached now (removed, finalized, re-initialised):
 *                RootUnavailableError, retrying later may succeed;
 *   lockout      the token locked the PIN: RootLockoutError;
 *   unseal       the PIN was refused: UnsealError (never says more);
 *   device       anything else the token refused or failed: RootDeviceError.
 * A refused decryption (tag mismatch) is not an error of the device: the root turns it into
 * DecryptionError itself (root.ts), because SoftHSM reports a GCM tag mismatch as
 * CKR_GENERAL_ERROR and other tokens as CKR_ENCRYPTED_DATA_INVALID.
 */
import { RootDeviceError, RootLockoutError, RootUnavailableError, UnsealError } from '@keywarden/core';
import { ckrName } from './_ckr.js';

export { ckrName };

export type Pkcs11ErrorKind = 'unavailable' | 'lockout' | 'unseal' | 'device';

const UNAVAILABLE = new Set([
  'CKR_TOKEN_NOT_PRESENT',
  'CKR_TOKEN_NOT_RECOGNIZED',
  'CKR_DEVICE_REMOVED',
  'CKR_DEVICE_ERROR',
  'CKR_DEVICE_MEMORY',
  'CKR_SLOT_ID_INVALID',
  'CKR_CRYPTOKI_NOT_INITIALIZED',
  'CKR_SESSION_HANDLE_INVALID',
  'CKR_SESSION_CLOSED',
  'CKR_SESSION_COUNT',
  'CKR_USER_NOT_LOGGED_IN',
  'CKR_HOST_MEMORY',
  'CKR_CANT_LOCK',
  'CKR_FUNCTION_CANCELED',
]);
const LOCKOUT = new Set(['CKR_PIN_LOCKED', 'CKR_PIN_EXPIRED']);
const UNSEAL = new Set(['CKR_PIN_INCORRECT', 'CKR_PIN_INVALID', 'CKR_PIN_LEN_RANGE']);

export function ckrKind(ckr: string): Pkcs11ErrorKind {
  if (UNAVAILABLE.has(ckr)) return 'unavailable';
  if (LOCKOUT.has(ckr)) return 'lockout';
  if (UNSEAL.has(ckr)) return 'unseal';
  return 'device';
}

/** What every PKCS#11 error carries besides the core code. */
export interface Pkcs11ErrorFields {
  /** The PKCS#11 function that failed ("C_Login"), or "worker" for the pool itself. */
  readonly fn: string;
  /** The CKR name ("CKR_PIN_INCORRECT"), or "" when the failure is not a return value. */
  readonly ckr: string;
}

function text(fn: string, ckr: string, detail?: string): string {
  return `pkcs11: ${fn}: ${ckr || 'failed'}${detail ? ` (${detail})` : ''}`;
}

export class Pkcs11DeviceError extends RootDeviceError implements Pkcs11ErrorFields {
  readonly fn: string;
  readonly ckr: string;
  constructor(fn: string, ckr: string, detail?: string, options?: { cause?: unknown }) {
    super(text(fn, ckr, detail), options);
    this.fn = fn;
    this.ckr = ckr;
  }
}

export class Pkcs11UnavailableError extends RootUnavailableError implements Pkcs11ErrorFields {
  readonly fn: string;
  readonly ckr: string;
  constructor(fn: string, ckr: string, detail?: string, options?: { cause?: unknown }) {
    super(text(fn, ckr, detail), options);
    this.fn = fn;
    this.ckr = ckr;
  }
}

export class Pkcs11LockoutError extends RootLockoutError implements Pkcs11ErrorFields {
  readonly fn: string;
  readonly ckr: string;
  constructor(fn: string, ckr: string, detail?: string, options?: { cause?: unknown }) {
    super(text(fn, ckr, detail), options);
    this.fn = fn;
    this.ckr = ckr;
  }
}

export class Pkcs11UnsealError extends UnsealError implements Pkcs11ErrorFields {
  readonly fn: string;
  readonly ckr: string;
  constructor(fn: string, ckr: string, detail?: string, options?: { cause?: unknown }) {
    super(text(fn, ckr, detail ?? 'wrong user PIN'), options);
    this.fn = fn;
    this.ckr = ckr;
  }
}

export type Pkcs11Error = Pkcs11DeviceError | Pkcs11UnavailableError | Pkcs11LockoutError | Pkcs11UnsealError;

/** The typed error for `ckr` returned by `fn`. */
export function pkcs11Error(fn: string, ckr: string, detail?: string): Pkcs11Error {
  switch (ckrKind(ckr)) {
    case 'unavailable':
      return new Pkcs11UnavailableError(fn, ckr, detail);
    case 'lockout':
      return new Pkcs11LockoutError(fn, ckr, detail);
    case 'unseal':
      return new Pkcs11UnsealError(fn, ckr, detail);
    default:
      return new Pkcs11DeviceError(fn, ckr, detail);
  }
}

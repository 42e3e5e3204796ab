/**
 * @keywarden/pkcs11: a root of trust in a PKCS#11 token (docs/pkcs11.md). Importing this entry
 * registers the "pkcs11:" scheme with @keywarden/core's root registry.
 */
import './register.js';

export { DEFAULT_POOL_KIND, type PoolKind } from './_pool.js';
export { pkcs11RootBackend } from './backend.js';
export {
  ckrKind,
  ckrName,
  type Pkcs11Error,
  Pkcs11DeviceError,
  type Pkcs11ErrorFields,
  type Pkcs11ErrorKind,
  Pkcs11LockoutError,
  Pkcs11UnavailableError,
  Pkcs11UnsealError,
  pkcs11Error,
} from './errors.js';
export {
  decodePkcs11Record,
  kekLabel,
  PKCS11_ROOT_META_NAME,
  PKCS11_TOMBSTONE_META_NAME,
  Pkcs11Root,
  type Pkcs11RootOptions,
  type Pkcs11RootRecord,
} from './root.js';
export { pkcs11UserPinHooks } from './user-pin.js';

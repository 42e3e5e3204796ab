/**
 * `import '@keywarden/pkcs11/register'` registers the "pkcs11:" root scheme with core's registry,
 * so that `openRoot('pkcs11:token=…;object=…?module-path=…', { store })` opens a PKCS#11 root.
 * Importing the package's main entry does the same (this module is what it runs).
 */
import { registerRootBackend } from '@keywarden/core';
import { pkcs11RootBackend } from './backend.js';

registerRootBackend('pkcs11', pkcs11RootBackend, { replace: true });

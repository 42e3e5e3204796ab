/**
 * `import '@keywarden/tpm/register'` registers the "tpm:" root scheme with core's registry, so that
 * `openRoot('tpm:…', { store })` opens a TPM root. Importing the package's main entry does the same.
 */
import { registerRootBackend } from '@keywarden/core';
import { tpmRootBackend } from './backend.js';

registerRootBackend('tpm', tpmRootBackend, { replace: true });

import { describeRootConformance } from '@keywarden/testkit';
import { beforeAll, describe } from 'vitest';
import { TpmRoot } from '../src/index.js';
import { evictIfPresent, freshRoot, relaxDictionaryAttack, tcti } from './_tpm.js';

/** What the TPM reports for a key pair's object (TPM2_ReadPublic), in the suite's PKCS#11-style
 * terms: fixedTPM + fixedParent = never duplicable (never extractable); sensitiveDataOrigin = the
 * TPM made the private part (always sensitive); a TPM never returns an object's sensitive area. */
async function inspect(root: TpmRoot, handle: Uint8Array) {
  const a = await root.keyPairs.attributes(handle);
  const neverExtractable = a.fixedTPM && a.fixedParent;
  return {
    sensitive: a.sensitiveDataOrigin && a.fixedTPM,
    extractable: !neverExtractable,
    alwaysSensitive: a.sensitiveDataOrigin,
    neverExtractable,
    valueReadable: !a.fixedTPM,
  };
}

describe('TPM root on swtpm', () => {
  beforeAll(() => relaxDictionaryAttack());

  describeRootConformance('tpm (swtpm, ECC P-256 storage key, auth value)', async () => {
    const { root, store, secret } = await freshRoot();
    return {
      root,
      store,
      secret,
      reopen: () => TpmRoot.load({ store, tcti: tcti() }),
      inspectPrivateKey: (h: Uint8Array) => inspect(root, h),
    };
  });

  describeRootConformance('tpm (swtpm, RSA-2048 storage key, persistent handle)', async () => {
    const handle = 0x81000100 + Math.floor(Math.random() * 0xff00);
    const { root, store, secret } = await freshRoot({ alg: 'rsa', handle });
    return {
      root,
      store,
      secret,
      reopen: () => TpmRoot.load({ store, tcti: tcti() }),
      cleanup: () => evictIfPresent(handle),
      inspectPrivateKey: (h: Uint8Array) => inspect(root, h),
    };
  });
});

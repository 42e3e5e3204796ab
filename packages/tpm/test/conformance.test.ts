import { describeRootConformance } from '@keywarden/testkit';
import { beforeAll, describe } from 'vitest';
import { TpmRoot } from '../src/index.js';
import { evictIfPresent, freshRoot, relaxDictionaryAttack, tcti } from './_tpm.js';

describe('TPM root on swtpm', () => {
  beforeAll(() => relaxDictionaryAttack());

  describeRootConformance('tpm (swtpm, ECC P-256 storage key, auth value)', async () => {
    const { root, store, secret } = await freshRoot();
    return { root, store, secret, reopen: () => TpmRoot.load({ store, tcti: tcti() }) };
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
    };
  });
});

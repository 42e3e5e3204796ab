import { describeRootConformance } from '@keywarden/testkit';
import { describe } from 'vitest';
import { Pkcs11Root } from '../src/index.js';
import { createRoot, pin, rootUri, unavailable } from './_hsm.js';
import { inspectPrivateKey } from './_keypair-inspect.js';

describe.skipIf(unavailable)('PKCS#11 root on SoftHSM2', () => {
  describeRootConformance('pkcs11 (SoftHSM2)', async () => {
    const { root, store, object } = await createRoot();
    return {
      root,
      store,
      secret: pin(),
      reopen: () => Pkcs11Root.open(rootUri(object, false), { store, poolSize: 1 }),
      inspectPrivateKey,
    };
  });
});

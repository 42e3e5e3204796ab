import { describeRootConformance } from '@keywarden/testkit';
import { describe } from 'vitest';
import { Pkcs11Root } from '../src/index.js';
import { createRoot, POOL_KINDS, pin, rootUri, unavailable } from './_hsm.js';
import { inspectPrivateKey } from './_keypair-inspect.js';

describe.skipIf(unavailable)('PKCS#11 root on SoftHSM2', () => {
  describe.each(POOL_KINDS)('%s pool', (pool) => {
    describeRootConformance(`pkcs11 (SoftHSM2, ${pool})`, async () => {
      // One child per root for processes: starting a Node process per worker per test is most of
      // this suite's time on a busy machine; faults.test.ts and process-pool.test.ts run two.
      const { root, store, object } = await createRoot({ pool, ...(pool === 'processes' ? { poolSize: 1 } : {}) });
      return {
        root,
        store,
        secret: pin(),
        reopen: () => Pkcs11Root.open(rootUri(object, false), { store, poolSize: 1, pool }),
        inspectPrivateKey,
      };
    });
  });
});

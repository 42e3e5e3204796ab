import { defineConfig, mergeConfig } from 'vitest/config';
import { packageVitestConfig } from '../../vitest.shared.ts';

// The suites run against a real SoftHSM2: test/_global-setup.ts starts one through
// harness/softhsm.sh unless the environment already names one (KEYWARDEN_PKCS11_MODULE).
export default mergeConfig(
  packageVitestConfig,
  defineConfig({
    test: {
      globalSetup: ['./test/_global-setup.ts'],
      // One file at a time: the fault suites re-initialise the token and finalize the module.
      fileParallelism: false,
      hookTimeout: 60_000,
    },
  }),
);

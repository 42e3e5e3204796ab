import { defineConfig, mergeConfig } from 'vitest/config';
import { packageVitestConfig } from '../../vitest.shared.ts';

// One TPM for the whole run (swtpm has 3 object slots and no resource manager): files run one at
// a time against the swtpm the globalSetup starts.
export default mergeConfig(
  packageVitestConfig,
  defineConfig({ test: { globalSetup: ['test/_global-setup.ts'], fileParallelism: false } }),
);

import { defineConfig, mergeConfig } from 'vitest/config';
import { packageVitestConfig } from '../../vitest.shared.ts';

// The suites run against a real PostgreSQL: test/_global-setup.ts starts a throwaway cluster
// through harness/postgres.sh unless the environment already names one (KEYWARDEN_PG_URL).
export default mergeConfig(
  packageVitestConfig,
  defineConfig({
    test: {
      globalSetup: ['./test/_global-setup.ts'],
      // One file at a time: the fault suite restarts the cluster the others use.
      fileParallelism: false,
      hookTimeout: 60_000,
    },
  }),
);

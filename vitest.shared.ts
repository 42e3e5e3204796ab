import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

/** Tests run against the sources of workspace packages, so one copy of each class is loaded. */
export const workspaceAlias = {
  '@keywarden/core': fileURLToPath(new URL('./packages/core/src/index.ts', import.meta.url)),
  '@keywarden/store-sqlite': fileURLToPath(new URL('./packages/store-sqlite/src/index.ts', import.meta.url)),
  '@keywarden/store-postgres': fileURLToPath(new URL('./packages/store-postgres/src/index.ts', import.meta.url)),
  '@keywarden/split-knowledge': fileURLToPath(new URL('./packages/split-knowledge/src/index.ts', import.meta.url)),
  '@keywarden/ceremony': fileURLToPath(new URL('./packages/ceremony/src/index.ts', import.meta.url)),
  '@keywarden/agent': fileURLToPath(new URL('./packages/agent/src/index.ts', import.meta.url)),
  // Before '@keywarden/testkit': an alias matches its subpaths too, and the first match wins.
  '@keywarden/testkit/tls-certs': fileURLToPath(new URL('./packages/testkit/src/tls-certs.ts', import.meta.url)),
  '@keywarden/testkit/openssl-server': fileURLToPath(
    new URL('./packages/testkit/src/openssl-server.ts', import.meta.url),
  ),
  '@keywarden/testkit': fileURLToPath(new URL('./packages/testkit/src/index.ts', import.meta.url)),
  '@keywarden/tss2': fileURLToPath(new URL('./packages/tss2/src/index.ts', import.meta.url)),
  '@keywarden/tpm': fileURLToPath(new URL('./packages/tpm/src/index.ts', import.meta.url)),
  '@keywarden/pkcs11': fileURLToPath(new URL('./packages/pkcs11/src/index.ts', import.meta.url)),
  '@keywarden/secretlint-rule': fileURLToPath(new URL('./packages/secretlint-rule/src/index.ts', import.meta.url)),
  '@keywarden/pki': fileURLToPath(new URL('./packages/pki/src/index.ts', import.meta.url)),
};

/** The one vitest configuration every package uses: sources aliased, a JSON report per package
 * for scripts/test-summary.mjs. */
export const packageVitestConfig = defineConfig({
  resolve: { alias: workspaceAlias },
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 30_000,
    reporters: ['default', 'json'],
    outputFile: { json: '.vitest-results.json' },
  },
});

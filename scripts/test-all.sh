#!/usr/bin/env bash
# Quick start, command 2 (and what CI runs): install everything the tests need, start the
# components they use, then lint, typecheck and run every test suite. Ends with one summary line
# "tests: N passed, N failed, N skipped".
set -euo pipefail
cd "$(dirname "$0")/.."
export TURBO_TELEMETRY_DISABLED=1

# System packages and services the suites need (harness/README.md): installed when missing.
bash harness/setup.sh

bash scripts/bootstrap.sh
if [ -z "${npm_config_nodedir:-}" ] && [ -f /usr/include/node/node.h ]; then export npm_config_nodedir=/usr; fi

rm -rf packages/*/.vitest-results.json .test-results

status=0
echo "== lint" && pnpm run lint || status=1
echo "== typecheck" && pnpm exec turbo run typecheck --output-logs=errors-only || status=1
echo "== test" && pnpm exec turbo run test --concurrency=1 --continue || status=1

# Keywarden's own working tree holds no committed secret (docs/scanning.md): secretlint's
# recommended preset and @keywarden/secretlint-rule through `keywarden scan`, .secretlintignore honoured.
echo "== secret scan" && node packages/cli/dist/bin.js scan || status=1

# Speed as ratios to raw node:crypto measured in the same run (never absolute times), gated against
# the committed benchmarks/baseline.json: fails when a ratio regresses beyond its tolerance (how it
# was chosen: benchmarks/README.md), printing the rows that moved. `pnpm bench:baseline` updates it.
echo "== bench" && pnpm run bench:check || status=1

# The fleet load test (docs/fleet.md §Load test): worker processes on one PostgreSQL store (a
# throwaway cluster from harness/postgres.sh) while another rotates, rewraps and revokes; fails on
# an operation that failed but should not have, a success past the revocation bound, or a record
# that no longer decrypts. Figures in benchmarks/results/fleet.{json,md}. About 45 s.
echo "== fleet load test" && pnpm --filter @keywarden/benchmarks run bench:fleet || status=1

# What a consumer installs: the packed tarballs in a fresh project, every README example compiled
# and run as written, require() from CommonJS, the packed CLI's demo.
# @keywarden/pkcs11's README example runs against a SoftHSM2 token the harness starts for it, and
# @keywarden/tss2's and @keywarden/tpm's against a swtpm (KEYWARDEN_TPM_TCTI), and
# @keywarden/store-postgres's against a throwaway PostgreSQL cluster (KEYWARDEN_PG_URL).
echo "== packed packages and README examples" && (
  eval "$(bash harness/softhsm.sh start)" &&
    trap 'bash harness/softhsm.sh stop "$KEYWARDEN_SOFTHSM_DIR"' EXIT &&
    eval "$(bash harness/swtpm.sh start)" &&
    trap 'bash harness/softhsm.sh stop "$KEYWARDEN_SOFTHSM_DIR"; bash harness/swtpm.sh stop' EXIT &&
    eval "$(bash harness/postgres.sh start)" &&
    trap 'bash harness/softhsm.sh stop "$KEYWARDEN_SOFTHSM_DIR"; bash harness/swtpm.sh stop; bash harness/postgres.sh stop "$KEYWARDEN_PG_DIR"' EXIT &&
    node scripts/packed-test.mjs
) || status=1

# The library suites on the other supported Node.js lines (binaries from the npm registry).
echo "== node 22 and 24" && bash scripts/test-node-versions.sh 22 24 || status=1

node scripts/test-summary.mjs || status=1
exit "$status"

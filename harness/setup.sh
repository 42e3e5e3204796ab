#!/usr/bin/env bash
# Installs the Debian packages listed in harness/debian-packages.txt when they are missing.
# Runs `apt-get update` once, only if something has to be installed. Needs root (CI runs as root);
# without root it prints the apt-get command to run and fails.
set -euo pipefail
cd "$(dirname "$0")"

missing=()
while read -r pkg; do
  pkg="${pkg%%#*}"; pkg="$(echo "$pkg" | tr -d '[:space:]')"
  [ -n "$pkg" ] || continue
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$pkg")
  fi
done < debian-packages.txt

if [ "${#missing[@]}" -eq 0 ]; then
  echo "harness: Debian packages present" >&2
  exit 0
fi

echo "harness: installing ${missing[*]}" >&2
if [ "$(id -u)" -ne 0 ]; then
  echo "harness: not root; run: sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2

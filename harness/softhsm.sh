#!/usr/bin/env bash
# An isolated SoftHSM2 for Keywarden's PKCS#11 suites (harness/README.md).
#
#   eval "$(bash harness/softhsm.sh start)"   # new temp dir, token initialised, env exported
#   bash harness/softhsm.sh stop "$KEYWARDEN_SOFTHSM_DIR"
#
# `start [LABEL]` creates a temporary folder holding its own softhsm2.conf and token directory,
# initialises one token (label LABEL, default "keywarden") with a user PIN and an SO PIN drawn
# from /dev/urandom for this run, and prints `export` lines on stdout:
#   SOFTHSM2_CONF, KEYWARDEN_SOFTHSM2_CONF (the same; turbo passes KEYWARDEN_* through to tests),
#   KEYWARDEN_PKCS11_MODULE (the module path), KEYWARDEN_PKCS11_TOKEN (the label),
#   KEYWARDEN_PKCS11_PIN_FILE / KEYWARDEN_PKCS11_SO_PIN_FILE (files, mode 0600, holding the PINs),
#   KEYWARDEN_SOFTHSM_DIR (what `stop` removes).
# The PINs themselves are never printed. The token's slot number is random: find it by label.
# When softhsm2 or opensc is missing, setup.sh installs them (as root); otherwise the script says why
# it cannot run and exits 2.
# `stop DIR` removes DIR, refusing anything but a folder this script created.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

find_module() {
  for m in "${KEYWARDEN_SOFTHSM_MODULE:-}" /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
    /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so /opt/homebrew/lib/softhsm/libsofthsm2.so; do
    if [ -n "$m" ] && [ -f "$m" ]; then echo "$m"; return 0; fi
  done
  return 1
}

start() {
  local label="${1:-keywarden}"
  if ! command -v softhsm2-util >/dev/null 2>&1 || ! find_module >/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then bash "$here/setup.sh" >&2; fi
  fi
  if ! command -v softhsm2-util >/dev/null 2>&1; then
    echo "harness: softhsm2-util not found; install the Debian package softhsm2 (bash harness/setup.sh as root)" >&2
    exit 2
  fi
  local module
  if ! module="$(find_module)"; then
    echo "harness: libsofthsm2.so not found; install softhsm2 or set KEYWARDEN_SOFTHSM_MODULE" >&2
    exit 2
  fi
  local dir
  dir="$(mktemp -d "${TMPDIR:-/tmp}/keywarden-softhsm.XXXXXXXX")"
  touch "$dir/.keywarden-softhsm"
  mkdir -m 0700 "$dir/tokens"
  cat >"$dir/softhsm2.conf" <<EOF
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
slots.mechanisms = ALL
library.reset_on_fork = false
EOF
  (
    umask 077
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/user.pin"
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/so.pin"
  )
  # The PINs go to softhsm2-util on its command line (it has no other way): visible to this user's
  # processes for the moment it runs, never printed.
  if ! SOFTHSM2_CONF="$dir/softhsm2.conf" softhsm2-util --init-token --free --label "$label" \
    --pin "$(cat "$dir/user.pin")" --so-pin "$(cat "$dir/so.pin")" >/dev/null; then
    rm -rf "$dir"
    echo "harness: softhsm2-util --init-token failed" >&2
    exit 1
  fi
  cat <<EOF
export SOFTHSM2_CONF='$dir/softhsm2.conf'
export KEYWARDEN_SOFTHSM2_CONF='$dir/softhsm2.conf'
export KEYWARDEN_PKCS11_MODULE='$module'
export KEYWARDEN_PKCS11_TOKEN='$label'
export KEYWARDEN_PKCS11_PIN_FILE='$dir/user.pin'
export KEYWARDEN_PKCS11_SO_PIN_FILE='$dir/so.pin'
export KEYWARDEN_SOFTHSM_DIR='$dir'
EOF
}

stop() {
  local dir="${1:-${KEYWARDEN_SOFTHSM_DIR:-}}"
  if [ -z "$dir" ] || [ ! -f "$dir/.keywarden-softhsm" ]; then
    echo "harness: stop needs the folder softhsm.sh start made (KEYWARDEN_SOFTHSM_DIR)" >&2
    exit 1
  fi
  rm -rf "$dir"
}

case "${1:-}" in
start) shift; start "$@" ;;
stop) shift; stop "$@" ;;
*)
  echo "usage: softhsm.sh start [LABEL] | stop DIR" >&2
  exit 64
  ;;
esac

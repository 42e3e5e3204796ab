#!/usr/bin/env bash
# A throwaway software TPM 2.0 (swtpm) for the TPM suites: socket mode on free loopback ports, a
# temporary state folder, powered on and started (TPM2_Startup(CLEAR)) by swtpm itself.
#
#   eval "$(harness/swtpm.sh start)"    # prints export lines:
#                                       #   KEYWARDEN_TPM_TCTI   swtpm:host=127.0.0.1,port=N
#                                       #   KEYWARDEN_SWTPM_PID  the swtpm process
#                                       #   KEYWARDEN_SWTPM_DIR  its state folder (log: swtpm.log)
#   harness/swtpm.sh stop               # stops the one named by KEYWARDEN_SWTPM_PID/_DIR, removes
#                                       # the folder (or: stop PID DIR)
#
#   start --state DIR --port N          # restart on a given state folder and port (the fault
#                                       # tests kill swtpm and bring the same TPM back)
#
# swtpm listens on two ports: N for TPM commands, N+1 for its control channel (the swtpm TCTI
# uses both). It has no resource manager: clients flush every transient handle.
set -euo pipefail

die() {
  echo "swtpm.sh: $*" >&2
  exit 1
}

port_free() {
  # True when nothing listens on 127.0.0.1:$1 (bash's /dev/tcp connect is refused).
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

cmd_start() {
  local state="" port=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --state) state="$2"; shift 2 ;;
      --port) port="$2"; shift 2 ;;
      *) die "unknown option $1 (start [--state DIR] [--port N])" ;;
    esac
  done
  if ! command -v swtpm >/dev/null; then
    # Missing: install the harness's Debian packages (swtpm, swtpm-tools, tpm2-tools, libtss2-dev)
    # when we may, else say what to install.
    if [ "$(id -u)" -eq 0 ]; then bash "$(dirname "$0")/setup.sh" >&2; fi
    command -v swtpm >/dev/null || {
      echo "swtpm.sh: swtpm not found; install the Debian packages swtpm swtpm-tools tpm2-tools libtss2-dev (bash harness/setup.sh as root)" >&2
      exit 2
    }
  fi
  local own_state=0
  if [ -z "$state" ]; then
    state="$(mktemp -d "${TMPDIR:-/tmp}/keywarden-swtpm.XXXXXX")"
    own_state=1
  fi
  mkdir -p "$state"
  local tries=0
  while :; do
    local p="$port"
    if [ -z "$p" ]; then
      p=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
      if ! port_free "$p" || ! port_free $((p + 1)); then
        tries=$((tries + 1))
        [ "$tries" -lt 50 ] || die "no two free consecutive loopback ports found"
        continue
      fi
    fi
    rm -f "$state/swtpm.pid"
    if swtpm socket --tpm2 \
      --tpmstate "dir=$state" \
      --server "type=tcp,port=$p,bindaddr=127.0.0.1" \
      --ctrl "type=tcp,port=$((p + 1)),bindaddr=127.0.0.1" \
      --flags not-need-init,startup-clear \
      --pid "file=$state/swtpm.pid" \
      --log "file=$state/swtpm.log,level=1" \
      --daemon 2>>"$state/swtpm.err"; then
      # --daemon returns once the sockets are bound; wait for the pid file.
      local i
      for i in $(seq 1 50); do
        [ -s "$state/swtpm.pid" ] && break
        sleep 0.1
      done
      [ -s "$state/swtpm.pid" ] || die "swtpm started but wrote no pid file"
      port="$p"
      break
    fi
    # Lost a race for the port: try another, unless the caller named one.
    if [ -n "$port" ]; then
      [ "$own_state" = 1 ] && rm -rf "$state"
      die "swtpm could not listen on 127.0.0.1:$port ($(tail -n 2 "$state/swtpm.err" 2>/dev/null))"
    fi
    tries=$((tries + 1))
    [ "$tries" -lt 50 ] || die "swtpm failed to start: $(tail -n 2 "$state/swtpm.err" 2>/dev/null)"
  done
  echo "export KEYWARDEN_TPM_TCTI='swtpm:host=127.0.0.1,port=$port'"
  echo "export KEYWARDEN_SWTPM_PID=$(cat "$state/swtpm.pid")"
  echo "export KEYWARDEN_SWTPM_DIR='$state'"
}

cmd_stop() {
  local pid dir
  if [ "$#" -eq 1 ] && [ -d "$1" ]; then
    # `stop DIR` (like softhsm.sh): the pid is the one swtpm wrote into its state folder.
    dir="$1"
    pid="$(cat "$dir/swtpm.pid" 2>/dev/null || true)"
  else
    pid="${1:-${KEYWARDEN_SWTPM_PID:-}}" dir="${2:-${KEYWARDEN_SWTPM_DIR:-}}"
  fi
  [ -n "$pid" ] || die "stop: no pid (give DIR, or PID DIR, or set KEYWARDEN_SWTPM_PID)"
  if kill "$pid" 2>/dev/null; then
    local i
    for i in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  case "$dir" in
    */keywarden-swtpm.*) rm -rf "$dir" ;;
    "") ;;
    *) echo "swtpm.sh: left $dir in place (not a folder start created)" >&2 ;;
  esac
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  *) die "usage: swtpm.sh start [--state DIR] [--port N] | stop [DIR | PID DIR]" ;;
esac

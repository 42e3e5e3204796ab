#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for Keywarden's PostgreSQL store suites (harness/README.md).
#
#   eval "$(bash harness/postgres.sh start)"   # new temp dir, cluster running, env exported
#   bash harness/postgres.sh restart "$KEYWARDEN_PG_DIR"   # fast restart (fault tests)
#   bash harness/postgres.sh stop "$KEYWARDEN_PG_DIR"
#
# `start` creates a temporary folder, runs initdb and pg_ctl in it as an unprivileged user (the
# current one, or `nobody` when running as root: PostgreSQL refuses to run as root), listening on
# 127.0.0.1 on a free port and on a unix socket inside the folder, with scram-sha-256
# authentication for a superuser "keywarden" whose password is drawn from /dev/urandom for this
# run and kept in a file (mode 0600). It prints `export` lines on stdout:
#   KEYWARDEN_PG_URL            postgres://keywarden@127.0.0.1:PORT/keywarden (no password in it)
#   KEYWARDEN_PG_PASSWORD_FILE  the file holding the password (never printed)
#   KEYWARDEN_PG_DIR            what `restart` and `stop` act on
# When PostgreSQL is missing and the user is root, setup.sh installs it (debian-packages.txt);
# otherwise the script says why it cannot run and exits 2.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
MARKER=.keywarden-postgres

find_bin() {
  local d
  for d in "${KEYWARDEN_PG_BINDIR:-}" $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV) /usr/local/bin /usr/bin; do
    if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
  done
  return 1
}

# Run a command as the cluster's owner (recorded in DIR/owner).
as_owner() {
  local owner="$1"; shift
  if [ "$owner" = "$(id -un)" ]; then "$@"; else setpriv --reuid="$owner" --regid="$(id -g "$owner")" --clear-groups -- "$@"; fi
}

free_port() {
  node -e "const s=require('net').createServer();s.listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"
}

start() {
  if ! find_bin >/dev/null && [ "$(id -u)" -eq 0 ]; then bash "$here/setup.sh" >&2; fi
  local bin
  if ! bin="$(find_bin)"; then
    echo "harness: PostgreSQL (initdb, pg_ctl) not found; install the Debian package postgresql (bash harness/setup.sh as root) or set KEYWARDEN_PG_BINDIR" >&2
    exit 2
  fi
  local owner
  if [ "$(id -u)" -eq 0 ]; then owner=nobody; else owner="$(id -un)"; fi
  local dir
  dir="$(mktemp -d "${TMPDIR:-/tmp}/keywarden-pg.XXXXXXXX")"
  chmod 0755 "$dir"
  touch "$dir/$MARKER"
  echo "$owner" >"$dir/owner"
  echo "$bin" >"$dir/bindir"
  mkdir -m 0700 "$dir/data" "$dir/run"
  (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/password")
  # initdb reads the password from a file the owner can read; that copy is removed right after.
  install -m 0600 -o "$owner" /dev/null "$dir/run/pwfile"
  cat "$dir/password" >"$dir/run/pwfile"
  chown "$owner" "$dir/data" "$dir/run"
  if ! as_owner "$owner" "$bin/initdb" -D "$dir/data" -U keywarden --pwfile="$dir/run/pwfile" \
    --auth=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1; then
    cat "$dir/initdb.log" >&2
    rm -rf "$dir"
    echo "harness: initdb failed" >&2
    exit 1
  fi
  rm -f "$dir/run/pwfile"
  local port
  port="$(free_port)"
  echo "$port" >"$dir/port"
  cat >>"$dir/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir/run'
max_connections = 200
# Throwaway test cluster: durability across an OS crash is not needed (a restart is a clean
# shutdown), and fsyncs on a busy CI disk would dominate the suites' time.
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
EOF
  if ! as_owner "$owner" "$bin/pg_ctl" -D "$dir/data" -l "$dir/run/postgres.log" -w -t 60 start >/dev/null; then
    cat "$dir/run/postgres.log" >&2 || true
    rm -rf "$dir"
    echo "harness: pg_ctl start failed" >&2
    exit 1
  fi
  # The database the store uses; the password goes through a passfile, never a command line.
  (umask 077 && printf '*:*:*:keywarden:%s\n' "$(cat "$dir/password")" >"$dir/pgpass")
  if ! PGPASSFILE="$dir/pgpass" "$bin/createdb" -h 127.0.0.1 -p "$port" -U keywarden keywarden >&2; then
    stop "$dir"
    echo "harness: createdb failed" >&2
    exit 1
  fi
  cat <<EOF
export KEYWARDEN_PG_URL='postgres://keywarden@127.0.0.1:$port/keywarden'
export KEYWARDEN_PG_PASSWORD_FILE='$dir/password'
export KEYWARDEN_PG_DIR='$dir'
EOF
}

check_dir() {
  local dir="$1"
  if [ -z "$dir" ] || [ ! -f "$dir/$MARKER" ]; then
    echo "harness: $dir is not a folder made by harness/postgres.sh" >&2
    exit 2
  fi
}

# Fast restart (-m fast: clients are disconnected, as in a failover or a crash of the backend).
restart() {
  local dir="${1:-${KEYWARDEN_PG_DIR:-}}"
  check_dir "$dir"
  as_owner "$(cat "$dir/owner")" "$(cat "$dir/bindir")/pg_ctl" -D "$dir/data" -l "$dir/run/postgres.log" \
    -m fast -w -t 60 restart >/dev/null
}

stop() {
  local dir="${1:-${KEYWARDEN_PG_DIR:-}}"
  check_dir "$dir"
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_owner "$(cat "$dir/owner")" "$(cat "$dir/bindir")/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}

case "${1:-}" in
  start) start ;;
  restart) restart "${2:-}" ;;
  stop) stop "${2:-}" ;;
  *)
    echo "usage: bash harness/postgres.sh start | restart DIR | stop DIR" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# Installs Debian's PostgreSQL server (package postgresql) when its binaries
# are missing, and prints the directory of initdb and postgres, for
# PROVGATE_POSTGRES_BIN. The tests start their own throwaway cluster from
# these binaries (internal/testenv); the system's cluster is never used.
# Idempotent: nothing is fetched when the binaries are there.
set -euo pipefail

find_bin() {
  if [ -n "${PROVGATE_POSTGRES_BIN:-}" ] && [ -x "$PROVGATE_POSTGRES_BIN/initdb" ]; then
    echo "$PROVGATE_POSTGRES_BIN"
    return 0
  fi
  # Debian's newest /usr/lib/postgresql/<version>/bin.
  local d
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n | tail -1 || true)"
  if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/postgres" ]; then
    echo "$d"
    return 0
  fi
  return 1
}

if find_bin; then
  exit 0
fi

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "installing postgresql" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >&2
$sudo apt-get install -y -qq --no-install-recommends postgresql >&2
find_bin || { echo "postgresql installed, but no initdb under /usr/lib/postgresql/*/bin" >&2; exit 1; }

#!/usr/bin/env bash
# Installs staticcheck into the tools cache outside the clone and prints its
# path. Idempotent.
set -euo pipefail
version="${STATICCHECK_VERSION:-v0.8.2}"
tools="${PROVGATE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/provgate-tools}"
bin="$tools/staticcheck-$version/staticcheck"
if [ ! -x "$bin" ]; then
  mkdir -p "$tools/staticcheck-$version"
  GOBIN="$tools/staticcheck-$version" go install "honnef.co/go/tools/cmd/staticcheck@$version" >&2
fi
echo "$bin"

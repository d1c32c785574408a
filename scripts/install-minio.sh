#!/usr/bin/env bash
# Installs a MinIO server binary into a cache outside the clone and prints its
# path. Idempotent: an existing binary is reused. The build from the Go module
# proxy takes several minutes on a 2-core machine, so it is done once.
set -euo pipefail

version="${MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"
tools="${PROVGATE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/provgate-tools}"
bin="$tools/minio-$version/minio"

if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$tools/minio-$version"
tmp="$(mktemp -d "$tools/build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "installing minio $version into $tools (one-time, several minutes)" >&2
GOBIN="$tmp" GOFLAGS=-buildvcs=false go install "github.com/minio/minio@$version" >&2
mv "$tmp/minio" "$bin"
echo "$bin"

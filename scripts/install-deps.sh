#!/usr/bin/env bash
# Installs the Debian packages the tests use (PyTorch and boto3 for the
# client tests; venv, pip, setuptools and wheel to install the client package
# python/ offline into a test's virtual environment; nginx as the benchmark
# baseline), and PostgreSQL's server binaries for the registry's
# PostgreSQL tests (scripts/install-postgres.sh). Idempotent: packages that
# are already there are not fetched again.
set -euo pipefail

"$(dirname "$0")/install-postgres.sh" >/dev/null

pkgs=(python3-torch python3-boto3 python3-numpy python3-venv python3-pip python3-setuptools python3-wheel nginx-light)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >&2
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2

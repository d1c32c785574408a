#!/usr/bin/env bash
# The one test command: installs what the tests need (idempotently), then
# runs formatting and static checks and every test, against a real MinIO
# server, a throwaway PostgreSQL cluster, real SQLite files, loopback HTTP
# and Debian's PyTorch.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
PROVGATE_MINIO_BIN="$(./scripts/install-minio.sh)"
export PROVGATE_MINIO_BIN
# Set, so that the PostgreSQL tests fail rather than skip when the cluster
# cannot start.
PROVGATE_POSTGRES_BIN="$(./scripts/install-postgres.sh)"
export PROVGATE_POSTGRES_BIN
staticcheck="$(./scripts/install-staticcheck.sh)"

echo "== gofmt"
unformatted="$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))"
if [ -n "$unformatted" ]; then
  echo "gofmt would change:"; echo "$unformatted"; exit 1
fi
echo "== go vet"
go vet ./...
echo "== staticcheck"
"$staticcheck" ./...

echo "== go test"
# The race detector on everything: the daemon's packages are concurrent.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
go test -race -count=1 -timeout 30m ./... 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
passed=$(grep -c '^ok ' "$log" || true)
failed=$(grep -c "^FAIL$(printf '\t')" "$log" || true)
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
echo "packages: $passed passed, $failed failed"
exit "$status"

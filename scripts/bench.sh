#!/usr/bin/env bash
# Runs the benchmarks that DESIGN.md's performance targets name, each
# against its baseline in the same run, and prints the ratios.
#   ./scripts/bench.sh            # all
#   BENCHTIME=5s ./scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
PROVGATE_MINIO_BIN="$(./scripts/install-minio.sh)"
export PROVGATE_MINIO_BIN
benchtime="${BENCHTIME:-3s}"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT

run() { go test -run '^$' -bench "$1" -benchtime "$benchtime" -count "${COUNT:-1}" "$2" | tee -a "$out"; }

echo "== warm hits: sidecar vs nginx (sendfile), metering on"
run 'BenchmarkWarmHit' ./e2e/
echo "== cold path: MinIO -> verify -> zstd -> cache vs minio-go GetObject + zstd"
run 'BenchmarkColdPath' ./cache/
echo "== ledger"
run 'Benchmark' ./meter/
echo "== log replay (chain + Merkle + EdDSA)"
run 'BenchmarkReplay' ./verify/

echo
echo "== ratios (provgate / baseline throughput; >= target is MET)"
go run ./internal/benchratio < "$out"

echo
echo "== PyTorch DataLoader: sidecar vs local files"
/usr/bin/python3 examples/pytorch/bench_loader.py --help >/dev/null 2>&1 && echo "(see examples/pytorch/bench_loader.py; run by go test -run TestLoaderBenchmark -v ./examples/pytorch/)" || true

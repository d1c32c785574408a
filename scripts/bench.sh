#!/usr/bin/env bash
# Runs the benchmarks that DESIGN.md's performance targets name, each
# against its baseline in the same run, and prints the ratios.
#   ./scripts/bench.sh            # all
#   BENCHTIME=5s ./scripts/bench.sh
#   SCALE=1 ./scripts/bench.sh    # adds the 1M-object dataset (log, sidecar start, RSS)
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
echo "== cold path: MinIO -> verify -> zstd -> cache vs minio-go GetObject + zstd (ratio metrics)"
go test -run '^$' -bench 'BenchmarkColdPath' -benchtime 10x ./cache/ | tee -a "$out"
echo "== eviction: hit ratio from the second epoch, dataset larger than the cache"
go test -run '^$' -bench 'BenchmarkEpochHitRatio' -benchtime 1x ./cache/ | tee -a "$out"
echo "== ledger: sustained events/s with durability, and the cost on a 64 KiB hit"
run 'Benchmark' ./meter/
echo "== registry metering ingest: CPU per million samples, event by event vs aggregate batches"
go test -run '^$' -bench 'BenchmarkIngestPerMillionSamples' -benchtime "${INGEST_BENCHTIME:-20x}" ./registry/ | tee -a "$out"
echo "== log replay: 100k entries (chain + Merkle + EdDSA, both cores) and restart"
go test -run '^$' -bench 'BenchmarkFollowerReplay|BenchmarkFollowerResume' -benchtime 1x ./verify/ | tee -a "$out"
if [[ "${SCALE:-}" == 1 ]]; then
	echo "== scale: 1M objects in batch attestations (append), a fresh sidecar ready on that log (wall, peak RSS), restart"
	go test -run '^$' -bench 'BenchmarkMillionObjects' -benchtime 1x -timeout 60m ./verify/ | tee -a "$out"
fi
echo "== PyTorch DataLoader (4 workers): sidecar vs the same loader on local files"
go test -run '^$' -bench 'DataLoader' -benchtime 1x ./examples/pytorch/ | tee -a "$out"

echo
echo "== ratios (provgate / baseline throughput; >= target is MET)"
go run ./internal/benchratio < "$out"

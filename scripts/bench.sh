#!/usr/bin/env bash
# Runs the benchmarks that the performance targets name, each against its
# baseline in the same run, and prints the ratios (internal/benchratio).
#   ./scripts/bench.sh                          # every row, both origin modes
#   ROWS=warm,cold ./scripts/bench.sh           # a subset of rows:
#                                               #   warm cold loader cache ledger ingest replay
#   PROVGATE_BENCH_MODES=selfhosted ./scripts/bench.sh   # one origin mode (or marketplace)
#   SIZES=64KiB ./scripts/bench.sh              # only sub-benchmarks whose size/case matches
#                                               #   (a regexp: 1MiB, 64KiB, 4KiB, origin20ms, 16KiB, 256KiB)
#   BENCHTIME=5s COUNT=3 ./scripts/bench.sh     # longer warm runs, best of three
#   COLD_EPOCHS=3 ./scripts/bench.sh            # cold epochs per side (default 3)
#   SCALE=1 ./scripts/bench.sh                  # adds the 1M-object dataset (log, sidecar start, RSS)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
PROVGATE_MINIO_BIN="$(./scripts/install-minio.sh)"
export PROVGATE_MINIO_BIN
export PROVGATE_BENCH_MODES="${PROVGATE_BENCH_MODES:-selfhosted,marketplace}"
rows=",${ROWS:-warm,cold,loader,cache,ledger,ingest,replay},"
sizes="${SIZES:-}"
benchtime="${BENCHTIME:-3s}"
count="${COUNT:-1}"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT

want() { [[ "$rows" == *",$1,"* ]]; }
run() { go test -run '^$' -bench "$1" -benchtime "$2" -count "$count" -timeout 2h "$3" | tee -a "$out"; }

if want warm; then
	echo "== warm hits (sidecar process vs nginx sendfile, metering on, 8 in flight): 1 MiB, 64 KiB, 4 KiB"
	run "BenchmarkWarmHit//$sizes" "$benchtime" ./e2e/
fi
if want cold; then
	echo "== cold reads (fresh sidecar process, announced order, 8 readers) vs minio-go GetObject + zstd;"
	echo "   loopback origin, and the same origin behind a 20 ms delaying proxy"
	run "BenchmarkColdRead//$sizes" "${COLD_EPOCHS:-3}x" ./e2e/
fi
if want loader; then
	echo "== PyTorch DataLoader (4 workers): sidecar vs the same loader on local files"
	run "BenchmarkDataLoader//$sizes" 1x ./examples/pytorch/
fi
if want cache; then
	echo "== cache alone: MinIO -> verify -> zstd -> cache vs minio-go GetObject + zstd; eviction hit ratio"
	go test -run '^$' -bench 'BenchmarkColdPath' -benchtime 10x -count "$count" ./cache/ | tee -a "$out"
	go test -run '^$' -bench 'BenchmarkEpochHitRatio' -benchtime 1x ./cache/ | tee -a "$out"
fi
if want ledger; then
	echo "== ledger: sustained events/s with durability, and the cost on a 64 KiB hit"
	run 'Benchmark' "$benchtime" ./meter/
fi
if want ingest; then
	echo "== registry metering ingest: CPU per million samples, event by event vs aggregate batches"
	go test -run '^$' -bench 'BenchmarkIngestPerMillionSamples' -benchtime "${INGEST_BENCHTIME:-20x}" ./registry/ | tee -a "$out"
fi
if want replay; then
	echo "== log replay: 100k entries (chain + Merkle + EdDSA, both cores) and restart"
	go test -run '^$' -bench 'BenchmarkFollowerReplay|BenchmarkFollowerResume' -benchtime 1x ./verify/ | tee -a "$out"
fi
if [[ "${SCALE:-}" == 1 ]]; then
	echo "== scale: 1M objects in batch attestations (append), a fresh sidecar ready on that log (wall, peak RSS), restart"
	go test -run '^$' -bench 'BenchmarkMillionObjects' -benchtime 1x -timeout 60m ./verify/ | tee -a "$out"
fi

echo
echo "== ratios (provgate / baseline throughput; >= target is MET)"
go run ./internal/benchratio < "$out"

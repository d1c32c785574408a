// Package e2e holds provgate's end-to-end tests and benchmarks: a real
// MinIO server, the real registry, the real sidecar, and real clients
// (net/http, minio-go, an HTTPS client through the forward proxy, boto3,
// nginx as the benchmark baseline), all on loopback.
package e2e

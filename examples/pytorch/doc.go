// Package pytorch holds the examples and the Go tests of provgate_torch, the
// PyTorch client of the provgate sidecar (the pip-installable package in
// python/). Each test installs the package into a fresh virtual environment
// made from Debian's /usr/bin/python3 (python3-torch visible through
// --system-site-packages); the Python unit tests and an end-to-end test that
// drives a real registry, MinIO and `provgate serve` with 4-worker
// DataLoaders run with that environment's interpreter.
package pytorch

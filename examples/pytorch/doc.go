// Package pytorch holds the Go tests of provgate_torch, the PyTorch client
// of the provgate sidecar (a Python package in this directory): the Python
// unit tests run under Debian's /usr/bin/python3 with python3-torch, and an
// end-to-end test drives a real registry, MinIO and `provgate serve` with a
// 4-worker DataLoader.
package pytorch

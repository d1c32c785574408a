// Package docker holds the checks of the container files in this
// directory: the multi-stage Dockerfile (stages, cgo, non-root users,
// every COPY source and build path present in the repository) and the
// pilot's compose file (services, wiring, and every provgate command line
// against the real binary). Docker itself does not run in these tests.
package docker

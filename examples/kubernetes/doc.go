// Package kubernetes holds the test of the Kubernetes example: a training
// pod with provgate as a native sidecar (pod.yaml), decoded strictly into
// the k8s.io/api types and checked for the sidecar's shape and for real
// provgate flags.
package kubernetes

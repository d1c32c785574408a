// Package deploy holds the tests of the deployment files: the registry's
// Kubernetes manifests (kubernetes/registry.yaml), decoded strictly into
// the k8s.io/api types and checked against the real binary's flags and a
// real registry's health endpoint, and the Grafana dashboard
// (grafana/provgate.json), whose every PromQL metric name must be one the
// sidecar or the registry exports.
package deploy

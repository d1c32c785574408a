// Package proxy is the sidecar's front: the localhost data endpoint
// (/v1/...), the S3-compatible read facade, and the forward proxy that
// serves the origin's host through the verified cache.
//
// It sees the rest of the sidecar through three small interfaces: a Source
// per mounted contract (verified manifest, state, capability), the Cache of
// verified objects, and the Meter that records every access. Handlers
// return errors; one function (writeError) maps them to status codes and
// JSON (or, on the S3 facade, XML) bodies.
package proxy

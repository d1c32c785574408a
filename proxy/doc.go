// Package proxy is the sidecar's front: the localhost data endpoint
// (/v1/...), the S3-compatible read facade, and the forward proxy that
// serves the origin's host through the verified cache.
//
// It sees the rest of the sidecar through three small interfaces: a Source
// per mounted contract (verified manifest, state, capability), the Cache of
// verified objects, and the Meter that records every access. Handlers
// return errors; one function (writeError) maps them to status codes and
// JSON (or, on the S3 facade, XML) bodies.
//
// Every object byte leaves through serveObject (or the batch read), which
// bills by one rule: a read claims its place in a pass over the object
// within its (job, epoch) (passes.go) and reserves the quota it may bill
// (billing.go); the read that opens a pass bills its sample, bytes not yet
// delivered in the pass bill bytes only, a repeated byte opens a new pass,
// and a response cut short bills what it sent.
package proxy

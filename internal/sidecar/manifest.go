package sidecar

import (
	"context"

	"github.com/provgate/provgate/proxy"
	"github.com/provgate/provgate/verify"
)

var _ proxy.ManifestWalker = (*mount)(nil)

// EachManifest walks the verified manifest from the state database, one
// entry at a time (a million-object dataset is never held in memory).
func (m *mount) EachManifest(ctx context.Context, fn func(proxy.ManifestEntry) error) error {
	_, f, _, _ := m.parts()
	if f == nil {
		return proxy.ErrNotReady
	}
	return f.Manifest().Each(ctx, func(e verify.ManifestEntry) error {
		return fn(proxy.ManifestEntry{ObjectClaim: e.ObjectClaim, Seq: e.Seq})
	})
}

package sidecar

import (
	"context"
	"errors"
	"fmt"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/proxy"
	"github.com/provgate/provgate/verify"
)

var _ proxy.ShardSource = (*mount)(nil)

// ShardIndex returns the attested member index of a verified shard, or nil
// when e is not one.
func (m *mount) ShardIndex(ctx context.Context, e *proxy.ManifestEntry) (*contract.ShardIndex, error) {
	_, f, _, _ := m.parts()
	if f == nil {
		return nil, proxy.ErrNotReady
	}
	x, err := f.ShardIndex(ctx, &verify.ManifestEntry{ObjectClaim: e.ObjectClaim, Seq: e.Seq})
	switch {
	case errors.Is(err, verify.ErrNotShard):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("%w: %v", proxy.ErrNotReady, err)
	}
	return x, nil
}

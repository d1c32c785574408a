package cache

import "github.com/provgate/provgate/contract"

// MountOption configures a mounted contract.
type MountOption func(*mount)

// WithLiveCheck gives the cache the contract's verified manifest: live
// reports whether name is, right now, a live object with these decoded
// bytes. The cache asks it when a fetch starts, when it fails and, under
// its lock, when it commits, so that bytes of a name redacted (or replaced,
// or dropped by a revocation) are never committed, whenever the fetch
// began. The manifest must change before Purge is called for the name
// (verify.Follower calls OnRedact after applying the change).
func WithLiveCheck(live func(name, decodedSHA string) bool) MountOption {
	return func(m *mount) { m.live = live }
}

func (m *mount) isLive(obj *contract.ObjectClaim) bool {
	return m.live == nil || m.live(obj.Name, obj.DecodedSHA256)
}

// forgetLocked drops the name's per-name origin credentials (a presigned
// URL) when the cache purges it.
func (c *Cache) forgetLocked(contractID, name string) {
	if m := c.mounts[contractID]; m != nil {
		if f, ok := m.origin.(forgetter); ok {
			f.Forget(name)
		}
	}
}

package verify

import (
	"fmt"
	"sort"
	"sync"

	"github.com/provgate/provgate/contract"
)

// ManifestEntry is one verified object: its claim as signed by the
// contributor, the seq of the entry that introduced it, and who signed it.
type ManifestEntry struct {
	contract.ObjectClaim
	Seq    uint64 `json:"seq"`
	Issuer string `json:"issuer"`
	KeyID  string `json:"kid"`
}

// Manifest is a contract's verified manifest: the objects of every verified
// contribution or transformation not since redacted. It is safe for
// concurrent use; only the log replay changes it.
type Manifest struct {
	mu       sync.RWMutex
	objects  map[string]*ManifestEntry
	redacted map[string]uint64 // name -> seq of the redaction
	owners   map[string]owner  // name -> who attested it first
}

// owner is who owns a name: the issuer of its first verified contribution
// or transformation, and that entry's seq. It outlives redactions.
type owner struct {
	Issuer string
	Seq    uint64
}

func newManifest() *Manifest {
	return &Manifest{objects: map[string]*ManifestEntry{}, redacted: map[string]uint64{}, owners: map[string]owner{}}
}

// Lookup returns the entry for name, or an error wrapping ErrRedacted or
// ErrNotFound.
func (m *Manifest) Lookup(name string) (ManifestEntry, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if e, ok := m.objects[name]; ok {
		return *e, nil
	}
	if seq, ok := m.redacted[name]; ok {
		return ManifestEntry{}, fmt.Errorf("%q: %w by entry %d", name, ErrRedacted, seq)
	}
	return ManifestEntry{}, fmt.Errorf("%q: %w", name, ErrNotFound)
}

// Len is the number of objects.
func (m *Manifest) Len() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.objects)
}

// Redacted is the number of redacted names.
func (m *Manifest) Redacted() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.redacted)
}

// Entries lists the objects sorted by name.
func (m *Manifest) Entries() []ManifestEntry {
	m.mu.RLock()
	out := make([]ManifestEntry, 0, len(m.objects))
	for _, e := range m.objects {
		out = append(out, *e)
	}
	m.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// delta is the change one sync makes to the manifest and the revocations,
// staged until the whole batch is verified and persisted.
type delta struct {
	base     *Manifest
	revs     map[revKey]revocation // base revocations (read-only here)
	objects  map[string]*ManifestEntry
	redacted map[string]uint64 // 0: cleared
	newRevs  map[revKey]revocation
	owners   map[string]owner // names first attested in this delta
	purged   []string         // names removed: the cache must drop them
	rejected []rejection
	terms    *TermsHistory  // the history after the delta
	newTerms []TermsVersion // versions verified in this delta
}

type revKey struct{ issuer, kid string }

type revocation struct {
	Seq         uint64
	Retroactive bool
}

type rejection struct {
	Seq uint64
	Err error
}

func newDelta(base *Manifest, revs map[revKey]revocation) *delta {
	return &delta{base: base, revs: revs, objects: map[string]*ManifestEntry{},
		redacted: map[string]uint64{}, newRevs: map[revKey]revocation{}, owners: map[string]owner{}}
}

// owner returns who owns name, seen through the delta.
func (d *delta) owner(name string) (owner, bool) {
	if o, ok := d.owners[name]; ok {
		return o, true
	}
	o, ok := d.base.owners[name]
	return o, ok
}

// object returns the current entry for name, seen through the delta.
func (d *delta) object(name string) *ManifestEntry {
	if e, ok := d.objects[name]; ok {
		return e
	}
	return d.base.objects[name]
}

func (d *delta) revocation(k revKey) (revocation, bool) {
	if r, ok := d.newRevs[k]; ok {
		return r, true
	}
	r, ok := d.revs[k]
	return r, ok
}

func (d *delta) remove(name string) {
	d.objects[name] = nil
	d.purged = append(d.purged, name)
}

// apply merges a persisted delta into the manifest.
func (m *Manifest) apply(d *delta) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for name, e := range d.objects {
		if e == nil {
			delete(m.objects, name)
		} else {
			m.objects[name] = e
		}
	}
	for name, seq := range d.redacted {
		if seq == 0 {
			delete(m.redacted, name)
		} else {
			m.redacted[name] = seq
		}
	}
	for name, o := range d.owners {
		m.owners[name] = o
	}
}

package sidecar

import (
	"fmt"

	"github.com/provgate/provgate/contract"
)

// Objects returns the verified manifest of a mounted contract as object
// claims (for provgate prefetch).
func (s *Sidecar) Objects(contractID string) ([]contract.ObjectClaim, error) {
	for _, m := range s.mountList() {
		if m.ID() != contractID {
			continue
		}
		entries := m.Manifest()
		out := make([]contract.ObjectClaim, len(entries))
		for i, e := range entries {
			out[i] = e.ObjectClaim
		}
		return out, nil
	}
	return nil, fmt.Errorf("contract %s is not mounted", contractID)
}

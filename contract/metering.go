package contract

import (
	"errors"
	"fmt"
	"time"
)

// Metering event kinds.
const (
	EventAccess = "access"
	EventEpoch  = "epoch"
)

// MaxBatchEvents bounds a metering batch.
const MaxBatchEvents = 1000

// MeteringEvent is one metered fact. Its ID is minted when the sidecar
// writes the row, so that any number of retries count it once.
type MeteringEvent struct {
	ID       string    `json:"id"`
	Time     time.Time `json:"time"`
	Kind     string    `json:"kind"`
	Name     string    `json:"name,omitempty"`
	Bytes    int64     `json:"bytes"`
	Samples  int64     `json:"samples"`
	Distinct int64     `json:"distinct,omitempty"` // epoch: distinct objects
	Units    int64     `json:"units"`
	// CostNanoUSD is units times the unit price, in billionths of a dollar.
	CostNanoUSD int64  `json:"cost_nano_usd"`
	Epoch       int64  `json:"epoch"`
	Job         string `json:"job,omitempty"`
	TokenID     string `json:"token_jti,omitempty"`
	// Lease is the quota lease of the token (CapabilityClaims.Lease).
	Lease      string `json:"lease,omitempty"`
	DecodedSHA string `json:"decoded_sha256,omitempty"`
	Outcome    string `json:"outcome,omitempty"`
}

// MeteringBatch is the payload of the sidecar-signed JWS (header typ
// TypeMetering, kid = the sidecar's JWK thumbprint) posted to
// POST /provenance/{id}/metering.
type MeteringBatch struct {
	Contract string          `json:"contract_id"`
	BatchID  string          `json:"batch_id"`
	Sidecar  string          `json:"sidecar"` // JWK thumbprint
	IssuedAt int64           `json:"iat"`
	Events   []MeteringEvent `json:"events"`
}

// Validate checks a batch's shape.
func (b *MeteringBatch) Validate() error {
	if b.Contract == "" || b.BatchID == "" || b.Sidecar == "" {
		return errors.New("metering batch: contract_id, batch_id and sidecar are required")
	}
	if len(b.Events) == 0 || len(b.Events) > MaxBatchEvents {
		return fmt.Errorf("metering batch: 1 to %d events", MaxBatchEvents)
	}
	seen := make(map[string]bool, len(b.Events))
	for i, e := range b.Events {
		if e.ID == "" || len(e.ID) > 128 {
			return fmt.Errorf("metering batch: event %d: id must be 1 to 128 characters", i)
		}
		if seen[e.ID] {
			return fmt.Errorf("metering batch: event id %q appears twice", e.ID)
		}
		seen[e.ID] = true
		if e.Kind != EventAccess && e.Kind != EventEpoch {
			return fmt.Errorf("metering batch: event %q: unknown kind %q", e.ID, e.Kind)
		}
		if e.Bytes < 0 || e.Samples < 0 || e.Units < 0 || e.CostNanoUSD < 0 || e.Distinct < 0 {
			return fmt.Errorf("metering batch: event %q: negative amount", e.ID)
		}
	}
	return nil
}

// MeteringResponse answers a metering batch.
type MeteringResponse struct {
	Accepted   int    `json:"accepted"`
	Duplicates int    `json:"duplicates"`
	Seq        uint64 `json:"seq,omitempty"` // the log entry, when any event was new
}

// MeteringTotals answers GET /provenance/{id}/metering/totals: sums over
// every event the registry counted (optionally filtered by job and epoch).
type MeteringTotals struct {
	Contract     string `json:"contract_id"`
	Events       int64  `json:"events"`
	AccessEvents int64  `json:"access_events"`
	AccessBytes  int64  `json:"access_bytes"`
	EpochEvents  int64  `json:"epoch_events"`
	EpochSamples int64  `json:"epoch_samples"`
	EpochBytes   int64  `json:"epoch_bytes"`
	Units        int64  `json:"units"`
	CostNanoUSD  int64  `json:"cost_nano_usd"`
}

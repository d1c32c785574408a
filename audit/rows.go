package audit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/meter"
)

// Row disclosure. A batch's row tree is the RFC 6962 tree of its ledger
// rows' canonical leaves (provgate.meter.row/v1, meter.RowLeaf) in seq
// order. An aggregate batch commits to its root in the log (rows.root);
// a batch that carries its events commits to each row's fields, and the
// bundle gives the root the exporter's ledger makes of them, so that a
// disclosed row is checked twice: by its proof against that root, and
// field by field against the signed event of the same id.

// RowsRoot is a batch's row tree: how many rows and their root.
type RowsRoot struct {
	Count uint64 `json:"count"`
	Root  []byte `json:"root"`
}

// rowLeaf is a decoded provgate.meter.row/v1 leaf.
type rowLeaf struct {
	Bytes       int64  `json:"bytes"`
	Contract    string `json:"contract_id"`
	CostNanoUSD int64  `json:"cost_nano_usd"`
	DecodedSHA  string `json:"decoded_sha256"`
	Distinct    int64  `json:"distinct"`
	Epoch       int64  `json:"epoch"`
	Events      int64  `json:"events"`
	ID          string `json:"id"`
	Job         string `json:"job"`
	Kind        string `json:"kind"`
	Lease       string `json:"lease"`
	Name        string `json:"name"`
	Outcome     string `json:"outcome"`
	Samples     int64  `json:"samples"`
	Seq         int64  `json:"seq"`
	TermsSeq    uint64 `json:"terms_seq"`
	Time        string `json:"time"`
	TokenID     string `json:"token_jti"`
	Tokens      int64  `json:"tokens"`
	Units       int64  `json:"units"`
}

// decodeRowLeaf parses a leaf strictly and checks that it is canonical:
// meter.RowLeaf of the row it decodes to gives the same bytes.
func decodeRowLeaf(leaf []byte) (*meter.Row, error) {
	var l rowLeaf
	if err := decodeStrictJSON(leaf, &l); err != nil {
		return nil, fmt.Errorf("row leaf: %w", err)
	}
	t, err := time.Parse(time.RFC3339Nano, l.Time)
	if err != nil {
		return nil, fmt.Errorf("row leaf: time: %w", err)
	}
	r := &meter.Row{Seq: l.Seq, ID: l.ID, Kind: l.Kind, Time: t, Contract: l.Contract, Name: l.Name, Bytes: l.Bytes, Samples: l.Samples,
		Tokens: l.Tokens, Distinct: l.Distinct, Units: l.Units, CostNanoUSD: l.CostNanoUSD, Epoch: l.Epoch, Job: l.Job, TokenID: l.TokenID,
		Lease: l.Lease, TermsSeq: l.TermsSeq, DecodedSHA: l.DecodedSHA, Outcome: l.Outcome, Events: l.Events}
	if !bytes.Equal(meter.RowLeaf(r), leaf) {
		return nil, fmt.Errorf("row leaf: not in canonical form (provgate.meter.row/v1)")
	}
	return r, nil
}

// rowDiffers names the first field in which row r differs from the event
// a batch carries for it ("" when none). An epoch row is sent with units
// and cost zero.
func rowDiffers(r *meter.Row, ev *contract.MeteringEvent) string {
	sent := r.MeteringEvent()
	if !sent.Time.Equal(ev.Time) {
		return fmt.Sprintf("time %s, the batch says %s", sent.Time.UTC().Format(time.RFC3339Nano), ev.Time.UTC().Format(time.RFC3339Nano))
	}
	ev2 := *ev
	sent.Time, ev2.Time = time.Time{}, time.Time{}
	if sent != ev2 {
		a, _ := json.Marshal(sent)
		b, _ := json.Marshal(ev2)
		return fmt.Sprintf("the row sends %s, the batch carries %s", a, b)
	}
	return ""
}

// rowSums are what a row adds to a batch's sums, as the batch counts it
// (an epoch row bills nothing).
func rowSums(r *meter.Row) contract.Sums {
	s := contract.Sums{Samples: r.Samples, Bytes: r.Bytes, Units: r.Units, CostNanoUSD: r.CostNanoUSD}
	if r.Kind == contract.EventEpoch {
		s.Units, s.CostNanoUSD = 0, 0
	}
	return s
}

// aggregateOf is the index of the aggregate of the batch whose key the
// row has and whose time span holds it, or -1.
func (m *metered) aggregateOf(r *meter.Row) int {
	outcome := r.Outcome
	if r.Kind == contract.EventAccess && outcome == "" {
		outcome = contract.OutcomeServed
	}
	for i := range m.batch.Aggregates {
		a := &m.batch.Aggregates[i]
		ao := a.Outcome
		if a.Kind == contract.EventAccess && ao == "" {
			ao = contract.OutcomeServed
		}
		if a.Kind == r.Kind && ao == outcome && a.Job == r.Job && a.Epoch == r.Epoch && a.Lease == r.Lease && a.TermsSeq == r.TermsSeq &&
			!r.Time.Before(a.FirstTime) && !r.Time.After(a.LastTime) {
			return i
		}
	}
	return -1
}

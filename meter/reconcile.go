package meter

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

// Kinds of reconcile findings.
const (
	// FindingMissing: a receipted batch the registry's log does not hold
	// (or no longer proves) at its entry.
	FindingMissing = "missing"
	// FindingDifferent: the registry's entry at a receipt's seq is not the
	// receipted entry (another batch, other accepted events).
	FindingDifferent = "different"
	// FindingExtra: a batch in the registry's log counting events of this
	// ledger that the ledger holds no receipt for.
	FindingExtra = "extra"
	// FindingLog: the registry's log as a whole does not hold up: its
	// checkpoint does not extend the one the receipts were checked against,
	// or its entries do not hash to its checkpoint.
	FindingLog = "log"
)

// Finding is one difference between the ledger and the registry.
type Finding struct {
	Contract string `json:"contract"`
	Kind     string `json:"kind"`
	Batch    string `json:"batch,omitempty"`
	Seq      uint64 `json:"seq,omitempty"` // the log entry
	Detail   string `json:"detail"`
}

// ReconcileResult is a contract's reconciliation: what the ledger's
// receipts say was counted, what the registry's log counts of this
// ledger's events, and every difference.
type ReconcileResult struct {
	Contract string `json:"contract"`
	// TreeSize is the registry's checkpoint size the ledger was checked
	// against.
	TreeSize uint64 `json:"tree_size"`
	Receipts int    `json:"receipts"`
	// Ledger sums the events the receipts' entries counted; Registry sums
	// this ledger's events in the registry's log.
	LedgerEvents   int64         `json:"ledger_events"`
	Ledger         contract.Sums `json:"ledger"`
	RegistryEvents int64         `json:"registry_events"`
	Registry       contract.Sums `json:"registry"`
	Findings       []Finding     `json:"findings"`
}

// Reconcile compares the ledger's receipts of contractID with the
// registry's log: every receipted batch must be the entry at its seq and
// included in the registry's current checkpoint, that checkpoint must
// extend the one the receipts were checked against, and every batch in the
// log counting this ledger's events must have a receipt. The error is for
// what stopped the check (the registry not answering); differences are
// findings.
func Reconcile(ctx context.Context, l *Ledger, client *contract.Client, contractID string) (*ReconcileResult, error) {
	res := &ReconcileResult{Contract: contractID, Findings: []Finding{}}
	add := func(kind, batch string, seq uint64, format string, args ...any) {
		res.Findings = append(res.Findings, Finding{Contract: contractID, Kind: kind, Batch: batch, Seq: seq, Detail: fmt.Sprintf(format, args...)})
	}
	rs, err := l.Receipts(ctx, contractID)
	if err != nil {
		return nil, err
	}
	res.Receipts = len(rs)
	c, _, err := client.GetContract(ctx, contractID, "")
	if err != nil {
		return nil, fmt.Errorf("reconcile %s: contract: %w", contractID, err)
	}
	cpv, err := verify.NewCheckpointVerifier(c.Log.Origin, c.Log.CheckpointKey)
	if err != nil {
		return nil, fmt.Errorf("reconcile %s: %w", contractID, err)
	}
	raw, err := client.Checkpoint(ctx, contractID)
	if err != nil {
		return nil, fmt.Errorf("reconcile %s: checkpoint: %w", contractID, err)
	}
	cur, err := cpv.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("reconcile %s: the registry's checkpoint: %w", contractID, err)
	}
	res.TreeSize = cur.Size

	// The checkpoint the receipts were checked against must be a prefix of
	// the registry's.
	if prevRaw, err := l.LogCheckpoint(ctx, contractID); err != nil {
		return nil, err
	} else if prevRaw != nil {
		prev, err := cpv.Parse(prevRaw)
		if err != nil {
			add(FindingLog, "", 0, "the ledger's checked checkpoint does not verify with the contract's key: %v", err)
		} else if err := checkExtends(ctx, client, contractID, prev, cur); err != nil {
			if !errors.Is(err, verify.ErrInconsistent) {
				return nil, err
			}
			add(FindingLog, "", 0, "the registry's checkpoint (size %d) does not extend the receipted checkpoint (size %d): %v", cur.Size, prev.Size, err)
		}
	}

	// The registry's entries, up to the checkpoint, and their root.
	entries := make([][]byte, 0, cur.Size)
	for uint64(len(entries)) < cur.Size {
		page, err := client.Events(ctx, contractID, uint64(len(entries)), contract.MaxEventsLimit)
		if err != nil {
			return nil, fmt.Errorf("reconcile %s: events: %w", contractID, err)
		}
		if len(page.Entries) == 0 {
			break
		}
		for _, e := range page.Entries {
			if e.Seq != uint64(len(entries))+1 {
				return nil, fmt.Errorf("reconcile %s: the registry served entry %d after %d", contractID, e.Seq, len(entries))
			}
			if e.Seq > cur.Size {
				break
			}
			entries = append(entries, e.Entry)
		}
	}
	rootOK := false
	rng := (&compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}).NewEmptyRange(0)
	for _, e := range entries {
		if err := rng.Append(contract.LeafHash(e), nil); err != nil {
			return nil, err
		}
	}
	switch root, err := rng.GetRootHash(nil); {
	case uint64(len(entries)) != cur.Size:
		add(FindingLog, "", 0, "the registry serves %d entries, its checkpoint counts %d", len(entries), cur.Size)
	case err == nil && len(entries) > 0 && !bytes.Equal(root, cur.Hash):
		add(FindingLog, "", 0, "the registry's entries hash to %x, its checkpoint's root is %x", root, cur.Hash)
	default:
		rootOK = true
	}

	receipted := map[uint64]bool{}
	for i := range rs {
		r := &rs[i]
		seq := r.Seq()
		receipted[seq] = true
		_, e, err := verify.VerifyMeteringReceipt(cpv, contractID, &r.MeteringReceipt)
		if err != nil {
			add(FindingDifferent, r.Batch, seq, "the ledger's receipt does not verify: %v", err)
			continue
		}
		if n, s, ok := ledgerEvents(l.ID(), e); ok {
			res.LedgerEvents += n
			res.Ledger.Add(s)
		}
		if seq > uint64(len(entries)) {
			add(FindingMissing, r.Batch, seq, "receipted entry %d is beyond the registry's log of %d entries", seq, len(entries))
			continue
		}
		got := entries[seq-1]
		if !bytes.Equal(contract.LeafHash(got), r.Leaf) {
			add(FindingDifferent, r.Batch, seq, "%s", describeDifference(r.Entry, got))
			continue
		}
		if !rootOK {
			// The entries do not make the checkpoint: ask for the proof.
			p, err := client.InclusionProof(ctx, contractID, seq, cur.Size)
			if err != nil || verify.VerifyInclusion(cur, seq, r.Leaf, p.Hashes) != nil {
				add(FindingMissing, r.Batch, seq, "the registry does not prove receipted entry %d in its checkpoint of size %d", seq, cur.Size)
			}
		}
	}

	for i, raw := range entries {
		seq := uint64(i) + 1
		e, err := contract.DecodeEntry(raw)
		if err != nil || e.Kind != contract.EntryMetering {
			continue
		}
		n, s, ours := ledgerEvents(l.ID(), e)
		if !ours {
			continue
		}
		res.RegistryEvents += n
		res.Registry.Add(s)
		if !receipted[seq] {
			b, _ := peekBatch(e.JWS)
			add(FindingExtra, b.BatchID, seq, "the registry's entry %d counts %d events of this ledger; the ledger holds no receipt for it", seq, n)
		}
	}
	sort.SliceStable(res.Findings, func(i, j int) bool { return res.Findings[i].Seq < res.Findings[j].Seq })
	return res, nil
}

// checkExtends checks that b extends a with the registry's consistency
// proof.
func checkExtends(ctx context.Context, client *contract.Client, contractID string, a, b *verify.Checkpoint) error {
	if b.Size < a.Size {
		return fmt.Errorf("%w: the log went back from size %d to %d", verify.ErrInconsistent, a.Size, b.Size)
	}
	return logExtends(ctx, client, contractID, a, b)
}

// ledgerEvents counts and sums the events of metering entry e that it
// accepted and that this ledger (its event ids are "<ledger id>-<seq>")
// wrote, or the rows of an aggregate batch over this ledger's rows; ok is
// false when there are none.
func ledgerEvents(ledgerID string, e *contract.Entry) (n int64, s contract.Sums, ok bool) {
	prefix := ledgerID + "-"
	b, err := peekBatch(e.JWS)
	if err != nil {
		return 0, s, false
	}
	if b.Rows != nil {
		// An aggregate batch is counted whole.
		if b.Rows.Ledger != ledgerID {
			return 0, s, false
		}
		for i := range b.Aggregates {
			s.Add(b.Aggregates[i].Sums())
		}
		return b.Rows.Count, s, true
	}
	accepted := make(map[string]bool, len(e.Accepted))
	for _, id := range e.Accepted {
		accepted[id] = true
	}
	for _, ev := range b.Events {
		if accepted[ev.ID] && strings.HasPrefix(ev.ID, prefix) {
			n++
			s.Add(ev.Sums())
		}
	}
	return n, s, n > 0
}

// peekBatch reads a metering batch's payload without checking its
// signature (the registry checked it at ingest; the receipts name the
// ledger's own).
func peekBatch(jws string) (*contract.MeteringBatch, error) {
	parts := strings.Split(jws, ".")
	if len(parts) != 3 {
		return &contract.MeteringBatch{}, fmt.Errorf("%w: not a compact JWS", verify.ErrMalformed)
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return &contract.MeteringBatch{}, fmt.Errorf("%w: %v", verify.ErrMalformed, err)
	}
	var b contract.MeteringBatch
	if err := json.Unmarshal(payload, &b); err != nil {
		return &contract.MeteringBatch{}, fmt.Errorf("%w: %v", verify.ErrMalformed, err)
	}
	return &b, nil
}

// describeDifference says how the registry's entry differs from the
// receipted one.
func describeDifference(receipted, got []byte) string {
	want, err1 := contract.DecodeEntry(receipted)
	have, err2 := contract.DecodeEntry(got)
	switch {
	case err1 != nil || err2 != nil:
		return "the registry's entry is not the receipted one"
	case have.Kind != contract.EntryMetering:
		return fmt.Sprintf("the registry's entry %d is a %s entry, not the receipted metering batch", have.Seq, have.Kind)
	case have.JWS != want.JWS:
		b, _ := peekBatch(have.JWS)
		return fmt.Sprintf("the registry's entry %d carries another batch (%q)", have.Seq, b.BatchID)
	case !slices.Equal(have.Accepted, want.Accepted):
		return fmt.Sprintf("the registry's entry %d counts %d events of the batch, the receipt %d", have.Seq, len(have.Accepted), len(want.Accepted))
	default:
		return fmt.Sprintf("the registry's entry %d differs from the receipted one (time or chain)", have.Seq)
	}
}

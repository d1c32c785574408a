package audit

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/meter"
	"github.com/provgate/provgate/verify"
)

// Source is where Export reads a contract's log: *contract.Client.
type Source interface {
	GetContract(ctx context.Context, id, etag string) (*contract.Contract, string, error)
	Checkpoint(ctx context.Context, id string) ([]byte, error)
	Events(ctx context.Context, id string, since uint64, limit int) (*contract.EventsPage, error)
	JWKS(ctx context.Context, u string) (*jose.JSONWebKeySet, error)
	URL(segments ...string) string
}

var _ Source = (*contract.Client)(nil)

// Ledger is what Export reads of a sidecar's ledger: *meter.Ledger.
type Ledger interface {
	ID() string
	Receipts(ctx context.Context, contractID string) ([]meter.StoredReceipt, error)
	Rows(ctx context.Context, after int64, fn func(r *meter.Row) error) error
	LogCheckpoint(ctx context.Context, contractID string) ([]byte, error)
	RowsRootOf(ctx context.Context, contractID string, rng meter.RowRange) ([]byte, int64, error)
	DiscloseRows(ctx context.Context, contractID string, rng meter.RowRange, seqs []int64) ([]meter.DisclosedRow, error)
}

var _ Ledger = (*meter.Ledger)(nil)

// ExportOptions say what to export.
type ExportOptions struct {
	Contract string
	// Job and Epochs limit the ledger's batches and totals to events of
	// that job and those epochs.
	Job    string
	Epochs *EpochRange
	// Rows are ledger row seqs to disclose with their proofs.
	Rows []int64
	// Now stamps the bundle (time.Now when zero).
	Now time.Time
}

// Export builds the bundle of a contract's log as src serves it and of
// the ledger's metering in it, and verifies it before returning it. A
// bundle that does not verify is returned with the *VerifyError, for the
// record.
func Export(ctx context.Context, src Source, l Ledger, opts ExportOptions) (*Bundle, error) {
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	id := opts.Contract
	c, _, err := src.GetContract(ctx, id, "")
	if err != nil {
		return nil, fmt.Errorf("audit export: contract %s: %w", id, err)
	}
	cpv, err := verify.NewCheckpointVerifier(c.Log.Origin, c.Log.CheckpointKey)
	if err != nil {
		return nil, fmt.Errorf("audit export: %s: %w", id, err)
	}
	// Receipts first: their checkpoints are then no newer than the one
	// read after.
	receipts, err := l.Receipts(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("audit export: %w", err)
	}
	ledgerCP, err := l.LogCheckpoint(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("audit export: %w", err)
	}
	raw, err := src.Checkpoint(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("audit export: checkpoint: %w", err)
	}
	cp, err := cpv.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("audit export: the registry's checkpoint: %w", err)
	}
	b := &Bundle{Format: Format, Contract: id, Created: opts.Now.UTC(), Log: c.Log, Checkpoint: string(raw),
		Ledger: LedgerScope{ID: l.ID(), Job: opts.Job, Epochs: opts.Epochs}}
	if b.Entries, err = fetchEntries(ctx, src, id, cp.Size); err != nil {
		return nil, err
	}
	leaves := make([][]byte, len(b.Entries))
	for i, e := range b.Entries {
		leaves[i] = contract.LeafHash(e)
	}
	if err := fetchKeys(ctx, src, b); err != nil {
		return nil, err
	}
	if err := addBatches(b, receipts, leaves, cp); err != nil {
		return nil, err
	}
	addCheckpoints(b, cpv, cp, leaves, receipts, ledgerCP)
	if err := discloseRows(ctx, l, b, opts.Rows); err != nil {
		return nil, err
	}
	if _, err := Verify(b, VerifyOptions{Now: opts.Now}); err != nil {
		return b, fmt.Errorf("audit export: the bundle made from the registry's log and the ledger does not verify: %w", err)
	}
	return b, nil
}

// fetchEntries reads entries 1..size.
func fetchEntries(ctx context.Context, src Source, id string, size uint64) ([][]byte, error) {
	out := make([][]byte, 0, size)
	for uint64(len(out)) < size {
		page, err := src.Events(ctx, id, uint64(len(out)), contract.MaxEventsLimit)
		if err != nil {
			return nil, fmt.Errorf("audit export: events after %d: %w", len(out), err)
		}
		if len(page.Entries) == 0 {
			return nil, fmt.Errorf("audit export: the registry serves %d entries, its checkpoint commits to %d", len(out), size)
		}
		for _, we := range page.Entries {
			if we.Seq != uint64(len(out))+1 {
				return nil, fmt.Errorf("audit export: the registry served entry %d after %d", we.Seq, len(out))
			}
			if we.Seq > size {
				break
			}
			out = append(out, we.Entry)
		}
	}
	return out, nil
}

// fetchKeys adds the keys the log names but does not hold: contributors'
// jwks_uri key sets and the sidecars' keys.
func fetchKeys(ctx context.Context, src Source, b *Bundle) error {
	uris := map[string]bool{}
	sidecars := map[string]bool{}
	for _, raw := range b.Entries {
		e, err := contract.DecodeEntry(raw)
		if err != nil {
			continue // Verify names it
		}
		switch e.Kind {
		case contract.EntryContract:
			tv, err := contract.ParseTermsText(noteText(e.Note))
			if err != nil {
				continue
			}
			for _, ct := range tv.Terms.Contributors {
				if (ct.JWKS == nil || len(ct.JWKS.Keys) == 0) && ct.JWKSURI != "" {
					uris[ct.JWKSURI] = true
				}
			}
		case contract.EntryMetering:
			if kid, err := verify.PeekKeyID(e.JWS, contract.TypeMetering); err == nil {
				sidecars[kid] = true
			}
		}
	}
	for _, u := range sortedKeys(uris) {
		set, err := src.JWKS(ctx, u)
		if err != nil {
			return fmt.Errorf("audit export: keys at %s: %w", u, err)
		}
		b.Keys.Fetched = append(b.Keys.Fetched, FetchedKeys{URI: u, JWKS: *set})
	}
	if len(sidecars) > 0 {
		b.Keys.Sidecars = map[string]jose.JSONWebKey{}
	}
	for _, jkt := range sortedKeys(sidecars) {
		set, err := src.JWKS(ctx, src.URL("sidecars", jkt, "jwks.json"))
		if err != nil {
			return fmt.Errorf("audit export: key of sidecar %s: %w", jkt, err)
		}
		if len(set.Keys) != 1 {
			return fmt.Errorf("audit export: the registry serves %d keys for sidecar %s", len(set.Keys), jkt)
		}
		b.Keys.Sidecars[jkt] = set.Keys[0].Public()
	}
	return nil
}

// noteText is the text of a signed note (before the blank line), for
// reading which keys to fetch; Verify checks the signature.
func noteText(n string) string {
	if i := bytes.Index([]byte(n), []byte("\n\n")); i >= 0 {
		return n[:i+1]
	}
	return n
}

// addBatches adds the ledger's batches with events in scope, in log
// order: each receipted one with its receipt (the ledger's evidence, kept
// even when the log's entry at its seq is another: Verify then names both),
// and any other entry of the log counting events of the ledger in scope
// (the ledger lost its receipt, or never got it) with an inclusion proof
// against the bundle's checkpoint.
func addBatches(b *Bundle, receipts []meter.StoredReceipt, leaves [][]byte, cp *verify.Checkpoint) error {
	bySeq := map[uint64]*meter.StoredReceipt{}
	for i := range receipts {
		bySeq[receipts[i].Seq()] = &receipts[i]
	}
	type item struct {
		index uint64
		bt    Batch
	}
	var items []item
	used := map[uint64]bool{}
	fromReceipt := func(r *meter.StoredReceipt) error {
		used[r.Seq()] = true
		mb, got, err := countedIn(r.Entry, &b.Ledger)
		if err != nil || got.Events == 0 {
			return err
		}
		items = append(items, item{r.Index, Batch{Batch: mb.BatchID, Counted: got, AfterSeq: r.AfterSeq, LastSeq: r.LastSeq, Entry: r.Entry,
			Proof: MarshalTLogProof(&TLogProof{Index: r.Index, Hashes: r.Inclusion, Checkpoint: []byte(r.Checkpoint)}), Rows: rowsOf(mb)}})
		return nil
	}
	for i, raw := range b.Entries {
		seq := uint64(i) + 1
		mb, got, err := countedIn(raw, &b.Ledger)
		if err != nil {
			return err
		}
		if got.Events == 0 {
			continue
		}
		if r := bySeq[seq]; r != nil {
			if err := fromReceipt(r); err != nil {
				return err
			}
			continue
		}
		lo, hi := int64(-1), int64(0)
		for _, ev := range mb.Events {
			if s, ok := b.Ledger.rowSeq(ev.ID); ok {
				if lo < 0 || s-1 < lo {
					lo = s - 1
				}
				hi = max(hi, s)
			}
		}
		if mb.Rows != nil {
			lo, hi = mb.Rows.AfterSeq, mb.Rows.LastSeq
		}
		items = append(items, item{seq - 1, Batch{Batch: mb.BatchID, Counted: got, AfterSeq: lo, LastSeq: hi, Entry: raw,
			Proof: MarshalTLogProof(&TLogProof{Index: seq - 1, Hashes: inclusionProof(leaves[:cp.Size], seq-1), Checkpoint: []byte(b.Checkpoint)}),
			Rows:  rowsOf(mb)}})
	}
	for i := range receipts {
		if !used[receipts[i].Seq()] {
			if err := fromReceipt(&receipts[i]); err != nil {
				return err
			}
		}
	}
	sort.SliceStable(items, func(i, j int) bool { return items[i].index < items[j].index })
	for _, it := range items {
		b.Batches = append(b.Batches, it.bt)
		b.Totals.Sums.Add(it.bt.Counted.Sums)
		b.Totals.Events += it.bt.Counted.Events
	}
	return nil
}

// rowsOf is the row tree an aggregate batch commits to, nil for a batch
// that lists its events.
func rowsOf(mb *contract.MeteringBatch) *RowsRoot {
	if mb.Rows == nil || mb.Rows.Count < 1 {
		return nil
	}
	return &RowsRoot{Count: uint64(mb.Rows.Count), Root: mb.Rows.Root}
}

// countedIn reads a log entry's metering batch (unverified: Verify checks
// it) and what it counted of the ledger in scope; nothing for another kind
// of entry or one that does not decode.
func countedIn(raw []byte, s *LedgerScope) (*contract.MeteringBatch, Totals, error) {
	e, err := contract.DecodeEntry(raw)
	if err != nil || e.Kind != contract.EntryMetering {
		return nil, Totals{}, nil
	}
	mb, err := peekBatch(e.JWS)
	if err != nil {
		return nil, Totals{}, nil
	}
	m := &metered{batch: mb, accepted: map[string]bool{}}
	for _, id := range e.Accepted {
		m.accepted[id] = true
	}
	got, err := m.counted(s)
	if err != nil {
		return nil, Totals{}, fmt.Errorf("audit export: %w", err)
	}
	return mb, got, nil
}

// addCheckpoints adds the receipts' checkpoints and the ledger's checked
// one that are older than the bundle's, each with its consistency proof.
func addCheckpoints(b *Bundle, cpv *verify.CheckpointVerifier, cp *verify.Checkpoint, leaves [][]byte, receipts []meter.StoredReceipt, ledgerCP []byte) {
	seen := map[string]bool{}
	add := func(raw []byte) {
		old, err := cpv.Parse(raw)
		if err != nil || old.Size >= cp.Size {
			return
		}
		key := fmt.Sprintf("%d %x", old.Size, old.Hash)
		if seen[key] {
			return
		}
		seen[key] = true
		b.Checkpoints = append(b.Checkpoints, OlderCheckpoint{Checkpoint: string(raw), Consistency: consistencyProof(leaves[:cp.Size], old.Size)})
	}
	for _, bt := range b.Batches {
		if p, err := ParseTLogProof(bt.Proof); err == nil {
			add(p.Checkpoint)
		}
	}
	_ = receipts
	if ledgerCP != nil {
		add(ledgerCP)
	}
	sort.SliceStable(b.Checkpoints, func(i, j int) bool { return b.Checkpoints[i].Checkpoint < b.Checkpoints[j].Checkpoint })
}

// discloseRows adds the ledger rows seqs, each with its proof in its
// batch's row tree, and the trees' roots to their batches.
func discloseRows(ctx context.Context, l Ledger, b *Bundle, seqs []int64) error {
	byBatch := map[int][]int64{}
	var order []int
	for _, seq := range seqs {
		bi := -1
		for i := range b.Batches {
			if seq > b.Batches[i].AfterSeq && seq <= b.Batches[i].LastSeq {
				bi = i
			}
		}
		if bi < 0 {
			return fmt.Errorf("audit export: row seq %d is in no batch of the bundle (not synced, or out of scope)", seq)
		}
		if _, ok := byBatch[bi]; !ok {
			order = append(order, bi)
		}
		byBatch[bi] = append(byBatch[bi], seq)
	}
	for _, bi := range order {
		bt := &b.Batches[bi]
		rng := meter.RowRange{AfterSeq: bt.AfterSeq, LastSeq: bt.LastSeq}
		root, count, err := l.RowsRootOf(ctx, b.Contract, rng)
		if err != nil {
			return fmt.Errorf("audit export: batch %s: %w", bt.Batch, err)
		}
		mine := &RowsRoot{Count: uint64(count), Root: root}
		if bt.Rows != nil && (bt.Rows.Count != mine.Count || !bytes.Equal(bt.Rows.Root, mine.Root)) {
			return fmt.Errorf("audit export: batch %s: the ledger's rows (%d, root %x) are not the ones its entry commits to (%d, root %x)",
				bt.Batch, mine.Count, mine.Root, bt.Rows.Count, bt.Rows.Root)
		}
		bt.Rows = mine
		ds, err := l.DiscloseRows(ctx, b.Contract, rng, byBatch[bi])
		if err != nil {
			return fmt.Errorf("audit export: batch %s: %w", bt.Batch, err)
		}
		for _, d := range ds {
			b.Rows = append(b.Rows, DisclosedRow{Seq: d.Seq, Batch: bt.Batch, Index: d.Index, Row: string(d.Leaf), Proof: d.Inclusion})
		}
	}
	return nil
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

package audit

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/meter"
	"github.com/provgate/provgate/verify"
)

// VerifyOptions are what an auditor brings to a bundle.
type VerifyOptions struct {
	// CheckpointKey is the log's verifier key as the auditor knows it
	// (from the contract as published). Empty: the bundle's own, which
	// proves only that the bundle is self-consistent; Report.Pinned says
	// which.
	CheckpointKey string
	// Witnesses, when set, must have cosigned the bundle's checkpoint.
	Witnesses *verify.WitnessPolicy
	// Now is the time freshness is judged at (time.Now when zero).
	Now time.Time
	// MaxAge, when positive, refuses a checkpoint (and witness
	// cosignatures) signed longer ago than this.
	MaxAge time.Duration
}

// Problem is one thing a bundle fails to prove, and where.
type Problem struct {
	// Where names what broke: "checkpoint", "entry 7", "batch b-1",
	// "attestation for name x.bin (entry 3)", "row seq 42", "totals".
	Where string `json:"where"`
	Err   error  `json:"-"`
}

func (p Problem) Error() string { return p.Where + ": " + p.Err.Error() }

// Unwrap gives the cause.
func (p Problem) Unwrap() error { return p.Err }

// VerifyError lists every problem of a bundle.
type VerifyError struct{ Problems []Problem }

func (e *VerifyError) Error() string {
	msgs := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		msgs[i] = p.Error()
	}
	return fmt.Sprintf("audit bundle does not verify (%d problems):\n  %s", len(e.Problems), strings.Join(msgs, "\n  "))
}

// Unwrap gives the problems.
func (e *VerifyError) Unwrap() []error {
	out := make([]error, len(e.Problems))
	for i, p := range e.Problems {
		out[i] = p
	}
	return out
}

// Report is what a verified bundle shows.
type Report struct {
	Contract   string             `json:"contract_id"`
	Checkpoint *verify.Checkpoint `json:"-"`
	// TreeSize and Root are the verified checkpoint's.
	TreeSize uint64 `json:"tree_size"`
	Root     []byte `json:"root"`
	// Pinned says the checkpoint key was the auditor's, not the bundle's.
	Pinned       bool   `json:"pinned"`
	Witnessed    bool   `json:"witnessed"`
	Entries      int    `json:"entries"`
	Attestations int    `json:"attestations"`
	Metering     int    `json:"metering"`
	Redactions   int    `json:"redactions"`
	Revocations  int    `json:"revocations"`
	Checkpoints  int    `json:"checkpoints"`
	Batches      int    `json:"batches"`
	Rows         int    `json:"rows"`
	Totals       Totals `json:"totals"`
	// Facts are what the log says, for compliance checks.
	Facts *Facts `json:"-"`
}

// Verify checks everything a bundle claims, offline: the checkpoint's
// signature (and witness cosignatures when asked), every entry's chain
// link and that the entries hash to the checkpoint's root, every earlier
// checkpoint's consistency with it, every terms version (signed by the log
// key), every attestation against the contributor keys in force at its
// entry, every metering batch (its sidecar's signature, the events the
// entry counts and their prices), every batch's receipt and that it is the
// log's entry, that the bundle leaves out no batch of the ledger in scope,
// the totals, and every disclosed row against its batch. The error is a
// *VerifyError listing every problem; the report is returned either way.
func Verify(b *Bundle, opts VerifyOptions) (*Report, error) {
	v := &verifier{b: b, opts: opts, rep: &Report{Contract: b.Contract}, byBatch: map[string]int{}}
	if v.opts.Now.IsZero() {
		v.opts.Now = time.Now()
	}
	v.run()
	if len(v.problems) > 0 {
		return v.rep, &VerifyError{Problems: v.problems}
	}
	return v.rep, nil
}

type verifier struct {
	b        *Bundle
	opts     VerifyOptions
	rep      *Report
	problems []Problem

	cpv    *verify.CheckpointVerifier
	cp     *verify.Checkpoint // nil when it does not verify
	leaves [][]byte
	// roots are the roots of the log's prefixes asked for, by size.
	roots   map[uint64][]byte
	replay  *replay
	byBatch map[string]int // batch id -> index in b.Batches
	// meteredBy caches meteredOf.
	meteredBy map[*Batch]*metered
}

func (v *verifier) fail(where string, err error) {
	v.problems = append(v.problems, Problem{Where: where, Err: err})
}

func (v *verifier) failf(where, format string, args ...any) {
	v.fail(where, fmt.Errorf(format, args...))
}

func (v *verifier) run() {
	b := v.b
	vkey := b.Log.CheckpointKey
	if v.opts.CheckpointKey != "" {
		v.rep.Pinned = true
		if vkey != v.opts.CheckpointKey {
			v.failf("checkpoint", "the bundle names log key %q, not the pinned %q", vkey, v.opts.CheckpointKey)
			vkey = v.opts.CheckpointKey
		}
	}
	var err error
	if v.cpv, err = verify.NewCheckpointVerifier(b.Log.Origin, vkey); err != nil {
		v.fail("checkpoint", err)
		return
	}
	v.checkCheckpoint()
	v.roots = map[uint64][]byte{}
	sizes := v.checkpointSizes()
	v.replayLog(sizes)
	v.checkRoots()
	v.checkBatches()
	v.checkRows()
	v.rep.Facts = v.replay.facts
}

// checkCheckpoint verifies the latest checkpoint: signature, freshness,
// witnesses.
func (v *verifier) checkCheckpoint() {
	cp, err := v.cpv.Parse([]byte(v.b.Checkpoint))
	if err != nil {
		v.fail("checkpoint", err)
		return
	}
	v.cp, v.rep.Checkpoint = cp, cp
	v.rep.TreeSize, v.rep.Root = cp.Size, cp.Hash
	if err := verify.CheckFresh(cp, v.opts.Now, v.opts.MaxAge); err != nil {
		v.fail("checkpoint", err)
	}
	if v.opts.Witnesses != nil {
		if err := v.opts.Witnesses.ForLog(v.cpv); err != nil {
			v.fail("checkpoint", err)
		} else if err := v.opts.Witnesses.Check(cp, v.opts.Now, v.opts.MaxAge); err != nil {
			v.fail("checkpoint", err)
		} else {
			v.rep.Witnessed = true
		}
	}
	if n := uint64(len(v.b.Entries)); n != cp.Size {
		v.failf("checkpoint", "it commits to %d entries, the bundle holds %d", cp.Size, n)
	}
}

// checkpointSizes are the sizes whose prefix roots the checks need: the
// earlier checkpoints' and the receipts'.
func (v *verifier) checkpointSizes() map[uint64]bool {
	sizes := map[uint64]bool{}
	if v.cp != nil {
		sizes[v.cp.Size] = true
	}
	for _, c := range v.b.Checkpoints {
		if cp, err := v.cpv.Parse([]byte(c.Checkpoint)); err == nil {
			sizes[cp.Size] = true
		}
	}
	for _, bt := range v.b.Batches {
		if p, err := ParseTLogProof(bt.Proof); err == nil {
			if cp, err := v.cpv.Parse(p.Checkpoint); err == nil {
				sizes[cp.Size] = true
			}
		}
	}
	return sizes
}

// replayLog checks every entry in order and keeps the roots of the
// prefixes in sizes.
func (v *verifier) replayLog(sizes map[uint64]bool) {
	v.replay = newReplay(v.b, v.cpv)
	rng := (&compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}).NewEmptyRange(0)
	prev := contract.ZeroHash
	v.leaves = make([][]byte, 0, len(v.b.Entries))
	for i, raw := range v.b.Entries {
		seq := uint64(i) + 1
		where := fmt.Sprintf("entry %d", seq)
		leaf := contract.LeafHash(raw)
		v.leaves = append(v.leaves, leaf)
		if err := rng.Append(leaf, nil); err != nil {
			v.fail(where, err)
			return
		}
		if sizes[seq] {
			root, err := rng.GetRootHash(nil)
			if err != nil {
				v.fail(where, err)
				return
			}
			v.roots[seq] = root
		}
		e, err := contract.DecodeEntry(raw)
		if err != nil {
			v.fail(where, err)
			prev = leaf
			continue
		}
		switch {
		case e.Seq != seq:
			v.failf(where, "it says it is entry %d", e.Seq)
		case e.Contract != v.b.Contract:
			v.failf(where, "it is an entry of contract %q", e.Contract)
		case e.PrevHash != hex.EncodeToString(prev):
			v.failf(where, "prev_hash %s is not the hash of entry %d (%x): an entry before it was changed, added or removed", e.PrevHash, seq-1, prev)
		}
		prev = leaf
		v.replay.entry(seq, e, v.fail)
	}
	v.rep.Entries = len(v.b.Entries)
	r := v.replay
	v.rep.Attestations, v.rep.Metering, v.rep.Redactions, v.rep.Revocations = r.attestations, r.metering, r.redactions, r.revocations
}

// checkRoots checks the entries against the latest checkpoint and the
// earlier ones (by their roots and by their consistency proofs).
func (v *verifier) checkRoots() {
	if v.cp == nil {
		return
	}
	if root, ok := v.roots[v.cp.Size]; ok && !bytes.Equal(root, v.cp.Hash) {
		v.failf("checkpoint", "the bundle's %d entries hash to root %x, the checkpoint signs %x: entries were changed", v.cp.Size, root, v.cp.Hash)
	}
	for i, c := range v.b.Checkpoints {
		where := fmt.Sprintf("checkpoints[%d]", i)
		old, err := v.cpv.Parse([]byte(c.Checkpoint))
		if err != nil {
			v.fail(where, err)
			continue
		}
		where = fmt.Sprintf("checkpoint of size %d", old.Size)
		v.rep.Checkpoints++
		if err := verify.VerifyConsistency(old, v.cp, c.Consistency); err != nil {
			v.fail(where, err)
			continue
		}
		if root, ok := v.roots[old.Size]; ok && !bytes.Equal(root, old.Hash) {
			v.failf(where, "the bundle's first %d entries hash to %x, it signs %x", old.Size, root, old.Hash)
		}
	}
}

// checkBatches checks each batch's receipt, that it is the log's entry,
// what it counted, that no batch of the ledger in scope is missing, and
// the totals.
func (v *verifier) checkBatches() {
	b := v.b
	var total Totals
	var lastSeq uint64
	inBundle := map[uint64]string{}
	for i := range b.Batches {
		bt := &b.Batches[i]
		v.byBatch[bt.Batch] = i
		where := "batch " + bt.Batch
		seq, ok := v.checkReceipt(bt)
		if !ok {
			continue
		}
		if seq <= lastSeq {
			v.failf(where, "entry %d comes after entry %d: batches must be in log order, each once", seq, lastSeq)
		}
		lastSeq = seq
		inBundle[seq] = bt.Batch
		m := v.replay.meteringAt(seq)
		if m == nil {
			v.failf(where, "entry %d holds no metering batch that verifies", seq)
			continue
		}
		if m.batch.BatchID != bt.Batch {
			v.failf(where, "entry %d holds batch %q", seq, m.batch.BatchID)
		}
		got, err := m.counted(&b.Ledger)
		if err != nil {
			v.fail(where, err)
			continue
		}
		if rows := m.batch.Rows; rows != nil {
			switch {
			case bt.AfterSeq != rows.AfterSeq || bt.LastSeq != rows.LastSeq:
				v.failf(where, "the bundle gives its rows as (%d, %d], its entry commits to (%d, %d]", bt.AfterSeq, bt.LastSeq, rows.AfterSeq, rows.LastSeq)
			case bt.Rows == nil:
				v.failf(where, "the bundle gives no row tree; its entry commits to %d rows with root %x", rows.Count, rows.Root)
			case bt.Rows.Count != uint64(rows.Count) || !bytes.Equal(rows.Root, bt.Rows.Root):
				v.failf(where, "the bundle's row tree (%d rows, root %x) is not the one its entry commits to (%d rows, root %x)", bt.Rows.Count, bt.Rows.Root, rows.Count, rows.Root)
			}
		}
		if got != bt.Counted {
			v.failf(where, "the bundle says it counted %s, its entry %d counts %s", bt.Counted, seq, got)
		}
		for _, ev := range m.batch.Events {
			if s, ok := b.Ledger.rowSeq(ev.ID); ok && (s <= bt.AfterSeq || s > bt.LastSeq) {
				v.failf(where, "it carries row seq %d, outside its rows (%d, %d]", s, bt.AfterSeq, bt.LastSeq)
				break
			}
		}
		if !total.Sums.Add(got.Sums) {
			v.failf("totals", "overflow")
		}
		total.Events += got.Events
	}
	v.rep.Batches = len(b.Batches)
	// Every batch of the ledger in scope that the log counted is in.
	for _, m := range v.replay.meter {
		if _, ok := inBundle[m.seq]; ok {
			continue
		}
		got, err := m.counted(&b.Ledger)
		if err == nil && got.Events > 0 {
			v.failf("batch "+m.batch.BatchID, "entry %d of the log counts %s of ledger %s in scope; the bundle leaves it out", m.seq, got, b.Ledger.ID)
		}
	}
	if total != b.Totals {
		v.failf("totals", "the bundle says %s, its batches count %s", b.Totals, total)
	}
	v.rep.Totals = total
}

// checkReceipt checks a batch's receipt: a tlog-proof for its entry
// against a checkpoint signed by the log key that is one log with the
// bundle's, and that the entry is the log's. It returns the entry's seq.
func (v *verifier) checkReceipt(bt *Batch) (uint64, bool) {
	where := "batch " + bt.Batch
	p, err := ParseTLogProof(bt.Proof)
	if err != nil {
		v.fail(where, fmt.Errorf("receipt: %w", err))
		return 0, false
	}
	seq := p.Index + 1
	ok := true
	if seq > uint64(len(v.leaves)) {
		v.failf(where, "receipted entry %d is beyond the bundle's log of %d entries", seq, len(v.leaves))
		ok = false
	} else if leaf := contract.LeafHash(bt.Entry); !bytes.Equal(v.leaves[seq-1], leaf) {
		v.failf(where, "its entry does not match its receipt's leaf: it hashes to %x, entry %d of the log to %x", leaf, seq, v.leaves[seq-1])
		ok = false
	}
	r := &contract.MeteringReceipt{Entry: bt.Entry, Leaf: contract.LeafHash(bt.Entry), Index: p.Index, Checkpoint: string(p.Checkpoint), Inclusion: p.Hashes}
	rcp, _, err := verify.VerifyMeteringReceipt(v.cpv, v.b.Contract, r)
	if err != nil {
		v.fail(where, fmt.Errorf("receipt: %w", err))
		return seq, false
	}
	if !ok {
		return seq, false
	}
	if root, found := v.roots[rcp.Size]; found && !bytes.Equal(root, rcp.Hash) {
		v.failf(where, "its receipt's checkpoint (size %d, root %x) is not of this log: the bundle's first %d entries hash to %x", rcp.Size, rcp.Hash, rcp.Size, root)
		ok = false
	} else if !found {
		v.failf(where, "its receipt's checkpoint of size %d is beyond the bundle's log", rcp.Size)
		ok = false
	}
	return seq, ok
}

// checkRows checks each disclosed row: its proof against its batch's row
// tree, its leaf (canonical, the ledger's row of that seq), and against
// the event of the same id the signed batch carries; and, when every row
// of a batch is disclosed, their sums against the batch's.
func (v *verifier) checkRows() {
	type cover struct {
		seen map[uint64]bool
		sum  Totals
		agg  map[int]*Totals // an aggregate batch's sums by aggregate
	}
	covers := map[string]*cover{}
	for i := range v.b.Rows {
		r := &v.b.Rows[i]
		where := fmt.Sprintf("row seq %d", r.Seq)
		bi, ok := v.byBatch[r.Batch]
		if !ok {
			v.failf(where, "batch %s is not in the bundle", r.Batch)
			continue
		}
		bt := &v.b.Batches[bi]
		m := v.meteredOf(bt)
		switch {
		case r.Seq <= bt.AfterSeq || r.Seq > bt.LastSeq:
			v.failf(where, "batch %s holds rows (%d, %d]", r.Batch, bt.AfterSeq, bt.LastSeq)
			continue
		case bt.Rows == nil:
			v.failf(where, "batch %s gives no row tree to check it against", r.Batch)
			continue
		case m == nil:
			continue // the batch's problem, already named
		}
		tree := treeOf(bt, m)
		d := meter.DisclosedRow{Seq: r.Seq, Leaf: []byte(r.Row), Index: r.Index, Size: tree.Count, Inclusion: r.Proof}
		if err := meter.VerifyDisclosedRow(tree.Root, tree.Count, d); err != nil {
			v.failf(where, "inclusion proof does not verify against batch %s root %x: %v", r.Batch, tree.Root, err)
			continue
		}
		row, err := decodeRowLeaf([]byte(r.Row))
		if err != nil {
			v.fail(where, err)
			continue
		}
		if id := v.b.Ledger.ID + "-" + fmt.Sprint(r.Seq); row.Seq != r.Seq || row.ID != id || row.Contract != v.b.Contract {
			v.failf(where, "the leaf proven is row %d (%s) of contract %q, not %s", row.Seq, row.ID, row.Contract, id)
			continue
		}
		agg := -1
		if m.batch.Aggregated() {
			if agg = m.aggregateOf(row); agg < 0 {
				v.failf(where, "no aggregate of batch %s sums a row like it (%s/%s job %q epoch %d at %s)", r.Batch,
					row.Kind, row.Outcome, row.Job, row.Epoch, row.Time.UTC().Format(time.RFC3339Nano))
				continue
			}
		} else {
			ev := m.event(row.ID)
			if ev == nil {
				v.failf(where, "batch %s carries no event %s", r.Batch, row.ID)
				continue
			}
			if diff := rowDiffers(row, ev); diff != "" {
				v.failf(where, "the disclosed row is not the event batch %s carries: %s", r.Batch, diff)
				continue
			}
		}
		c := covers[r.Batch]
		if c == nil {
			c = &cover{seen: map[uint64]bool{}, agg: map[int]*Totals{}}
			covers[r.Batch] = c
		}
		if !c.seen[r.Index] {
			c.seen[r.Index] = true
			c.sum.Events++
			c.sum.Sums.Add(rowSums(row))
			if agg >= 0 {
				if c.agg[agg] == nil {
					c.agg[agg] = &Totals{}
				}
				c.agg[agg].Events++
				c.agg[agg].Sums.Add(rowSums(row))
			}
		}
		v.rep.Rows++
	}
	for _, n := range sortedKeys(keysOf(covers)) {
		c := covers[n]
		bt := &v.b.Batches[v.byBatch[n]]
		m := v.meteredOf(bt)
		if uint64(len(c.seen)) != treeOf(bt, m).Count {
			continue
		}
		if want := m.sums(); c.sum != want {
			v.failf("batch "+n, "its %d disclosed rows sum to %s, the batch commits to %s", len(c.seen), c.sum, want)
		}
		// Each aggregate is the sum of the rows it holds: sums moved
		// between aggregates (another job, epoch or lease) keep the
		// batch's total, not its scoped bills.
		for i := range m.batch.Aggregates {
			a := &m.batch.Aggregates[i]
			var got Totals
			if t := c.agg[i]; t != nil {
				got = *t
			}
			if want := (Totals{Events: a.Events, Sums: a.Sums()}); got != want {
				v.failf("batch "+n, "aggregate %d (%s/%s job %q epoch %d) sums %s, its disclosed rows sum to %s", i,
					a.Kind, a.Outcome, a.Job, a.Epoch, want, got)
			}
		}
	}
}

// treeOf is a batch's row tree: the one an aggregate batch's signed entry
// commits to, else the bundle's.
func treeOf(bt *Batch, m *metered) RowsRoot {
	if c := m.batch.Rows; c != nil {
		return RowsRoot{Count: uint64(c.Count), Root: c.Root}
	}
	return *bt.Rows
}

// meteredOf is the verified metering entry of a batch, or nil; its
// entry is decoded once, however many rows name it.
func (v *verifier) meteredOf(bt *Batch) *metered {
	if m, ok := v.meteredBy[bt]; ok {
		return m
	}
	var m *metered
	if e, err := contract.DecodeEntry(bt.Entry); err == nil {
		m = v.replay.meteringAt(e.Seq)
	}
	if v.meteredBy == nil {
		v.meteredBy = map[*Batch]*metered{}
	}
	v.meteredBy[bt] = m
	return m
}

func keysOf[V any](m map[string]V) map[string]bool {
	out := make(map[string]bool, len(m))
	for k := range m {
		out[k] = true
	}
	return out
}

// rowSeq is the ledger row seq of event id, when the event is this
// ledger's.
func (s *LedgerScope) rowSeq(id string) (int64, bool) {
	ledger, n, ok := contract.SplitEventID(id)
	return n, ok && ledger == s.ID
}

func (t Totals) String() string {
	return fmt.Sprintf("%d events (%d samples, %d bytes, %d units, %d nano-USD)", t.Events, t.Samples, t.Bytes, t.Units, t.CostNanoUSD)
}

package meter

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/provgate/provgate/contract"
)

// scanRows calls fn for each row the query returns (seq, contract, rec,
// hash), decoded.
func (l *Ledger) scanRows(ctx context.Context, fn func(*Row, int64) error, query string, args ...any) error {
	rows, err := l.rdb.QueryContext(ctx, query, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	var r Row
	for rows.Next() {
		var cid int64
		var rec []byte
		r = Row{}
		if err := rows.Scan(&r.Seq, &cid, &rec, &r.Hash); err != nil {
			return err
		}
		if err := decodeRecord(rec, &r); err != nil {
			return fmt.Errorf("row %d: %w", r.Seq, err)
		}
		r.ID = eventID(l.id, r.Seq)
		if err := fn(&r, cid); err != nil {
			return err
		}
	}
	return rows.Err()
}

// Rows calls fn for every row with seq > after, in seq order. fn must not
// keep r.
func (l *Ledger) Rows(ctx context.Context, after int64, fn func(r *Row) error) error {
	return l.scanRows(ctx, func(r *Row, _ int64) error { return fn(r) },
		"SELECT seq, contract, rec, hash FROM events WHERE seq > ? ORDER BY seq", after)
}

// Cursor is a contract's sync state.
type Cursor struct {
	Contract string
	// AckedSeq: every row of the contract up to it is acknowledged.
	AckedSeq int64
	// PendingBatch is the batch in flight (its Idempotency-Key), if any.
	PendingBatch string
	PendingLast  int64
}

// Cursors returns every contract's sync state, by contract id.
func (l *Ledger) Cursors(ctx context.Context) (map[string]Cursor, error) {
	rows, err := l.rdb.QueryContext(ctx, "SELECT contract_id, acked_seq, pending_batch, pending_last FROM contracts")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]Cursor{}
	for rows.Next() {
		var c Cursor
		var pb sql.NullString
		var pl sql.NullInt64
		if err := rows.Scan(&c.Contract, &c.AckedSeq, &pb, &pl); err != nil {
			return nil, err
		}
		c.PendingBatch, c.PendingLast = pb.String, pl.Int64
		out[c.Contract] = c
	}
	return out, rows.Err()
}

// Totals sums a contract's rows the way the registry's
// GET /provenance/{id}/metering/totals does, so the two can be compared.
// With onlySynced it counts only rows the registry acknowledged.
func (l *Ledger) Totals(ctx context.Context, contractID string, onlySynced bool) (contract.MeteringTotals, error) {
	t := contract.MeteringTotals{Contract: contractID}
	var cid, acked int64
	err := l.rdb.QueryRowContext(ctx, "SELECT id, acked_seq FROM contracts WHERE contract_id = ?", contractID).Scan(&cid, &acked)
	if errors.Is(err, sql.ErrNoRows) {
		return t, nil
	}
	if err != nil {
		return t, err
	}
	upTo := int64(1<<63 - 1)
	if onlySynced {
		upTo = acked
	}
	err = l.scanRows(ctx, func(r *Row, _ int64) error {
		addTotals(&t, r.MeteringEvent())
		return nil
	}, "SELECT seq, contract, rec, hash FROM events WHERE contract = ? AND seq <= ? ORDER BY seq", cid, upTo)
	return t, err
}

// addTotals adds one event to registry-style totals (see the registry's
// GET /provenance/{id}/metering/totals). Presigned objects are the
// registry's alone.
func addTotals(t *contract.MeteringTotals, e contract.MeteringEvent) {
	t.Events++
	t.Units += e.Units
	t.CostNanoUSD += e.CostNanoUSD
	switch e.Kind {
	case contract.EventAccess:
		t.AccessEvents++
		t.AccessBytes += e.Bytes
	case contract.EventEpoch:
		t.EpochEvents++
		t.EpochSamples += e.Samples
		t.EpochBytes += e.Bytes
		return
	}
	if billable(e.Outcome) {
		t.BilledEvents++
		t.BilledSamples += e.Samples
		t.BilledBytes += e.Bytes
		t.BilledUnits += e.Units
		t.BilledCostNanoUSD += e.CostNanoUSD
	} else {
		t.UnbilledEvents++
		t.UnbilledBytes += e.Bytes
	}
}

// VerifyResult describes a chain that verified.
type VerifyResult struct {
	Rows     int64
	FirstSeq int64 // 0 when empty
	HeadSeq  int64
	HeadHash string
}

// TamperError names the first row that breaks the chain.
type TamperError struct {
	Seq    int64
	ID     string
	Reason string
}

func (e *TamperError) Error() string {
	return fmt.Sprintf("meter: ledger row %d (event %s) %s", e.Seq, e.ID, e.Reason)
}

func (e *TamperError) Unwrap() error { return ErrTampered }

// Verify walks the chain from its anchor (genesis, or the last pruned
// row) to the head, and returns a *TamperError (wrapping ErrTampered)
// naming the first row that was edited, deleted or inserted.
func (l *Ledger) Verify(ctx context.Context) (*VerifyResult, error) {
	// One read transaction: a consistent snapshot while the sidecar writes
	// and prunes.
	tx, err := l.rdb.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	prevSeq, prev := int64(0), genesis(l.id)
	if seq, ok, err := metaInt(ctx, tx, "anchor_seq"); err != nil {
		return nil, err
	} else if ok {
		h, _, err := metaGet(ctx, tx, "anchor_hash")
		if err != nil {
			return nil, err
		}
		prevSeq, prev = seq, h
	}
	head, hasHead, err := metaInt(ctx, tx, "head_seq")
	if err != nil {
		return nil, err
	}
	headHash, _, err := metaGet(ctx, tx, "head_hash")
	if err != nil {
		return nil, err
	}
	names := map[int64]string{}
	rows, err := tx.QueryContext(ctx, "SELECT id, contract_id FROM contracts")
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var id int64
		var n string
		if err := rows.Scan(&id, &n); err != nil {
			rows.Close()
			return nil, err
		}
		names[id] = n
	}
	rows.Close()
	res := &VerifyResult{}
	var h chainHasher
	tamper := func(seq int64, reason string) error {
		return &TamperError{Seq: seq, ID: eventID(l.id, seq), Reason: reason}
	}
	rows, err = tx.QueryContext(ctx, "SELECT seq, contract, rec, hash FROM events ORDER BY seq")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var seq, cid int64
		var rec, hash []byte
		if err := rows.Scan(&seq, &cid, &rec, &hash); err != nil {
			return nil, err
		}
		switch {
		case seq <= prevSeq:
			return nil, tamper(seq, fmt.Sprintf("lies before the chain's anchor at row %d (inserted)", prevSeq))
		case seq > prevSeq+1 && prevSeq+1 == seq-1:
			return nil, tamper(prevSeq+1, "is missing (deleted)")
		case seq > prevSeq+1:
			return nil, tamper(prevSeq+1, fmt.Sprintf("is missing, with rows up to %d (deleted)", seq-1))
		}
		want := h.sum(prev, seq, rec)
		if !bytes.Equal(want[:], hash) {
			return nil, tamper(seq, "does not match its chain hash (edited)")
		}
		var r Row
		if err := decodeRecord(rec, &r); err != nil {
			return nil, tamper(seq, "has a malformed record")
		}
		if names[cid] != r.Contract {
			return nil, tamper(seq, fmt.Sprintf("is filed under contract %q but records %q (edited)", names[cid], r.Contract))
		}
		if hasHead && seq == head && !bytes.Equal(hash, headHash) {
			return nil, tamper(seq, "does not match the ledger's recorded head (edited)")
		}
		if res.FirstSeq == 0 {
			res.FirstSeq = seq
		}
		res.Rows++
		prevSeq, prev = seq, hash
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if hasHead && head > prevSeq {
		if head == prevSeq+1 {
			return nil, tamper(head, "is missing: the ledger's head is past the last row (deleted)")
		}
		return nil, tamper(prevSeq+1, fmt.Sprintf("is missing, with rows up to the head %d (deleted)", head))
	}
	res.HeadSeq, res.HeadHash = prevSeq, hex.EncodeToString(prev)
	return res, nil
}

// ExportRow is one line of `provgate meter export`
// (provgate.meter.export/v1): fields are only ever added.
type ExportRow struct {
	Seq         int64     `json:"seq"`
	ID          string    `json:"id"`
	Kind        string    `json:"kind"`
	Time        time.Time `json:"time"`
	Contract    string    `json:"contract_id"`
	Name        string    `json:"name,omitempty"`
	Bytes       int64     `json:"bytes"`
	Samples     int64     `json:"samples"`
	Tokens      int64     `json:"tokens"`
	Distinct    int64     `json:"distinct,omitempty"`
	Events      int64     `json:"events,omitempty"`
	Units       int64     `json:"units"`
	CostNanoUSD int64     `json:"cost_nano_usd"`
	Epoch       int64     `json:"epoch"`
	Job         string    `json:"job,omitempty"`
	TokenID     string    `json:"token_jti,omitempty"`
	Lease       string    `json:"lease,omitempty"`
	TermsSeq    uint64    `json:"terms_seq,omitempty"`
	DecodedSHA  string    `json:"decoded_sha256,omitempty"`
	Outcome     string    `json:"outcome,omitempty"`
	Hash        string    `json:"hash"`
	Synced      bool      `json:"synced"`
}

// Export calls fn with every row after seq after, in seq order, in the
// export schema.
func (l *Ledger) Export(ctx context.Context, after int64, fn func(ExportRow) error) error {
	cur, err := l.Cursors(ctx)
	if err != nil {
		return err
	}
	return l.Rows(ctx, after, func(r *Row) error {
		return fn(ExportRow{
			Seq: r.Seq, ID: r.ID, Kind: r.Kind, Time: r.Time, Contract: r.Contract, Name: r.Name, Bytes: r.Bytes,
			Samples: r.Samples, Tokens: r.Tokens, Distinct: r.Distinct, Events: r.Events, Units: r.Units,
			CostNanoUSD: r.CostNanoUSD, Epoch: r.Epoch, Job: r.Job, TokenID: r.TokenID, Lease: r.Lease, TermsSeq: r.TermsSeq, DecodedSHA: r.DecodedSHA,
			Outcome: r.Outcome, Hash: hex.EncodeToString(r.Hash), Synced: r.Seq <= cur[r.Contract].AckedSeq,
		})
	})
}

// ReportLine is one (contract, epoch, job) of a report: its access rows,
// and whether an epoch summary closed it.
type ReportLine struct {
	Contract    string `json:"contract_id"`
	Epoch       int64  `json:"epoch"`
	Job         string `json:"job"`
	Events      int64  `json:"events"`
	Served      int64  `json:"served"`
	Refused     int64  `json:"not_served"`
	Samples     int64  `json:"samples"`
	Bytes       int64  `json:"bytes"`
	Distinct    int64  `json:"distinct_objects"`
	Units       int64  `json:"units"`
	CostNanoUSD int64  `json:"cost_nano_usd"`
	Unsynced    int64  `json:"unsynced"`
	Closed      bool   `json:"closed"`

	names map[string]bool
}

// Report sums the ledger per contract, epoch and job, sorted.
func (l *Ledger) Report(ctx context.Context) ([]ReportLine, error) {
	cur, err := l.Cursors(ctx)
	if err != nil {
		return nil, err
	}
	type key struct {
		c   string
		e   int64
		job string
	}
	lines := map[key]*ReportLine{}
	err = l.Rows(ctx, 0, func(r *Row) error {
		k := key{r.Contract, r.Epoch, r.Job}
		ln := lines[k]
		if ln == nil {
			ln = &ReportLine{Contract: r.Contract, Epoch: r.Epoch, Job: r.Job, names: map[string]bool{}}
			lines[k] = ln
		}
		if r.Seq > cur[r.Contract].AckedSeq {
			ln.Unsynced++
		}
		if r.Kind == contract.EventEpoch {
			ln.Closed = true
			return nil
		}
		ln.Events++
		if !billable(r.Outcome) {
			ln.Refused++
			return nil
		}
		ln.Served++
		ln.Samples += r.Samples
		ln.Bytes += r.Bytes
		ln.Units += r.Units
		ln.CostNanoUSD += r.CostNanoUSD
		ln.names[r.Name] = true
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make([]ReportLine, 0, len(lines))
	for _, ln := range lines {
		ln.Distinct = int64(len(ln.names))
		out = append(out, *ln)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Contract != b.Contract {
			return a.Contract < b.Contract
		}
		if a.Epoch != b.Epoch {
			return a.Epoch < b.Epoch
		}
		return a.Job < b.Job
	})
	return out, nil
}

// FormatUSD renders nano-USD as dollars with nine decimals.
func FormatUSD(nano int64) string {
	sign := ""
	if nano < 0 {
		sign, nano = "-", -nano
	}
	frac := strconv.FormatInt(nano%1e9, 10)
	for len(frac) < 9 {
		frac = "0" + frac
	}
	return sign + "$" + strconv.FormatInt(nano/1e9, 10) + "." + frac
}

package meter_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/meter"
)

// mustRows returns every row of the ledger, in seq order.
func mustRows(tb testing.TB, l *meter.Ledger) []meter.Row {
	tb.Helper()
	var rows []meter.Row
	if err := l.Rows(context.Background(), 0, func(r *meter.Row) error {
		rows = append(rows, *r)
		return nil
	}); err != nil {
		tb.Fatal(err)
	}
	return rows
}

func TestRowLeafIsCanonicalJSON(t *testing.T) {
	r := meter.Row{
		Seq: 42, ID: "ledger-42", Kind: contract.EventAccess, Time: time.Date(2026, 11, 30, 1, 2, 3, 400_000_000, time.UTC),
		Contract: "did:example:c", Name: "a\"b\\c\n\x01<é>\u2028\xff", Bytes: 1 << 40, Samples: 1, Units: 1, CostNanoUSD: 500_000,
		Epoch: 3, Job: "job", TokenID: "tok", Lease: "lease", TermsSeq: 7, DecodedSHA: "ab", Outcome: contract.OutcomeServed,
	}
	got := string(meter.RowLeaf(&r))
	want := `{"bytes":1099511627776,"contract_id":"did:example:c","cost_nano_usd":500000,"decoded_sha256":"ab","distinct":0,` +
		`"epoch":3,"events":0,"id":"ledger-42","job":"job","kind":"access","lease":"lease","name":"a\"b\\c\n\u0001<é>` + "\u2028\uFFFD" + `",` +
		`"outcome":"served","samples":1,"seq":42,"terms_seq":7,"time":"2026-11-30T01:02:03.4Z","token_jti":"tok","tokens":0,"units":1}`
	if got != want {
		t.Fatalf("leaf\n got %s\nwant %s", got, want)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(got), &m); err != nil || len(m) != 20 {
		t.Fatalf("leaf is not a JSON object of 20 keys: %v (%d keys)", err, len(m))
	}
	lh := sha256.Sum256(append([]byte{0}, got...))
	if !bytes.Equal(meter.RowLeafHash(&r), lh[:]) {
		t.Fatal("leaf hash is not SHA-256(0x00 || leaf)")
	}

	// A third party recomputes the leaf from the export line with Python's
	// json module alone.
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3")
	}
	export := map[string]any{
		"seq": r.Seq, "id": r.ID, "kind": r.Kind, "time": r.Time, "contract_id": r.Contract, "name": r.Name,
		"bytes": r.Bytes, "samples": r.Samples, "tokens": r.Tokens, "units": r.Units, "cost_nano_usd": r.CostNanoUSD,
		"epoch": r.Epoch, "job": r.Job, "token_jti": r.TokenID, "lease": r.Lease, "terms_seq": r.TermsSeq,
		"decoded_sha256": r.DecodedSHA, "outcome": r.Outcome, "hash": "00", "synced": true,
	}
	line, err := json.Marshal(export)
	if err != nil {
		t.Fatal(err)
	}
	const script = `import json, sys
row = json.loads(sys.stdin.read())
for k in ("hash", "synced"): row.pop(k, None)
for k in ("distinct", "events", "tokens", "terms_seq", "epoch", "bytes", "samples", "units", "cost_nano_usd"): row.setdefault(k, 0)
for k in ("name", "job", "token_jti", "lease", "decoded_sha256", "outcome"): row.setdefault(k, "")
sys.stdout.buffer.write(json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())`
	cmd := exec.Command(py, "-c", script)
	cmd.Stdin = bytes.NewReader(line)
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != got {
		t.Fatalf("python's leaf\n got %s\nwant %s", out, got)
	}
}

func TestDiscloseRowsProvesEachRow(t *testing.T) {
	ctx := context.Background()
	l := MustOpen(t, "", meter.Config{})
	const other = "did:example:other"
	if err := l.SetPricing(ctx, other, contract.Pricing{Unit: contract.UnitByte, PriceUSD: 0.000001}); err != nil {
		t.Fatal(err)
	}
	for i := range 13 {
		if _, err := l.Record(ctx, access(i)); err != nil {
			t.Fatal(err)
		}
		if i%4 == 0 { // another contract's rows interleave and are not in the tree
			ev := access(i)
			ev.Contract = other
			if _, err := l.Record(ctx, ev); err != nil {
				t.Fatal(err)
			}
		}
	}
	var mine []meter.Row
	for _, r := range mustRows(t, l) {
		if r.Contract == testContract {
			mine = append(mine, r)
		}
	}
	// The batch: the contract's rows after the first one.
	batch := mine[1:]
	rng := meter.RowRange{AfterSeq: mine[0].Seq, LastSeq: batch[len(batch)-1].Seq}
	root, n, err := l.RowsRootOf(ctx, testContract, rng)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(len(batch)) || !bytes.Equal(root, meter.RowsRoot(batch)) {
		t.Fatalf("RowsRootOf = %x over %d rows, want RowsRoot = %x over %d", root, n, meter.RowsRoot(batch), len(batch))
	}
	seqs := []int64{batch[0].Seq, batch[5].Seq, batch[len(batch)-1].Seq}
	ds, err := l.DiscloseRows(ctx, testContract, rng, seqs)
	if err != nil {
		t.Fatal(err)
	}
	size := uint64(len(batch))
	for i, d := range ds {
		if d.Seq != seqs[i] || !bytes.Equal(d.Leaf, meter.RowLeaf(&batch[d.Index])) {
			t.Fatalf("disclosed row %d: seq %d index %d, not the batch's row", i, d.Seq, d.Index)
		}
		if err := meter.VerifyDisclosedRow(root, size, d); err != nil {
			t.Fatalf("row %d: %v", d.Seq, err)
		}
	}

	bad := func(name string, root []byte, size uint64, d meter.DisclosedRow) {
		t.Helper()
		if err := meter.VerifyDisclosedRow(root, size, d); !errors.Is(err, meter.ErrDisclosure) {
			t.Errorf("%s: got %v, want ErrDisclosure", name, err)
		}
	}
	d := ds[1]
	changed := d
	changed.Leaf = bytes.Replace(d.Leaf, []byte(`"samples":1`), []byte(`"samples":2`), 1)
	bad("a changed row", root, size, changed)
	wrongProof := d
	wrongProof.Inclusion = ds[0].Inclusion
	bad("another row's proof", root, size, wrongProof)
	wrongIndex := d
	wrongIndex.Index++
	bad("another index", root, size, wrongIndex)
	otherSeq := ds[0]
	otherSeq.Seq = d.Seq
	bad("a row under another seq", root, size, otherSeq)
	bad("another root", meter.RowsRoot(mine), size, d)
	bad("another size", root, size+1, d)

	if _, err := l.DiscloseRows(ctx, testContract, rng, []int64{mine[0].Seq}); err == nil || !strings.Contains(err.Error(), "not in") {
		t.Errorf("a row outside the range was disclosed: %v", err)
	}
}

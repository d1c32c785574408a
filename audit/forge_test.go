package audit_test

import (
	"encoding/hex"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/merkle/testonly"

	"github.com/provgate/provgate/audit"
	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/meter"
	"github.com/provgate/provgate/verify"
)

// forgery is a log written by a registry that holds its own log key and
// appends whatever it likes: entries a real registry refuses to make, to
// see that a bundle of them does not verify. Its entries are real
// (encoded, chained, signed); only the choice of what goes in is the
// attacker's.
type forgery struct {
	t       *testing.T
	info    contract.LogInfo
	signer  *verify.CheckpointSigner
	terms   *contract.Contract
	entries [][]byte
	sidecar *jose.JSONWebKey
	start   time.Time
}

// newForgery starts a log of terms c (entry 1, in force from start) under
// a fresh log key, with a fresh sidecar key.
func newForgery(t *testing.T, c *contract.Contract, start time.Time) *forgery {
	t.Helper()
	origin := "forge.example/" + c.ContractID
	skey, vkey, err := verify.GenerateCheckpointKey(origin)
	if err != nil {
		t.Fatal(err)
	}
	f := &forgery{t: t, info: contract.LogInfo{Origin: origin, CheckpointKey: vkey}, start: start}
	if f.signer, err = verify.NewCheckpointSigner(skey); err != nil {
		t.Fatal(err)
	}
	if f.sidecar, err = verify.GenerateKey(jose.EdDSA); err != nil {
		t.Fatal(err)
	}
	f.addTerms(c, start)
	return f
}

// addTerms appends a terms version of c in force from eff, logged at eff.
func (f *forgery) addTerms(c *contract.Contract, eff time.Time) uint64 {
	f.t.Helper()
	tc := *c
	tc.Log = f.info
	f.terms = &tc
	note, err := f.signer.SignTerms(&contract.TermsVersion{Contract: c.ContractID, EffectiveFrom: eff.UTC(), Terms: tc})
	if err != nil {
		f.t.Fatal(err)
	}
	return f.add(&contract.Entry{Kind: contract.EntryContract, Note: note, Time: eff})
}

// add appends e, chained to the last entry; it returns e's seq.
func (f *forgery) add(e *contract.Entry) uint64 {
	f.t.Helper()
	e.V, e.Seq, e.Contract = contract.EntryVersion, uint64(len(f.entries))+1, f.terms.ContractID
	prev := contract.ZeroHash
	if n := len(f.entries); n > 0 {
		prev = contract.LeafHash(f.entries[n-1])
	}
	e.PrevHash = hex.EncodeToString(prev)
	raw, err := contract.EncodeEntry(e)
	if err != nil {
		f.t.Fatal(err)
	}
	f.entries = append(f.entries, raw)
	return e.Seq
}

// meter appends mb signed by the sidecar, counting accepted, at time at.
func (f *forgery) meter(mb *contract.MeteringBatch, accepted []string, at time.Time) uint64 {
	f.t.Helper()
	mb.Contract, mb.Sidecar, mb.IssuedAt = f.terms.ContractID, f.sidecar.KeyID, at.Unix()
	jws, err := verify.SignMeteringBatch(f.sidecar, mb)
	if err != nil {
		f.t.Fatal(err)
	}
	return f.add(&contract.Entry{Kind: contract.EntryMetering, JWS: jws, Accepted: accepted, Time: at})
}

// bundle is the log as a bundle of ledger ledgerID with no batches.
func (f *forgery) bundle(ledgerID string) *audit.Bundle {
	f.t.Helper()
	leaves := make([][]byte, len(f.entries))
	for i, e := range f.entries {
		leaves[i] = contract.LeafHash(e)
	}
	cp, err := f.signer.Sign(f.info.Origin, uint64(len(leaves)), rootOf(leaves))
	if err != nil {
		f.t.Fatal(err)
	}
	return &audit.Bundle{Format: audit.Format, Contract: f.terms.ContractID, Created: time.Now().UTC(), Log: f.info,
		Checkpoint: string(cp), Entries: f.entries, Ledger: audit.LedgerScope{ID: ledgerID},
		Keys: audit.Keys{Sidecars: map[string]jose.JSONWebKey{f.sidecar.KeyID: f.sidecar.Public()}}}
}

// withBatches adds to b the aggregate batches of entries seqs, each with
// a receipt against b's checkpoint and what it counts in b's scope, and
// sets the totals.
func (f *forgery) withBatches(b *audit.Bundle, seqs ...uint64) *audit.Bundle {
	f.t.Helper()
	tree := testonly.New(rfc6962.DefaultHasher)
	tree.AppendData(f.entries...)
	for _, seq := range seqs {
		e, err := contract.DecodeEntry(f.entries[seq-1])
		if err != nil {
			f.t.Fatal(err)
		}
		pub := f.sidecar.Public()
		mb, err := verify.VerifyMeteringBatch(e.JWS, &pub)
		if err != nil {
			f.t.Fatal(err)
		}
		hashes, err := tree.InclusionProof(seq-1, uint64(len(f.entries)))
		if err != nil {
			f.t.Fatal(err)
		}
		bt := audit.Batch{Batch: mb.BatchID, AfterSeq: mb.Rows.AfterSeq, LastSeq: mb.Rows.LastSeq, Entry: f.entries[seq-1],
			Proof: audit.MarshalTLogProof(&audit.TLogProof{Index: seq - 1, Hashes: hashes, Checkpoint: []byte(b.Checkpoint)}),
			Rows:  &audit.RowsRoot{Count: uint64(mb.Rows.Count), Root: mb.Rows.Root}}
		for _, a := range mb.Aggregates {
			if mb.Rows.Ledger == b.Ledger.ID && (b.Ledger.Job == "" || a.Job == b.Ledger.Job) && b.Ledger.Epochs.Contains(a.Epoch) {
				bt.Counted.Sums.Add(a.Sums())
				bt.Counted.Events += a.Events
			}
		}
		b.Totals.Sums.Add(bt.Counted.Sums)
		b.Totals.Events += bt.Counted.Events
		b.Batches = append(b.Batches, bt)
	}
	return b
}

// disclose adds every row of rows (the whole of batch's tree) to b.
func disclose(t *testing.T, b *audit.Bundle, batch string, rows []meter.Row) {
	t.Helper()
	leaves := make([][]byte, len(rows))
	for i := range rows {
		leaves[i] = meter.RowLeaf(&rows[i])
	}
	tree := testonly.New(rfc6962.DefaultHasher)
	tree.AppendData(leaves...)
	for i := range rows {
		p, err := tree.InclusionProof(uint64(i), uint64(len(rows)))
		if err != nil {
			t.Fatal(err)
		}
		b.Rows = append(b.Rows, audit.DisclosedRow{Seq: rows[i].Seq, Batch: batch, Index: uint64(i), Row: string(leaves[i]), Proof: p})
	}
}

// rootOf is the RFC 6962 root of leaf hashes.
func rootOf(leaves [][]byte) []byte {
	switch len(leaves) {
	case 0:
		return rfc6962.DefaultHasher.EmptyRoot()
	case 1:
		return leaves[0]
	}
	k := 1
	for k<<1 < len(leaves) {
		k <<= 1
	}
	return rfc6962.DefaultHasher.HashChildren(rootOf(leaves[:k]), rootOf(leaves[k:]))
}

package contract_test

import (
	"bytes"
	"encoding/hex"
	"testing"
	"time"

	"github.com/provgate/provgate/contract"
)

// FuzzDecodeEntry: DecodeEntry never panics, refuses oversized input, and
// what it accepts re-encodes to bytes that decode to the same entry.
func FuzzDecodeEntry(f *testing.F) {
	e := &contract.Entry{V: 1, Seq: 1, PrevHash: hex.EncodeToString(contract.ZeroHash), Time: time.Date(2026, 1, 15, 10, 0, 0, 0, time.UTC),
		Contract: "did:example:c1", Kind: contract.EntryAttestation, JWS: "eyJhbGciOiJFZERTQSJ9.e30.c2ln"}
	b, err := contract.EncodeEntry(e)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	m := *e
	m.Seq, m.PrevHash, m.Kind, m.Accepted = 7, hex.EncodeToString(bytes.Repeat([]byte{0xab}, 32)), contract.EntryMetering, []string{"e1", "e2"}
	if b, err = contract.EncodeEntry(&m); err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	tv := m
	tv.Seq, tv.Kind, tv.JWS, tv.Accepted, tv.Note = 1, contract.EntryContract, "", nil, "provgate-contract-terms/v1\n{}\n\n— log.example abc=\n"
	tv.PrevHash = hex.EncodeToString(contract.ZeroHash)
	if b, err = contract.EncodeEntry(&tv); err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte(`{"v":1,"seq":1,"seq":2}`))
	f.Add([]byte(`{"v":1,"seq":0,"prev_hash":"","time":"2026-01-15T10:00:00Z","contract":"c","kind":"attestation","jws":"a.b.c","extra":1}`))
	f.Add([]byte(`{}{}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := contract.DecodeEntry(b)
		if err != nil {
			return
		}
		if len(b) > contract.MaxEntrySize {
			t.Fatalf("accepted %d bytes", len(b))
		}
		if e.Seq == 0 || e.V != contract.EntryVersion || (e.Kind != contract.EntryAttestation && e.Kind != contract.EntryMetering && e.Kind != contract.EntryContract) ||
			(e.Kind == contract.EntryContract) != (e.Note != "") {
			t.Fatalf("accepted an invalid entry %+v", e)
		}
		enc, err := contract.EncodeEntry(e)
		if err != nil {
			t.Fatalf("decoded entry does not re-encode: %v", err)
		}
		e2, err := contract.DecodeEntry(enc)
		if err != nil {
			t.Fatalf("re-encoded entry does not decode: %v", err)
		}
		enc2, _ := contract.EncodeEntry(e2)
		if !bytes.Equal(enc, enc2) {
			t.Fatalf("encoding is not stable:\n%s\n%s", enc, enc2)
		}
	})
}

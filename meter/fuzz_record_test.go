package meter

import (
	"bytes"
	"testing"
	"time"

	"github.com/provgate/provgate/contract"
)

// FuzzDecodeRecord feeds arbitrary stored records to the decoder: it
// must never panic, and what it accepts must encode back to the same
// bytes (one encoding per row, so the chain hash is well defined).
func FuzzDecodeRecord(f *testing.F) {
	for _, r := range []Row{
		{Kind: contract.EventAccess, Time: time.Unix(1700000000, 5).UTC(), Contract: "did:example:c", Name: "a/b.tar",
			Bytes: 65536, Samples: 1, Units: 1, CostNanoUSD: 500000, Epoch: 3, Job: "j", TokenID: "t", DecodedSHA: "00ff", Outcome: OutcomeServed},
		{Kind: contract.EventEpoch, Time: time.Unix(0, 0).UTC(), Contract: "c", Samples: 10, Distinct: 4, Events: 12, Outcome: "closed"},
		{Kind: contract.EventAccess, Time: time.Unix(1700000000, 0).UTC(), Contract: "c", Name: "x", Bytes: 9, Samples: 1, Tokens: 3,
			Units: 3, TokenID: "t", Lease: "lease-1", Outcome: OutcomeAborted},
		{Kind: contract.EventAccess, Time: time.Unix(1700000000, 0).UTC(), Contract: "c", Name: "x", Bytes: 9, Samples: 1,
			Units: 1, CostNanoUSD: 7, TokenID: "t", Lease: "lease-1", TermsSeq: 42, Outcome: OutcomeServed},
		{Kind: contract.EventAccess, Time: time.Unix(1700000000, 0).UTC(), Contract: "c", Name: "y", Samples: 1, TermsSeq: 1, Outcome: OutcomeServed},
	} {
		f.Add(appendRecord(nil, &r))
	}
	f.Add([]byte{recordVersion, kindAccess})
	f.Add([]byte{recordVersionLease, kindAccess, 0, 1, 'c', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})    // an empty lease: not canonical
	f.Add([]byte{recordVersionTerms, kindAccess, 0, 1, 'c', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}) // terms seq 0: not canonical
	f.Fuzz(func(t *testing.T, b []byte) {
		var r Row
		if err := decodeRecord(b, &r); err != nil {
			return
		}
		if again := appendRecord(nil, &r); !bytes.Equal(again, b) {
			t.Fatalf("decode then encode changed the record:\n%x\n%x", b, again)
		}
	})
}

// TestRecordVersions: a row encodes as version 1 without a lease or terms,
// 2 with a lease only, 3 with a terms seq (lease or not), and each decodes
// back to the same row.
func TestRecordVersions(t *testing.T) {
	base := Row{Kind: contract.EventAccess, Time: time.Unix(1700000000, 0).UTC(), Contract: "c", Name: "x", Samples: 1, Outcome: OutcomeServed}
	for _, tc := range []struct {
		lease   string
		terms   uint64
		version byte
	}{{"", 0, recordVersion}, {"l", 0, recordVersionLease}, {"", 3, recordVersionTerms}, {"l", 3, recordVersionTerms}} {
		r := base
		r.Lease, r.TermsSeq = tc.lease, tc.terms
		b := appendRecord(nil, &r)
		if b[0] != tc.version {
			t.Errorf("lease %q terms %d: version %d, want %d", tc.lease, tc.terms, b[0], tc.version)
		}
		var got Row
		if err := decodeRecord(b, &got); err != nil || got.Lease != tc.lease || got.TermsSeq != tc.terms {
			t.Errorf("lease %q terms %d: decoded %+v, %v", tc.lease, tc.terms, got, err)
		}
	}
}

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
	} {
		f.Add(appendRecord(nil, &r))
	}
	f.Add([]byte{recordVersion, kindAccess})
	f.Add([]byte{recordVersionLease, kindAccess, 0, 1, 'c', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}) // an empty lease: not canonical
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

package witness_test

import (
	"bytes"
	"testing"

	"github.com/provgate/provgate/witness"
)

// FuzzParseAddCheckpoint: the parser never panics, accepts only bodies
// within the format's bounds, and what it accepts re-encodes to the same
// bytes. Seeds are in testdata/fuzz/FuzzParseAddCheckpoint.
func FuzzParseAddCheckpoint(f *testing.F) {
	f.Add([]byte("old 0\n\nregistry.test/log/c1\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n\n— registry.test AAAA\n"))
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := witness.ParseAddCheckpoint(body)
		if err != nil {
			return
		}
		if len(req.Proof) > witness.MaxProofLines || len(req.Checkpoint) == 0 {
			t.Fatalf("accepted %d proof lines, checkpoint of %d bytes", len(req.Proof), len(req.Checkpoint))
		}
		for _, h := range req.Proof {
			if len(h) != 32 {
				t.Fatalf("accepted a %d-byte proof hash", len(h))
			}
		}
		if got := req.Marshal(); !bytes.Equal(got, body) {
			t.Fatalf("re-encoded %q, parsed from %q", got, body)
		}
	})
}

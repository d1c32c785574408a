package verify_test

import (
	"bytes"
	"testing"

	"github.com/provgate/provgate/verify"
)

// A fixed checkpoint key, so that the checked-in corpus stays meaningful.
const (
	fuzzCheckpointSKey = "PRIVATE+KEY+fuzz.test+be249314+AcsVdeu88GSeVSfmoWyFsTfEAT9QoPECGNEg/x+UMy9D"
	fuzzCheckpointVKey = "fuzz.test+be249314+Af870eS9s3ON3WpDlrX2yr3B7gzbkt2ZVrb+FcEh0o1U"
	fuzzOrigin         = "fuzz.test/log/did:example:c1"
)

// FuzzParseCheckpoint: Parse never panics, and accepts only notes signed by
// the log's key for its origin, with a 32-byte root and a signed time.
func FuzzParseCheckpoint(f *testing.F) {
	signer, err := verify.NewCheckpointSigner(fuzzCheckpointSKey)
	if err != nil {
		f.Fatal(err)
	}
	for _, size := range []uint64{0, 1, 100000} {
		note, err := signer.Sign(fuzzOrigin, size, bytes.Repeat([]byte{byte(size)}, 32))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(note)
		f.Add(bytes.Replace(note, []byte("\n\n"), []byte("\nextension\n\n"), 1))
	}
	other, _ := signer.Sign("another/origin", 5, make([]byte, 32))
	f.Add(other)
	f.Add([]byte("fuzz.test/log/did:example:c1\n5\nAAAA\n\n— fuzz.test vqc5AA==\n"))
	f.Add([]byte{})
	v, err := verify.NewCheckpointVerifier(fuzzOrigin, fuzzCheckpointVKey)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		cp, err := v.Parse(raw)
		if err != nil {
			return
		}
		if cp.Origin != fuzzOrigin || len(cp.Hash) != 32 || cp.Time.IsZero() || !bytes.Equal(cp.Raw, raw) {
			t.Fatalf("accepted %+v", cp)
		}
		// What verifies must be what the key signed: re-signing the same
		// body gives a note that parses to the same tree.
		again, err := signer.Sign(cp.Origin, cp.Size, cp.Hash)
		if err != nil {
			t.Fatal(err)
		}
		cp2, err := v.Parse(again)
		if err != nil || cp2.Size != cp.Size || !bytes.Equal(cp2.Hash, cp.Hash) {
			t.Fatalf("re-signed checkpoint differs: %+v %v", cp2, err)
		}
	})
}

package audit_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/provgate/provgate/audit"
)

// FuzzParse: whatever the bytes, Parse either refuses them or returns a
// bundle that re-encodes to one it parses again, and Verify of it never
// panics. Seeds: testdata/bundle.json and testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	for _, golden := range []string{"bundle.json", "bundle-per-event.json"} {
		b, err := os.ReadFile(filepath.Join("testdata", golden))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := audit.ParseBytes(data)
		if err != nil {
			return
		}
		out, err := b.Marshal()
		if err != nil {
			t.Fatalf("a parsed bundle does not encode: %v", err)
		}
		if _, err := audit.ParseBytes(out); err != nil {
			t.Fatalf("a parsed bundle re-encodes to one that does not parse: %v", err)
		}
		audit.Verify(b, audit.VerifyOptions{Now: time.Unix(1_800_000_000, 0)})
	})
}

// FuzzParseTLogProof: a tlog-proof that parses re-encodes to the same
// text.
func FuzzParseTLogProof(f *testing.F) {
	f.Add("c2sp.org/tlog-proof@v1\nindex 0\n\ncheckpoint\n")
	f.Add("c2sp.org/tlog-proof@v1\nextra ZXh0cmE=\nindex 5\nFelyjbZjn8wmkKcsbPKy6A+W87dwNcFTTbqkpILn9Fw=\n\norigin\n6\nroot\n\n— sig\n")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := audit.ParseTLogProof(s)
		if err != nil {
			return
		}
		if got := audit.MarshalTLogProof(p); got != s {
			t.Fatalf("re-encoded %q as %q", s, got)
		}
	})
}

package cache

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzReadJournal feeds arbitrary bytes as the index journal: reading must
// not fail or panic, and only well-formed, checksummed put records with
// valid file names survive.
func FuzzReadJournal(f *testing.F) {
	var buf bytes.Buffer
	encodeRecord(&buf, &record{Op: "put", File: "ab" + string(bytes.Repeat([]byte("0"), 62)), Contract: "c", Name: "n", Size: 3})
	good := bytes.Clone(buf.Bytes())
	encodeRecord(&buf, &record{Op: "del", File: "ab" + string(bytes.Repeat([]byte("0"), 62))})
	f.Add(good)
	f.Add(buf.Bytes())
	f.Add(append(bytes.Clone(good), "0badc0de {\"op\":\"put\""...))
	f.Add([]byte("00000000 {}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, journalName), data, 0o600); err != nil {
			t.Fatal(err)
		}
		recs, err := readJournal(dir)
		if err != nil {
			t.Fatalf("readJournal: %v", err)
		}
		seen := map[string]bool{}
		for _, r := range recs {
			if r.Op != "put" || !validFileName(r.File) || seen[r.File] {
				t.Fatalf("bad record survived: %+v", r)
			}
			seen[r.File] = true
		}
	})
}

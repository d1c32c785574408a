package contract_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/provgate/provgate/contract"
)

// FuzzValidateName: a name that passes is a relative, clean path that can
// never climb out of a directory or smuggle a control character.
func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"a/b.bin", "../x", "a//b", "./a", "a\\b", "/abs", "ok.json", "a/\x00b", "é/ü.txt"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if contract.ValidateName(name) != nil {
			return
		}
		if strings.HasPrefix(name, "/") || strings.Contains(name, "\\") || len(name) > 1024 {
			t.Fatalf("accepted %q", name)
		}
		for _, seg := range strings.Split(name, "/") {
			if seg == "" || seg == "." || seg == ".." {
				t.Fatalf("accepted %q with segment %q", name, seg)
			}
		}
		for _, r := range name {
			if r < 0x20 || r == 0x7f {
				t.Fatalf("accepted %q with a control character", name)
			}
		}
	})
}

// FuzzContractJSON: any JSON either fails to decode or is judged by
// Validate without panicking; a contract that validates survives a round
// trip through JSON unchanged in validity.
func FuzzContractJSON(f *testing.F) {
	f.Add([]byte(`{"contract_id":"did:example:c1","version":"1","license":"cc-by-4.0","pricing":{"unit":"sample","price_usd":0.0005},
		"usage":{"purposes":["training"]},"contributors":[{"id":"a","jwks_uri":"https://example.com/jwks.json"}],"origin":{"bucket":"b"}}`))
	f.Add([]byte(`{"contract_id":"a/b","pricing":{"unit":"gold"},"contributors":[{"id":"x"},{"id":"x"}]}`))
	f.Add([]byte(`{"contract_id":"c","usage":{"max_samples":-1},"origin":{"mode":"weird"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var c contract.Contract
		if json.Unmarshal(b, &c) != nil {
			return
		}
		if c.Validate() != nil {
			return
		}
		again, err := json.Marshal(&c)
		if err != nil {
			t.Fatal(err)
		}
		var c2 contract.Contract
		if err := json.Unmarshal(again, &c2); err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if err := c2.Validate(); err != nil {
			t.Fatalf("a valid contract became invalid after a round trip: %v", err)
		}
	})
}

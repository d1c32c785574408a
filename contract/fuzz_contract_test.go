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

// TestValidateLicensees: licensees need unique ids, keys as contributors
// do, purposes of the contract and non-negative limits; a contract with
// none is valid (the registry then issues no token for it).
func TestValidateLicensees(t *testing.T) {
	base := func() *contract.Contract {
		var c contract.Contract
		if err := json.Unmarshal([]byte(`{"contract_id":"did:example:c","version":"1","license":"l",
			"pricing":{"unit":"sample","price_usd":0.1},"usage":{"purposes":["training","eval"]},
			"contributors":[{"id":"a","jwks_uri":"https://a.example/jwks.json"}],
			"licensees":[{"id":"did:example:acme","jwks_uri":"https://acme.example/jwks.json","terms":{"purposes":["eval"],"max_samples":10}}],
			"origin":{"bucket":"b"}}`), &c); err != nil {
			t.Fatal(err)
		}
		return &c
	}
	if err := base().Validate(); err != nil {
		t.Fatalf("valid contract: %v", err)
	}
	none := base()
	none.Licensees = nil
	if err := none.Validate(); err != nil {
		t.Fatalf("a contract without licensees: %v, want valid", err)
	}
	for _, tc := range []struct {
		name string
		edit func(*contract.Contract)
		want string
	}{
		{"duplicate id", func(c *contract.Contract) { c.Licensees = append(c.Licensees, c.Licensees[0]) }, "duplicate id"},
		{"no id", func(c *contract.Contract) { c.Licensees[0].ID = "" }, "id is required"},
		{"bad id", func(c *contract.Contract) { c.Licensees[0].ID = "a/b" }, "must not contain"},
		{"no keys", func(c *contract.Contract) { c.Licensees[0].JWKSURI = "" }, "jwks or jwks_uri is required"},
		{"jwks_uri not http", func(c *contract.Contract) { c.Licensees[0].JWKSURI = "file:///etc/keys" }, "not an http(s) URL"},
		{"purpose outside the contract", func(c *contract.Contract) { c.Licensees[0].Terms.Purposes = []string{"ads"} }, "not a purpose of the contract"},
		{"negative limit", func(c *contract.Contract) { c.Licensees[0].Terms.MaxBytes = -1 }, "must not be negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base()
			tc.edit(c)
			if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

package contract_test

import (
	"testing"
	"time"

	"github.com/provgate/provgate/contract"
)

// FuzzParseTermsText: ParseTermsText never panics; what it accepts is a
// valid contract of the id it names, with an effective_from and no seq,
// and its text is the one TermsText makes (one encoding per version).
func FuzzParseTermsText(f *testing.F) {
	c := contract.Contract{ContractID: "did:example:c1", Version: "1", License: "cc-by-4.0",
		Pricing:      contract.Pricing{Unit: contract.UnitSample, PriceUSD: 0.001},
		Usage:        contract.Usage{Purposes: []string{"training"}},
		Contributors: []contract.Contributor{{ID: "did:example:alice", JWKSURI: "https://alice.example/jwks.json"}},
		Origin:       contract.Origin{Bucket: "b"},
		Log:          contract.LogInfo{Origin: "r/log/did:example:c1", CheckpointKey: "r+01234567+AQID"}}
	text, err := contract.TermsText(&contract.TermsVersion{Contract: c.ContractID, EffectiveFrom: time.Date(2026, 1, 15, 0, 0, 0, 0, time.UTC), Terms: c})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(text)
	f.Add(contract.TermsNoteHeader + "\n{}\n")
	f.Add(contract.TermsNoteHeader + "\n{\"contract\":\"x\"}\n\n")
	f.Add("provgate-contract-terms/v2\n{}\n")
	f.Add(text[:len(text)-1])
	f.Fuzz(func(t *testing.T, s string) {
		v, err := contract.ParseTermsText(s)
		if err != nil {
			return
		}
		if v.EffectiveFrom.IsZero() || v.Terms.TermsSeq != 0 || v.Contract != v.Terms.ContractID {
			t.Fatalf("accepted %+v", v)
		}
		if err := v.Terms.Validate(); err != nil {
			t.Fatalf("accepted invalid terms: %v", err)
		}
		again, err := contract.TermsText(v)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := contract.ParseTermsText(again); err != nil {
			t.Fatalf("re-encoded terms do not parse: %v", err)
		}
	})
}

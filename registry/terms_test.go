package registry_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

// TestContractVersionsAreLogEntries: creation logs the first version at
// entry 1; an update logs the next and becomes the served document with
// its seq and a new ETag; versions verify with the log's key alone; the
// update's rules (admin, a known contract, same log, no past effective_from)
// hold.
func TestContractVersionsAreLogEntries(t *testing.T) {
	ctx := context.Background()
	h, alice, c := setup(t)
	if c.TermsSeq != 1 {
		t.Fatalf("created contract terms_seq %d, want 1", c.TermsSeq)
	}
	alice.Attest(t, c.ContractID, registrytest.Object("a", []byte("a")))
	_, etag1, err := h.Client.GetContract(ctx, c.ContractID, "")
	if err != nil {
		t.Fatal(err)
	}

	next := *c
	next.Pricing.PriceUSD = 0.01
	for _, tc := range []struct {
		name  string
		token string
		edit  func(*contract.Contract)
		eff   time.Time
		code  int
	}{
		{"no admin token", "wrong", nil, time.Time{}, http.StatusUnauthorized},
		{"an unknown contract", h.AdminToken, func(c *contract.Contract) { c.ContractID = "did:example:other" }, time.Time{}, http.StatusNotFound},
		{"another log", h.AdminToken, func(c *contract.Contract) { c.Log.CheckpointKey = "x+01234567+AQID" }, time.Time{}, http.StatusBadRequest},
		{"effective in the past", h.AdminToken, nil, time.Now().Add(-time.Hour), http.StatusBadRequest},
		{"effective in the future", h.AdminToken, nil, time.Now().Add(time.Hour), http.StatusBadRequest},
		{"invalid terms", h.AdminToken, func(c *contract.Contract) { c.Usage.Purposes = nil }, time.Time{}, http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := next
			if tc.edit != nil {
				tc.edit(&bad)
			}
			_, err := h.Client.UpdateContract(ctx, tc.token, &bad, tc.eff)
			if contract.StatusOf(err) != tc.code {
				t.Fatalf("got %v, want %d", err, tc.code)
			}
		})
	}

	up, err := h.Client.UpdateContract(ctx, h.AdminToken, &next, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if up.TermsSeq != 3 || up.Pricing.PriceUSD != 0.01 || up.Log != c.Log {
		t.Fatalf("updated: %+v", up)
	}
	got, etag2, err := h.Client.GetContract(ctx, c.ContractID, "")
	if err != nil || got.TermsSeq != 3 || etag2 == etag1 {
		t.Fatalf("served after the update: %+v, etag %s (was %s), %v", got, etag2, etag1, err)
	}
	entries, err := h.Client.ContractVersions(ctx, c.ContractID)
	if err != nil || len(entries) != 2 || entries[0].Seq != 1 || entries[1].Seq != 3 {
		t.Fatalf("versions: %+v, %v", entries, err)
	}
	cpv, err := verify.NewCheckpointVerifier(c.Log.Origin, c.Log.CheckpointKey)
	if err != nil {
		t.Fatal(err)
	}
	for i, we := range entries {
		e, err := contract.DecodeEntry(we.Entry)
		if err != nil || e.Kind != contract.EntryContract {
			t.Fatalf("entry %d: %+v, %v", we.Seq, e, err)
		}
		tv, err := cpv.OpenTerms(e.Note)
		if err != nil {
			t.Fatalf("entry %d: %v", we.Seq, err)
		}
		want := []float64{c.Pricing.PriceUSD, 0.01}[i]
		if tv.Terms.Pricing.PriceUSD != want || tv.Terms.TermsSeq != 0 {
			t.Fatalf("entry %d terms: %+v", we.Seq, tv.Terms)
		}
	}
	page, _ := h.Client.Events(ctx, c.ContractID, 2, 1)
	if len(page.Entries) != 1 || page.Entries[0].Seq != 3 {
		t.Fatalf("the update is not the log's entry 3: %+v", page)
	}
}

// A contract whose terms could not fit entry 1 of its log is refused with
// 413 before anything is stored: the id stays free, not half-created.
func TestOversizedContractRefusedWhole(t *testing.T) {
	ctx := context.Background()
	h := registrytest.Start(t)
	alice := h.NewContributor(t, "did:example:alice")
	c := registrytest.NewContract("did:example:huge", "bucket", alice)
	c.SchemaURL = "https://example.com/" + strings.Repeat("s", contract.MaxAppendEntrySize+10<<10)
	_, err := h.Client.CreateContract(ctx, h.AdminToken, c)
	if contract.StatusOf(err) != http.StatusRequestEntityTooLarge {
		t.Fatalf("create a contract of %d bytes: got %v, want 413", len(c.SchemaURL), err)
	}
	c.SchemaURL = "https://example.com/schema"
	created := h.CreateContract(t, c)
	if created.TermsSeq != 1 {
		t.Errorf("the same id after the refusal: terms_seq %d, want 1 (entry 1 of a new log)", created.TermsSeq)
	}
}

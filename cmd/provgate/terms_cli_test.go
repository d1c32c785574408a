package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/provgate/provgate/registry"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/witness"
)

// TestContractUpdateVersionsAndAudit: the provider updates a contract's
// terms with the CLI; contract versions lists both logged versions, and
// verify log tells which terms governed which entries. An update that
// would move the log is refused.
func TestContractUpdateVersionsAndAudit(t *testing.T) {
	h := registrytest.Start(t)
	alice := h.NewContributor(t, "did:example:alice")
	c := h.CreateContract(t, registrytest.NewContract("did:example:terms-cli", "bucket", alice))
	alice.Attest(t, c.ContractID, registrytest.Object("a", []byte("a")))
	dir := t.TempDir()
	adminFile := filepath.Join(dir, "admin-token")
	os.WriteFile(adminFile, []byte(h.AdminToken+"\n"), 0o600)

	next := *c
	next.Version, next.Pricing.PriceUSD = "v2", 0.25
	b, _ := json.Marshal(&next)
	file := filepath.Join(dir, "v2.json")
	os.WriteFile(file, b, 0o644)
	out := mustCLI(t, "contract", "update", "--registry", h.URL, "--admin-token-file", adminFile, "--file", file)
	if !strings.Contains(out, `"terms_seq": 3`) || !strings.Contains(out, `"price_usd": 0.25`) {
		t.Fatalf("contract update printed %s", out)
	}
	alice.Attest(t, c.ContractID, registrytest.Object("b", []byte("b")))

	out = mustCLI(t, "contract", "versions", "--registry", h.URL, "--contract", c.ContractID)
	if !regexp.MustCompile(`(?s)seq 1 .*version "2026-01-15".*sample 0\.0005 USD.*\nseq 3 .*version "v2".*sample 0\.25 USD`).MatchString(out) {
		t.Fatalf("contract versions printed:\n%s", out)
	}
	out = mustCLI(t, "verify", "log", "--registry", h.URL, "--contract", c.ContractID)
	for _, want := range []string{"OK " + c.ContractID + ": 4 entries", `terms at entry 1 `, `version "2026-01-15", sample at 0.0005 USD`, `terms at entry 3 `, `version "v2", sample at 0.25 USD`} {
		if !strings.Contains(out, want) {
			t.Fatalf("verify log lacks %q:\n%s", want, out)
		}
	}

	moved := next
	moved.Log.Origin = "elsewhere/log/" + c.ContractID
	b, _ = json.Marshal(&moved)
	os.WriteFile(file, b, 0o644)
	if code, _, errs := cli(t, "contract", "update", "--registry", h.URL, "--admin-token-file", adminFile, "--file", file); code != 1 || !strings.Contains(errs, "cannot change") {
		t.Fatalf("update moving the log: exit %d, %s", code, errs)
	}
}

// TestVerifyLogWitnessQuorum: verify log --witness refuses a checkpoint
// without the witness's cosignature and accepts the cosigned one.
func TestVerifyLogWitnessQuorum(t *testing.T) {
	ctx := context.Background()
	skey, vkey, err := note.GenerateKey(rand.Reader, "registrytest")
	if err != nil {
		t.Fatal(err)
	}
	wskey, wvkey, err := note.GenerateKey(rand.Reader, "witness.test")
	if err != nil {
		t.Fatal(err)
	}
	w, err := witness.New(ctx, witness.Config{Key: wskey, DBPath: filepath.Join(t.TempDir(), "witness.db"),
		Logs: map[string]string{"registrytest/log/*": vkey}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ws := httptest.NewServer(w.Handler())
	t.Cleanup(func() { ws.Close(); w.Close() })
	h := registrytest.Start(t, registrytest.WithConfig(func(c *registry.Config) {
		c.CheckpointKey = skey
		c.Witnesses = []registry.Witness{{URL: ws.URL, VKey: wvkey}}
	}))
	_, otherW, _ := note.GenerateKey(rand.Reader, "other-witness.test")
	alice := h.NewContributor(t, "did:example:alice")
	c := h.CreateContract(t, registrytest.NewContract("did:example:witnessed", "bucket", alice))
	alice.Attest(t, c.ContractID, registrytest.Object("a", []byte("a")))
	code, _, errs := cli(t, "verify", "log", "--registry", h.URL, "--contract", c.ContractID, "--witness", otherW)
	if code != 1 || !strings.Contains(errs, "quorum") {
		t.Fatalf("verify log with a witness that never cosigned: exit %d, %s", code, errs)
	}
	// The log cosigns its own checkpoints: its key as a "witness" would be a
	// quorum of nobody, and is refused.
	if code, _, errs := cli(t, "verify", "log", "--registry", h.URL, "--contract", c.ContractID, "--witness", vkey); code == 0 || !strings.Contains(errs, "own checkpoint key") {
		t.Fatalf("verify log with the log's own key as witness: exit %d, %s", code, errs)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		code, out, errs := cli(t, "verify", "log", "--registry", h.URL, "--contract", c.ContractID, "--witness", wvkey)
		if code == 0 && strings.Contains(out, "OK") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("verify log with the cosigning witness: exit %d, %s", code, errs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

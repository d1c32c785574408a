package main

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/meter"
	"github.com/provgate/provgate/registry/registrytest"
)

// TestMeterCLI drives report, export, verify and replay on a real ledger
// file against a real registry, then edits a row and expects verify to
// name it.
func TestMeterCLI(t *testing.T) {
	ctx := context.Background()
	h := registrytest.Start(t)
	alice := h.NewContributor(t, "did:example:alice")
	c := h.CreateContract(t, registrytest.NewContract("did:example:meter-cli", "datasets", alice))
	dir := t.TempDir()
	keyFile := newSidecarKeyFile(t, dir)
	ledger := filepath.Join(dir, "ledger.db")
	l, err := meter.Open(ctx, ledger, meter.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.SetPricing(ctx, c.ContractID, c.Pricing); err != nil {
		t.Fatal(err)
	}
	l.Start(ctx)
	for i := range 300 {
		ev := meter.Event{Contract: c.ContractID, Name: fmt.Sprintf("obj-%03d", i), Bytes: 100, Epoch: int64(i / 150), Job: "job-1", TokenID: "t"}
		if i%50 == 0 {
			ev.Outcome = meter.OutcomeRefused
		}
		if _, err := l.Submit(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.EndEpoch(ctx, c.ContractID, "job-1", 0); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	out := mustCLI(t, "meter", "report", "--ledger", ledger)
	if !strings.Contains(out, "CONTRACT") || !strings.Contains(out, c.ContractID) || !strings.Contains(out, "0.073500000") {
		t.Errorf("report table lacks the contract or epoch 0's cost ($0.0735 for 147 samples):\n%s", out)
	}
	var lines []meter.ReportLine
	if err := json.Unmarshal([]byte(mustCLI(t, "meter", "report", "--ledger", ledger, "--json")), &lines); err != nil {
		t.Fatal(err)
	}
	if len(lines) != 2 || lines[0].Served != 147 || lines[0].Refused != 3 || !lines[0].Closed || lines[0].Unsynced != 151 || lines[1].Closed {
		t.Errorf("report --json: %+v", lines)
	}

	sc := bufio.NewScanner(strings.NewReader(mustCLI(t, "meter", "export", "--ledger", ledger)))
	var rows []meter.ExportRow
	for sc.Scan() {
		var r meter.ExportRow
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("export line %q: %v", sc.Text(), err)
		}
		rows = append(rows, r)
	}
	if len(rows) != 301 || rows[0].Outcome != meter.OutcomeRefused || rows[1].CostNanoUSD != 500_000 || rows[300].Kind != contract.EventEpoch {
		t.Errorf("export: %d rows, first %+v", len(rows), rows[0])
	}

	if out := mustCLI(t, "meter", "verify", "--ledger", ledger); !strings.HasPrefix(out, "ok: 301 rows") {
		t.Errorf("verify: %q", out)
	}

	// The licensee enrols the sidecar key with provgate enroll; replay
	// sends that enrolment with its token requests.
	enrolment := enrolCLI(t, dir, c.ContractID, keyFile)
	if code, _, errs := cli(t, "meter", "replay", "--ledger", ledger, "--to", h.URL, "--key", keyFile, "--purpose", "training"); code == 0 || !strings.Contains(errs, "not_enrolled") {
		t.Errorf("replay without an enrolment: exit %d, stderr %q; want refused, not_enrolled", code, errs)
	}
	out = mustCLI(t, "meter", "replay", "--ledger", ledger, "--to", h.URL, "--key", keyFile, "--purpose", "training", "--enrolment", enrolment)
	if !strings.Contains(out, "synced 301 unsynced rows") {
		t.Errorf("replay: %q", out)
	}
	got, err := h.Client.MeteringTotals(ctx, c.ContractID, "", -1)
	if err != nil {
		t.Fatal(err)
	}
	if got.AccessEvents != 300 || got.Units != 294 || got.CostNanoUSD != 294*500_000 || got.EpochEvents != 1 {
		t.Errorf("registry totals after replay: %+v", got)
	}
	out = mustCLI(t, "meter", "replay", "--ledger", ledger, "--to", h.URL, "--key", keyFile, "--purpose", "training", "--all", "--enrolment", enrolment)
	if !strings.Contains(out, "re-sent 301 events: 0 new, 301 already counted") {
		t.Errorf("replay --all: %q", out)
	}
	if again, _ := h.Client.MeteringTotals(ctx, c.ContractID, "", -1); *again != *got {
		t.Errorf("totals changed after replay --all: %+v, was %+v", again, got)
	}
	// The batches replay sent have their receipts, which the registry's log
	// agrees with.
	if out := mustCLI(t, "meter", "reconcile", "--ledger", ledger, "--registry", h.URL, "--json"); !strings.Contains(out, `"ok": true`) {
		t.Errorf("reconcile after replay: %s", out)
	}

	// Someone lowers a row's bytes in the file: verify names that row.
	db, err := sql.Open("sqlite3", "file:"+ledger)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var rec []byte
	if err := db.QueryRow("SELECT rec FROM events WHERE seq = 42").Scan(&rec); err != nil {
		t.Fatal(err)
	}
	edited := []byte(strings.Replace(string(rec), "obj-041", "obj-000", 1))
	if _, err := db.Exec("UPDATE events SET rec = ? WHERE seq = 42", edited); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := cli(t, "meter", "verify", "--ledger", ledger)
	if code != 1 || !strings.Contains(stderr, "row 42 ") || !strings.Contains(stderr, "edited") {
		t.Errorf("verify after an edit: exit %d, stderr %q; want exit 1 naming row 42", code, stderr)
	}
	code, _, _ = cli(t, "meter", "verify")
	if code != 2 {
		t.Errorf("verify without --ledger: exit %d, want 2", code)
	}
}

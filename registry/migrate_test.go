package registry

import (
	"context"
	"database/sql"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

// A database written before events were keyed by sender opens with each
// event attributed to the sidecar that signed its batch (read from the log
// entry that counted it), with its outcome, and with the contract's sums.
func TestMigrateMeteringEventsToSenders(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "old.db")
	old, err := sql.Open("sqlite3", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.Exec(`
CREATE TABLE entries (
	contract TEXT NOT NULL, seq INTEGER NOT NULL, body BLOB NOT NULL, time INTEGER NOT NULL,
	PRIMARY KEY (contract, seq)) WITHOUT ROWID;
CREATE TABLE presigned (
	token TEXT NOT NULL, name TEXT NOT NULL, size INTEGER NOT NULL DEFAULT 0,
	PRIMARY KEY (token, name)) WITHOUT ROWID;
CREATE TABLE metering_events (
	contract TEXT NOT NULL, id TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,
	bytes INTEGER NOT NULL, samples INTEGER NOT NULL, units INTEGER NOT NULL, cost INTEGER NOT NULL,
	epoch INTEGER NOT NULL, job TEXT NOT NULL,
	PRIMARY KEY (contract, id)) WITHOUT ROWID;
INSERT INTO presigned (token, name, size) VALUES ('tok', 'a', 10);`); err != nil {
		t.Fatal(err)
	}
	key, err := verify.GenerateKey(jose.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	jkt, _ := verify.Thumbprint(key)
	events := []contract.MeteringEvent{
		{ID: "L-1", Kind: contract.EventAccess, Bytes: 100, Samples: 1, Units: 1, CostNanoUSD: 500, Epoch: 1, Outcome: contract.OutcomeServed},
		{ID: "L-2", Kind: contract.EventAccess, Bytes: 40, Epoch: 1, Outcome: contract.OutcomeRefused},
	}
	jws, err := verify.SignMeteringBatch(key, &contract.MeteringBatch{Contract: "c1", BatchID: "b1", Sidecar: jkt, IssuedAt: time.Now().Unix(), Events: events})
	if err != nil {
		t.Fatal(err)
	}
	body, err := contract.EncodeEntry(&contract.Entry{V: contract.EntryVersion, Seq: 1, PrevHash: strings.Repeat("0", 64), Time: time.Now().UTC(),
		Contract: "c1", Kind: contract.EntryMetering, JWS: jws, Accepted: []string{"L-1", "L-2"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.Exec(`INSERT INTO entries (contract, seq, body, time) VALUES ('c1', 1, ?, 0)`, body); err != nil {
		t.Fatal(err)
	}
	for _, e := range events {
		if _, err := old.Exec(`INSERT INTO metering_events VALUES ('c1', ?, 1, 'access', ?, ?, ?, ?, 1, '')`, e.ID, e.Bytes, e.Samples, e.Units, e.CostNanoUSD); err != nil {
			t.Fatal(err)
		}
	}
	old.Close()

	st, err := openSQLite(ctx, path, true)
	if err != nil {
		t.Fatal(err)
	}
	known, err := st.knownEvents(ctx, "c1", jkt, []string{"L-1", "L-2", "L-3"})
	if err != nil {
		t.Fatal(err)
	}
	if !known["L-1"] || !known["L-2"] || known["L-3"] {
		t.Errorf("events known for their sender after migration: %v, want L-1 and L-2", known)
	}
	if other, _ := st.knownEvents(ctx, "c1", "another-sender", []string{"L-1"}); other["L-1"] {
		t.Error("another sender owns L-1 after migration")
	}
	r, err := st.meteringTotals(ctx, "c1", contract.TotalsFilter{Epoch: -1})
	if err != nil {
		t.Fatal(err)
	}
	if r.BilledSamples != 1 || r.BilledCostNanoUSD != 500 || r.UnbilledEvents != 1 || r.UnbilledBytes != 40 {
		t.Errorf("totals after migration: %+v", r.MeteringTotals)
	}
	if sums, _ := st.meteringSums(ctx, "c1"); sums != (contract.Sums{Samples: 1, Bytes: 140, Units: 1, CostNanoUSD: 500}) {
		t.Errorf("sums after migration: %+v", sums)
	}
	// Opening again is a no-op.
	st.close()
	again, err := openSQLite(ctx, path, true)
	if err != nil {
		t.Fatal(err)
	}
	again.close()
}

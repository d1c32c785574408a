package registry_test

import (
	"context"
	"database/sql"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/registry"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

// The contract of these tests prices a sample at 0.0005 USD.
const sampleNano = 500_000

// licensedSetup is a registry with a contract naming two licensees, acme
// and evil, each with one enrolled sidecar that holds a token.
func licensedSetup(t *testing.T, opts ...registrytest.Option) (h *registrytest.Harness, c *contract.Contract, acme, evil *sidecar, acmeTok, evilTok string) {
	t.Helper()
	h = registrytest.Start(t, opts...)
	alice := h.NewContributor(t, "did:example:alice")
	cc := registrytest.NewContract("did:example:licensed", "bucket", alice)
	acmeL, evilL := registrytest.NewLicensee(t, "acme", contract.LicenseTerms{}), registrytest.NewLicensee(t, "evil", contract.LicenseTerms{})
	cc.Licensees = []contract.Licensee{acmeL.Entry(), evilL.Entry()}
	c = h.CreateContract(t, cc)
	acme, evil = newSidecar(t, h), newSidecar(t, h)
	return h, c, acme, evil, acme.tokenFrom(t, c.ContractID, acmeL), evil.tokenFrom(t, c.ContractID, evilL)
}

// tokenFrom is a token for contractID, enrolled by lic.
func (s *sidecar) tokenFrom(t *testing.T, contractID string, lic *registrytest.Licensee) string {
	t.Helper()
	tok, err := s.client.RequestToken(context.Background(), contractID,
		contract.TokenRequest{Purpose: "training", JWK: s.key.Public(), Enrolment: lic.Enrol(t, contractID, s.key)})
	if err != nil {
		t.Fatalf("token: %v", err)
	}
	return tok.Token
}

// signEvents signs a batch of events from sc.
func signEvents(t *testing.T, sc *sidecar, contractID string, events ...contract.MeteringEvent) string {
	t.Helper()
	b := &contract.MeteringBatch{Contract: contractID, BatchID: verify.NewID(), Sidecar: sc.jkt, IssuedAt: time.Now().Unix(), Events: events}
	jws, err := verify.SignMeteringBatch(sc.key, b)
	if err != nil {
		t.Fatal(err)
	}
	return jws
}

// served is an access event that served one sample of 100 bytes, priced
// right.
func served(id string) contract.MeteringEvent {
	return contract.MeteringEvent{ID: id, Time: time.Now().UTC(), Kind: contract.EventAccess, Name: "a/1.txt",
		Bytes: 100, Samples: 1, Units: 1, CostNanoUSD: sampleNano, Epoch: 1, Job: "job1", Outcome: "served"}
}

func servedIDs(prefix string, from, to int) []contract.MeteringEvent {
	var out []contract.MeteringEvent
	for i := from; i <= to; i++ {
		out = append(out, served(fmt.Sprintf("%s-%d", prefix, i)))
	}
	return out
}

// An enrolled attacker posts the next 200 event ids of a victim's ledger
// (its id is public in the log) before the victim does, and under the
// victim's next Idempotency-Key. The victim's 8 real reads must all count,
// and the forged ones only under the attacker's licensee.
func TestMeteringPreClaimedIDsDoNotSuppressAnotherSender(t *testing.T) {
	ctx := context.Background()
	h, c, victim, attacker, victimTok, attackerTok := licensedSetup(t)
	const ledger = "LEDGERID"
	forged := signEvents(t, attacker, c.ContractID, servedIDs(ledger, 1, 200)...)
	if _, err := attacker.client.PostMetering(ctx, c.ContractID, attackerTok, "victim-next-batch", forged); err != nil {
		t.Fatalf("attacker's batch: %v", err)
	}
	real := signEvents(t, victim, c.ContractID, servedIDs(ledger, 1, 8)...)
	resp, err := victim.client.PostMetering(ctx, c.ContractID, victimTok, "victim-next-batch", real)
	if err != nil {
		t.Fatalf("victim's batch: %v", err)
	}
	if resp.Accepted != 8 || resp.Duplicates != 0 {
		t.Errorf("victim's batch: accepted %d, duplicates %d; want 8 accepted, 0 duplicates", resp.Accepted, resp.Duplicates)
	}
	if resp.Licensee != "acme" || resp.Counted != (contract.Sums{Samples: 8, Bytes: 800, Units: 8, CostNanoUSD: 8 * sampleNano}) {
		t.Errorf("victim's batch counted %+v for %q, want 8 samples for acme", resp.Counted, resp.Licensee)
	}
	tot, err := h.Client.MeteringTotals(ctx, c.ContractID, "", -1)
	if err != nil {
		t.Fatal(err)
	}
	if tot.AccessEvents != 208 || tot.CostNanoUSD != 208*sampleNano {
		t.Errorf("registry counted %d events, %d nano-USD; want 208 (8 real + 200 forged)", tot.AccessEvents, tot.CostNanoUSD)
	}
	for licensee, want := range map[string]int64{"acme": 8, "evil": 200} {
		r, err := h.Client.MeteringReport(ctx, c.ContractID, contract.TotalsFilter{Epoch: -1, Licensee: licensee})
		if err != nil {
			t.Fatal(err)
		}
		if r.BilledSamples != want || r.BilledCostNanoUSD != want*sampleNano || r.Licensee != licensee {
			t.Errorf("licensee %s: billed %d samples, %d nano-USD; want %d samples", licensee, r.BilledSamples, r.BilledCostNanoUSD, want)
		}
	}
	// The victim's retry is answered as before; its next batch counts its
	// own next ids, not the attacker's.
	again, err := victim.client.PostMetering(ctx, c.ContractID, victimTok, "victim-next-batch", real)
	if err != nil || again.Accepted != 8 || again.Seq != resp.Seq {
		t.Errorf("victim's retry = %+v, %v; want the first answer", again, err)
	}
	next, err := victim.client.PostMetering(ctx, c.ContractID, victimTok, "victim-batch-2", signEvents(t, victim, c.ContractID, servedIDs(ledger, 9, 10)...))
	if err != nil || next.Accepted != 2 {
		t.Errorf("victim's next batch = %+v, %v; want 2 accepted", next, err)
	}
	// The attacker sending its forged ids again counts nothing more.
	dup, err := attacker.client.PostMetering(ctx, c.ContractID, attackerTok, "again", signEvents(t, attacker, c.ContractID, servedIDs(ledger, 1, 3)...))
	if err != nil || dup.Accepted != 0 || dup.Duplicates != 3 || len(dup.DuplicateIDs) != 3 || dup.Counted != (contract.Sums{}) {
		t.Errorf("attacker's repeat = %+v, %v; want 3 duplicates", dup, err)
	}
}

// The totals name the bill: billed amounts apart from accesses delivered
// but not billed, detail by outcome and by licensee, and a licensee filter.
func TestMeteringTotalsNameTheBill(t *testing.T) {
	ctx := context.Background()
	h, c, acme, evil, acmeTok, evilTok := licensedSetup(t)
	outcome := func(id, o string, bytes int64) contract.MeteringEvent {
		e := served(id)
		e.Outcome, e.Bytes = o, bytes
		switch o {
		case "served", "partial":
		case "range":
			e.Samples, e.Units, e.CostNanoUSD = 0, 0, 0
		default:
			e.Samples, e.Units, e.CostNanoUSD = 0, 0, 0
		}
		return e
	}
	acmeEvents := []contract.MeteringEvent{
		outcome("a1", "served", 100), outcome("a2", "served", 100), outcome("a3", "range", 50),
		outcome("a4", "refused", 70), outcome("a5", "verification_failed", 0), outcome("a6", "verification_failed", 0),
		{ID: "a7", Kind: contract.EventEpoch, Samples: 2, Distinct: 2, Bytes: 200, Epoch: 1, Job: "job1"},
	}
	if _, err := acme.client.PostMetering(ctx, c.ContractID, acmeTok, "k", signEvents(t, acme, c.ContractID, acmeEvents...)); err != nil {
		t.Fatal(err)
	}
	if _, err := evil.client.PostMetering(ctx, c.ContractID, evilTok, "k", signEvents(t, evil, c.ContractID, outcome("a1", "served", 10))); err != nil {
		t.Fatal(err)
	}
	r, err := h.Client.MeteringReport(ctx, c.ContractID, contract.TotalsFilter{Epoch: -1})
	if err != nil {
		t.Fatal(err)
	}
	want := contract.MeteringTotals{Contract: c.ContractID,
		BilledEvents: 4, BilledSamples: 3, BilledBytes: 260, BilledUnits: 3, BilledCostNanoUSD: 3 * sampleNano,
		UnbilledEvents: 3, UnbilledBytes: 70,
		Events: 8, AccessEvents: 7, AccessBytes: 330, EpochEvents: 1, EpochSamples: 2, EpochBytes: 200, Units: 3, CostNanoUSD: 3 * sampleNano}
	if r.MeteringTotals != want {
		t.Errorf("totals:\n got %+v\nwant %+v", r.MeteringTotals, want)
	}
	wantOutcomes := map[string]contract.OutcomeTotals{
		"served":              {Events: 3, Billed: true, Sums: contract.Sums{Samples: 3, Bytes: 210, Units: 3, CostNanoUSD: 3 * sampleNano}},
		"range":               {Events: 1, Billed: true, Sums: contract.Sums{Bytes: 50}},
		"refused":             {Events: 1, Sums: contract.Sums{Bytes: 70}},
		"verification_failed": {Events: 2},
	}
	if fmt.Sprint(r.Outcomes) != fmt.Sprint(wantOutcomes) {
		t.Errorf("outcomes:\n got %+v\nwant %+v", r.Outcomes, wantOutcomes)
	}
	if a, e := r.Licensees["acme"], r.Licensees["evil"]; a.BilledSamples != 2 || a.UnbilledEvents != 3 || e.BilledSamples != 1 || e.BilledBytes != 10 || len(r.Licensees) != 2 {
		t.Errorf("by licensee: %+v", r.Licensees)
	}
	only, err := h.Client.MeteringReport(ctx, c.ContractID, contract.TotalsFilter{Epoch: -1, Licensee: "evil"})
	if err != nil {
		t.Fatal(err)
	}
	if only.Licensee != "evil" || only.BilledSamples != 1 || only.Events != 1 || len(only.Licensees) != 1 {
		t.Errorf("licensee=evil: %+v", only)
	}
}

// Amounts that overflow, or are absurd, are refused with 400; the totals
// answer and stay exact.
func TestMeteringOverflowRefused(t *testing.T) {
	ctx := context.Background()
	h, c, acme, _, tok, _ := licensedSetup(t)
	if _, err := acme.client.PostMetering(ctx, c.ContractID, tok, "ok", signEvents(t, acme, c.ContractID, servedIDs("L", 1, 3)...)); err != nil {
		t.Fatal(err)
	}
	huge := func(id string, f func(e *contract.MeteringEvent)) contract.MeteringEvent {
		e := served(id)
		f(&e)
		return e
	}
	for name, ev := range map[string]contract.MeteringEvent{
		"cost 2^62":             huge("x1", func(e *contract.MeteringEvent) { e.CostNanoUSD = 1 << 62 }),
		"units 2^62":            huge("x2", func(e *contract.MeteringEvent) { e.Units, e.Samples, e.CostNanoUSD = 1<<62, 1<<62, 0 }),
		"bytes 2^62":            huge("x3", func(e *contract.MeteringEvent) { e.Bytes = 1 << 62 }),
		"units times price":     huge("x4", func(e *contract.MeteringEvent) { e.Units, e.Samples, e.CostNanoUSD = 1<<40, 1<<40, 1<<62 }),
		"epoch samples 2^62":    {ID: "x5", Kind: contract.EventEpoch, Samples: 1 << 62, Epoch: 1, Job: "job1"},
		"epoch distinct > 2^62": {ID: "x6", Kind: contract.EventEpoch, Samples: 1, Distinct: 1 << 62, Epoch: 1, Job: "job1"},
	} {
		// Twice, as the forged attack did: two events whose sum overflows.
		ev2 := ev
		ev2.ID += "b"
		_, err := acme.client.PostMetering(ctx, c.ContractID, tok, "k-"+ev.ID, signEvents(t, acme, c.ContractID, ev, ev2))
		if contract.StatusOf(err) != http.StatusBadRequest {
			t.Errorf("%s: got %v, want 400", name, err)
		}
	}
	tot, err := h.Client.MeteringTotals(ctx, c.ContractID, "", -1)
	if err != nil {
		t.Fatalf("totals after the forged batches: %v", err)
	}
	if tot.AccessEvents != 3 || tot.CostNanoUSD != 3*sampleNano || tot.AccessBytes != 300 {
		t.Errorf("totals = %+v, want the 3 real events only", tot)
	}
}

// Each event may be sane while the contract's sums overflow: a batch that
// would make any total exceed int64 is refused, and totals stay exact.
func TestMeteringTotalsNeverOverflow(t *testing.T) {
	ctx := context.Background()
	h := registrytest.Start(t)
	alice := h.NewContributor(t, "did:example:alice")
	cc := registrytest.NewContract("did:example:perbyte", "bucket", alice)
	cc.Pricing = contract.Pricing{Unit: contract.UnitByte, PriceUSD: 1} // 10^9 nano-USD per byte
	c := h.CreateContract(t, cc)
	sc := newSidecar(t, h)
	tok := sc.token(t, c.ContractID, contract.Quota{}).Token
	big := func(id string) contract.MeteringEvent {
		const n = 1 << 32 // 4 GiB: 4.29e18 nano-USD, two fit in int64, three do not
		return contract.MeteringEvent{ID: id, Time: time.Now().UTC(), Kind: contract.EventAccess, Name: "a/big.bin",
			Bytes: n, Samples: 1, Units: n, CostNanoUSD: n * 1e9, Epoch: 1, Outcome: "served"}
	}
	if _, err := sc.client.PostMetering(ctx, c.ContractID, tok, "b1", signEvents(t, sc, c.ContractID, big("e1"), big("e2"))); err != nil {
		t.Fatal(err)
	}
	_, err := sc.client.PostMetering(ctx, c.ContractID, tok, "b2", signEvents(t, sc, c.ContractID, big("e3")))
	if contract.StatusOf(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "overflow") {
		t.Errorf("third 4 GiB read at $1/byte: got %v, want 400 naming the overflow", err)
	}
	tot, err := h.Client.MeteringTotals(ctx, c.ContractID, "", -1)
	if err != nil {
		t.Fatalf("totals: %v", err)
	}
	if tot.CostNanoUSD != 2*(1<<32)*1e9 || tot.AccessBytes != 2<<32 {
		t.Errorf("totals = %+v, want exactly the first two reads", tot)
	}
}

// The registry recomputes the cost from the units and the contract's
// price, and refuses a batch that disagrees.
func TestMeteringCostMustMatchThePrice(t *testing.T) {
	ctx := context.Background()
	h, c, acme, _, tok, _ := licensedSetup(t)
	for name, f := range map[string]func(e *contract.MeteringEvent){
		"cost below units times price": func(e *contract.MeteringEvent) { e.CostNanoUSD = 1 },
		"cost above units times price": func(e *contract.MeteringEvent) { e.CostNanoUSD = 2 * sampleNano },
		"no units for a served sample": func(e *contract.MeteringEvent) { e.Units, e.CostNanoUSD = 0, 0 },
		"units but no samples":         func(e *contract.MeteringEvent) { e.Samples = 0 },
		"unbilled outcome with a cost": func(e *contract.MeteringEvent) { e.Outcome = "refused" },
		"an unknown outcome, unpriced": func(e *contract.MeteringEvent) { e.Outcome, e.Units, e.CostNanoUSD = "free", 0, 0 },
		"epoch summary with a cost":    func(e *contract.MeteringEvent) { e.Kind = contract.EventEpoch },
	} {
		e := served("m-" + strings.ReplaceAll(name, " ", "-"))
		f(&e)
		_, err := acme.client.PostMetering(ctx, c.ContractID, tok, e.ID, signEvents(t, acme, c.ContractID, served("ok-"+e.ID), e))
		if contract.StatusOf(err) != http.StatusBadRequest {
			t.Errorf("%s: got %v, want 400", name, err)
		} else if !strings.Contains(err.Error(), e.ID) {
			t.Errorf("%s: the error %q does not name the event", name, err)
		}
	}
	tot, err := h.Client.MeteringTotals(ctx, c.ContractID, "", -1)
	if err != nil {
		t.Fatal(err)
	}
	if tot.Events != 0 {
		t.Errorf("registry counted %d events of refused batches", tot.Events)
	}
}

// Only a sidecar its licensee enrolled for the contract, and not expired,
// may send metering: a key never enrolled, enrolled by a licensee for
// another contract, or whose enrolment expired gets no token to send with;
// and ingest itself checks the enrolment (a registry that lost it, here
// deleted from its database, refuses the batch rather than count it
// unattributed).
func TestMeteringUnenrolledSenderRefused(t *testing.T) {
	ctx := context.Background()
	h, c, acme, _, acmeTok, _ := licensedSetup(t)
	other := h.CreateContract(t, registrytest.NewContract("did:example:other", "bucket", h.NewContributor(t, "did:example:bob")))
	stranger := newSidecar(t, h)
	for name, enrolment := range map[string]string{
		"never enrolled":                "",
		"enrolled for another contract": h.Enrol(t, other.ContractID, stranger.key),
		"enrolment expired":             expiredEnrolment(t, c.ContractID, stranger.jkt),
	} {
		_, err := stranger.client.RequestToken(ctx, c.ContractID, contract.TokenRequest{Purpose: "training", JWK: stranger.key.Public(), Enrolment: enrolment})
		if contract.StatusOf(err) != http.StatusForbidden {
			t.Errorf("%s: token request got %v, want 403", name, err)
		}
	}
	driver, dsn, del := "sqlite3", "file:"+h.DBPath+"?_busy_timeout=10000", `DELETE FROM enrolments WHERE jkt = ?`
	if registry.IsPostgresURL(h.DBPath) {
		driver, dsn, del = "pgx", h.DBPath, `DELETE FROM enrolments WHERE jkt = $1`
	}
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(del, acme.jkt); err != nil {
		t.Fatal(err)
	}
	_, err = acme.client.PostMetering(ctx, c.ContractID, acmeTok, "k", signEvents(t, acme, c.ContractID, served("e1")))
	if contract.StatusOf(err) != http.StatusForbidden || !strings.Contains(err.Error(), "enrol") {
		t.Errorf("metering from a sidecar with no enrolment on record: got %v, want 403 naming the enrolment", err)
	}
	if tot, _ := h.Client.MeteringTotals(ctx, c.ContractID, "", -1); tot.Events != 0 {
		t.Errorf("registry counted %d events from unenrolled senders", tot.Events)
	}
}

// expiredEnrolment is the default licensee's enrolment of jkt that expired
// an hour ago.
func expiredEnrolment(t *testing.T, contractID, jkt string) string {
	t.Helper()
	then := time.Now().Add(-2 * time.Hour)
	jws, err := verify.SignEnrolment(registrytest.DefaultLicensee().Key, &contract.EnrolmentClaims{Issuer: registrytest.DefaultLicenseeID,
		Subject: jkt, Contract: contractID, IssuedAt: then.Unix(), Expiry: then.Add(time.Hour).Unix(), ID: verify.NewID()})
	if err != nil {
		t.Fatal(err)
	}
	return jws
}

// After a contract update, an event priced under the terms before it is
// counted at that price while it is of that time (rows synced late), but a
// sender cannot pick older, cheaper terms for later reads, nor terms that
// are not in the log.
func TestMeteringPricedUnderTheTermsOfItsTime(t *testing.T) {
	ctx := context.Background()
	h, c, acme, _, acmeTok, _ := licensedSetup(t)
	next := *c
	next.Version, next.Pricing.PriceUSD = "2026-02-01", c.Pricing.PriceUSD*2
	updated, err := h.Client.UpdateContract(ctx, h.AdminToken, &next, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	late := served("late")
	late.TermsSeq = c.TermsSeq
	if _, err := acme.client.PostMetering(ctx, c.ContractID, acmeTok, "k1", signEvents(t, acme, c.ContractID, late)); err != nil {
		t.Errorf("a row of the old terms synced after the update: %v", err)
	}
	cheap := served("cheap")
	cheap.TermsSeq, cheap.Time = c.TermsSeq, time.Now().Add(time.Hour)
	nowhere := served("nowhere")
	nowhere.TermsSeq = updated.TermsSeq + 7
	for name, e := range map[string]contract.MeteringEvent{"old terms for a later read": cheap, "terms not in the log": nowhere} {
		_, err := acme.client.PostMetering(ctx, c.ContractID, acmeTok, "k-"+e.ID, signEvents(t, acme, c.ContractID, e))
		if contract.StatusOf(err) != http.StatusBadRequest {
			t.Errorf("%s: got %v, want 400", name, err)
		}
	}
	r, err := h.Client.MeteringReport(ctx, c.ContractID, contract.TotalsFilter{Epoch: -1})
	if err != nil {
		t.Fatal(err)
	}
	if r.BilledSamples != 1 || r.BilledCostNanoUSD != sampleNano {
		t.Errorf("registry bills %d samples for %d nano-USD, want 1 at the old price %d", r.BilledSamples, r.BilledCostNanoUSD, sampleNano)
	}
}

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

func init() {
	commands["verify"] = command{summary: "audit a contract's provenance log: 'verify log' replays and checks it independently; 'verify reset' clears a sidecar's quarantine", run: runVerify}
}

const verifyLogSynopsis = "verify log --registry URL --contract ID [--log-url URL] [--trusted-checkpoint FILE] [--checkpoint-key VKEY] [--max-age DURATION] [--witness VKEY]... [--witness-quorum N]"

func runVerify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "reset" {
		return runVerifyReset(ctx, args[1:], stdout, stderr)
	}
	if len(args) == 0 || args[0] != "log" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return runVerify(ctx, []string{"log", "-h"}, stdout, stderr)
		}
		return &usageError{msg: "usage: provgate " + verifyLogSynopsis}
	}
	fs := newFlagSet("verify log", verifyLogSynopsis, stderr)
	reg := fs.String("registry", "", "registry base URL")
	id := fs.String("contract", "", "contract id")
	trusted := fs.String("trusted-checkpoint", "", "a checkpoint you trust: the log must be consistent with it; it is advanced on success (created on first use)")
	maxAge := fs.Duration("max-age", 0, "refuse a checkpoint signed longer ago than this (0: no freshness check)")
	logURL := fs.String("log-url", "", "read the log as static tlog-tiles from LOG_URL/<contract id>/ instead of the registry's dynamic endpoints (the contract document and key sets still come from --registry)")
	pinKey := fs.String("checkpoint-key", "", "the log's checkpoint verifier key as you know it; the contract the registry serves must name it")
	var witnesses stringList
	fs.Var(&witnesses, "witness", "verifier key (vkey) of a witness whose cosignature the checkpoint needs (repeatable)")
	quorum := fs.Int("witness-quorum", 0, "how many of the --witness keys must have cosigned (0: all of them)")
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	if *reg == "" || *id == "" || fs.NArg() != 0 {
		return &usageError{msg: "verify log: --registry and --contract are required"}
	}
	client, err := contract.NewClient(*reg)
	if err != nil {
		return err
	}
	c, _, err := client.GetContract(ctx, *id, "")
	if err != nil {
		return fmt.Errorf("verify log: contract %s: %w", *id, err)
	}
	if *pinKey != "" && c.Log.CheckpointKey != *pinKey {
		return fmt.Errorf("verify log: %s: the registry's contract names checkpoint key %q, not the pinned %q", c.ContractID, c.Log.CheckpointKey, *pinKey)
	}
	a, err := newAuditor(client, c)
	if err != nil {
		return fmt.Errorf("verify log: %w", err)
	}
	if *logURL != "" {
		tf, err := contract.NewTileFetcher(*logURL, c.ContractID, nil)
		if err != nil {
			return &usageError{msg: fmt.Sprintf("verify log: --log-url: %v", err)}
		}
		if a.log, err = verify.NewTileSource(c, tf); err != nil {
			return fmt.Errorf("verify log: %w", err)
		}
	}
	if a.witnesses, err = verify.NewWitnessPolicy(witnesses, *quorum); err != nil {
		return &usageError{msg: fmt.Sprintf("verify log: --witness: %v", err)}
	}
	if err := a.witnesses.ForLog(a.cpv); err != nil {
		return &usageError{msg: fmt.Sprintf("verify log: --witness: %v", err)}
	}
	rep, err := a.run(ctx, *trusted, *maxAge)
	if err != nil {
		return fmt.Errorf("verify log: %s: %w", c.ContractID, err)
	}
	fmt.Fprintf(stdout, "verify log: OK %s: %d entries (%d attestations, %d metering, %d redactions, %d revocations) match checkpoint size %d root %x signed %s\n",
		c.ContractID, rep.size, rep.attestations, rep.metering, rep.redactions, rep.revocations, rep.cp.Size, rep.cp.Hash, rep.cp.Time.UTC().Format(time.RFC3339))
	for _, v := range rep.versions {
		t := v.v.Terms
		fmt.Fprintf(stdout, "verify log: terms at entry %d (logged %s), in force from %s for the entries after it: version %q, %s at %g USD, %d contributors, %d licensees, %d curators\n",
			v.seq, v.time.UTC().Format(time.RFC3339), v.v.EffectiveFrom.UTC().Format(time.RFC3339), t.Version, t.Pricing.Unit, t.Pricing.PriceUSD,
			len(t.Contributors), len(t.Licensees), len(t.Curators))
	}
	if rep.trusted != nil {
		fmt.Fprintf(stdout, "verify log: consistent with the trusted checkpoint of size %d; %s now holds size %d\n", rep.trusted.Size, *trusted, rep.cp.Size)
	} else if *trusted != "" {
		fmt.Fprintf(stdout, "verify log: trust on first use: wrote checkpoint of size %d to %s\n", rep.cp.Size, *trusted)
	}
	return nil
}

// auditor replays a log independently of the registry's own claims: it
// trusts only the contract's checkpoint key and contributor keys.
type auditor struct {
	client    *contract.Client
	log       verify.LogSource   // the registry's dynamic endpoints, or static tiles (--log-url)
	c         *contract.Contract // as the registry serves it: its terms must be a logged version
	witnesses *verify.WitnessPolicy
	cpv       *verify.CheckpointVerifier
	versions  []termsVersion                 // the log's terms, in seq order
	keys      map[string]*jose.JSONWebKeySet // terms seq + " " + contributor id -> keys
	sidecars  map[string]*jose.JSONWebKeySet // thumbprint -> its key
	revoked   map[string]uint64              // issuer/kid -> seq of the revocation
	live      map[string]uint64              // object name -> seq
	owners    map[string]owner               // object name -> who attested it first
	counted   map[string]uint64              // sender thumbprint + " " + metering event id -> seq
	ranges    map[string][]countedRows       // sender thumbprint + " " + ledger id -> rows of aggregate batches
	leaves    [][]byte
}

// owner is who attested a name first, and in which entry.
type owner struct {
	issuer string
	seq    uint64
}

type auditReport struct {
	cp, trusted                                           *verify.Checkpoint
	size, attestations, metering, redactions, revocations uint64
	versions                                              []termsVersion
}

// termsVersion is a verified version of the terms and the entry that
// holds it.
type termsVersion struct {
	seq  uint64
	time time.Time
	v    *contract.TermsVersion
}

// termsAt is the version that governs entry seq made at t: the latest
// before seq in force at t (or the first).
func (a *auditor) termsAt(seq uint64, t time.Time) *termsVersion {
	var out *termsVersion
	for i := range a.versions {
		v := &a.versions[i]
		if v.seq >= seq {
			break
		}
		if out == nil || !v.v.EffectiveFrom.After(t) {
			out = v
		}
	}
	return out
}

// takeTerms verifies a terms entry (signed by the log's key, naming this
// log) and adds it to the versions.
func (a *auditor) takeTerms(e *contract.Entry) error {
	tv, err := a.cpv.OpenTerms(e.Note)
	if err != nil {
		return err
	}
	if tv.Contract != a.c.ContractID {
		return fmt.Errorf("%w: terms of contract %q", verify.ErrTerms, tv.Contract)
	}
	a.versions = append(a.versions, termsVersion{seq: e.Seq, time: e.Time, v: tv})
	return nil
}

func newAuditor(client *contract.Client, c *contract.Contract) (*auditor, error) {
	cpv, err := verify.NewCheckpointVerifier(c.Log.Origin, c.Log.CheckpointKey)
	if err != nil {
		return nil, err
	}
	return &auditor{client: client, log: client, c: c, cpv: cpv, keys: map[string]*jose.JSONWebKeySet{}, sidecars: map[string]*jose.JSONWebKeySet{},
		revoked: map[string]uint64{}, live: map[string]uint64{}, owners: map[string]owner{}, counted: map[string]uint64{},
		ranges: map[string][]countedRows{}}, nil
}

func (a *auditor) run(ctx context.Context, trustedPath string, maxAge time.Duration) (*auditReport, error) {
	raw, err := a.log.Checkpoint(ctx, a.c.ContractID)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	cp, err := a.cpv.Parse(raw)
	if err != nil {
		return nil, err
	}
	if err := verify.CheckFresh(cp, time.Now(), maxAge); err != nil {
		return nil, err
	}
	if err := a.witnesses.Check(cp, time.Now(), maxAge); err != nil {
		return nil, err
	}
	rep := &auditReport{cp: cp}
	if trustedPath != "" {
		if rep.trusted, err = a.checkTrusted(ctx, trustedPath, cp); err != nil {
			return nil, err
		}
	}
	chain, err := verify.NewChain(a.c.ContractID, nil)
	if err != nil {
		return nil, err
	}
	// Pages are fetched one ahead; signatures are checked in parallel; the
	// chain and the log's rules are checked in order.
	next := a.fetch(ctx, chain.Size())
	for chain.Size() < cp.Size {
		res := <-next
		if res.err != nil {
			return nil, fmt.Errorf("events after %d: %w", chain.Size(), res.err)
		}
		page := res.page
		if len(page.Entries) == 0 {
			return nil, fmt.Errorf("%w: the registry serves %d entries, its checkpoint commits to %d", verify.ErrRoot, chain.Size(), cp.Size)
		}
		if last := page.Entries[len(page.Entries)-1].Seq; last < cp.Size {
			next = a.fetch(ctx, last)
		}
		var entries []*contract.Entry
		var chainErr error
		var badSeq uint64
		var badLeaf []byte
		for _, we := range page.Entries {
			if we.Seq > cp.Size {
				break
			}
			e, err := chain.Append(we.Seq, we.Entry)
			if err != nil {
				chainErr, badSeq, badLeaf = err, we.Seq, contract.LeafHash(we.Entry)
				break
			}
			a.leaves = append(a.leaves, contract.LeafHash(we.Entry))
			entries = append(entries, e)
		}
		sigs := a.verifySignatures(ctx, entries)
		for i, e := range entries {
			if err := a.check(ctx, e, sigs[i], rep); err != nil {
				// Say whether the entry was changed after it was logged.
				return nil, a.locate(ctx, cp, e.Seq, nil, &verify.EntryError{Seq: e.Seq, Err: err})
			}
		}
		if chainErr != nil {
			return nil, a.locate(ctx, cp, badSeq, badLeaf, chainErr)
		}
	}
	if err := chain.CheckCheckpoint(cp); err != nil {
		return nil, a.locate(ctx, cp, chain.Size(), nil, err)
	}
	rep.size, rep.versions = chain.Size(), a.versions
	if err := a.checkServed(); err != nil {
		return nil, err
	}
	if trustedPath != "" {
		if err := verify.WriteFileAtomic(trustedPath, cp.Raw, 0o644); err != nil {
			return nil, fmt.Errorf("save trusted checkpoint: %w", err)
		}
	}
	return rep, nil
}

// checkTrusted checks that cp extends the trusted checkpoint in path, with
// the registry's consistency proof. A missing file is first use.
func (a *auditor) checkTrusted(ctx context.Context, path string, cp *verify.Checkpoint) (*verify.Checkpoint, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	old, err := a.cpv.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("trusted checkpoint %s: %w", path, err)
	}
	var hashes [][]byte
	if old.Size > 0 && old.Size < cp.Size {
		p, err := a.log.ConsistencyProof(ctx, a.c.ContractID, old.Size, cp.Size)
		if err != nil {
			return nil, fmt.Errorf("consistency proof %d -> %d: %w", old.Size, cp.Size, err)
		}
		hashes = p.Hashes
	}
	if err := verify.VerifyConsistency(old, cp, hashes); err != nil {
		return nil, err
	}
	return old, nil
}

type pageResult struct {
	page *contract.EventsPage
	err  error
}

// fetch reads the page after since in the background.
func (a *auditor) fetch(ctx context.Context, since uint64) <-chan pageResult {
	ch := make(chan pageResult, 1)
	go func() {
		page, err := a.log.Events(ctx, a.c.ContractID, since, contract.MaxEventsLimit)
		ch <- pageResult{page, err}
	}()
	return ch
}

// sigResult is an entry's signature check: an attestation's claims and
// kid, or a metering batch.
type sigResult struct {
	terms *contract.Contract // the terms in force at the entry
	at    *contract.Attestation
	kid   string
	batch *contract.MeteringBatch
	err   error
}

// verifySignatures checks the signatures of entries on every core.
// Keys are fetched first, in order, since that may use the network.
func (a *auditor) verifySignatures(ctx context.Context, entries []*contract.Entry) []sigResult {
	out := make([]sigResult, len(entries))
	keys := make([]*jose.JSONWebKeySet, len(entries))
	for i, e := range entries {
		var err error
		if e.Kind == contract.EntryContract {
			out[i].err = a.takeTerms(e)
			continue
		}
		tv := a.termsAt(e.Seq, e.Time)
		if tv == nil {
			out[i].err = fmt.Errorf("%w: entry %d comes before any terms (entry 1 must hold them)", verify.ErrTerms, e.Seq)
			continue
		}
		out[i].terms = &tv.v.Terms
		switch e.Kind {
		case contract.EntryAttestation:
			var peek *verify.UnverifiedAttestation
			if peek, err = verify.PeekAttestation(e.JWS); err == nil {
				keys[i], err = a.contributorKeys(ctx, tv, peek.Issuer)
			}
		case contract.EntryMetering:
			if out[i].kid, err = verify.PeekKeyID(e.JWS, contract.TypeMetering); err == nil {
				keys[i], err = a.sidecarKey(ctx, out[i].kid)
			}
		}
		out[i].err = err
	}
	work := make(chan int)
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if entries[i].Kind == contract.EntryMetering {
					out[i].batch, out[i].err = verify.VerifyMeteringBatch(entries[i].JWS, &keys[i].Keys[0])
					continue
				}
				out[i].at, out[i].kid, out[i].err = verify.VerifyAttestation(entries[i].JWS, out[i].terms, keys[i])
			}
		}()
	}
	for i := range entries {
		if keys[i] != nil && out[i].err == nil {
			work <- i
		}
	}
	close(work)
	wg.Wait()
	return out
}

// check verifies what an entry says, in log order: its signature (already
// checked, in sig); for an attestation the revocations in force and
// redactions of live objects, and that only a name's owner (its first
// attester) or a curator replaces or redacts it; for a metering batch that
// every accepted event is in it, priced as the contract says, and counted
// once per sender.
func (a *auditor) check(ctx context.Context, e *contract.Entry, sig sigResult, rep *auditReport) error {
	switch e.Kind {
	case contract.EntryMetering:
		rep.metering++
	case contract.EntryAttestation:
		rep.attestations++
	case contract.EntryContract:
		return sig.err
	default:
		return fmt.Errorf("%w: unknown kind %q", verify.ErrMalformed, e.Kind)
	}
	if sig.err != nil {
		return sig.err
	}
	if e.Kind == contract.EntryMetering {
		return a.checkMetering(e, sig.terms, sig.kid, sig.batch)
	}
	at, kid := sig.at, sig.kid
	if r, ok := a.revoked[at.Issuer+"/"+kid]; ok {
		return fmt.Errorf("%w: key %q of %q was revoked by entry %d", verify.ErrRevokedKey, kid, at.Issuer, r)
	}
	owned := func(action, name string) error {
		if o, ok := a.owners[name]; ok && !sig.terms.MayRewrite(at.Issuer, o.issuer) {
			return &verify.OwnershipError{Seq: e.Seq, Issuer: at.Issuer, Action: action, Name: name, Owner: o.issuer, OwnedSince: o.seq}
		}
		return nil
	}
	switch at.Type {
	case contract.Contribution, contract.Transformation:
		if err := owned("replaces", at.Object.Name); err != nil {
			return err
		}
		if _, ok := a.owners[at.Object.Name]; !ok {
			a.owners[at.Object.Name] = owner{at.Issuer, e.Seq}
		}
		a.live[at.Object.Name] = e.Seq
	case contract.Batch:
		// The manifest is fetched by the digest the contributor signed and
		// must be those bytes.
		raw, err := a.client.BatchManifest(ctx, a.c.ContractID, at.Batch.ManifestSHA256)
		if err != nil {
			return fmt.Errorf("batch manifest: %w", err)
		}
		m, err := at.Batch.Open(raw, a.c.ContractID)
		if err != nil {
			return err
		}
		for _, o := range m.Objects {
			if err := owned("replaces", o.Name); err != nil {
				return err
			}
			if _, ok := a.owners[o.Name]; !ok {
				a.owners[o.Name] = owner{at.Issuer, e.Seq}
			}
			a.live[o.Name] = e.Seq
		}
	case contract.Redaction:
		rep.redactions++
		if err := owned("redacts", at.Redaction.Name); err != nil {
			return err
		}
		if _, ok := a.live[at.Redaction.Name]; !ok {
			return fmt.Errorf("redaction of %q, which is not a live object", at.Redaction.Name)
		}
		delete(a.live, at.Redaction.Name)
	case contract.Revocation:
		rep.revocations++
		a.revoked[at.Issuer+"/"+at.Revocation.KeyID] = e.Seq
	}
	return nil
}

func (a *auditor) checkMetering(e *contract.Entry, terms *contract.Contract, kid string, b *contract.MeteringBatch) error {
	if b.Sidecar != kid {
		return fmt.Errorf("%w: batch names sidecar %q, signed by %q", verify.ErrWrongKey, b.Sidecar, kid)
	}
	if b.Contract != a.c.ContractID {
		return fmt.Errorf("%w: metering batch for %q", verify.ErrWrongContract, b.Contract)
	}
	if b.Aggregated() {
		return a.checkAggregate(e, terms, kid, b)
	}
	inBatch := map[string]*contract.MeteringEvent{}
	for i := range b.Events {
		inBatch[b.Events[i].ID] = &b.Events[i]
	}
	if len(e.Accepted) == 0 {
		return errors.New("metering entry accepts no event")
	}
	for _, id := range e.Accepted {
		ev := inBatch[id]
		if ev == nil {
			return fmt.Errorf("accepted event %q is not in the batch", id)
		}
		// The registry prices every event it counts; one it should have
		// refused is a finding.
		if err := contract.CheckEventAmounts(ev, terms.Pricing); err != nil {
			return fmt.Errorf("accepted %w", err)
		}
		// Event ids are the sender's own: another sender's equal id is
		// another event.
		key := kid + " " + id
		if prev, ok := a.counted[key]; ok {
			return fmt.Errorf("%w: event %q of sidecar %s was already counted by entry %d", verify.ErrDuplicate, id, kid, prev)
		}
		a.counted[key] = e.Seq
	}
	return nil
}

// countedRows are the rows an aggregate metering entry counted.
type countedRows struct {
	rows contract.RowCommitment
	seq  uint64
}

// checkAggregate checks an aggregate metering entry: it lists no events,
// every aggregate is priced as the contract says, and its rows overlap no
// rows of the same sender's ledger counted before, nor its events counted
// one by one.
func (a *auditor) checkAggregate(e *contract.Entry, terms *contract.Contract, kid string, b *contract.MeteringBatch) error {
	if len(e.Accepted) != 0 {
		return errors.New("an aggregate metering entry lists events")
	}
	for i := range b.Aggregates {
		if err := contract.CheckAggregateAmounts(&b.Aggregates[i], terms.Pricing); err != nil {
			return fmt.Errorf("accepted %w", err)
		}
	}
	key := kid + " " + b.Rows.Ledger
	for _, prev := range a.ranges[key] {
		if prev.rows.Overlaps(b.Rows) {
			return fmt.Errorf("%w: rows (%d, %d] of ledger %q of sidecar %s overlap rows entry %d counted", verify.ErrDuplicate,
				b.Rows.AfterSeq, b.Rows.LastSeq, b.Rows.Ledger, kid, prev.seq)
		}
	}
	a.ranges[key] = append(a.ranges[key], countedRows{rows: *b.Rows, seq: e.Seq})
	return nil
}

// sidecarKey fetches the public key of a sidecar from the registry. The
// key is self-certifying: it must hash (RFC 7638) to the batch's kid, so
// the registry cannot substitute one.
func (a *auditor) sidecarKey(ctx context.Context, jkt string) (*jose.JSONWebKeySet, error) {
	if k, ok := a.sidecars[jkt]; ok {
		return k, nil
	}
	set, err := a.client.JWKS(ctx, a.client.URL("sidecars", jkt, "jwks.json"))
	if err != nil {
		return nil, fmt.Errorf("key of sidecar %s: %w", jkt, err)
	}
	if len(set.Keys) != 1 {
		return nil, fmt.Errorf("%w: the registry serves %d keys for sidecar %s", verify.ErrUnknownKey, len(set.Keys), jkt)
	}
	if tp, err := verify.Thumbprint(&set.Keys[0]); err != nil || tp != jkt {
		return nil, fmt.Errorf("%w: the registry's key for sidecar %s has thumbprint %s", verify.ErrKeyMismatch, jkt, tp)
	}
	a.sidecars[jkt] = set
	return set, nil
}

// checkServed checks that the contract the registry serves is the logged
// version it names.
func (a *auditor) checkServed() error {
	if a.c.TermsSeq == 0 {
		return fmt.Errorf("%w: the registry serves terms that name no log entry", verify.ErrTerms)
	}
	for _, v := range a.versions {
		if v.seq == a.c.TermsSeq {
			if !contract.SameTerms(a.c, &v.v.Terms) {
				return &verify.TermsError{Seq: v.seq, Err: fmt.Errorf("%w: the registry serves a contract document that differs from the terms its log holds at entry %d", verify.ErrTerms, v.seq)}
			}
			return nil
		}
	}
	return &verify.TermsError{Seq: a.c.TermsSeq, Err: fmt.Errorf("%w: the registry serves terms of entry %d, which holds none", verify.ErrTerms, a.c.TermsSeq)}
}

func (a *auditor) contributorKeys(ctx context.Context, tv *termsVersion, id string) (*jose.JSONWebKeySet, error) {
	ck := strconv.FormatUint(tv.seq, 10) + " " + id
	if k, ok := a.keys[ck]; ok {
		return k, nil
	}
	ct := tv.v.Terms.Contributor(id)
	if ct == nil {
		return nil, fmt.Errorf("%w: %q", verify.ErrNotContributor, id)
	}
	set := ct.JWKS
	if set == nil || len(set.Keys) == 0 {
		var err error
		if set, err = a.client.JWKS(ctx, ct.JWKSURI); err != nil {
			return nil, fmt.Errorf("keys of %q: %w", id, err)
		}
	}
	a.keys[ck] = set
	return set, nil
}

// locate names the first entry whose bytes are not the ones the signed
// checkpoint commits to. The replayed leaves 1..n-1 and the leaf of entry
// n (nil if n was replayed) are checked by prefix: a prefix of size m is
// intact iff its root is consistent with the checkpoint's root, which is
// monotone in m, so a binary search finds the first changed entry. If
// every prefix is intact, entry n itself is what is wrong.
func (a *auditor) locate(ctx context.Context, cp *verify.Checkpoint, n uint64, leafN []byte, cause error) error {
	leaves := a.leaves
	if leafN != nil && uint64(len(leaves)) == n-1 {
		leaves = append(leaves[:len(leaves):len(leaves)], leafN)
	}
	if n > uint64(len(leaves)) {
		n = uint64(len(leaves))
	}
	intact := func(m uint64) bool {
		root := prefixRoot(leaves[:m])
		if m == cp.Size {
			return bytes.Equal(root, cp.Hash)
		}
		p, err := a.log.ConsistencyProof(ctx, a.c.ContractID, m, cp.Size)
		if err != nil {
			return false
		}
		return proof.VerifyConsistency(rfc6962.DefaultHasher, m, cp.Size, p.Hashes, root, cp.Hash) == nil
	}
	lo, hi := uint64(1), n // find the first m in [lo, hi] that is not intact
	for lo < hi {
		mid := lo + (hi-lo)/2
		if intact(mid) {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if n >= 1 && !intact(lo) {
		return &verify.EntryError{Seq: lo, Err: fmt.Errorf("its bytes are not the ones the signed checkpoint commits to (%w)", cause)}
	}
	var ee *verify.EntryError
	if errors.As(cause, &ee) {
		return cause
	}
	return &verify.EntryError{Seq: max(n, 1), Err: cause}
}

func prefixRoot(leaves [][]byte) []byte {
	if len(leaves) == 0 {
		return rfc6962.DefaultHasher.EmptyRoot()
	}
	rng := (&compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}).NewEmptyRange(0)
	for _, l := range leaves {
		rng.Append(l, nil)
	}
	root, _ := rng.GetRootHash(nil)
	return root
}

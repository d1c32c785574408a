package sidecar

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/provgate/provgate/cache"
	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/proxy"
	"github.com/provgate/provgate/verify"
)

// mount is one mounted contract: it implements proxy.Source.
type mount struct {
	s  *Sidecar
	id string

	mu       sync.RWMutex
	contract *contract.Contract
	follower *verify.Follower
	tokens   *contract.TokenSource
	startErr error
}

var _ proxy.Source = (*mount)(nil)

// run mounts the contract, retrying with capped backoff until the registry
// answers, then follows it until ctx ends.
func (m *mount) run(ctx context.Context) {
	for attempt := 1; ; attempt++ {
		err := m.mount(ctx)
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			return
		}
		m.mu.Lock()
		m.startErr = err
		m.mu.Unlock()
		m.s.log.Warn("mounting contract failed; retrying", "contract", m.id, "attempt", attempt, "err", err)
		t := time.NewTimer(contract.Backoff(attempt, mountRetryFirst, mountRetryMax))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

func (m *mount) mount(ctx context.Context) error {
	s := m.s
	c, _, err := s.client.GetContract(ctx, m.id, "")
	if err != nil {
		return fmt.Errorf("fetch contract: %w", err)
	}
	if c.ContractID != m.id {
		return fmt.Errorf("registry answered contract %q for %q", c.ContractID, m.id)
	}
	if err := c.Validate(); err != nil {
		return fmt.Errorf("contract %q from the registry is not valid: %w", m.id, err)
	}
	if c.Log.Origin == "" || c.Log.CheckpointKey == "" {
		return fmt.Errorf("contract %q names no log origin or checkpoint key", m.id)
	}
	if c.TermsSeq == 0 {
		return fmt.Errorf("contract %q: the registry serves terms that name no log entry (terms_seq); only terms verified in the log are used (a registry older than logged terms?)", m.id)
	}
	var opts []verify.Option
	switch {
	case len(s.cfg.PinnedCheckpoint) > 0:
		opts = append(opts, verify.WithPinnedCheckpoint(s.cfg.PinnedCheckpoint))
	case s.cfg.TrustOnFirstUse:
		opts = append(opts, verify.WithTrustOnFirstUse())
	}
	var source verify.LogSource = s.client
	var stream verify.StreamSource = s.client
	if s.cfg.LogURL != "" {
		// The log from static tiles; polled (the live feed is the
		// registry's, which tiles are there to spare).
		tf, err := contract.NewTileFetcher(s.cfg.LogURL, m.id, nil)
		if err != nil {
			return fmt.Errorf("log url: %w", err)
		}
		if source, err = verify.NewTileSource(c, tf); err != nil {
			return err
		}
		stream = nil
	}
	f, err := verify.NewFollower(ctx, verify.FollowerConfig{Contract: c, Source: source, Stream: stream, Fetcher: s.client,
		Store: s.store, Logger: s.log.With("part", "follower"), Metrics: s.vmetrics,
		OnRedact: m.onRedact, OnTerms: m.onTerms, MaxCheckpointAge: s.cfg.MaxCheckpointAge, PollInterval: s.cfg.PollInterval,
		Witnesses: s.cfg.Witnesses}, opts...)
	if err != nil {
		return fmt.Errorf("log follower: %w", err)
	}
	if f.Terms() == nil && !errors.Is(f.Ready(), verify.ErrQuarantined) {
		if err := f.Sync(ctx); err != nil && !errors.Is(err, verify.ErrQuarantined) {
			// Not verified yet: the status says why; mount retries.
			m.mu.Lock()
			m.follower = f
			m.mu.Unlock()
			return fmt.Errorf("verify the log before taking its terms: %w", err)
		}
	}
	if err := f.Ready(); errors.Is(err, verify.ErrQuarantined) {
		// Mounted, refusing: the status shows the evidence.
		m.mu.Lock()
		m.contract, m.follower, m.startErr = c, f, nil
		m.mu.Unlock()
		s.log.Error("contract quarantined; not serving it", "contract", m.id, "err", err)
		return nil
	}
	tv := f.Terms()
	if tv == nil {
		return fmt.Errorf("contract %q: no verified terms in force", m.id)
	}
	// From here on, only the terms verified in the log.
	c = tv.Contract()
	if s.cfg.Purpose != "" && !c.Usage.AllowsPurpose(s.cfg.Purpose) {
		return fmt.Errorf("purpose %q is not allowed by contract %q (allowed: %s)", s.cfg.Purpose, m.id, strings.Join(c.Usage.Purposes, ", "))
	}
	purpose := s.cfg.Purpose
	if purpose == "" {
		purpose = c.Usage.Purposes[0]
	}
	check, err := verify.NewCapabilityChecker(s.registryKeys, m.id, s.key, nil)
	if err != nil {
		return err
	}
	ts, err := contract.NewTokenSource(contract.TokenSourceConfig{Registry: s.client, Contract: m.id, JWK: s.key.Public(),
		Enrolment: s.enrolmentFor(m.id), Purpose: purpose, Usage: s.cfg.Quota, Check: check, Logger: s.log.With("part", "tokens")})
	if err != nil {
		return err
	}
	if err := ts.Start(ctx); err != nil {
		return fmt.Errorf("capability token: %w", err)
	}
	origin, err := m.origin(c, ts)
	if err != nil {
		ts.Stop()
		return err
	}
	// The cache checks the verified manifest before it commits a fetch, so
	// that a redaction applied meanwhile is never undone by a fetch that
	// read its claim before.
	mopts := []cache.MountOption{cache.WithLiveCheck(func(name, decodedSHA string) bool {
		e, err := f.Manifest().Lookup(name)
		return err == nil && e.DecodedSHA256 == decodedSHA
	})}
	if c.Pricing.Unit == contract.UnitToken {
		// The contract bills attested token counts: every fetch checks them.
		mopts = append(mopts, cache.WithTokenizer(c.Pricing.Tokenizer))
	}
	if err := s.cache.Mount(m.id, origin, c.Usage.Retention(), mopts...); err != nil {
		ts.Stop()
		return fmt.Errorf("cache: %w", err)
	}
	if err := s.ledger.SetTerms(ctx, m.id, c.Pricing, c.TermsSeq); err != nil {
		ts.Stop()
		return fmt.Errorf("ledger: %w", err)
	}
	if err := f.Start(ctx); err != nil {
		ts.Stop()
		return err
	}
	m.mu.Lock()
	m.contract, m.follower, m.tokens, m.startErr = c, f, ts, nil
	m.mu.Unlock()
	s.log.Info("contract mounted", "contract", m.id, "purpose", purpose)
	return nil
}

// origin picks the contract's origin: the sidecar's own credentials in
// self-hosted mode, else presigned URLs from the registry.
func (m *mount) origin(c *contract.Contract, ts *contract.TokenSource) (cache.Origin, error) {
	s := m.s
	if s.cfg.S3Endpoint != "" {
		o, err := cache.NewS3Origin(cache.S3Config{Endpoint: s.cfg.S3Endpoint, Region: s.cfg.S3Region, Lookup: s.cfg.S3Lookup,
			Bucket: c.Origin.Bucket, Prefix: c.Origin.Prefix})
		if err != nil {
			return nil, fmt.Errorf("origin: %w", err)
		}
		return o, nil
	}
	presign := cache.PresignerFunc(func(ctx context.Context, names []string) ([]contract.PresignedURL, error) {
		tok, _, err := ts.Token(ctx)
		if err != nil {
			return nil, err
		}
		resp, err := s.client.Presign(ctx, m.id, tok, names)
		if err != nil {
			return nil, err
		}
		return resp.URLs, nil
	})
	return cache.NewPresignedOrigin(presign, nil), nil
}

// onTerms takes a new version of the terms in force: its pricing bills
// the reads from now on, and its document is what /v1/contracts/{id}
// shows. Origin and tokenizer changes take a restart.
func (m *mount) onTerms(contractID string, v *verify.TermsVersion) {
	c := v.Contract()
	m.mu.Lock()
	mounted := m.contract != nil && m.tokens != nil
	if mounted {
		m.contract = c
	}
	m.mu.Unlock()
	if !mounted {
		return // mount takes the terms in force itself
	}
	if err := m.s.ledger.SetTerms(context.Background(), contractID, c.Pricing, c.TermsSeq); err != nil {
		m.s.log.Error("taking new contract terms failed", "contract", contractID, "terms_seq", c.TermsSeq, "err", err)
		return
	}
	m.s.log.Info("new contract terms in force", "contract", contractID, "terms_seq", c.TermsSeq,
		"unit", c.Pricing.Unit, "price_usd", c.Pricing.PriceUSD)
}

func (m *mount) onRedact(contractID, name string) {
	if err := m.s.cache.Purge(contractID, name); err != nil {
		m.s.log.Error("purging a redacted object failed", "contract", contractID, "name", name, "err", err)
	}
}

func (m *mount) stop() {
	m.mu.Lock()
	f, ts := m.follower, m.tokens
	m.mu.Unlock()
	if f != nil {
		f.Stop()
	}
	if ts != nil {
		ts.Stop()
	}
}

func (m *mount) parts() (*contract.Contract, *verify.Follower, *contract.TokenSource, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.contract, m.follower, m.tokens, m.startErr
}

func (m *mount) token(ctx context.Context) (string, error) {
	_, _, ts, err := m.parts()
	if ts == nil {
		if err == nil {
			err = proxy.ErrNotReady
		}
		return "", err
	}
	tok, _, err := ts.Token(ctx)
	return tok, err
}

// ID is the contract id.
func (m *mount) ID() string { return m.id }

// Contract is the contract as fetched (its log and keys verify what is
// served), or a stub with the id before it is mounted.
func (m *mount) Contract() *contract.Contract {
	c, _, _, _ := m.parts()
	if c == nil {
		return &contract.Contract{ContractID: m.id}
	}
	return c
}

// Status combines the follower's and the token's state.
func (m *mount) Status() proxy.Status {
	_, f, ts, startErr := m.parts()
	st := proxy.Status{ID: m.id, State: proxy.StateStarting}
	if f == nil {
		if startErr != nil {
			st.Error = startErr.Error()
		}
		return st
	}
	fs := f.Status()
	st.TreeSize, st.CheckpointTime, st.Objects = fs.Size, fs.CheckpointTime, fs.Objects
	st.Root = fs.Root
	st.Error = fs.LastError
	switch {
	case fs.State == verify.StateQuarantined:
		st.State, st.Error = proxy.StateQuarantined, fs.Quarantine
		return st
	case ts == nil:
		// The log is not verified yet, so no terms are taken.
		st.State = proxy.StateVerifying
		if st.Error == "" && startErr != nil {
			st.Error = startErr.Error()
		}
		return st
	}
	ti := ts.Status()
	st.TokenExpiry = ti.ExpiresAt
	switch {
	case fs.State == verify.StateQuarantined:
		st.State, st.Error = proxy.StateQuarantined, fs.Quarantine
	case ti.State == contract.TokenExpired:
		st.State, st.Error = proxy.StateExpired, ti.LastError
	case fs.State == verify.StateSyncing || ti.State == contract.TokenPending:
		st.State = proxy.StateVerifying
		if ti.LastError != "" {
			st.Error = ti.LastError // e.g. 403 not_enrolled: say why there is no token
		}
	case fs.State == verify.StateStale:
		// The last trusted checkpoint is older than the freshness window:
		// a frozen log is refused like an unverified one.
		st.State = proxy.StateVerifying
		if st.Error == "" {
			st.Error = "checkpoint older than the freshness window"
		}
	case ti.State == contract.TokenDegraded || fs.LastError != "":
		st.State = proxy.StateDegraded
		if ti.LastError != "" {
			st.Error = ti.LastError
		}
	default:
		st.State = proxy.StateReady
	}
	d := m.s.ledger.DisputeStatus(m.id)
	st.MeteringDisputes, st.MeteringDispute = d.Batches, d.Detail
	return st
}

// Lookup finds a verified object.
func (m *mount) Lookup(name string) (*proxy.ManifestEntry, error) {
	_, f, _, _ := m.parts()
	if f == nil {
		return nil, proxy.ErrNotReady
	}
	e, err := f.Lookup(name)
	switch {
	case errors.Is(err, verify.ErrRedacted):
		return nil, fmt.Errorf("%w: %v", proxy.ErrRedacted, err)
	case errors.Is(err, verify.ErrNotFound):
		return nil, fmt.Errorf("%w: %v", proxy.ErrNotFound, err)
	case errors.Is(err, verify.ErrQuarantined):
		return nil, fmt.Errorf("%w: %v", proxy.ErrQuarantined, err)
	case err != nil:
		return nil, fmt.Errorf("%w: %v", proxy.ErrNotReady, err)
	}
	return &proxy.ManifestEntry{ObjectClaim: e.ObjectClaim, Seq: e.Seq}, nil
}

// Manifest lists the verified objects.
func (m *mount) Manifest() []proxy.ManifestEntry {
	_, f, _, _ := m.parts()
	if f == nil {
		return nil
	}
	entries := f.Manifest().Entries()
	out := make([]proxy.ManifestEntry, len(entries))
	for i, e := range entries {
		out[i] = proxy.ManifestEntry{ObjectClaim: e.ObjectClaim, Seq: e.Seq}
	}
	return out
}

// Grant is the token in force.
func (m *mount) Grant() (proxy.Grant, error) {
	_, _, ts, _ := m.parts()
	if ts == nil {
		return proxy.Grant{}, proxy.ErrNotReady
	}
	if ts.Status().State == contract.TokenPending {
		return proxy.Grant{}, proxy.ErrNotReady
	}
	_, claims, err := ts.Token(context.Background())
	if err != nil {
		return proxy.Grant{}, fmt.Errorf("%w: %v", proxy.ErrTokenExpired, err)
	}
	return proxy.Grant{TokenID: claims.ID, LeaseID: claims.Lease, Licensee: claims.Licensee, Quota: claims.Quota,
		Expiry: time.Unix(claims.Expiry, 0)}, nil
}

func hostOf(endpoint string) string {
	if u, err := url.Parse(endpoint); err == nil && u.Host != "" {
		return u.Host
	}
	return endpoint
}

package verify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/provgate/provgate/contract"
)

// LogSource reads a contract's log: cursor pages, the latest signed
// checkpoint and consistency proofs. *contract.Client satisfies it.
type LogSource interface {
	Events(ctx context.Context, id string, since uint64, limit int) (*contract.EventsPage, error)
	Checkpoint(ctx context.Context, id string) ([]byte, error)
	ConsistencyProof(ctx context.Context, id string, from, to uint64) (*contract.ConsistencyProof, error)
}

// StreamSource is the live feed of new entries. *contract.Client satisfies
// it. Streamed entries only wake the follower up and spare it a page read:
// they are trusted no more than paged ones.
type StreamSource interface {
	Stream(ctx context.Context, id string, since uint64, fn func(contract.WireEntry) error) error
}

var (
	_ LogSource    = (*contract.Client)(nil)
	_ StreamSource = (*contract.Client)(nil)
)

// Follower defaults.
const (
	DefaultPollInterval = 5 * time.Second
	// DefaultMaxCheckpointAge is the freshness window: a checkpoint signed
	// longer ago is a frozen log and is refused, and a contract whose last
	// trusted checkpoint is older stops serving. The registry re-signs every
	// 30 s; the window is longer than a capability token's life, so that
	// with the registry down the token expires first.
	DefaultMaxCheckpointAge = time.Hour
	DefaultPageSize         = contract.DefaultEventsLimit
	DefaultBaseBackoff      = 500 * time.Millisecond
	DefaultMaxBackoff       = time.Minute
	// maxStreamed bounds the entries kept from the live feed between syncs.
	maxStreamed = 10000
)

// FollowerConfig configures a Follower. Contract, Source and Store are
// required; the rest have defaults.
type FollowerConfig struct {
	// Contract is the contract document as the registry served it: the
	// follower takes the log (origin, checkpoint key) from it, and checks
	// that its terms are those of the log entry it names (TermsSeq); the
	// terms it verifies with, and that Terms returns, come from the log.
	Contract *contract.Contract
	Source   LogSource
	// Stream is the live feed; nil polls only.
	Stream StreamSource
	// Fetcher fetches contributors' jwks_uri key sets; nil when all keys
	// are inline.
	Fetcher JWKSFetcher
	Store   *Store
	Logger  *slog.Logger
	Metrics *Metrics
	// OnRedact is called (outside any lock), after the change is
	// persisted, for each name whose cached bytes are no longer valid: it
	// was redacted, replaced by a new version, or dropped by a retroactive
	// revocation. The cache purges it.
	OnRedact func(contractID, name string)
	// OnTerms is called (outside any lock) after a sync that changed the
	// terms in force, with the new version.
	OnTerms func(contractID string, v *TermsVersion)
	// Now is the clock (tests); nil is time.Now.
	Now func() time.Time

	PollInterval     time.Duration
	MaxCheckpointAge time.Duration
	BaseBackoff      time.Duration
	MaxBackoff       time.Duration
	PageSize         int
	// JWKSMaxAge and JWKSMinRefresh tune the jwks_uri key caches
	// (DefaultJWKSMaxAge, DefaultJWKSMinRefresh).
	JWKSMaxAge     time.Duration
	JWKSMinRefresh time.Duration
	// Workers verify signatures in parallel; 0 is GOMAXPROCS.
	Workers int
	// Witnesses, when set, refuses any checkpoint without a quorum of
	// fresh witness cosignatures (the split-view defence).
	Witnesses *WitnessPolicy
}

// Option is a security option of a Follower.
type Option func(*options)

type options struct {
	pinned      []byte
	tofu        bool
	noFreshness bool
	retroactive bool
}

// WithPinnedCheckpoint trusts the signed checkpoint note on first contact:
// the log must be consistent with it.
func WithPinnedCheckpoint(note []byte) Option {
	return func(o *options) { o.pinned = bytes.Clone(note) }
}

// WithTrustOnFirstUse trusts, on first contact, whatever checkpoint the
// registry serves. Later checkpoints must still extend it.
func WithTrustOnFirstUse() Option { return func(o *options) { o.tofu = true } }

// WithoutFreshnessCheckUnsafe turns the freshness window off: a frozen log
// goes unnoticed.
func WithoutFreshnessCheckUnsafe() Option { return func(o *options) { o.noFreshness = true } }

// WithRetroactiveRevocations treats every revocation as retroactive: the
// objects signed earlier by a revoked key are dropped too.
func WithRetroactiveRevocations() Option { return func(o *options) { o.retroactive = true } }

// State is a follower's state.
type State string

// Follower states.
const (
	// StateSyncing: no verified state yet.
	StateSyncing State = "syncing"
	// StateReady: verified, with a fresh checkpoint.
	StateReady State = "ready"
	// StateStale: the last trusted checkpoint is older than the freshness
	// window (the registry froze or is unreachable).
	StateStale State = "stale"
	// StateQuarantined: the log forked or rolled back.
	StateQuarantined State = "quarantined"
)

// Status is a follower's state, as /v1/contracts shows it.
type Status struct {
	Contract       string    `json:"contract_id"`
	State          State     `json:"state"`
	Size           uint64    `json:"verified_size"`
	Root           []byte    `json:"checkpoint_root,omitempty"`
	CheckpointTime time.Time `json:"checkpoint_time,omitzero"`
	Objects        int       `json:"objects"`
	Redacted       int       `json:"redacted"`
	Rejected       uint64    `json:"rejected_entries"`
	LastSync       time.Time `json:"last_sync,omitzero"`
	LastError      string    `json:"last_error,omitempty"`
	Quarantine     string    `json:"quarantine,omitempty"`
}

// Follower follows one contract's provenance log: it replays it, checks
// the hash chain, the Merkle root against the signed checkpoint,
// consistency with the last trusted checkpoint, freshness and every
// attestation, keeps the verified manifest, and persists what it trusts.
type Follower struct {
	cfg      FollowerConfig
	opt      options
	id       string
	log      *slog.Logger
	cpv      *CheckpointVerifier
	manifest *Manifest
	notify   chan struct{}

	syncMu sync.Mutex // one sync at a time

	mu         sync.RWMutex
	chain      *Chain
	trusted    *Checkpoint // last trusted checkpoint; pinned before first sync
	verified   bool        // chain and trusted are a committed, verified state
	revs       map[revKey]revocation
	terms      *TermsHistory
	inForce    uint64 // seq of the terms in force at the last sync
	quarantine *QuarantineError
	lastSync   time.Time
	lastErr    error
	rejected   uint64

	streamMu sync.Mutex
	streamed map[uint64][]byte

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// NewFollower makes the follower of cfg.Contract and loads its persisted
// state: when there is one, the follower is ready at once (if the state's
// checkpoint is fresh), before any network round trip.
func NewFollower(ctx context.Context, cfg FollowerConfig, opts ...Option) (*Follower, error) {
	if cfg.Contract == nil || cfg.Source == nil || cfg.Store == nil {
		return nil, errors.New("follower: Contract, Source and Store are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.MaxCheckpointAge <= 0 {
		cfg.MaxCheckpointAge = DefaultMaxCheckpointAge
	}
	if cfg.BaseBackoff <= 0 {
		cfg.BaseBackoff = DefaultBaseBackoff
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if cfg.PageSize <= 0 || cfg.PageSize > contract.MaxEventsLimit {
		cfg.PageSize = DefaultPageSize
	}
	if cfg.Workers <= 0 {
		cfg.Workers = runtime.GOMAXPROCS(0)
	}
	c := cfg.Contract
	f := &Follower{cfg: cfg, id: c.ContractID, revs: map[revKey]revocation{},
		notify: make(chan struct{}, 1), streamed: map[uint64][]byte{}}
	f.log = cfg.Logger.With("contract", f.id)
	for _, o := range opts {
		o(&f.opt)
	}
	var err error
	if f.cpv, err = NewCheckpointVerifier(c.Log.Origin, c.Log.CheckpointKey); err != nil {
		return nil, fmt.Errorf("follower %s: %w", f.id, err)
	}
	if err := cfg.Witnesses.ForLog(f.cpv); err != nil {
		return nil, fmt.Errorf("follower %s: %w", f.id, err)
	}
	if f.chain, err = NewChain(f.id, nil); err != nil {
		return nil, err
	}
	if f.opt.pinned != nil {
		if f.trusted, err = f.cpv.Parse(f.opt.pinned); err != nil {
			return nil, fmt.Errorf("follower %s: pinned checkpoint: %w", f.id, err)
		}
	}
	if f.manifest, err = cfg.Store.manifestFor(ctx, f.id); err != nil {
		return nil, fmt.Errorf("follower %s: %w", f.id, err)
	}
	f.manifest.fromCache, f.manifest.fromState = cfg.Metrics.lookupCounters(f.id)
	if err := f.load(ctx); err != nil {
		return nil, fmt.Errorf("follower %s: %w", f.id, err)
	}
	return f, nil
}

// load restores the persisted state, checking it against its own signed
// checkpoint.
func (f *Follower) load(ctx context.Context) error {
	t, err := f.cfg.Store.load(ctx, f.id)
	if err != nil || t == nil {
		return err
	}
	if t.quarantine != "" {
		f.quarantine = &QuarantineError{Contract: f.id, At: f.cfg.Now(), Err: errors.New(t.quarantine)}
		f.log.Error("contract is quarantined (persisted); reset its state to resume", "evidence", t.quarantine)
		return nil
	}
	cp, err := f.cpv.Parse(t.checkpoint)
	if err != nil {
		return fmt.Errorf("%w: persisted checkpoint: %v", ErrState, err)
	}
	chain, err := NewChain(f.id, &t.state)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrState, err)
	}
	if err := chain.CheckCheckpoint(cp); err != nil {
		return fmt.Errorf("%w: persisted log state does not match its checkpoint: %v", ErrState, err)
	}
	var hist *TermsHistory
	for _, v := range t.terms {
		tv, err := f.cpv.OpenTerms(v.Note)
		if err != nil {
			return fmt.Errorf("%w: persisted terms at entry %d: %v", ErrState, v.Seq, err)
		}
		if hist, err = hist.add(v.Seq, v.Time, v.Note, tv, f.id, f.keyStore); err != nil {
			return fmt.Errorf("%w: %v", ErrState, err)
		}
	}
	if chain.Size() > 0 && hist.Len() == 0 {
		return fmt.Errorf("%w: the state predates contract terms in the log; reset it (provgate verify reset) to verify the log again", ErrState)
	}
	f.chain, f.trusted, f.verified = chain, cp, true
	f.revs, f.terms = t.revs, hist
	if v := hist.InForce(f.cfg.Now()); v != nil {
		f.inForce = v.Seq
	}
	if err := f.checkClaimed(hist); err != nil {
		return f.quarantineWith(ctx, err)
	}
	if err := f.cfg.Witnesses.Check(cp, f.cfg.Now(), 0); err != nil {
		// Trusted before witnesses were required: a base to extend, not
		// to serve from, until a cosigned checkpoint is verified.
		f.verified = false
		f.log.Warn("persisted checkpoint lacks the witness quorum; not serving until a cosigned one is verified", "err", err)
	}
	return nil
}

// Contract is the contract document the follower was given (as the
// registry served it). Use Terms for the verified terms.
func (f *Follower) Contract() *contract.Contract { return f.cfg.Contract }

// Terms is the verified version of the terms in force now, or nil before
// any is verified.
func (f *Follower) Terms() *TermsVersion {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.terms.InForce(f.cfg.Now())
}

// TermsHistory is every verified version of the terms.
func (f *Follower) TermsHistory() *TermsHistory {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.terms
}

// keyStore makes the contributor key store of one version of the terms.
func (f *Follower) keyStore(c *contract.Contract) (*KeyStore, error) {
	ks, err := NewKeyStore(c, f.cfg.Fetcher)
	if err != nil {
		return nil, err
	}
	for _, cache := range ks.remote {
		if f.cfg.JWKSMaxAge > 0 {
			cache.MaxAge = f.cfg.JWKSMaxAge
		}
		if f.cfg.JWKSMinRefresh > 0 {
			cache.MinRefresh = f.cfg.JWKSMinRefresh
		}
		cache.Now = f.cfg.Now
	}
	return ks, nil
}

// checkClaimed compares the served contract document with the verified
// version it names: a registry that serves other terms than its log holds
// is caught (the evidence is both).
func (f *Follower) checkClaimed(h *TermsHistory) error {
	c := f.cfg.Contract
	if c.TermsSeq == 0 {
		return nil
	}
	v := h.At(c.TermsSeq)
	if v == nil {
		if h.Len() > 0 && c.TermsSeq <= f.chain.Size() {
			return &TermsError{Seq: c.TermsSeq, Err: fmt.Errorf("%w: the registry serves terms at entry %d, which holds no terms", ErrTerms, c.TermsSeq)}
		}
		return nil // beyond what is verified yet
	}
	if !contract.SameTerms(c, &v.Terms) {
		served, _ := json.Marshal(c)
		logged, _ := json.Marshal(&v.Terms)
		return &TermsError{Seq: c.TermsSeq, Err: fmt.Errorf("%w: the registry serves a contract document that differs from the terms its log holds at entry %d: served %s; logged %s",
			ErrTerms, c.TermsSeq, served, logged)}
	}
	return nil
}

// Manifest is the verified manifest. Prefer Lookup, which also refuses
// while the contract is not servable.
func (f *Follower) Manifest() *Manifest { return f.manifest }

// Ready reports whether the contract may be served: nil, or an error
// wrapping ErrQuarantined, ErrNotVerified or ErrStale.
func (f *Follower) Ready() error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.readyLocked()
}

func (f *Follower) readyLocked() error {
	switch {
	case f.quarantine != nil:
		return f.quarantine
	case !f.verified:
		return fmt.Errorf("contract %q: %w", f.id, ErrNotVerified)
	case !f.opt.noFreshness:
		return CheckFresh(f.trusted, f.cfg.Now(), f.cfg.MaxCheckpointAge)
	}
	return nil
}

// Lookup returns the verified entry for name, or an error wrapping
// ErrQuarantined, ErrNotVerified, ErrStale (503), ErrRedacted (451) or
// ErrNotFound (404).
func (f *Follower) Lookup(name string) (ManifestEntry, error) {
	if err := f.Ready(); err != nil {
		return ManifestEntry{}, err
	}
	return f.manifest.Lookup(name)
}

// Status reports the follower's state.
func (f *Follower) Status() Status {
	f.mu.RLock()
	defer f.mu.RUnlock()
	st := Status{Contract: f.id, Size: f.chain.Size(), Objects: f.manifest.Len(), Redacted: f.manifest.Redacted(),
		Rejected: f.rejected, LastSync: f.lastSync}
	if f.verified {
		st.Root, st.CheckpointTime = f.trusted.Hash, f.trusted.Time
	}
	if f.lastErr != nil {
		st.LastError = f.lastErr.Error()
	}
	err := f.readyLocked()
	switch {
	case err == nil:
		st.State = StateReady
	case errors.Is(err, ErrQuarantined):
		st.State, st.Quarantine = StateQuarantined, f.quarantine.Err.Error()
	case errors.Is(err, ErrStale):
		st.State = StateStale
	default:
		st.State = StateSyncing
	}
	return st
}

// Start runs the follower in the background until ctx ends or Stop: a sync
// at once, then one per PollInterval and whenever the live feed brings an
// entry, with capped backoff after failures.
func (f *Follower) Start(ctx context.Context) error {
	if f.cancel != nil {
		return errors.New("follower: already started")
	}
	ctx, f.cancel = context.WithCancel(ctx)
	f.wg.Go(func() { f.monitor(ctx) })
	if f.cfg.Stream != nil {
		f.wg.Go(func() { f.follow(ctx) })
	}
	return nil
}

// Stop stops the background loops and waits for them.
func (f *Follower) Stop() {
	if f.cancel != nil {
		f.cancel()
	}
	f.wg.Wait()
}

func (f *Follower) poke() {
	select {
	case f.notify <- struct{}{}:
	default:
	}
}

// minFeedGap spaces the syncs that the live feed triggers: a busy log
// (a metering batch per entry) costs one sync per gap, not one per entry,
// and a redaction still lands within it.
const minFeedGap = 200 * time.Millisecond

func (f *Follower) monitor(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	attempt := 0
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-f.notify:
			if wait := minFeedGap - time.Since(last); wait > 0 {
				gap := time.NewTimer(wait)
				select {
				case <-ctx.Done():
					gap.Stop()
					return
				case <-gap.C:
				}
			}
		}
		last = time.Now()
		err := f.Sync(ctx)
		wait := f.cfg.PollInterval
		switch {
		case ctx.Err() != nil:
			return
		case err == nil:
			attempt = 0
		case errors.Is(err, ErrQuarantined):
			// Logged when it happened; nothing more to do until reset.
		default:
			attempt++
			wait = max(contract.Backoff(attempt, f.cfg.BaseBackoff, f.cfg.MaxBackoff), f.cfg.BaseBackoff)
			f.log.Warn("log sync failed", "attempt", attempt, "retry_in", wait, "err", err)
		}
		timer.Reset(wait)
	}
}

// follow keeps the live feed open; when the registry has none, polling
// alone goes on.
func (f *Follower) follow(ctx context.Context) {
	attempt := 0
	for {
		err := f.cfg.Stream.Stream(ctx, f.id, f.size(), func(we contract.WireEntry) error {
			attempt = 0
			f.keepStreamed(we)
			f.poke()
			return nil
		})
		if ctx.Err() != nil {
			return
		}
		switch contract.StatusOf(err) {
		case 404, 405, 501:
			f.log.Info("live feed not available; polling", "err", err)
			return
		}
		if errors.Is(err, contract.ErrEventTooLarge) {
			// An honest registry never sends one: do not reopen the feed.
			f.log.Warn("live feed sent an oversized event; dropped it, polling only", "err", err)
			return
		}
		attempt++
		d := max(contract.Backoff(attempt, f.cfg.BaseBackoff, f.cfg.MaxBackoff), f.cfg.BaseBackoff)
		f.log.Debug("live feed closed; reconnecting", "retry_in", d, "err", err)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

func (f *Follower) size() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.chain.Size()
}

func (f *Follower) keepStreamed(we contract.WireEntry) {
	f.streamMu.Lock()
	defer f.streamMu.Unlock()
	if len(f.streamed) < maxStreamed && len(we.Entry) <= contract.MaxEntrySize {
		f.streamed[we.Seq] = we.Entry
	}
}

// takeStreamed returns the streamed entries after since, in order, as long
// as they are contiguous, and forgets the older ones.
func (f *Follower) takeStreamed(since uint64, limit int) []contract.WireEntry {
	f.streamMu.Lock()
	defer f.streamMu.Unlock()
	var out []contract.WireEntry
	for seq := since + 1; len(out) < limit; seq++ {
		raw, ok := f.streamed[seq]
		if !ok {
			break
		}
		out = append(out, contract.WireEntry{Seq: seq, Entry: raw})
	}
	for seq := range f.streamed {
		if seq <= since+uint64(len(out)) {
			delete(f.streamed, seq)
		}
	}
	return out
}

// Sync runs one round: fetch and check the latest checkpoint, check it
// extends the trusted one, replay and verify the new entries, and commit.
// It returns an error wrapping ErrQuarantined once the log forked or
// rolled back.
func (f *Follower) Sync(ctx context.Context) (err error) {
	f.syncMu.Lock()
	defer f.syncMu.Unlock()
	defer func() {
		f.mu.Lock()
		f.lastErr = err
		if err == nil {
			f.lastSync = f.cfg.Now()
		}
		f.mu.Unlock()
		if err == nil {
			f.noteTerms()
		}
	}()
	f.mu.RLock()
	q, trusted, verified := f.quarantine, f.trusted, f.verified
	f.mu.RUnlock()
	if q != nil {
		return q
	}
	raw, err := f.cfg.Source.Checkpoint(ctx, f.id)
	if err != nil {
		return fmt.Errorf("fetch checkpoint: %w", err)
	}
	cp, err := f.cpv.Parse(raw)
	if err != nil {
		f.cfg.Metrics.refuse(f.id, err)
		return err
	}
	if !f.opt.noFreshness {
		if err := CheckFresh(cp, f.cfg.Now(), f.cfg.MaxCheckpointAge); err != nil {
			f.cfg.Metrics.refuse(f.id, err)
			return err
		}
	}
	maxAge := f.cfg.MaxCheckpointAge
	if f.opt.noFreshness {
		maxAge = 0
	}
	if err := f.cfg.Witnesses.Check(cp, f.cfg.Now(), maxAge); err != nil {
		f.cfg.Metrics.refuse(f.id, err)
		return err
	}
	if trusted == nil && !f.opt.tofu {
		f.cfg.Metrics.refuse(f.id, ErrNoTrustAnchor)
		return fmt.Errorf("contract %q: %w", f.id, ErrNoTrustAnchor)
	}
	if trusted != nil {
		if err := f.checkExtends(ctx, trusted, cp); err != nil {
			if errors.Is(err, ErrInconsistent) {
				return f.quarantineWith(ctx, err)
			}
			return err
		}
		if verified && cp.Size == trusted.Size {
			// Nothing new; keep the newer signed time.
			if cp.Time.After(trusted.Time) {
				return f.commit(ctx, cp, f.chainClone(), nil)
			}
			return nil
		}
	}
	return f.replay(ctx, cp)
}

// checkExtends checks cp against the trusted checkpoint: a smaller size is
// a rollback, the same size with another root a fork, a larger size needs
// a valid consistency proof.
func (f *Follower) checkExtends(ctx context.Context, trusted, cp *Checkpoint) error {
	var hashes [][]byte
	if cp.Size > trusted.Size && trusted.Size > 0 {
		p, err := f.cfg.Source.ConsistencyProof(ctx, f.id, trusted.Size, cp.Size)
		if err != nil {
			return fmt.Errorf("fetch consistency proof %d..%d: %w", trusted.Size, cp.Size, err)
		}
		if p.From != trusted.Size || p.To != cp.Size {
			return &InconsistentError{Old: trusted, New: cp, Proof: p.Hashes,
				Err: fmt.Errorf("proof is for sizes %d..%d", p.From, p.To)}
		}
		hashes = p.Hashes
	}
	if err := VerifyConsistency(trusted, cp, hashes); err != nil {
		f.cfg.Metrics.refuse(f.id, err)
		return err
	}
	return nil
}

func (f *Follower) chainClone() *Chain {
	f.mu.RLock()
	defer f.mu.RUnlock()
	st := f.chain.State()
	c, err := NewChain(f.id, &st)
	if err != nil {
		panic(err) // a state taken from a chain always restores
	}
	return c
}

// replay reads the entries up to cp.Size, checks them and commits. Pages
// are fetched one ahead; each page is decoded and its signatures verified
// in parallel, then chained and applied in order.
func (f *Follower) replay(ctx context.Context, cp *Checkpoint) error {
	work := f.chainClone()
	f.mu.RLock()
	revs, terms := f.revs, f.terms
	f.mu.RUnlock()
	d, err := f.cfg.Store.begin(ctx, f.id, f.manifest, revs, terms)
	if err != nil {
		return err
	}
	defer d.rollback()
	baseTerms := d.terms.Len()
	// quarantine ends the sync's transaction first: the quarantine is
	// written on the same (single) write connection.
	quarantine := func(err error) error {
		d.rollback()
		return f.quarantineWith(ctx, err)
	}

	stopPrefetch := func() {}
	defer func() { stopPrefetch() }()
	fctx, cancel := context.WithCancel(ctx)
	pages := make(chan pageResult, 1)
	var wg sync.WaitGroup
	wg.Go(func() { f.readPages(fctx, work.Size(), cp.Size, pages) })
	defer func() {
		cancel()
		wg.Wait()
	}()

	verified := 0
	for work.Size() < cp.Size {
		var pr pageResult
		select {
		case pr = <-pages:
		case <-ctx.Done():
			return ctx.Err()
		}
		if pr.err != nil {
			if errors.Is(pr.err, ErrTiles) {
				f.cfg.Metrics.refuse(f.id, pr.err)
			}
			return pr.err
		}
		checked, hist, err := f.verifyEntries(ctx, pr.entries, d.terms)
		if err != nil {
			return err
		}
		stopPrefetch()
		stopPrefetch = f.prefetchBatches(ctx, checked)
		for i := range checked {
			c := &checked[i]
			if err := work.appendDecoded(pr.entries[i].Seq, pr.entries[i].Entry, c.entry, c.decodeErr); err != nil {
				// The registry serves entries that are not the log it signs.
				return quarantine(err)
			}
			if errors.Is(c.termsErr, errNoTermsYet) {
				return fmt.Errorf("contract %q: %w", f.id, c.termsErr)
			}
			if c.termsErr != nil {
				// The registry logged terms no registry may.
				return quarantine(&TermsError{Seq: c.entry.Seq, Err: c.termsErr})
			}
			var batch *contract.BatchManifest
			if c.batch != nil {
				batch, err = c.batch.wait(ctx)
				if errors.Is(err, contract.ErrManifestInvalid) {
					c.err = err // signed by its contributor: the entry is refused
				} else if err != nil {
					return err
				}
			}
			if err := f.apply(d, c, batch); err != nil {
				var oe *OwnershipError
				if errors.As(err, &oe) {
					// The registry accepted what it must refuse.
					return quarantine(err)
				}
				return fmt.Errorf("apply entry %d: %w", c.entry.Seq, err)
			}
			c.batch = nil
		}
		stopPrefetch()
		d.terms = hist
		verified += len(checked)
	}
	if err := work.CheckCheckpoint(cp); err != nil {
		return quarantine(err)
	}
	d.newTerms = d.terms.Versions()[baseTerms:]
	if err := f.checkClaimed(d.terms); err != nil {
		return quarantine(err)
	}
	if err := f.commit(ctx, cp, work, d); err != nil {
		return err
	}
	f.cfg.Metrics.verified(f.id, verified)
	for _, r := range d.rejected {
		f.cfg.Metrics.reject(f.id, r.Err)
		f.log.Warn("log entry refused", "seq", r.Seq, "reason", Reason(r.Err), "err", r.Err)
	}
	if f.cfg.OnRedact != nil {
		for _, name := range d.purged {
			f.cfg.OnRedact(f.id, name)
		}
	}
	return nil
}

// noteTerms records the terms in force after a sync and tells OnTerms
// when they changed (a new version, or one whose effective_from came).
func (f *Follower) noteTerms() {
	f.mu.Lock()
	v := f.terms.InForce(f.cfg.Now())
	changed := v != nil && v.Seq != f.inForce
	if changed {
		f.inForce = v.Seq
	}
	f.mu.Unlock()
	if changed {
		f.log.Info("contract terms in force", "terms_seq", v.Seq, "effective_from", v.EffectiveFrom)
		if f.cfg.OnTerms != nil {
			f.cfg.OnTerms(f.id, v)
		}
	}
}

type pageResult struct {
	entries []contract.WireEntry
	err     error
}

// readPages sends the entries after since up to size, in contiguous pages,
// from the live feed's buffer or the cursor, until size, an error or ctx.
func (f *Follower) readPages(ctx context.Context, since, size uint64, out chan<- pageResult) {
	send := func(pr pageResult) bool {
		select {
		case out <- pr:
			return pr.err == nil
		case <-ctx.Done():
			return false
		}
	}
	for since < size {
		limit := int(min(uint64(f.cfg.PageSize), size-since))
		page := f.takeStreamed(since, limit)
		if len(page) == 0 {
			p, err := f.cfg.Source.Events(ctx, f.id, since, limit)
			if err != nil {
				send(pageResult{err: fmt.Errorf("fetch entries after %d: %w", since, err)})
				return
			}
			page = p.Entries
		}
		entries := make([]contract.WireEntry, 0, len(page))
		for _, we := range page {
			if we.Seq <= since {
				continue // overlap: already have it
			}
			if we.Seq > size {
				break // beyond the checkpoint: next round
			}
			if we.Seq != since+1 {
				send(pageResult{err: fmt.Errorf("entries after %d: got seq %d: a gap", since, we.Seq)})
				return
			}
			entries = append(entries, we)
			since = we.Seq
		}
		if len(entries) == 0 {
			send(pageResult{err: fmt.Errorf("registry served no entries after %d below its checkpoint size %d", since, size)})
			return
		}
		if !send(pageResult{entries: entries}) {
			return
		}
	}
}

// commit persists the new trusted state and then makes it current.
func (f *Follower) commit(ctx context.Context, cp *Checkpoint, work *Chain, d *delta) error {
	objects, redacted := f.manifest.counts()
	if d != nil {
		objects, redacted = objects+d.objDelta, redacted+d.redDelta
	}
	if err := f.cfg.Store.commit(ctx, f.id, work.State(), cp.Raw, d, objects, redacted); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.chain, f.trusted, f.verified = work, cp, true
	if d != nil {
		f.terms = d.terms
		f.manifest.apply(d)
		if len(d.newRevs) > 0 {
			revs := make(map[revKey]revocation, len(f.revs)+len(d.newRevs))
			for k, r := range f.revs {
				revs[k] = r
			}
			for k, r := range d.newRevs {
				revs[k] = r
			}
			f.revs = revs
		}
		f.rejected += uint64(len(d.rejected))
	}
	return nil
}

func (f *Follower) quarantineWith(ctx context.Context, cause error) error {
	q := &QuarantineError{Contract: f.id, At: f.cfg.Now(), Err: cause}
	f.mu.Lock()
	f.quarantine = q
	f.mu.Unlock()
	f.cfg.Metrics.quarantine(f.id)
	f.log.Error("CONTRACT QUARANTINED: the registry's log forked, rolled back, does not match its signed checkpoint or holds an entry the registry must have refused; nothing is served for it",
		"reason", Reason(cause), "evidence", cause)
	// Persist even if the caller's context is ending: a restart must not
	// forget the evidence.
	if err := f.cfg.Store.quarantine(context.WithoutCancel(ctx), f.id, cause.Error()); err != nil {
		return errors.Join(q, err)
	}
	return q
}

// checked is the outcome of decoding one entry and verifying its
// signature.
type checked struct {
	entry     *contract.Entry
	decodeErr error
	att       *contract.Attestation
	kid       string
	err       error
	// terms governs the attestation (the version in force at its seq).
	terms    *termsVersion
	termsErr error // a contract entry that does not verify
	// batch is the fetch of a batch entry's manifest (prefetchBatches).
	batch *batchFetch
}

// verifyEntries decodes entries and verifies them: decoding in parallel,
// then the terms entries in order (each governs the entries after it),
// then the attestations in parallel, each against the contributors of the
// terms in force at its seq. It returns the terms history after the
// entries. It fails only when keys could not be fetched (the entries are
// retried later); a refused attestation is reported in its checked.err, an
// entry that does not decode in checked.decodeErr (the chain refuses it),
// bad terms in checked.termsErr.
func (f *Follower) verifyEntries(ctx context.Context, entries []contract.WireEntry, hist *TermsHistory) ([]checked, *TermsHistory, error) {
	out := make([]checked, len(entries))
	f.parallel(len(entries), func(i int) error {
		out[i].entry, out[i].decodeErr = contract.DecodeEntry(entries[i].Entry)
		return nil
	})
	for i := range out {
		c := &out[i]
		if c.decodeErr != nil || c.entry.Contract != f.id {
			continue // the chain refuses it
		}
		if hist.Len() == 0 && c.entry.Kind != contract.EntryContract {
			c.termsErr = errNoTermsYet
			break
		}
		if c.entry.Kind != contract.EntryContract {
			continue
		}
		tv, err := f.cpv.OpenTerms(c.entry.Note)
		if err == nil {
			var next *TermsHistory
			if next, err = hist.add(c.entry.Seq, c.entry.Time, c.entry.Note, tv, f.id, f.keyStore); err == nil {
				hist = next
			}
		}
		if err != nil {
			c.termsErr = err
			break // nothing after bad terms is verified: the log is quarantined
		}
	}
	err := f.parallel(len(entries), func(i int) error {
		c := &out[i]
		if c.decodeErr != nil || c.entry.Kind != contract.EntryAttestation || c.entry.Contract != f.id {
			return nil // metering: chain and Merkle only
		}
		c.terms = hist.inForce(c.entry.Seq, c.entry.Time)
		if c.terms == nil {
			c.err = fmt.Errorf("%w: no terms govern entry %d", ErrTerms, c.entry.Seq)
			return nil
		}
		return f.verifyOne(ctx, c)
	})
	if err != nil {
		return nil, nil, err
	}
	return out, hist, nil
}

// parallel runs fn(0..n-1) on the follower's workers and stops at the
// first error, which it returns.
func (f *Follower) parallel(n int, fn func(i int) error) error {
	var next atomic.Int64
	var fatal atomic.Pointer[error]
	var wg sync.WaitGroup
	for range min(f.cfg.Workers, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || fatal.Load() != nil {
					return
				}
				if err := fn(i); err != nil {
					fatal.CompareAndSwap(nil, &err)
					return
				}
			}
		})
	}
	wg.Wait()
	if p := fatal.Load(); p != nil {
		return *p
	}
	return nil
}

func (f *Follower) verifyOne(ctx context.Context, c *checked) error {
	p, err := parseCompact(c.entry.JWS, contract.TypeAttestation)
	if err != nil {
		c.err = err
		return nil
	}
	c.kid = p.sig.Protected.KeyID
	iss, err := p.peekIssuer()
	if err == nil && c.kid == "" {
		err = fmt.Errorf("%w: kid is required", ErrMalformed)
	}
	if err != nil {
		c.err = err
		return nil
	}
	terms := &c.terms.Terms
	keys, err := c.terms.keys.KeysAt(ctx, iss, c.kid, c.entry.Time)
	if err != nil {
		if errors.Is(err, ErrKeysUnavailable) || ctx.Err() != nil {
			return fmt.Errorf("entry %d: %w", c.entry.Seq, err)
		}
		c.err = err
		return nil
	}
	c.att, c.kid, c.err = p.verifyAttestation(terms, keys)
	if c.err == nil && c.att.Issuer != iss {
		c.att, c.err = nil, fmt.Errorf("%w: issuer changed under verification", ErrMalformed)
	}
	if c.err == nil {
		// iat is the signer's word; the entry's time is the log's. A key
		// past its window cannot add entries by backdating iat.
		w, ok := terms.Contributor(iss).KeyWindows[c.kid]
		if ok && !w.NotAfter.IsZero() && c.entry.Time.After(w.NotAfter.Add(DefaultSkew)) {
			c.att, c.err = nil, fmt.Errorf("%w: key %q appended at %s, after its window closed at %s", ErrKeyWindow, c.kid,
				c.entry.Time.UTC().Format(time.RFC3339), w.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	return nil
}

// apply adds one verified entry to the delta, in log order; batch is the
// opened manifest of a batch entry. It returns an *OwnershipError when the
// entry replaces or redacts a name that another contributor owns: the
// registry must have refused it, so the log is not one to serve from.
// Other errors are the state database's.
func (f *Follower) apply(d *delta, c *checked, batch *contract.BatchManifest) error {
	e := c.entry
	if e.Kind != contract.EntryAttestation {
		return nil
	}
	d.attested = true
	if c.err != nil {
		d.rejected = append(d.rejected, rejection{Seq: e.Seq, Err: &EntryError{Seq: e.Seq, Err: c.err}})
		return nil
	}
	a := c.att
	if r, ok := d.revocation(revKey{a.Issuer, c.kid}); ok && e.Seq > r.Seq {
		d.rejected = append(d.rejected, rejection{Seq: e.Seq, Err: &RevokedKeyError{Contributor: a.Issuer, KeyID: c.kid, RevokedAt: r.Seq, Seq: e.Seq, Retroactive: r.Retroactive}})
		return nil
	}
	switch a.Type {
	case contract.Contribution, contract.Transformation:
		if err := d.addObject(c.terms, &ManifestEntry{ObjectClaim: *a.Object, Seq: e.Seq, Issuer: a.Issuer, KeyID: c.kid}); err != nil {
			return err
		}
		return d.putShards(*a.Object)
	case contract.Batch:
		if err := d.addBatch(c.terms, e.Seq, a.Issuer, c.kid, batch.Objects); err != nil {
			return err
		}
		return d.putShards(batch.Objects...)
	case contract.Redaction:
		return d.redact(c.terms, a.Issuer, e.Seq, a.Redaction)
	case contract.Revocation:
		k := revKey{a.Issuer, a.Revocation.KeyID}
		retro := a.Revocation.Retroactive || f.opt.retroactive
		r := revocation{Seq: e.Seq, Retroactive: retro}
		if old, ok := d.revocation(k); ok {
			if old.Retroactive || !retro {
				return nil
			}
			r.Seq = old.Seq
		}
		d.newRevs[k] = r
		if retro {
			return d.dropSignedBy(k)
		}
	}
	return nil
}

// Package sidecar is the composition root of `provgate serve`: for each
// mounted contract it builds the capability token source, the log follower,
// the cache's origin and the ledger's pricing, and adapts them to the
// proxy's Source, Cache and Meter interfaces. The demo and the end-to-end
// tests start sidecars through it too.
package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/provgate/provgate/cache"
	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/meter"
	"github.com/provgate/provgate/proxy"
	"github.com/provgate/provgate/verify"
)

// Defaults.
const (
	DefaultListen   = "127.0.0.1:8477"
	KeyFile         = "sidecar.jwk"
	LedgerFile      = "ledger.db"
	mountRetryFirst = 200 * time.Millisecond
	mountRetryMax   = 10 * time.Second
)

// Config configures a sidecar.
type Config struct {
	// Registry is the registry's base URL.
	Registry  string
	Contracts []string
	// Purpose is asked for in every token request; it must be one of the
	// contract's purposes.
	Purpose string
	// Quota is asked for in every token request; zero: the contract's.
	Quota contract.Quota

	StateDir  string
	CacheDir  string
	CacheSize int64

	// Listen is the data endpoint's TCP address (127.0.0.1 by default);
	// "" with UnixSocket set serves on the socket only.
	Listen     string
	UnixSocket string
	// ProxyListen, when set, starts the forward proxy there.
	ProxyListen string
	// AllowHosts are hosts the forward proxy lets through untouched.
	AllowHosts []string
	// OriginHosts are extra host[:port] names the forward proxy answers
	// from the verified cache (the S3 endpoint's host is always one), such
	// as the provider's host that training code reaches in marketplace mode.
	OriginHosts []string
	// LocalToken, when set, is required from local clients.
	LocalToken string

	// S3Endpoint, when set, is self-hosted mode: the sidecar reads the
	// bucket with its own credentials (AWS_* environment, shared files).
	// Empty: marketplace mode through presigned URLs.
	S3Endpoint string
	S3Region   string
	S3Lookup   string

	// Key is the sidecar's identity; nil loads or creates StateDir/sidecar.jwk.
	Key *jose.JSONWebKey
	// Enrolments are licensees' enrolments of Key (JWS compact), one per
	// contract; EnrolmentFiles are files holding one each, re-read at every
	// token request so that a renewed enrolment needs no restart. A token
	// request for a contract sends the enrolment for that contract and key.
	Enrolments     []string
	EnrolmentFiles []string

	// TrustOnFirstUse accepts the first checkpoint seen; otherwise
	// PinnedCheckpoint (a signed note) must be given.
	// LogURL, when set, is where the contracts' logs are read from as
	// static C2SP tlog-tiles ("<LogURL>/<contract id>/checkpoint" and
	// tiles): a CDN, an S3 bucket that provgate registry publish-tiles
	// fills, or "<registry>/logs". Verified exactly like the registry's
	// dynamic endpoints; polled every PollInterval.
	LogURL string

	TrustOnFirstUse  bool
	PinnedCheckpoint []byte
	MaxCheckpointAge time.Duration
	PollInterval     time.Duration
	// Witnesses, when set, refuses checkpoints without a quorum of
	// witness cosignatures (verify.NewWitnessPolicy).
	Witnesses *verify.WitnessPolicy

	MaxFetches  int
	VerifyOnHit bool
	// StreamWhileFetching serves cold objects as they arrive (see
	// proxy.Config.StreamWhileFetching); the default is verify-then-serve.
	StreamWhileFetching bool
	// MaxOrderNames and ReadAheadObjects bound announced epoch orders and
	// their read-ahead (proxy.Config; zero: the defaults).
	MaxOrderNames    int
	ReadAheadObjects int
	// LedgerSync is the ledger's durability (meter.SyncNormal by default).
	LedgerSync   meter.Sync
	SyncInterval time.Duration

	Logger *slog.Logger
	// Registry for metrics; nil: a fresh one with Go and process collectors.
	Metrics *prometheus.Registry
}

// Sidecar is a running sidecar.
type Sidecar struct {
	cfg      Config
	log      *slog.Logger
	key      *jose.JSONWebKey
	client   *contract.Client
	store    *verify.Store
	cache    *cache.Cache
	ledger   *meter.Ledger
	syncer   *meter.Syncer
	server   *proxy.Server
	vmetrics *verify.Metrics
	// registryKeys verifies capability tokens, for every mount.
	registryKeys *verify.JWKSCache

	mu     sync.Mutex
	mounts map[string]*mount

	httpSrv   *http.Server
	listeners []net.Listener
	proxySrv  *http.Server
	proxyLn   net.Listener

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	shutdownOnce sync.Once
	shutdownErr  error
}

// Start builds and starts a sidecar. Contracts are mounted in the
// background: a registry that is down at start leaves them "starting"
// (readiness fails) until it answers.
func Start(ctx context.Context, cfg Config) (_ *Sidecar, err error) {
	if cfg.Registry == "" || len(cfg.Contracts) == 0 {
		return nil, errors.New("sidecar: a registry URL and at least one contract are required")
	}
	if cfg.StateDir == "" || cfg.CacheDir == "" {
		return nil, errors.New("sidecar: state and cache directories are required")
	}
	if cfg.CacheSize <= 0 {
		return nil, errors.New("sidecar: a cache size is required")
	}
	if cfg.Listen == "" && cfg.UnixSocket == "" {
		cfg.Listen = DefaultListen
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = prometheus.NewRegistry()
		cfg.Metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	s := &Sidecar{cfg: cfg, log: cfg.Logger, mounts: map[string]*mount{}}
	s.ctx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
	defer func() {
		if err != nil {
			s.closeParts()
		}
	}()

	if s.key = cfg.Key; s.key == nil {
		if s.key, err = LoadOrCreateKey(filepath.Join(cfg.StateDir, KeyFile)); err != nil {
			return nil, err
		}
	}
	if jkt, err := verify.Thumbprint(s.key); err == nil {
		if n := len(cfg.Enrolments) + len(cfg.EnrolmentFiles); n == 0 {
			s.log.Warn("no enrolment given: the registry issues tokens only to a key a licensee enrolled (provgate enroll --sidecar-jkt JKT, then --enrolment FILE)", "jkt", jkt)
		} else {
			s.log.Info("sidecar key", "jkt", jkt, "enrolments", n)
		}
	}
	if s.client, err = contract.NewClient(cfg.Registry); err != nil {
		return nil, err
	}
	key := s.key
	s.client.Proof = func(method, url, token string) (string, error) {
		return verify.NewDPoPProof(key, method, url, token, time.Now())
	}
	if s.store, err = verify.OpenStore(filepath.Join(cfg.StateDir, verify.StateFile)); err != nil {
		return nil, err
	}
	s.vmetrics = verify.NewMetrics(cfg.Metrics)
	s.registryKeys = verify.NewJWKSCache(s.client.RegistryJWKSURL(), s.client)
	if cfg.MaxFetches <= 0 {
		cfg.MaxFetches = DefaultMaxFetches
	}
	if s.cache, err = cache.Open(cache.Config{Dir: cfg.CacheDir, MaxBytes: cfg.CacheSize, MaxFetches: cfg.MaxFetches,
		VerifyOnHit: cfg.VerifyOnHit, Logger: cfg.Logger.With("part", "cache")}); err != nil {
		return nil, err
	}
	if s.ledger, err = meter.Open(s.ctx, filepath.Join(cfg.StateDir, LedgerFile), meter.Config{Sync: cfg.LedgerSync,
		Logger: cfg.Logger.With("part", "meter")}); err != nil {
		return nil, err
	}
	s.ledger.Start(s.ctx)
	if s.syncer, err = meter.NewSyncer(s.ledger, meter.SyncConfig{Client: s.client, Key: s.key, Tokens: tokensFunc(s.token), Log: s.logInfo,
		Interval: cfg.SyncInterval, Logger: cfg.Logger.With("part", "outbox")}); err != nil {
		return nil, err
	}

	var sources []proxy.Source
	s.mu.Lock()
	for _, id := range cfg.Contracts {
		m := &mount{s: s, id: id}
		s.mounts[id] = m
		sources = append(sources, m)
	}
	s.mu.Unlock()
	// The syncer asks for mounts (tokens, the trusted log): it starts once
	// they are all there.
	s.syncer.Start(s.ctx)
	s.server = proxy.NewServer(proxy.Config{Sources: sources, Cache: cacheAdapter{s.cache}, Meter: meterAdapter{s.ledger},
		Logger: cfg.Logger.With("part", "proxy"), BearerToken: cfg.LocalToken, Registerer: cfg.Metrics, Gatherer: cfg.Metrics,
		StreamWhileFetching: cfg.StreamWhileFetching, ReadAheadBytes: readAheadBytes(cfg.CacheSize),
		MaxOrderNames: cfg.MaxOrderNames, ReadAheadObjects: cfg.ReadAheadObjects})
	s.registerMetrics(cfg.Metrics)

	if err := s.listen(); err != nil {
		return nil, err
	}
	for _, m := range s.mounts {
		s.wg.Go(func() { m.run(s.ctx) })
	}
	s.log.Info("sidecar started", "listen", s.Addr(), "proxy", s.ProxyAddr(), "contracts", cfg.Contracts,
		"mode", map[bool]string{true: contract.ModeSelfHosted, false: contract.ModeMarketplace}[cfg.S3Endpoint != ""])
	return s, nil
}

func (s *Sidecar) listen() error {
	hs := s.server.HTTPServer()
	s.httpSrv = hs
	if s.cfg.Listen != "" {
		ln, err := net.Listen("tcp", s.cfg.Listen)
		if err != nil {
			return fmt.Errorf("listen %s: %w", s.cfg.Listen, err)
		}
		s.listeners = append(s.listeners, ln)
	}
	if s.cfg.UnixSocket != "" {
		os.Remove(s.cfg.UnixSocket)
		ln, err := net.Listen("unix", s.cfg.UnixSocket)
		if err != nil {
			return fmt.Errorf("listen unix %s: %w", s.cfg.UnixSocket, err)
		}
		os.Chmod(s.cfg.UnixSocket, 0o660)
		s.listeners = append(s.listeners, ln)
	}
	for _, ln := range s.listeners {
		s.wg.Go(func() {
			if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("data endpoint stopped", "err", err)
			}
		})
	}
	if s.cfg.ProxyListen != "" {
		// The CA is name-constrained to the origin hosts, re-issued when
		// they change.
		ca, _, err := proxy.LoadOrCreateCA(s.cfg.StateDir, s.originHosts())
		if err != nil {
			return err
		}
		h, err := s.server.NewForwardProxy(proxy.ForwardConfig{CA: ca, Allow: s.cfg.AllowHosts, OriginHosts: s.originHosts()})
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", s.cfg.ProxyListen)
		if err != nil {
			return fmt.Errorf("listen %s: %w", s.cfg.ProxyListen, err)
		}
		s.proxyLn = ln
		s.proxySrv = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, MaxHeaderBytes: proxy.MaxHeaderBytes,
			ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}
		s.wg.Go(func() {
			if err := s.proxySrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("forward proxy stopped", "err", err)
			}
		})
	}
	return nil
}

// originHosts are the hosts whose traffic the forward proxy serves from the
// verified cache: the self-hosted endpoint's and the configured ones.
func (s *Sidecar) originHosts() []string {
	hosts := append([]string{}, s.cfg.OriginHosts...)
	if s.cfg.S3Endpoint != "" {
		hosts = append(hosts, hostOf(s.cfg.S3Endpoint))
	}
	return hosts
}

// Addr is the data endpoint's TCP address ("" when on a unix socket only).
func (s *Sidecar) Addr() string {
	for _, ln := range s.listeners {
		if ln.Addr().Network() == "tcp" {
			return ln.Addr().String()
		}
	}
	return ""
}

// URL is the data endpoint's base URL.
func (s *Sidecar) URL() string { return "http://" + s.Addr() }

// ProxyAddr is the forward proxy's address, "" when off.
func (s *Sidecar) ProxyAddr() string {
	if s.proxyLn == nil {
		return ""
	}
	return s.proxyLn.Addr().String()
}

// StateDir is the sidecar's state directory.
func (s *Sidecar) StateDir() string { return s.cfg.StateDir }

// Key is the sidecar's identity key.
func (s *Sidecar) Key() *jose.JSONWebKey { return s.key }

// Cache, Ledger and Server expose the parts, for the CLI and tests.
func (s *Sidecar) Cache() *cache.Cache      { return s.cache }
func (s *Sidecar) Ledger() *meter.Ledger    { return s.ledger }
func (s *Sidecar) Server() *proxy.Server    { return s.server }
func (s *Sidecar) Client() *contract.Client { return s.client }

// WaitReady waits until every contract serves, or ctx ends.
func (s *Sidecar) WaitReady(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		ready := true
		var last proxy.Status
		for _, m := range s.mountList() {
			if st := m.Status(); !st.Serving() {
				ready, last = false, st
			}
		}
		if ready {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("sidecar not ready: contract %s is %s: %s: %w", last.ID, last.State, last.Error, ctx.Err())
		case <-t.C:
		}
	}
}

// SyncNow pushes the ledger's outbox to the registry once, now.
func (s *Sidecar) SyncNow(ctx context.Context) (int, error) { return s.syncer.Sync(ctx) }

func (s *Sidecar) mountList() []*mount {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*mount, 0, len(s.mounts))
	for _, m := range s.mounts {
		out = append(out, m)
	}
	return out
}

// Shutdown stops accepting requests, drains in-flight responses (until ctx
// ends), stops the followers and token refreshers, tries one last outbox
// sync, and flushes and closes the ledger. Later calls return the first
// call's result.
func (s *Sidecar) Shutdown(ctx context.Context) error {
	s.shutdownOnce.Do(func() { s.shutdownErr = s.shutdown(ctx) })
	return s.shutdownErr
}

func (s *Sidecar) shutdown(ctx context.Context) error {
	var errs []error
	if s.httpSrv != nil {
		if err := s.httpSrv.Shutdown(ctx); err != nil {
			// Drain time is up: cut the remaining connections.
			s.httpSrv.Close()
			errs = append(errs, err)
		}
	}
	if s.proxySrv != nil {
		if err := s.proxySrv.Shutdown(ctx); err != nil {
			s.proxySrv.Close()
			errs = append(errs, err)
		}
	}
	// Flush the ledger's writer first, so that the last sync carries every
	// queued event.
	if s.ledger != nil {
		s.ledger.Stop()
	}
	if s.syncer != nil {
		if _, err := s.syncer.Sync(ctx); err != nil {
			s.log.Warn("final outbox sync failed; events stay in the ledger for the next start", "err", err)
		}
	}
	s.cancel()
	s.wg.Wait()
	errs = append(errs, s.closeParts())
	return errors.Join(errs...)
}

// closeParts stops and closes whatever was built, in reverse order.
func (s *Sidecar) closeParts() error {
	s.cancel()
	var errs []error
	for _, m := range s.mountList() {
		m.stop()
	}
	if s.syncer != nil {
		s.syncer.Stop()
	}
	if s.ledger != nil {
		s.ledger.Stop()
		errs = append(errs, s.ledger.Close())
	}
	if s.cache != nil {
		errs = append(errs, s.cache.Close())
	}
	if s.store != nil {
		errs = append(errs, s.store.Close())
	}
	for _, ln := range s.listeners {
		ln.Close()
	}
	if s.cfg.UnixSocket != "" {
		os.Remove(s.cfg.UnixSocket)
	}
	return errors.Join(errs...)
}

// token returns the capability token of a mounted contract.
func (s *Sidecar) token(ctx context.Context, contractID string) (string, error) {
	s.mu.Lock()
	m := s.mounts[contractID]
	s.mu.Unlock()
	if m == nil {
		return "", fmt.Errorf("contract %q is not mounted", contractID)
	}
	return m.token(ctx)
}

// logInfo is the log of a mounted contract, as the follower trusts it:
// metering receipts are checked against the same key and origin.
func (s *Sidecar) logInfo(_ context.Context, contractID string) (contract.LogInfo, error) {
	s.mu.Lock()
	m := s.mounts[contractID]
	s.mu.Unlock()
	if m == nil {
		return contract.LogInfo{}, fmt.Errorf("contract %q is not mounted", contractID)
	}
	c, _, _, err := m.parts()
	if c == nil {
		if err == nil {
			err = proxy.ErrNotReady
		}
		return contract.LogInfo{}, err
	}
	return c.Log, nil
}

type tokensFunc func(ctx context.Context, contractID string) (string, error)

func (f tokensFunc) Token(ctx context.Context, contractID string) (string, error) {
	return f(ctx, contractID)
}

// LoadOrCreateKey loads the sidecar key, creating an Ed25519 key (mode
// 0600) on first start.
func LoadOrCreateKey(path string) (*jose.JSONWebKey, error) {
	k, err := verify.LoadKey(path)
	if err == nil {
		return k, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if k, err = verify.GenerateKey(jose.EdDSA); err != nil {
		return nil, err
	}
	if err := verify.SaveKey(path, k); err != nil {
		return nil, fmt.Errorf("save sidecar key: %w", err)
	}
	return k, nil
}

// DefaultMaxFetches is the sidecar's concurrent origin fetches: more than
// a loader's own readers, so that read-ahead keeps a distant origin busy.
const DefaultMaxFetches = 16

// readAheadBytes bounds what read-ahead holds pinned to a quarter of the
// cache, so that it never starves the reads it runs ahead of.
func readAheadBytes(cacheSize int64) int64 {
	if cacheSize <= 0 {
		return proxy.DefaultReadAheadBytes
	}
	return max(1, min(proxy.DefaultReadAheadBytes, cacheSize/4))
}

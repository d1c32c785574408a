package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/minio/minio-go/v7"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

// Defaults for Config's tuning fields.
const (
	DefaultName                = "provgate-registry"
	DefaultTokenTTL            = 5 * time.Minute
	DefaultCheckpointInterval  = 30 * time.Second
	DefaultKeyTransition       = 24 * time.Hour
	DefaultPresignTTL          = 5 * time.Minute
	DefaultMaxStreams          = 512
	DefaultMaxStreamsPerClient = 8
	DefaultSidecarKeyRetention = 7 * 24 * time.Hour
	// MaxBodySize bounds every request body the registry reads.
	MaxBodySize = 1 << 20
)

// Log attribute keys.
const (
	logKeyContract = "contract"
	logKeySeq      = "seq"
	logKeyErr      = "err"
	logKeyKind     = "kind"
	logKeyKID      = "kid"
)

// Config configures a registry Server.
type Config struct {
	// DBPath is the SQLite database file, created if missing; or a
	// PostgreSQL URL (postgres://…), a database that several registry
	// replicas may share.
	DBPath string
	// SigningKey is the registry's token signing key (ES256 or EdDSA, with
	// a kid). When it is not the database's active key it becomes the
	// active key and the previous one stays published for KeyTransition.
	// Nil: the database's active key, or a new EdDSA key on first start.
	SigningKey *jose.JSONWebKey
	// CheckpointKey is the signed-note private key (skey) for checkpoints.
	// Empty: the key stored in the database, generated on first start.
	CheckpointKey string
	// AdminToken guards POST /contracts; empty disables contract creation.
	AdminToken string
	// S3 presigns GET URLs for marketplace-mode contracts with its own
	// credentials; nil disables presigning (503).
	S3 *minio.Client
	// Name is the registry's public name: log origins are
	// "<Name>/log/<contract_id>" and tokens' iss is Name.
	Name string
	// PublicURL is the registry's base URL as clients see it, used for
	// provenance_endpoint and to check DPoP proofs' htu. Empty: taken from
	// each request's Host.
	PublicURL string
	// TokenTTL is the capability tokens' lifetime.
	TokenTTL time.Duration
	// CheckpointInterval is how often a fresh checkpoint is signed even
	// when no entry was appended (appends sign one at once).
	CheckpointInterval time.Duration
	// KeyTransition is how long a rotated-out signing key stays in the JWKS.
	KeyTransition time.Duration
	// PresignTTL is the lifetime of presigned URLs (capped at the token's).
	PresignTTL time.Duration
	// MaxPageBytes bounds the entry bytes of one events page (at least one
	// entry is always served); 0: contract.MaxEventsPageBytes.
	MaxPageBytes int
	// MaxStreams bounds the live-feed connections in all (503 past it),
	// MaxStreamsPerClient those from one client address (429); 0:
	// DefaultMaxStreams, DefaultMaxStreamsPerClient.
	MaxStreams, MaxStreamsPerClient int
	// SidecarKeyRetention is how long a sidecar key that never signed a
	// log entry is kept after its last token request; 0:
	// DefaultSidecarKeyRetention.
	SidecarKeyRetention time.Duration
	// HTTPClient fetches contributors' jwks_uri; nil: a 10s-timeout client.
	HTTPClient *http.Client
	// Clock is the time source; nil: time.Now.
	Clock func() time.Time
	// Logger; nil: slog.Default().
	Logger *slog.Logger
	// SyncNormalUnsafe runs SQLite with synchronous=NORMAL instead of FULL:
	// about twice the append rate, and still safe against a process crash,
	// but a power loss may drop the last appends after their checkpoint was
	// served (a fork to every client that saw it). For tests and bulk
	// loads only.
	SyncNormalUnsafe bool
	// Witnesses are asked, in the background, to cosign each new
	// checkpoint; their cosignatures are served appended to it.
	Witnesses []Witness
	// WitnessTimeout bounds one call to a witness (DefaultWitnessTimeout).
	WitnessTimeout time.Duration
	// Metrics is where the registry's metrics are registered and what GET
	// /metrics serves; nil: a new registry with Go's and the process's
	// collectors.
	Metrics *prometheus.Registry
}

// Server is the registry. Serve its Handler; Close it when done.
type Server struct {
	cfg    Config
	st     store
	logger *slog.Logger
	now    func() time.Time

	cpSigner *verify.CheckpointSigner
	cpVKey   string
	wits     *witnesses // nil: no witness configured

	// allLogs (SQLite) or logLocks[contract] (PostgreSQL) serialise this
	// process's writers of a log (withLog); heads caches each log's Merkle
	// state, checked against the stored size at each use. headsMu guards
	// the maps.
	allLogs  sync.Mutex
	headsMu  sync.Mutex
	logLocks map[string]*sync.Mutex
	heads    map[string]*head
	// termsHistories caches each contract's checked terms versions for
	// pricing metering (metering.go's termsPrices).
	termsHistories sync.Map
	// pollEvery is how often live streams look for entries appended by
	// other replicas (0: one registry on its database, which wakes its
	// streams itself).
	pollEvery time.Duration

	notifyMu sync.Mutex
	notify   map[string]chan struct{}

	// streamMu guards the count of open live-feed streams, in all and by
	// client address.
	streamMu  sync.Mutex
	streams   int
	streamsBy map[string]int

	keyMu    sync.Mutex
	keyCache map[string]*jose.JSONWebKey

	jwksMu    sync.Mutex
	jwksCache map[string]cachedJWKS

	handler   http.Handler
	metrics   *metrics
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
	cancel    context.CancelFunc
	wg        sync.WaitGroup
}

// New opens (or creates) the database, loads or creates the keys, and
// starts the checkpoint loop.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.DBPath == "" {
		return nil, errors.New("registry: DBPath is required")
	}
	if cfg.Name == "" {
		cfg.Name = DefaultName
	}
	if cfg.TokenTTL <= 0 {
		cfg.TokenTTL = DefaultTokenTTL
	}
	if cfg.CheckpointInterval <= 0 {
		cfg.CheckpointInterval = DefaultCheckpointInterval
	}
	if cfg.KeyTransition <= 0 {
		cfg.KeyTransition = DefaultKeyTransition
	}
	if cfg.PresignTTL <= 0 {
		cfg.PresignTTL = DefaultPresignTTL
	}
	if cfg.MaxPageBytes <= 0 {
		cfg.MaxPageBytes = contract.MaxEventsPageBytes
	}
	if cfg.MaxStreams <= 0 {
		cfg.MaxStreams = DefaultMaxStreams
	}
	if cfg.MaxStreamsPerClient <= 0 {
		cfg.MaxStreamsPerClient = DefaultMaxStreamsPerClient
	}
	if cfg.SidecarKeyRetention <= 0 {
		cfg.SidecarKeyRetention = DefaultSidecarKeyRetention
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.PublicURL = strings.TrimRight(cfg.PublicURL, "/")
	st, err := openStore(ctx, cfg.DBPath, cfg.SyncNormalUnsafe)
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	st.now = cfg.Clock
	s := &Server{
		cfg:       cfg,
		st:        st,
		logger:    cfg.Logger,
		now:       cfg.Clock,
		heads:     map[string]*head{},
		logLocks:  map[string]*sync.Mutex{},
		notify:    map[string]chan struct{}{},
		streamsBy: map[string]int{},
		keyCache:  map[string]*jose.JSONWebKey{},
		jwksCache: map[string]cachedJWKS{},
		done:      make(chan struct{}),
	}
	if IsPostgresURL(cfg.DBPath) {
		s.pollEvery = streamPoll
	}
	if err := s.initCheckpointKey(ctx); err != nil {
		st.close()
		return nil, fmt.Errorf("registry: %w", err)
	}
	if err := s.initSigningKey(ctx); err != nil {
		st.close()
		return nil, fmt.Errorf("registry: %w", err)
	}
	if err := s.initWitnesses(ctx); err != nil {
		st.close()
		return nil, fmt.Errorf("registry: %w", err)
	}
	s.metrics = newMetrics(cfg.Metrics, s)
	s.handler = s.routes()
	loopCtx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.wg.Add(1)
	go s.checkpointLoop(loopCtx)
	s.startWitnesses(loopCtx)
	return s, nil
}

// Handler serves the registry's HTTP API.
func (s *Server) Handler() http.Handler { return s.handler }

// CheckpointVerifierKey is the note verifier key that contracts publish.
func (s *Server) CheckpointVerifierKey() string { return s.cpVKey }

// Close stops the background loop, ends live streams and closes the
// database. Later calls do nothing.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		close(s.done)
		s.wg.Wait()
		s.closeErr = s.st.close()
	})
	return s.closeErr
}

func (s *Server) initCheckpointKey(ctx context.Context) error {
	stored, err := s.st.meta(ctx, "checkpoint_skey")
	if err != nil && !errors.Is(err, errNotFound) {
		return err
	}
	skey := s.cfg.CheckpointKey
	switch {
	case skey != "" && stored != "" && skey != stored:
		return errors.New("the given checkpoint key differs from the one in the database; contracts publish the stored one")
	case skey == "" && stored != "":
		skey = stored
	case skey == "":
		if skey, _, err = verify.GenerateCheckpointKey(s.cfg.Name); err != nil {
			return err
		}
	}
	if stored == "" {
		// A replica starting at the same time may have stored its key
		// first: that one is the log's key.
		won, err := s.st.initMeta(ctx, "checkpoint_skey", skey)
		if err != nil {
			return err
		}
		if won != skey && s.cfg.CheckpointKey != "" {
			return errors.New("the given checkpoint key differs from the one in the database; contracts publish the stored one")
		}
		skey = won
	}
	signer, err := verify.NewCheckpointSigner(skey)
	if err != nil {
		return err
	}
	vkey, err := vkeyOf(skey)
	if err != nil {
		return err
	}
	s.cpSigner, s.cpVKey = signer, vkey
	return nil
}

// checkpointLoop re-signs every log's checkpoint each interval, so that a
// quiet log still has a fresh one and a frozen registry is detectable.
func (s *Server) checkpointLoop(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.CheckpointInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.ResignCheckpoints(ctx); err != nil && ctx.Err() == nil {
				s.logger.Error("re-sign checkpoints", logKeyErr, err)
			}
			if err := s.prune(ctx); err != nil && ctx.Err() == nil {
				s.logger.Error("prune", logKeyErr, err)
			}
		}
	}
}

// prune deletes what grows with traffic and is needed no more: expired
// DPoP proof ids.
func (s *Server) prune(ctx context.Context) error {
	if err := s.st.pruneProofIDs(ctx, s.now()); err != nil {
		return fmt.Errorf("proof ids: %w", err)
	}
	n, err := s.st.pruneSidecarKeys(ctx, s.now().Add(-s.cfg.SidecarKeyRetention))
	if err != nil {
		return fmt.Errorf("sidecar keys: %w", err)
	}
	if n > 0 {
		s.logger.Info("pruned sidecar keys that signed nothing", "count", n)
	}
	return nil
}

// ResignCheckpoints signs a fresh checkpoint for every contract's log at
// its current size. The checkpoint loop calls it every interval.
func (s *Server) ResignCheckpoints(ctx context.Context) error {
	bodies, err := s.st.contracts(ctx)
	if err != nil {
		return err
	}
	for _, b := range bodies {
		var c contract.Contract
		if err := json.Unmarshal(b, &c); err != nil {
			return fmt.Errorf("%w: contract: %v", errCorrupted, err)
		}
		if err := s.resign(ctx, &c); err != nil {
			return fmt.Errorf("contract %s: %w", c.ContractID, err)
		}
	}
	return nil
}

func (s *Server) resign(ctx context.Context, c *contract.Contract) error {
	err := s.withLog(ctx, c.ContractID, func(ctx context.Context) error {
		h, err := s.head(ctx, c.ContractID)
		if err != nil {
			return err
		}
		note, err := s.cpSigner.Sign(c.Log.Origin, h.size(), h.root())
		if err != nil {
			return err
		}
		return s.st.addCheckpoint(ctx, c.ContractID, h.size(), s.now(), note)
	})
	if err != nil {
		return err
	}
	s.cosign(c.ContractID) // a fresh checkpoint for the witnesses
	return nil
}

// ---- HTTP plumbing

type handlerFunc func(w http.ResponseWriter, r *http.Request) error

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	h := func(pattern string, f handlerFunc) {
		mux.Handle(pattern, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if err := f(w, r); err != nil {
				s.writeError(w, r, err)
			}
		}))
	}
	h("GET /.well-known/jwks.json", s.handleJWKS)
	h("POST /contracts", s.handleCreateContract)
	h("GET /contracts/{id}", s.handleGetContract)
	h("POST /contracts/{id}/versions", s.handleUpdateContract)
	h("GET /contracts/{id}/versions", s.handleContractVersions)
	h("POST /contracts/{id}/request", s.handleTokenRequest)
	h("POST /contracts/{id}/objects/presign", s.handlePresign)
	h("POST /provenance/{id}/events", s.handleAppend)
	h("POST /provenance/{id}/batches", s.handleAppendBatch)
	h("GET /provenance/{id}/manifests/{sha256}", s.handleManifest)
	h("GET /provenance/{id}/events", s.handleEvents)
	h("GET /provenance/{id}/events/stream", s.handleStream)
	h("GET /provenance/{id}/checkpoint", s.handleCheckpoint)
	h("GET /provenance/{id}/snapshot", s.handleSnapshot)
	h("GET /provenance/{id}/proof/inclusion", s.handleInclusion)
	h("GET /provenance/{id}/proof/consistency", s.handleConsistency)
	h("POST /provenance/verify", s.handleVerify)
	h("GET /logs/{id}/{path...}", s.handleTiles)
	h("POST /provenance/{id}/metering", s.handleMetering)
	h("GET /provenance/{id}/metering/totals", s.handleTotals)
	h("GET /contributors/{id}/jwks.json", s.handleContributorJWKS)
	h("GET /sidecars/{jkt}/jwks.json", s.handleSidecarJWKS)
	h("GET /healthz", s.handleHealth)
	mux.Handle("GET /metrics", s.metrics.handler())
	h("/", func(w http.ResponseWriter, r *http.Request) error {
		return contract.Errorf(http.StatusNotFound, contract.CodeNotFound, "no such endpoint: %s %s", r.Method, r.URL.Path)
	})
	return s.logRequests(mux)
}

// logRequests logs each request at debug level.
func (s *Server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(sw, r)
		took := time.Since(start)
		s.metrics.observe(r, sw.status, took)
		s.logger.Debug("request", "method", r.Method, "path", r.URL.Path, "status", sw.status, "dur", took)
	})
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(status int) {
	w.status = status
	w.ResponseWriter.WriteHeader(status)
}

// Unwrap lets http.ResponseController reach Flush for the live feed.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// handleHealth answers 200 when the database answers.
func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.st.logSize(r.Context(), ""); err != nil {
		return contract.Errorf(http.StatusServiceUnavailable, contract.CodeUnavailable, "database: %v", err)
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Write([]byte("ok\n"))
	return nil
}

// writeError is the one place errors become responses: an APIError keeps
// its status and code, known store errors map to theirs, and anything else
// is a 500 whose details go to the log, not to the client.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var ae *contract.APIError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &ae):
	case errors.As(err, &mbe):
		ae = contract.Errorf(http.StatusRequestEntityTooLarge, contract.CodeTooLarge, "request body exceeds %d bytes", mbe.Limit)
	case errors.Is(err, errNotFound):
		ae = contract.Errorf(http.StatusNotFound, contract.CodeNotFound, "%v", err)
	case errors.Is(err, errExists), errors.Is(err, errConflict):
		ae = contract.Errorf(http.StatusConflict, contract.CodeConflict, "%v", err)
	case errors.Is(err, errReplay):
		ae = contract.Errorf(http.StatusUnauthorized, contract.CodeReplay, "proof of possession already used")
	case errors.Is(err, errOverflow):
		ae = contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "%v", err)
	case errors.Is(err, errQuota):
		ae = contract.Errorf(http.StatusForbidden, contract.CodeQuotaExceeded, "%v", err)
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		return // the client went away
	default:
		s.logger.Error("request failed", "method", r.Method, "path", r.URL.Path, logKeyErr, err)
		ae = contract.Errorf(http.StatusInternalServerError, contract.CodeInternal, "internal error")
	}
	if ae.Status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `DPoP algs="ES256 EdDSA"`)
	}
	if (ae.Status == http.StatusTooManyRequests || ae.Status == http.StatusServiceUnavailable) && w.Header().Get("Retry-After") == "" {
		w.Header().Set("Retry-After", "5")
	}
	writeJSON(w, ae.Status, contract.ErrorBody{Error: contract.ErrorDetail{Code: ae.Code, Message: ae.Message}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, `{"error":{"code":"internal","message":"encode response"}}`, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// readBody reads a bounded request body.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, err
		}
		return nil, contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "read body: %v", err)
	}
	return b, nil
}

// decodeBody decodes a bounded JSON body strictly.
func decodeBody(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	b, err := readBody(w, r, limit)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "bad JSON body: %v", err)
	}
	if dec.More() {
		return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "bad JSON body: trailing data")
	}
	return nil
}

// baseURL is the registry's URL as the client sees it.
func (s *Server) baseURL(r *http.Request) string {
	if s.cfg.PublicURL != "" {
		return s.cfg.PublicURL
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

// requestURL is the URL a DPoP proof must name (htu).
func (s *Server) requestURL(r *http.Request) string {
	return s.baseURL(r) + r.URL.EscapedPath()
}

// loadContract reads and decodes a contract; 404 when unknown.
func (s *Server) loadContract(ctx context.Context, id string) (*contract.Contract, error) {
	if err := contract.ValidateID(id); err != nil {
		return nil, contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "contract id: %v", err)
	}
	body, _, err := s.st.contract(ctx, id)
	if errors.Is(err, errNotFound) {
		return nil, contract.Errorf(http.StatusNotFound, contract.CodeNotFound, "no contract %q", id)
	}
	if err != nil {
		return nil, err
	}
	var c contract.Contract
	if err := json.Unmarshal(body, &c); err != nil {
		return nil, fmt.Errorf("%w: contract %s: %v", errCorrupted, id, err)
	}
	return &c, nil
}

package proxy

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

// Headers that feed metering. Query parameters "epoch" and "job" work too.
const (
	HeaderEpoch = "X-Provgate-Epoch"
	HeaderJob   = "X-Provgate-Job"
)

// Defaults.
const (
	DefaultMaxBatchNames = 1024
	DefaultMaxBatchBytes = 256 << 20
	// MaxHeaderBytes bounds request headers on every listener.
	MaxHeaderBytes = 64 << 10
)

// Config configures a Server.
type Config struct {
	Sources []Source
	Cache   Cache
	Meter   Meter
	Logger  *slog.Logger
	// BearerToken, when set, is required on the data endpoint and on
	// /metrics (Authorization: Bearer) and, as the access key id, on the
	// S3 facade.
	BearerToken string
	// Registerer receives the sidecar's metrics; nil: a private registry.
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	// StreamWhileFetching serves whole-object GETs while they are fetched
	// instead of after verification: lower latency to the first byte; if
	// the bytes fail verification the response is aborted (never a clean
	// end) and nothing is cached or billed.
	StreamWhileFetching bool
	// MaxBatchNames and MaxBatchBytes bound one batch read.
	MaxBatchNames int
	MaxBatchBytes int64
	// MaxPasses bounds the partial passes over objects the billing rule
	// remembers (DefaultMaxPasses); a forgotten pass overbills, never
	// underbills.
	MaxPasses int
	// MaxOrderNames bounds an announced epoch order (DefaultMaxOrderNames).
	// ReadAheadObjects and ReadAheadBytes bound what one order holds and
	// fetches ahead of its reads, ReadAheadFetches its concurrent fetches
	// (Default*); ReadAheadObjects < 0 turns read-ahead off (an announced
	// order is then taken and ignored).
	MaxOrderNames    int
	ReadAheadObjects int
	ReadAheadBytes   int64
	ReadAheadFetches int
}

// Server serves the data endpoint, the S3 facade, health and metrics.
type Server struct {
	cfg     Config
	log     *slog.Logger
	shards  *shardState
	mu      sync.RWMutex
	sources map[string]Source
	metrics *Metrics
	mux     *http.ServeMux
	gather  prometheus.Gatherer
	passes  *passTracker
	// readAhead holds the announced epoch orders.
	readAhead readAhead
	lastMod   atomic.Pointer[lastModified]
}

// NewServer builds a Server.
func NewServer(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxBatchNames <= 0 {
		cfg.MaxBatchNames = DefaultMaxBatchNames
	}
	if cfg.MaxBatchBytes <= 0 {
		cfg.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if cfg.MaxOrderNames <= 0 {
		cfg.MaxOrderNames = DefaultMaxOrderNames
	}
	if cfg.ReadAheadObjects == 0 {
		cfg.ReadAheadObjects = DefaultReadAheadObjects
	}
	if cfg.ReadAheadBytes <= 0 {
		cfg.ReadAheadBytes = DefaultReadAheadBytes
	}
	if cfg.ReadAheadFetches <= 0 {
		cfg.ReadAheadFetches = DefaultReadAheadFetches
	}
	reg, gather := cfg.Registerer, cfg.Gatherer
	if reg == nil {
		r := prometheus.NewRegistry()
		reg, gather = r, r
	}
	s := &Server{cfg: cfg, log: cfg.Logger, sources: map[string]Source{}, gather: gather, passes: newPassTracker(cfg.MaxPasses),
		shards: newShardState()}
	for _, src := range cfg.Sources {
		s.sources[src.ID()] = src
	}
	s.metrics = newMetrics(reg, s)
	s.routes()
	return s
}

func (s *Server) routes() {
	m := http.NewServeMux()
	m.Handle("GET /healthz", s.handle("healthz", s.healthz))
	m.Handle("GET /readyz", s.handle("readyz", s.readyz))
	metrics := promhttp.HandlerFor(s.gather, promhttp.HandlerOpts{})
	m.Handle("GET /metrics", s.data("metrics", func(w http.ResponseWriter, r *http.Request) error {
		metrics.ServeHTTP(w, r)
		return nil
	}))
	m.Handle("GET /v1/contracts", s.data("contracts", s.listContracts))
	m.Handle("GET /v1/contracts/{id}", s.data("contract", s.getContract))
	m.Handle("GET /v1/contracts/{id}/manifest", s.data("manifest", s.manifest))
	m.Handle("GET /v1/contracts/{id}/objects/{name...}", s.data("object", s.object))
	m.Handle("HEAD /v1/contracts/{id}/objects/{name...}", s.data("object", s.object))
	m.Handle("POST /v1/contracts/{id}/batch", s.data("batch", s.batch))
	m.Handle("POST /v1/contracts/{id}/epochs/{n}/end", s.data("epoch_end", s.endEpoch))
	m.Handle("POST /v1/contracts/{id}/epochs/{n}/order", s.data("epoch_order", s.announceOrder))
	m.Handle("/v1/", s.handle("v1", func(w http.ResponseWriter, r *http.Request) error {
		return contract.Errorf(http.StatusNotFound, contract.CodeNotFound, "no such endpoint: %s %s", r.Method, r.URL.Path)
	}))
	s3 := s.s3Handler()
	m.Handle("/s3/", http.StripPrefix("/s3", s3))
	m.Handle("/", s3) // path-style S3 at the root too, so S3 SDKs need only an endpoint
	s.mux = m
}

// Handler is the server's HTTP handler.
func (s *Server) Handler() http.Handler { return s.mux }

// HTTPServer wraps Handler with the timeouts and limits a localhost data
// endpoint needs: bounded headers, a read-header timeout against slow
// clients, idle keep-alive for loaders.
func (s *Server) HTTPServer() *http.Server {
	return &http.Server{
		Handler:           s.mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
}

type handlerFunc func(http.ResponseWriter, *http.Request) error

// handle wraps a handler: errors become JSON error bodies, and requests are
// counted by route and status.
func (s *Server) handle(route string, h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		if err := h(sw, r); err != nil {
			s.writeError(sw, r, err)
		}
		s.metrics.requests.WithLabelValues(route, strconv.Itoa(sw.statusCode())).Inc()
	})
}

// data is handle plus the local bearer token check.
func (s *Server) data(route string, h handlerFunc) http.Handler {
	return s.handle(route, func(w http.ResponseWriter, r *http.Request) error {
		if err := s.authorize(r); err != nil {
			s.countRefusal(err)
			return err
		}
		return h(w, r)
	})
}

func (s *Server) authorize(r *http.Request) error {
	if s.cfg.BearerToken == "" {
		return nil
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(s.cfg.BearerToken)) != 1 {
		return ErrUnauthorized
	}
	return nil
}

// statusOf maps an error to a status code and an error code.
func statusOf(err error) (int, string) {
	var ae *contract.APIError
	switch {
	case errors.As(err, &ae):
		return ae.Status, ae.Code
	case errors.Is(err, ErrUnauthorized):
		return http.StatusUnauthorized, contract.CodeUnauthorized
	case errors.Is(err, ErrQuotaSpent):
		return http.StatusForbidden, contract.CodeQuotaExceeded
	case errors.Is(err, ErrUnknownContract), errors.Is(err, ErrNotFound):
		return http.StatusNotFound, contract.CodeNotFound
	case errors.Is(err, ErrRedacted):
		return http.StatusUnavailableForLegalReasons, contract.CodeRedacted
	case errors.Is(err, ErrNotReady), errors.Is(err, ErrQuarantined), errors.Is(err, ErrTokenExpired):
		return http.StatusServiceUnavailable, contract.CodeUnavailable
	case errors.Is(err, ErrBusy):
		return http.StatusServiceUnavailable, contract.CodeRateLimited
	case isVerification(err):
		return http.StatusBadGateway, contract.CodeVerification
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout, contract.CodeUnavailable
	default:
		return http.StatusBadGateway, contract.CodeUnavailable
	}
}

// isVerification reports whether err is a failed verification of origin
// bytes (never served as a clean response).
func isVerification(err error) bool {
	return errors.Is(err, ErrVerification) || errors.Is(err, verify.ErrDigest) || errors.Is(err, verify.ErrSize)
}

func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status, code := statusOf(err)
	if sw, ok := w.(*statusWriter); ok && sw.wrote {
		// Headers are gone: the only honest signal left is to abort the
		// response so that the client sees a broken stream, never a clean
		// end.
		s.log.Warn("aborting response", "path", r.URL.Path, "err", err)
		panic(http.ErrAbortHandler)
	}
	if status >= 500 && !errors.Is(err, context.Canceled) {
		s.log.Warn("request failed", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
	}
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	writeJSONError(w, status, code, err.Error())
}

func writeJSONError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(contract.ErrorBody{Error: contract.ErrorDetail{Code: code, Message: msg}})
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(v)
}

func (s *Server) source(id string) (Source, error) {
	s.mu.RLock()
	src, ok := s.sources[id]
	s.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownContract, id)
	}
	return src, nil
}

func (s *Server) allSources() []Source {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]Source, 0, len(s.sources))
	for _, src := range s.sources {
		out = append(out, src)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID() < out[j].ID() })
	return out
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) error {
	return writeJSON(w, map[string]string{"status": "ok"})
}

// readyz is 200 only when every mounted contract is verified and has a
// valid token; otherwise 503 with each contract's state.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) error {
	var states []Status
	ready := true
	for _, src := range s.allSources() {
		st := src.Status()
		states = append(states, st)
		if !st.Serving() {
			ready = false
		}
	}
	w.Header().Set("Content-Type", "application/json")
	if !ready || len(states) == 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	return json.NewEncoder(w).Encode(map[string]any{"ready": ready && len(states) > 0, "contracts": states})
}

func (s *Server) listContracts(w http.ResponseWriter, r *http.Request) error {
	out := []Status{}
	for _, src := range s.allSources() {
		out = append(out, src.Status())
	}
	return writeJSON(w, map[string]any{"contracts": out})
}

func (s *Server) getContract(w http.ResponseWriter, r *http.Request) error {
	src, err := s.source(r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, src.Contract())
}

// manifestLine is one line of the manifest (JSON lines).
type manifestLine struct {
	Name       string `json:"name"`
	Size       int64  `json:"size"`
	SHA256     string `json:"sha256"`
	Seq        uint64 `json:"seq"`
	License    string `json:"license,omitempty"`
	StoredSize int64  `json:"stored_size"`
	Encoding   string `json:"encoding"`
}

func (s *Server) manifest(w http.ResponseWriter, r *http.Request) error {
	src, err := s.source(r.PathValue("id"))
	if err != nil {
		return err
	}
	if st := src.Status(); !st.Serving() {
		return stateError(st)
	}
	w.Header().Set("Content-Type", "application/jsonl")
	enc := json.NewEncoder(w)
	return eachManifest(r.Context(), src, func(e ManifestEntry) error {
		lic := e.License
		if lic == "" {
			lic = src.Contract().License
		}
		return enc.Encode(manifestLine{Name: e.Name, Size: e.DecodedSize, SHA256: e.DecodedSHA256, Seq: e.Seq,
			License: lic, StoredSize: e.StoredSize, Encoding: e.Encoding})
	})
}

// stateError is the error for a contract that cannot serve in state st.
func stateError(st Status) error {
	switch st.State {
	case StateQuarantined:
		return fmt.Errorf("%w: %s", ErrQuarantined, st.Error)
	case StateExpired:
		return ErrTokenExpired
	default:
		return fmt.Errorf("%w (state %s)", ErrNotReady, st.State)
	}
}

func (s *Server) endEpoch(w http.ResponseWriter, r *http.Request) error {
	src, err := s.source(r.PathValue("id"))
	if err != nil {
		return err
	}
	n, err := strconv.ParseInt(r.PathValue("n"), 10, 64)
	if err != nil || n < 0 || n > contract.MaxEventEpoch {
		return contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "epoch %q is not an integer from 0 to %d", r.PathValue("n"), int64(contract.MaxEventEpoch))
	}
	_, job, err := meterParams(r)
	if err != nil {
		return err
	}
	sum, err := s.cfg.Meter.EndEpoch(r.Context(), src.ID(), job, n)
	if err != nil {
		return err
	}
	return writeJSON(w, sum)
}

// meterParams reads the epoch and job from headers or query parameters.
func meterParams(r *http.Request) (epoch int64, job string, err error) {
	ep := r.Header.Get(HeaderEpoch)
	if ep == "" {
		ep = r.URL.Query().Get("epoch")
	}
	if ep != "" {
		epoch, err = strconv.ParseInt(ep, 10, 64)
		if err != nil || epoch < 0 || epoch > contract.MaxEventEpoch {
			return 0, "", contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "epoch %q is not an integer from 0 to %d", ep, int64(contract.MaxEventEpoch))
		}
	}
	job = r.Header.Get(HeaderJob)
	if job == "" {
		job = r.URL.Query().Get("job")
	}
	if len(job) > 128 {
		return 0, "", contract.Errorf(http.StatusBadRequest, contract.CodeBadRequest, "job id longer than 128 bytes")
	}
	return epoch, job, nil
}

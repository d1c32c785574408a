package sidecar

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/provgate/provgate/cache"
	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/meter"
	"github.com/provgate/provgate/proxy"
)

// cacheAdapter makes *cache.Cache a proxy.Cache.
type cacheAdapter struct{ c *cache.Cache }

var (
	_ proxy.Cache  = cacheAdapter{}
	_ proxy.Warmer = cacheAdapter{}
)

func (a cacheAdapter) Get(ctx context.Context, contractID string, obj *contract.ObjectClaim) (proxy.Object, error) {
	h, err := a.c.Get(ctx, contractID, obj)
	if err != nil {
		return nil, mapCacheError(err)
	}
	return h, nil
}

func (a cacheAdapter) Stream(ctx context.Context, contractID string, obj *contract.ObjectClaim) (io.ReadCloser, error) {
	rc, err := a.c.Stream(ctx, contractID, obj)
	if err != nil {
		return nil, mapCacheError(err)
	}
	return streamErrors{rc}, nil
}

// Warm presigns names ahead of their fetches (read-ahead).
func (a cacheAdapter) Warm(ctx context.Context, contractID string, names []string) error {
	return a.c.Warm(ctx, contractID, names)
}

// Purge drops the object's bytes (a redaction the proxy noticed first).
func (a cacheAdapter) Purge(contractID, name string) error {
	return a.c.Purge(contractID, name)
}

// streamErrors maps the error that ends a stream like Get's errors.
type streamErrors struct{ io.ReadCloser }

func (s streamErrors) Read(p []byte) (int, error) {
	n, err := s.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		err = mapCacheError(err)
	}
	return n, err
}

// mapCacheError gives cache failures the proxy's meaning.
func mapCacheError(err error) error {
	switch {
	case cache.IsVerification(err):
		return &proxy.VerificationError{Kind: cache.FailureKind(err), Err: err}
	case errors.Is(err, cache.ErrPurged), contract.StatusOf(err) == http.StatusUnavailableForLegalReasons:
		// Purged while fetched, or the registry refused to presign the
		// name because it is redacted: 451, never 502.
		return fmt.Errorf("%w: %v", proxy.ErrRedacted, err)
	case errors.Is(err, cache.ErrNotMounted):
		return fmt.Errorf("%w: %v", proxy.ErrNotReady, err)
	case contract.StatusOf(err) == http.StatusUnauthorized:
		// The registry refused our token to presign: a capability problem
		// (503), not the local client's credentials.
		return fmt.Errorf("%w: %v", proxy.ErrTokenExpired, err)
	case contract.StatusOf(err) == http.StatusForbidden:
		return fmt.Errorf("%w: %v", proxy.ErrQuotaSpent, err)
	case contract.StatusOf(err) != 0:
		// Any other refusal to presign is an upstream problem (502), never
		// the registry's status passed through (a 404 would read as "not in
		// the manifest").
		return fmt.Errorf("presign: %s", err.Error())
	default:
		return err
	}
}

// meterAdapter makes *meter.Ledger a proxy.Meter.
type meterAdapter struct{ l *meter.Ledger }

var _ proxy.Meter = meterAdapter{}

func (a meterAdapter) Submit(ctx context.Context, x proxy.Access) (func(context.Context) error, error) {
	return submitted(a.l.Submit(ctx, event(x)))
}

// event is the ledger's form of an access.
func event(x proxy.Access) meter.Event {
	return meter.Event{Time: x.Time, Contract: x.Contract, Name: x.Name, Bytes: x.Bytes,
		Samples: x.Samples, Tokens: x.Tokens, DecodedSHA256: x.DecodedSHA, Epoch: x.Epoch, Job: x.Job,
		TokenID: x.TokenID, Lease: x.Lease, Outcome: x.Outcome}
}

func submitted(p meter.Pending, err error) (func(context.Context) error, error) {
	if errors.Is(err, meter.ErrBusy) {
		return nil, fmt.Errorf("%w: %v", proxy.ErrBusy, err)
	}
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) error {
		_, err := p.Wait(ctx)
		return err
	}, nil
}

func (a meterAdapter) EndEpoch(ctx context.Context, contractID, job string, epoch int64) (any, error) {
	return a.l.EndEpoch(ctx, contractID, job, epoch)
}

func (a meterAdapter) Reserve(contractID string, g proxy.Grant, u contract.Usage, samples, bytes int64) (proxy.Reservation, error) {
	r, err := a.l.Reserve(contractID, g.LeaseID, g.TokenID, g.Quota, u, samples, bytes)
	if errors.Is(err, meter.ErrQuotaSpent) {
		return nil, fmt.Errorf("%w: %v", proxy.ErrQuotaSpent, err)
	}
	if err != nil {
		return nil, err
	}
	return reservation{r}, nil
}

// reservation makes *meter.Reservation a proxy.Reservation.
type reservation struct{ r *meter.Reservation }

func (r reservation) Submit(ctx context.Context, x proxy.Access) (func(context.Context) error, error) {
	return submitted(r.r.Submit(ctx, event(x)))
}

func (r reservation) Release() { r.r.Release() }

// registerMetrics exports the cache's and ledger's counters.
func (s *Sidecar) registerMetrics(reg prometheus.Registerer) {
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	counter := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f)
	}
	reg.MustRegister(
		counter("provgate_cache_hits_total", "Cache hits.", func() float64 { return float64(s.cache.Stats().Hits) }),
		counter("provgate_cache_misses_total", "Cache misses (origin fetches).", func() float64 { return float64(s.cache.Stats().Misses) }),
		gauge("provgate_cache_bytes", "Decoded bytes in the cache.", func() float64 { return float64(s.cache.Stats().Bytes) }),
		counter("provgate_cache_evictions_total", "Cache evictions.", func() float64 { return float64(s.cache.Stats().Evictions) }),
		counter("provgate_cache_resumes_total", "Ranged resumes after an origin fault mid-body.", func() float64 { return float64(s.cache.Stats().Resumes) }),
		counter("provgate_cache_rejected_total", "Objects the eviction policy declined to admit.", func() float64 { return float64(s.cache.Stats().Rejected) }),
		counter("provgate_cache_origin_bytes_total", "Stored bytes received from the origin.", func() float64 { return float64(s.cache.Stats().OriginBytes) }),
		&cacheFailures{s: s},
		gauge("provgate_ledger_queued", "Metering events waiting for the ledger writer.", func() float64 { return float64(s.ledger.Stats().Queued) }),
		counter("provgate_ledger_refused_total", "Metering events refused because the ledger was full (503).", func() float64 { return float64(s.ledger.Stats().Refused) }),
		counter("provgate_ledger_sync_errors_total", "Failed metering batch posts.", func() float64 { return float64(s.ledger.Stats().SyncErrors) }),
		counter("provgate_ledger_sync_disputes_total", "Metering batches the registry acknowledged without counting exactly what was sent.",
			func() float64 { return float64(s.ledger.Stats().Disputed) }),
		gauge("provgate_outbox_depth", "Metering events not yet acknowledged by the registry.", func() float64 {
			var n int64
			for _, id := range s.cfg.Contracts {
				n += s.ledger.OutboxDepth(id)
			}
			return float64(n)
		}),
	)
}

// cacheFailures exports the cache's failures by kind.
type cacheFailures struct{ s *Sidecar }

var cacheFailuresDesc = prometheus.NewDesc("provgate_cache_failures_total", "Failed fetches and damaged entries, by kind.", []string{"kind"}, nil)

func (c *cacheFailures) Describe(ch chan<- *prometheus.Desc) { ch <- cacheFailuresDesc }

func (c *cacheFailures) Collect(ch chan<- prometheus.Metric) {
	for kind, n := range c.s.cache.Stats().Failures {
		ch <- prometheus.MustNewConstMetric(cacheFailuresDesc, prometheus.CounterValue, float64(n), kind)
	}
}

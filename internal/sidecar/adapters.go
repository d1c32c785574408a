package sidecar

import (
	"context"
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/provgate/provgate/cache"
	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/meter"
	"github.com/provgate/provgate/proxy"
)

// cacheAdapter makes *cache.Cache a proxy.Cache.
type cacheAdapter struct{ c *cache.Cache }

var _ proxy.Cache = cacheAdapter{}

func (a cacheAdapter) Get(ctx context.Context, contractID string, obj *contract.ObjectClaim) (proxy.Object, error) {
	h, err := a.c.Get(ctx, contractID, obj)
	if err != nil {
		return nil, err
	}
	return h, nil
}

// meterAdapter makes *meter.Ledger a proxy.Meter.
type meterAdapter struct{ l *meter.Ledger }

var _ proxy.Meter = meterAdapter{}

func (a meterAdapter) Access(ctx context.Context, x proxy.Access) error {
	_, err := a.l.Record(ctx, meter.Event{Time: x.Time, Contract: x.Contract, Name: x.Name, Bytes: x.Bytes,
		DecodedSHA256: x.DecodedSHA, Epoch: x.Epoch, Job: x.Job, TokenID: x.TokenID, Outcome: x.Outcome})
	if errors.Is(err, meter.ErrBusy) {
		return fmt.Errorf("%w: %v", proxy.ErrBusy, err)
	}
	return err
}

func (a meterAdapter) EndEpoch(ctx context.Context, contractID, job string, epoch int64) (any, error) {
	return a.l.EndEpoch(ctx, contractID, job, epoch)
}

func (a meterAdapter) CheckQuota(contractID, tokenID string, q contract.Quota, u contract.Usage, size int64) error {
	if err := a.l.CheckQuota(contractID, tokenID, q, u, size); err != nil {
		return fmt.Errorf("%w: %v", proxy.ErrQuotaSpent, err)
	}
	return nil
}

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
		gauge("provgate_outbox_depth", "Metering events not yet acknowledged by the registry.", func() float64 {
			var n int64
			for _, id := range s.cfg.Contracts {
				n += s.ledger.OutboxDepth(id)
			}
			return float64(n)
		}),
	)
}

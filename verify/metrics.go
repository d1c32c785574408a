package verify

import "github.com/prometheus/client_golang/prometheus"

// Metrics counts what the log followers verify and refuse. One Metrics
// serves every follower of a sidecar; a nil *Metrics counts nothing.
type Metrics struct {
	entries     *prometheus.CounterVec
	rejected    *prometheus.CounterVec
	refusals    *prometheus.CounterVec
	quarantines *prometheus.CounterVec
	lookups     *prometheus.CounterVec
}

// NewMetrics makes the followers' metrics and registers them on reg (nil:
// not registered):
//
//	provgate_log_entries_verified_total{contract}
//	provgate_log_entries_rejected_total{contract,reason}   entries in the log whose attestation was refused
//	provgate_log_refusals_total{contract,reason}           checkpoints or pages refused (stale, bad signature, fork, ...)
//	provgate_log_quarantines_total{contract}
//	provgate_manifest_lookups_total{contract,from}         object lookups answered from the cache or the state database
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		entries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "provgate_log_entries_verified_total", Help: "Provenance log entries verified (chain, Merkle root, signature).",
		}, []string{"contract"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "provgate_log_entries_rejected_total", Help: "Log entries whose attestation was refused, by reason.",
		}, []string{"contract", "reason"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "provgate_log_refusals_total", Help: "Checkpoints or log pages refused, by reason.",
		}, []string{"contract", "reason"}),
		quarantines: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "provgate_log_quarantines_total", Help: "Contracts quarantined after a fork or rollback of their log.",
		}, []string{"contract"}),
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "provgate_manifest_lookups_total", Help: "Verified-manifest lookups, by where they were answered from (cache, state).",
		}, []string{"contract", "from"}),
	}
	if reg != nil {
		reg.MustRegister(m.entries, m.rejected, m.refusals, m.quarantines, m.lookups)
	}
	return m
}

func (m *Metrics) verified(contract string, n int) {
	if m != nil && n > 0 {
		m.entries.WithLabelValues(contract).Add(float64(n))
	}
}

func (m *Metrics) reject(contract string, err error) {
	if m != nil {
		m.rejected.WithLabelValues(contract, Reason(err)).Inc()
	}
}

func (m *Metrics) refuse(contract string, err error) {
	if m != nil {
		m.refusals.WithLabelValues(contract, Reason(err)).Inc()
	}
}

func (m *Metrics) quarantine(contract string) {
	if m != nil {
		m.quarantines.WithLabelValues(contract).Inc()
	}
}

// lookupCounters are a contract's lookup counters, resolved once (nil
// when m is nil).
func (m *Metrics) lookupCounters(contract string) (cache, state prometheus.Counter) {
	if m == nil {
		return nil, nil
	}
	return m.lookups.WithLabelValues(contract, "cache"), m.lookups.WithLabelValues(contract, "state")
}

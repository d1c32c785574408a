package proxy

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/provgate/provgate/verify"
)

// Metrics are the sidecar's Prometheus metrics that the HTTP layer owns.
// Other parts (cache, ledger, follower, token source) register their own
// collectors on the same registerer.
type Metrics struct {
	requests       *prometheus.CounterVec
	refusals       *prometheus.CounterVec
	bytesServed    *prometheus.CounterVec
	verifyFailures *prometheus.CounterVec
	meterErrors    prometheus.Counter
	proxyDenied    *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, s *Server) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "provgate_requests_total", Help: "HTTP requests by route and status.",
		}, []string{"route", "code"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "provgate_refusals_total", Help: "Requests refused, by status and reason.",
		}, []string{"code", "reason"}),
		bytesServed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "provgate_bytes_served_total", Help: "Verified, decoded bytes sent and metered (whole, ranges, cut short), by contract.",
		}, []string{"contract"}),
		verifyFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "provgate_verification_failures_total", Help: "Origin objects that failed verification, by kind.",
		}, []string{"kind"}),
		meterErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "provgate_meter_errors_total", Help: "Accesses the ledger failed to record.",
		}),
		proxyDenied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "provgate_forward_proxy_denied_total", Help: "Forward-proxy requests denied, by reason.",
		}, []string{"reason"}),
	}
	states := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "provgate_contracts_ready", Help: "Mounted contracts that are serving (ready or degraded).",
	}, func() float64 {
		n := 0
		for _, src := range s.allSources() {
			if src.Status().Serving() {
				n++
			}
		}
		return float64(n)
	})
	reg.MustRegister(m.requests, m.refusals, m.bytesServed, m.verifyFailures, m.meterErrors, m.proxyDenied, states, &stateCollector{s: s})
	return m
}

func verificationKind(err error) string {
	var ve *VerificationError
	if errors.As(err, &ve) && ve.Kind != "" {
		return ve.Kind
	}
	switch {
	case errors.Is(err, verify.ErrDigest):
		return "digest"
	case errors.Is(err, verify.ErrSize):
		return "size"
	case errors.Is(err, verify.ErrMalformed):
		return "malformed"
	default:
		return "other"
	}
}

// stateCollector exports each contract's state and token expiry.
type stateCollector struct{ s *Server }

var (
	stateDesc = prometheus.NewDesc("provgate_contract_state", "1 for the state each mounted contract is in.",
		[]string{"contract", "state"}, nil)
	tokenDesc = prometheus.NewDesc("provgate_token_expiry_seconds", "Unix time at which the contract's capability token expires.",
		[]string{"contract"}, nil)
	sizeDesc = prometheus.NewDesc("provgate_verified_log_size", "Entries of the contract's log verified so far.",
		[]string{"contract"}, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- stateDesc
	ch <- tokenDesc
	ch <- sizeDesc
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	for _, src := range c.s.allSources() {
		st := src.Status()
		for _, name := range []string{StateStarting, StateVerifying, StateReady, StateDegraded, StateQuarantined, StateExpired} {
			v := 0.0
			if st.State == name {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(stateDesc, prometheus.GaugeValue, v, st.ID, name)
		}
		if !st.TokenExpiry.IsZero() {
			ch <- prometheus.MustNewConstMetric(tokenDesc, prometheus.GaugeValue, float64(st.TokenExpiry.Unix()), st.ID)
		}
		ch <- prometheus.MustNewConstMetric(sizeDesc, prometheus.GaugeValue, float64(st.TreeSize), st.ID)
	}
}

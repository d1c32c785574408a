package registry

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The registry's metrics, served at GET /metrics:
//
//	provgate_registry_requests_total{route,code}          HTTP requests by route pattern and status
//	provgate_registry_request_duration_seconds{route}     their latency
//	provgate_registry_appends_total{kind}                 log entries appended, by kind
//	provgate_registry_log_size{contract}                  each log's size (logs read or appended since start)
//
// plus Go's and the process's collectors.
type metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	appends  *prometheus.CounterVec
}

func newMetrics(reg *prometheus.Registry, s *Server) *metrics {
	if reg == nil {
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	m := &metrics{
		reg: reg,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "provgate_registry_requests_total", Help: "Registry HTTP requests by route pattern and status.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "provgate_registry_request_duration_seconds", Help: "Registry HTTP request latency by route pattern (live feeds last as long as they stream).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10},
		}, []string{"route"}),
		appends: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "provgate_registry_appends_total", Help: "Log entries appended, by kind.",
		}, []string{"kind"}),
	}
	reg.MustRegister(m.requests, m.duration, m.appends, &logSizes{s: s})
	return m
}

func (m *metrics) observe(r *http.Request, status int, took time.Duration) {
	route := r.Pattern
	if route == "" || route == "/" {
		route = "other"
	}
	m.requests.WithLabelValues(route, strconv.Itoa(status)).Inc()
	m.duration.WithLabelValues(route).Observe(took.Seconds())
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

var logSizeDesc = prometheus.NewDesc("provgate_registry_log_size", "Entries in each contract's log (logs read or appended since start).", []string{"contract"}, nil)

// logSizes reports the cached Merkle heads: no database read per scrape.
type logSizes struct{ s *Server }

func (c *logSizes) Describe(ch chan<- *prometheus.Desc) { ch <- logSizeDesc }

func (c *logSizes) Collect(ch chan<- prometheus.Metric) {
	c.s.headsMu.Lock()
	sizes := make(map[string]uint64, len(c.s.heads))
	for id, h := range c.s.heads {
		sizes[id] = h.size()
	}
	c.s.headsMu.Unlock()
	for id, n := range sizes {
		ch <- prometheus.MustNewConstMetric(logSizeDesc, prometheus.GaugeValue, float64(n), id)
	}
}

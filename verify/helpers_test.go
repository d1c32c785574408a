package verify_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
	"github.com/provgate/provgate/verify/verifytest"
)

const cid = "did:example:c1"

// fixture is a log with one contributor, a state store in a temp dir and
// the metrics a follower counts into.
type fixture struct {
	log     *verifytest.Log
	alice   *verifytest.Contributor
	dir     string
	store   *verify.Store
	reg     *prometheus.Registry
	metrics *verify.Metrics

	mu       sync.Mutex
	redacted []string
}

func newFixture(t testing.TB, contributors ...contract.Contributor) *fixture {
	t.Helper()
	alice := verifytest.NewContributor(t, "did:example:alice", jose.EdDSA)
	fx := &fixture{alice: alice, dir: t.TempDir(), reg: prometheus.NewRegistry()}
	fx.log = verifytest.NewLog(t, cid, append([]contract.Contributor{alice.Info()}, contributors...)...)
	fx.metrics = verify.NewMetrics(fx.reg)
	fx.store = mustStore(t, fx.dir)
	return fx
}

func mustStore(t testing.TB, dir string) *verify.Store {
	t.Helper()
	s, err := verify.OpenStore(filepath.Join(dir, verify.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func (fx *fixture) config(src verify.LogSource) verify.FollowerConfig {
	return verify.FollowerConfig{
		Contract: fx.log.Contract, Source: src, Store: fx.store, Metrics: fx.metrics,
		OnRedact: func(_, name string) {
			fx.mu.Lock()
			fx.redacted = append(fx.redacted, name)
			fx.mu.Unlock()
		},
	}
}

func (fx *fixture) follower(t testing.TB, opts ...verify.Option) *verify.Follower {
	t.Helper()
	return mustFollower(t, fx.config(fx.log), opts...)
}

func mustFollower(t testing.TB, cfg verify.FollowerConfig, opts ...verify.Option) *verify.Follower {
	t.Helper()
	f, err := verify.NewFollower(context.Background(), cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (fx *fixture) purged() []string {
	fx.mu.Lock()
	defer fx.mu.Unlock()
	return append([]string(nil), fx.redacted...)
}

// contribute appends n contributions named prefix-i by c.
func contribute(t testing.TB, l *verifytest.Log, c *verifytest.Contributor, prefix string, n int) {
	t.Helper()
	for i := range n {
		name := fmt.Sprintf("%s-%d", prefix, i)
		l.AppendAttestation(t, c.Contribution(t, l.Contract.ContractID, verifytest.Object(name, []byte(name))))
	}
}

func mustSync(t testing.TB, f *verify.Follower) {
	t.Helper()
	if err := f.Sync(context.Background()); err != nil {
		t.Fatalf("sync: %v", err)
	}
}

func counter(t testing.TB, fx *fixture, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := fx.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue metrics
				}
			}
			total += m.GetCounter().GetValue()
		}
	}
	return total
}

func later(d time.Duration) func() time.Time {
	return func() time.Time { return time.Now().Add(d) }
}

// newTerms appends a version of the fixture log's terms changed by edit,
// in force at once.
func newTerms(t *testing.T, fx *fixture, edit func(*contract.Contract)) uint64 {
	t.Helper()
	b, err := json.Marshal(fx.log.Contract)
	if err != nil {
		t.Fatal(err)
	}
	var c contract.Contract
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	edit(&c)
	return fx.log.AppendTerms(t, &c, time.Now().Add(-time.Minute))
}

package verify_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/registry"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

// A registry whose live feed streams an endless event cannot exhaust the
// sidecar: the follower drops the feed at the client's bound, does not
// reopen it, and keeps up by polling.
func TestFollowerDropsHostileFeedAndPolls(t *testing.T) {
	fx := newFixture(t)
	contribute(t, fx.log, fx.alice, "a", 1)
	honest := newReplayServer(t, fx.log)
	target, _ := url.Parse(honest.URL)
	proxy := httputil.NewSingleHostReverseProxy(target)
	var opened atomic.Int64
	line := append(append([]byte("data: "), bytes.Repeat([]byte("A"), 64<<10)...), '\n')
	hostile := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/events/stream") {
			proxy.ServeHTTP(w, r)
			return
		}
		opened.Add(1)
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "event: entry\n")
		for range 4096 { // 256 MiB, if anyone read it
			if _, err := w.Write(line); err != nil {
				return
			}
		}
	}))
	t.Cleanup(hostile.Close)
	client, err := contract.NewClient(hostile.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg := fx.config(client)
	cfg.Stream = client
	cfg.PollInterval = 20 * time.Millisecond
	cfg.BaseBackoff = time.Millisecond
	f := mustFollower(t, cfg, verify.WithTrustOnFirstUse())
	if err := f.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer f.Stop()
	waitFor(t, "first sync", func() bool { return f.Ready() == nil })
	contribute(t, fx.log, fx.alice, "b", 1)
	waitFor(t, "a poll", func() bool { _, err := f.Lookup("b-0"); return err == nil })
	time.Sleep(100 * time.Millisecond)
	if n := opened.Load(); n != 1 {
		t.Fatalf("the hostile feed was opened %d times, want once and then polling only", n)
	}
}

// A fresh sidecar completes against a log of maximal entries from a
// registry whose pages are bounded in bytes, with a client that reads no
// more than twice a page: it follows the pages it is given.
func TestFreshFollowerOnMaximalEntries(t *testing.T) {
	const pageBytes = 256 << 10
	h := registrytest.Start(t, registrytest.WithConfig(func(c *registry.Config) {
		c.MaxPageBytes = pageBytes
		c.SyncNormalUnsafe = true
	}))
	alice := h.NewContributor(t, "did:example:alice")
	c := h.CreateContract(t, registrytest.NewContract("did:example:big", "bucket", alice))
	const n = 24
	for i := range n {
		o := registrytest.Object(fmt.Sprintf("big/%02d.txt", i), []byte("x"))
		o.License = strings.Repeat("l", contract.MaxAttestationSize*3/4-2048)
		alice.Append(t, c.ContractID, alice.Sign(t, c.ContractID, &contract.Attestation{Type: contract.Contribution, Object: &o}))
	}
	client, err := contract.NewClient(h.URL)
	if err != nil {
		t.Fatal(err)
	}
	client.MaxResponseBytes = 2 * pageBytes
	store, err := verify.OpenStore(filepath.Join(t.TempDir(), verify.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	f := mustFollower(t, verify.FollowerConfig{Contract: c, Source: client, Fetcher: client, Store: store}, verify.WithTrustOnFirstUse())
	mustSync(t, f)
	if st := f.Status(); st.State != verify.StateReady || st.Size != n+1 || st.Objects != n { // and the terms
		t.Fatalf("status %+v", st)
	}
}

package cache_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/provgate/provgate/cache"
	"github.com/provgate/provgate/contract"
)

// A hostile registry or origin cannot point the sidecar at another host
// (an internal address) by redirecting a presigned GET: the redirect is
// not followed and the target never sees a request. A redirect on the
// same host still is.
func TestPresignedOriginFollowsNoRedirectToAnotherHost(t *testing.T) {
	var internalHits atomic.Int64
	internal := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		internalHits.Add(1)
		w.Write([]byte("instance credentials"))
	}))
	defer internal.Close()
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/evil":
			http.Redirect(w, r, internal.URL+"/latest/meta-data/", http.StatusFound)
		case "/moved":
			http.Redirect(w, r, "/object", http.StatusTemporaryRedirect)
		case "/object":
			w.Write([]byte("object bytes"))
		}
	}))
	defer origin.Close()
	presigner := cache.PresignerFunc(func(_ context.Context, names []string) ([]contract.PresignedURL, error) {
		out := make([]contract.PresignedURL, len(names))
		for i, n := range names {
			out[i] = contract.PresignedURL{Name: n, URL: origin.URL + "/" + n, ExpiresAt: time.Now().Add(time.Hour)}
		}
		return out, nil
	})
	o := cache.NewPresignedOrigin(presigner, nil)
	body, err := o.Open(context.Background(), "evil", 0)
	if err == nil {
		b, _ := io.ReadAll(body)
		body.Close()
		t.Fatalf("followed a redirect to another host and read %q", b)
	}
	if n := internalHits.Load(); n != 0 {
		t.Fatalf("the other host got %d requests", n)
	}
	body, err = o.Open(context.Background(), "moved", 0)
	if err != nil {
		t.Fatalf("same-host redirect: %v", err)
	}
	defer body.Close()
	if b, _ := io.ReadAll(body); string(b) != "object bytes" {
		t.Fatalf("same-host redirect read %q", b)
	}
}

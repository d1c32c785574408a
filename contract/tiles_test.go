package contract_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/provgate/provgate/contract"
)

func TestLogURL(t *testing.T) {
	for _, tc := range []struct{ base, id, want string }{
		{"https://cdn.example.com/logs", "did:example:a", "https://cdn.example.com/logs/did:example:a/"},
		{"http://127.0.0.1:9000/bucket/p/", "did:example:a", "http://127.0.0.1:9000/bucket/p/did:example:a/"},
		{"http://registry:8700", "c1", "http://registry:8700/c1/"},
	} {
		u, err := contract.LogURL(tc.base, tc.id)
		if err != nil || u.String() != tc.want {
			t.Errorf("LogURL(%q, %q) = %v, %v; want %s", tc.base, tc.id, u, err, tc.want)
		}
	}
	for _, tc := range []struct{ base, id string }{
		{"ftp://x/logs", "c1"}, {"/logs", "c1"}, {"http://x/logs", "a/../b"}, {"http://x/logs", ""},
	} {
		if _, err := contract.LogURL(tc.base, tc.id); err == nil {
			t.Errorf("LogURL(%q, %q): want an error", tc.base, tc.id)
		}
	}
}

// TestTileFetcherBoundsBodies: a tiles server that sends more than any
// tile resource can hold is cut off, with or without a Content-Length;
// a missing resource is os.ErrNotExist, as tessera's client promises.
func TestTileFetcherBoundsBodies(t *testing.T) {
	big := strings.Repeat("x", contract.MaxTileResource+1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/checkpoint"):
			w.Header().Set("Content-Length", "999999999")
			w.WriteHeader(200)
		case strings.Contains(r.URL.Path, "/tile/entries/"):
			w.(http.Flusher).Flush() // chunked: no Content-Length
			w.Write([]byte(big))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	f, err := contract.NewTileFetcher(srv.URL+"/logs", "c1", nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := f.ReadCheckpoint(ctx); err == nil || !strings.Contains(err.Error(), "size limit") {
		t.Errorf("ReadCheckpoint of a huge declared body = %v, want a size limit error", err)
	}
	if b, err := f.ReadEntryBundle(ctx, 0, 0); err == nil || !strings.Contains(err.Error(), "size limit") {
		t.Errorf("ReadEntryBundle of an oversized body = %d bytes, %v; want a size limit error", len(b), err)
	}
	if _, err := f.ReadTile(ctx, 0, 0, 0); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ReadTile of a missing tile = %v, want os.ErrNotExist", err)
	}
}

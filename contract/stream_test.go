package contract_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"

	"github.com/provgate/provgate/contract"
)

// hostileFeed streams one event that never ends: total bytes of `data:`
// lines (each line bytes long), or one endless line when line is 0.
func hostileFeed(total, line int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "event: entry\n")
		// Built once: the server's own allocations must not count.
		chunk := bytes.Repeat([]byte("A"), 64<<10)
		if line == 0 {
			w.Write([]byte("data: "))
		} else {
			chunk = append(append([]byte("data: "), bytes.Repeat([]byte("A"), line)...), '\n')
		}
		for sent := 0; sent < total; sent += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}
}

// A hostile live feed cannot grow the client's memory: an event past
// contract.MaxStreamEventSize ends the stream with ErrEventTooLarge after
// reading little more than the bound, whether it comes as many `data:`
// lines or one endless line.
func TestStreamEventBounded(t *testing.T) {
	for _, tc := range []struct {
		name string
		line int
	}{{"many data lines", 64 << 10}, {"one endless line", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(hostileFeed(64<<20, tc.line))
			defer srv.Close()
			c, err := contract.NewClient(srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			err = c.Stream(ctx, "c1", 0, func(contract.WireEntry) error { return nil })
			runtime.ReadMemStats(&after)
			if !errors.Is(err, contract.ErrEventTooLarge) {
				t.Fatalf("Stream: %v, want ErrEventTooLarge", err)
			}
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 6*contract.MaxStreamEventSize {
				t.Fatalf("allocated %d MiB for a hostile event, bound %d MiB", alloc>>20, contract.MaxStreamEventSize>>20)
			}
		})
	}
}

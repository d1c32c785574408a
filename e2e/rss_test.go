package e2e_test

import (
	"fmt"
	"net/http"
	"sync"
	"testing"
)

// TestRSSBoundedWith64LargeStreams streams 64 large objects at once, cold
// and warm, through `provgate serve` running as its own process, and checks
// that its peak resident set stays under DESIGN.md's 256 MiB bound:
// objects flow through files and fixed buffers, never whole into memory.
func TestRSSBoundedWith64LargeStreams(t *testing.T) {
	const (
		objects = 16
		size    = 16 << 20
		streams = 64
		bound   = 256 << 20
	)
	e := newEnv(t, envOpt{})
	names := make([]string, objects)
	for i := range names {
		names[i] = fmt.Sprintf("large/%02d.bin", i)
		e.put(names[i], randomBytes(t, size), i%2 == 1)
	}
	sc := e.startServe(t)
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: streams}}
	var wg sync.WaitGroup
	for s := range streams {
		wg.Go(func() {
			for k := range 2 {
				name := names[(s+k*7)%objects]
				if err := fetch(hc, sc.URL+"/v1/contracts/"+e.c.ContractID+"/objects/"+name, size); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	rss := sc.peakRSS(t)
	t.Logf("peak RSS of provgate serve after %d concurrent streams of %d MiB objects: %.1f MiB", streams, size>>20, float64(rss)/(1<<20))
	if rss > bound {
		t.Errorf("peak RSS %d MiB, bound %d MiB", rss>>20, bound>>20)
	}
}

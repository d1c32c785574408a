package e2e_test

import (
	"context"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestKillNineWhileServing kills `provgate serve` with SIGKILL in the
// middle of concurrent traffic, three times, restarting it on the same
// state and cache each time. Afterwards the cache scrubs clean (no partial
// object), the ledger's chain verifies, and the registry has counted every
// response a client completed, and at most the requests that were in
// flight at each kill on top (an object whose access was committed just
// before the kill, whose last byte never left).
func TestKillNineWhileServing(t *testing.T) {
	const (
		objects = 200
		clients = 8
		rounds  = 3
	)
	e := newEnv(t, envOpt{})
	names := make([]string, objects)
	sizes := map[string]int{}
	for i := range names {
		names[i] = fmt.Sprintf("k/%03d.bin", i)
		sizes[names[i]] = 1000 + i*40
		e.put(names[i], randomBytes(t, sizes[names[i]]), i%2 == 0)
	}
	dir := t.TempDir()
	var completed atomic.Int64
	for round := range rounds {
		sc := e.startServeIn(t, dir)
		hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}, Timeout: 10 * time.Second}
		var stop atomic.Bool
		var wg sync.WaitGroup
		var started atomic.Int64
		for c := range clients {
			wg.Go(func() {
				for i := c; !stop.Load(); i += clients {
					name := names[(i*7+round)%objects]
					started.Add(1)
					if err := fetch(hc, sc.URL+"/v1/contracts/"+e.c.ContractID+"/objects/"+name, sizes[name]); err != nil {
						return // the sidecar died under us
					}
					completed.Add(1)
				}
			})
		}
		// Let traffic run, then kill at a moment that differs per round.
		waitFor(t, "traffic", 20*time.Second, func() bool { return started.Load() > int64(300+round*137) })
		sc.kill()
		stop.Store(true)
		wg.Wait()
	}
	// The cache holds no partial or corrupt object.
	out, err := exec.Command(provgateBinary(t), "cache", "verify", "--cache-dir", filepath.Join(dir, "cache")).CombinedOutput()
	if err != nil {
		t.Fatalf("provgate cache verify after kill -9: %v\n%s", err, out)
	}
	// A last start syncs the outbox; then the registry's count is checked.
	sc := e.startServeIn(t, dir)
	waitFor(t, "the outbox to drain", 30*time.Second, func() bool { return metric(t, sc.URL, "provgate_outbox_depth") == 0 })
	tot, err := e.client.MeteringTotals(context.Background(), e.c.ContractID, "bench", -1)
	if err != nil {
		t.Fatal(err)
	}
	done := completed.Load()
	if tot.AccessEvents < done || tot.AccessEvents > done+rounds*clients {
		t.Fatalf("registry counted %d accesses; clients completed %d (allowed: up to %d more, in flight at the kills)",
			tot.AccessEvents, done, rounds*clients)
	}
	t.Logf("clients completed %d responses across %d kills; the registry counted %d", done, rounds, tot.AccessEvents)
	out, err = exec.Command(provgateBinary(t), "meter", "verify", "--ledger", filepath.Join(dir, "state", "ledger.db")).CombinedOutput()
	if err != nil {
		t.Fatalf("provgate meter verify: %v\n%s", err, out)
	}
	// Every batch acknowledged across the kills has its receipt, and the
	// registry's log agrees with them.
	out, err = exec.Command(provgateBinary(t), "meter", "reconcile", "--ledger", filepath.Join(dir, "state", "ledger.db"),
		"--registry", e.reg.URL).CombinedOutput()
	if err != nil {
		t.Fatalf("provgate meter reconcile: %v\n%s", err, out)
	}
}

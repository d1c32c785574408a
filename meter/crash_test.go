package meter_test

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/testenv"
	"github.com/provgate/provgate/meter"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

// Environment of a writer child (this test binary, re-executed).
const (
	envChildLedger   = "METER_TEST_CHILD_LEDGER"
	envChildRegistry = "METER_TEST_CHILD_REGISTRY"
	envChildKey      = "METER_TEST_CHILD_KEY"
	envChildContract = "METER_TEST_CHILD_CONTRACT"
	envChildEnrol    = "METER_TEST_CHILD_ENROLMENT"
)

func TestMain(m *testing.M) {
	if os.Getenv(envChildLedger) != "" {
		os.Exit(writerChild())
	}
	testenv.Main(m)
}

// writerChild records events from 8 goroutines and prints the id of each
// acknowledged one, while a syncer ships the outbox, until it is killed.
func writerChild() int {
	ctx := context.Background()
	contractID := os.Getenv(envChildContract)
	l, err := meter.Open(ctx, os.Getenv(envChildLedger), meter.Config{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := l.SetPricing(ctx, contractID, contract.Pricing{Unit: contract.UnitSample, PriceUSD: 0.0005}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	l.Start(ctx)
	key, err := verify.LoadKey(os.Getenv(envChildKey))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	client, err := contract.NewClient(os.Getenv(envChildRegistry))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	client.Proof = verify.ProofFunc(key)
	sy, err := meter.NewSyncer(l, meter.SyncConfig{Client: client, Key: key, BatchSize: 200,
		Tokens: &meter.RequestedTokens{Client: client, Key: key, Purpose: "training",
			Enrolment: func(string) (string, error) { return os.Getenv(envChildEnrol), nil }}, Interval: 5 * time.Millisecond})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	sy.Start(ctx)
	var mu sync.Mutex
	for w := range 8 {
		go func() {
			for i := 0; ; i++ {
				rc, err := l.Record(ctx, meter.Event{Contract: contractID, Name: fmt.Sprintf("w%d/%d", w, i), Bytes: int64(i%1000 + 1),
					Epoch: int64(i / 100), Job: "crash", TokenID: "t"})
				if err != nil {
					continue
				}
				// One write per line: a pipe write this small is atomic.
				mu.Lock()
				os.Stdout.WriteString(rc.ID + "\n")
				mu.Unlock()
			}
		}()
	}
	select {}
}

func TestKilledWriterLosesNoAcknowledgedEvent(t *testing.T) {
	h := registrytest.Start(t)
	c := h.CreateContract(t, newContract(t, "did:example:metered-crash"))
	dir := t.TempDir()
	key, err := verify.GenerateKey(jose.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "sidecar.jwk")
	if err := verify.SaveKey(keyFile, key); err != nil {
		t.Fatal(err)
	}
	enrol, err := enrolment(key, c.ContractID)
	if err != nil {
		t.Fatal(err)
	}
	ledger := filepath.Join(dir, "ledger.db")
	acked := map[string]bool{}
	const kills = 20
	for run := range kills {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), envChildLedger+"="+ledger, envChildRegistry+"="+h.URL,
			envChildKey+"="+keyFile, envChildContract+"="+c.ContractID, envChildEnrol+"="+enrol)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		first := make(chan struct{})
		done := make(chan []string)
		go func() {
			var ids []string
			r := bufio.NewReader(stdout)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					break // EOF; a line without its newline was not reported
				}
				if len(ids) == 0 {
					close(first)
				}
				ids = append(ids, strings.TrimSuffix(line, "\n"))
			}
			if len(ids) == 0 {
				close(first)
			}
			done <- ids
		}()
		select {
		case <-first:
		case <-time.After(30 * time.Second):
			t.Fatal("child acknowledged nothing in 30s")
		}
		time.Sleep(time.Duration(10+rand.IntN(300)) * time.Millisecond)
		cmd.Process.Kill() // SIGKILL
		ids := <-done      // read to EOF before Wait closes the pipe
		cmd.Wait()
		for _, id := range ids {
			if acked[id] {
				t.Fatalf("run %d: event id %s acknowledged twice", run, id)
			}
			acked[id] = true
		}
		t.Logf("run %d: killed after %d acknowledged events", run, len(ids))
	}

	l := openLedger(t, ledger, c.ContractID)
	ctx := context.Background()
	res, err := l.Verify(ctx)
	if err != nil {
		t.Fatalf("chain after %d kills: %v", kills, err)
	}
	inLedger := map[string]bool{}
	var samples, bytes int64
	if err := l.Rows(ctx, 0, func(r *meter.Row) error {
		inLedger[r.ID] = true
		samples += r.Samples
		bytes += r.Bytes
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// The quota totals survive the kills: the rows after the last usage
	// snapshot are replayed on open.
	if s, b := l.Usage(c.ContractID, "t"); s != samples || b != bytes {
		t.Errorf("usage after the kills = %d samples, %d bytes; the rows say %d and %d", s, b, samples, bytes)
	}
	for id := range acked {
		if !inLedger[id] {
			t.Errorf("acknowledged event %s is not in the ledger", id)
		}
	}
	// Committed but killed before the id was printed: at most the 8
	// writers' events in flight per kill.
	extra := len(inLedger) - len(acked)
	if extra < 0 || extra > 8*kills {
		t.Errorf("%d rows in the ledger, %d acknowledged: %d unacknowledged rows", len(inLedger), len(acked), extra)
	}
	before, err := h.Client.MeteringTotals(ctx, c.ContractID, "", -1)
	if err != nil {
		t.Fatal(err)
	}
	sy := newSidecar(t, h.URL, key).syncer(t, l)
	if _, err := sy.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d acknowledged, %d rows (%d committed unacknowledged), %d already at the registry before the final sync",
		len(acked), res.Rows, extra, before.Events)
	assertTotalsEqual(t, h.Client, l, c.ContractID, res.Rows)
}

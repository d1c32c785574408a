package e2e_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"syscall"
	"testing"
	"time"
)

// TestGracefulShutdownDrainsAndFlushes sends SIGTERM while a client is in
// the middle of a large download: the download completes with the right
// bytes, the process exits 0, and the access reaches the registry.
func TestGracefulShutdownDrainsAndFlushes(t *testing.T) {
	e := newEnv(t, envOpt{})
	big := randomBytes(t, 32<<20)
	e.put("big.bin", big, false)
	dir := t.TempDir()
	sc := e.startServeIn(t, dir)
	req, _ := http.NewRequest(http.MethodGet, sc.URL+"/v1/contracts/"+e.c.ContractID+"/objects/big.bin", nil)
	req.Header.Set("X-Provgate-Job", "drain")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	head := make([]byte, 1<<20)
	if _, err := io.ReadFull(resp.Body, head); err != nil {
		t.Fatal(err)
	}
	if err := sc.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the server is shutting down while we still read
	rest, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || !bytes.Equal(append(head, rest...), big) {
		t.Fatalf("download during shutdown: %d bytes, err %v", len(head)+len(rest), err)
	}
	waitErr := make(chan error, 1)
	go func() { waitErr <- sc.cmd.Wait() }()
	select {
	case err := <-waitErr:
		if err != nil {
			t.Fatalf("provgate serve exited with %v after SIGTERM\n%s", err, sc.log)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("provgate serve did not exit after SIGTERM\n%s", sc.log)
	}
	// The shutdown's last sync delivered the access.
	tot, err := e.client.MeteringTotals(context.Background(), e.c.ContractID, "drain", -1)
	if err != nil {
		t.Fatal(err)
	}
	if tot.AccessEvents != 1 || tot.AccessBytes != int64(len(big)) {
		t.Errorf("registry has %d accesses / %d bytes after shutdown, want 1 / %d", tot.AccessEvents, tot.AccessBytes, len(big))
	}
}

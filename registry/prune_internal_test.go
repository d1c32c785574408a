package registry

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/compact"
)

// Sidecar keys and proof ids grow with token requests; pruning keeps the
// keys a log entry needs (a sidecar that signed a metering batch: auditors
// verify it) and the recently used ones, and drops the rest.
func TestPruneSidecarKeysAndProofIDs(t *testing.T) { backendURLs(t, testPruneSidecarKeysAndProofIDs) }

func testPruneSidecarKeysAndProofIDs(t *testing.T, db string) {
	ctx := context.Background()
	var now atomic.Pointer[time.Time]
	t0 := time.Now()
	now.Store(&t0)
	s, err := New(ctx, Config{DBPath: db, Clock: func() time.Time { return *now.Load() },
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), SidecarKeyRetention: time.Hour, CheckpointInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, jkt := range []string{"idle", "signer", "recent"} {
		if err := s.st.putSidecarKey(ctx, jkt, []byte(`{"kty":"OKP"}`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.st.useProofID(ctx, "old-proof", t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	// "signer" signs a metering entry.
	rec := &appendRecord{Seq: 1, Entry: []byte(`{}`), Time: t0, Nodes: map[compact.NodeID][]byte{}, CheckpointNote: []byte("cp"), Sender: "signer"}
	if err := s.st.appendEntry(ctx, "c1", rec); err != nil {
		t.Fatal(err)
	}
	t1 := t0.Add(2 * time.Hour)
	now.Store(&t1)
	if err := s.st.putSidecarKey(ctx, "recent", []byte(`{"kty":"OKP"}`)); err != nil { // a new token request
		t.Fatal(err)
	}
	if err := s.prune(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.st.sidecarKey(ctx, "idle"); !errors.Is(err, errNotFound) {
		t.Fatalf("idle key: %v, want pruned", err)
	}
	for _, jkt := range []string{"signer", "recent"} {
		if _, err := s.st.sidecarKey(ctx, jkt); err != nil {
			t.Fatalf("%s key: %v, want kept", jkt, err)
		}
	}
	if err := s.st.useProofID(ctx, "old-proof", t1.Add(time.Minute)); err != nil {
		t.Fatalf("expired proof id still held: %v", err)
	}
}

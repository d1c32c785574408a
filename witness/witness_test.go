package witness_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	fnote "github.com/transparency-dev/formats/note"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/merkle/testonly"
	"golang.org/x/mod/sumdb/note"

	"github.com/provgate/provgate/verify"
	"github.com/provgate/provgate/witness"
)

const origin = "registry.test/log/did:example:c1"

// testLog is an in-memory log whose checkpoints are signed the way the
// registry signs them (verify.CheckpointSigner).
type testLog struct {
	tree   *testonly.Tree
	signer *verify.CheckpointSigner
	vkey   string
}

func newTestLog(tb testing.TB, keys [2]string) *testLog {
	tb.Helper()
	if keys[0] == "" {
		keys = newLogKey(tb)
	}
	s, err := verify.NewCheckpointSigner(keys[0])
	if err != nil {
		tb.Fatal(err)
	}
	return &testLog{tree: testonly.New(rfc6962.DefaultHasher), signer: s, vkey: keys[1]}
}

// newLogKey is a log's checkpoint key pair: skey, vkey.
func newLogKey(tb testing.TB) [2]string {
	tb.Helper()
	skey, vkey, err := note.GenerateKey(rand.Reader, "registry.test")
	if err != nil {
		tb.Fatal(err)
	}
	return [2]string{skey, vkey}
}

func (l *testLog) append(data ...string) {
	for _, d := range data {
		l.tree.AppendData([]byte(d))
	}
}

func (l *testLog) checkpoint(tb testing.TB) []byte {
	tb.Helper()
	b, err := l.signer.Sign(origin, l.tree.Size(), l.tree.Hash())
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func (l *testLog) request(tb testing.TB, old uint64) []byte {
	tb.Helper()
	req := &witness.AddCheckpoint{Old: old, Checkpoint: l.checkpoint(tb)}
	if old > 0 {
		p, err := l.tree.ConsistencyProof(old, l.tree.Size())
		if err != nil {
			tb.Fatal(err)
		}
		req.Proof = p
	}
	return req.Marshal()
}

type harness struct {
	url, vkey, db, skey string
	w                   *witness.Witness
	srv                 *httptest.Server
}

func startWitness(tb testing.TB, db, skey string, logs map[string]string) *harness {
	tb.Helper()
	if skey == "" {
		var err error
		if skey, _, err = witness.GenerateKey("witness.test/w1"); err != nil {
			tb.Fatal(err)
		}
	}
	w, err := witness.New(context.Background(), witness.Config{Key: skey, Logs: logs, DBPath: db,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		tb.Fatal(err)
	}
	srv := httptest.NewServer(w.Handler())
	h := &harness{url: srv.URL, vkey: w.VerifierKey(), db: db, skey: skey, w: w, srv: srv}
	tb.Cleanup(h.stop)
	return h
}

func (h *harness) stop() {
	if h.srv != nil {
		h.srv.Close()
		h.w.Close()
		h.srv = nil
	}
}

func post(tb testing.TB, url string, body []byte) (int, string, http.Header) {
	tb.Helper()
	resp, err := http.Post(url+"/add-checkpoint", "text/plain", bytes.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

// TestAddCheckpointRefusals drives the spec's status codes over HTTP.
func TestAddCheckpointRefusals(t *testing.T) {
	log := newTestLog(t, [2]string{})
	h := startWitness(t, filepath.Join(t.TempDir(), "w.db"), "", map[string]string{origin: log.vkey})

	log.append("a", "b", "c")
	if code, body, _ := post(t, h.url, log.request(t, 0)); code != 200 {
		t.Fatalf("first checkpoint: got %d %q, want 200", code, body)
	}
	at3 := log.checkpoint(t)

	other := newTestLog(t, [2]string{}) // same name, another key
	other.append("a", "b", "c", "d")
	fork := newTestLog(t, [2]string{})
	fork.signer = log.signer
	fork.append("a", "b", "X")

	unknown, err := log.signer.Sign("elsewhere.test/log", 3, log.tree.Hash())
	if err != nil {
		t.Fatal(err)
	}
	log.append("d", "e")
	good := log.request(t, 3)
	badProof := &witness.AddCheckpoint{Old: 3, Checkpoint: log.checkpoint(t), Proof: [][]byte{bytes.Repeat([]byte{1}, 32)}}

	for _, tc := range []struct {
		name string
		body []byte
		want int
	}{
		{"garbage", []byte("hello\n"), 400},
		{"unknown origin", (&witness.AddCheckpoint{Old: 3, Checkpoint: unknown}).Marshal(), 404},
		{"signed by another key", other.request(t, 3), 403},
		{"old beyond size", (&witness.AddCheckpoint{Old: 9, Checkpoint: log.checkpoint(t)}).Marshal(), 400},
		{"rollback to 0", (&witness.AddCheckpoint{Old: 0, Checkpoint: log.checkpoint(t)}).Marshal(), 409},
		{"bad proof", badProof.Marshal(), 422},
		{"fork of the same size", (&witness.AddCheckpoint{Old: 3, Checkpoint: fork.checkpoint(t)}).Marshal(), 422},
		{"same checkpoint again", (&witness.AddCheckpoint{Old: 3, Checkpoint: at3}).Marshal(), 200},
		{"extension", good, 200},
		{"old checkpoint after the extension", (&witness.AddCheckpoint{Old: 3, Checkpoint: at3}).Marshal(), 409},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body, hdr := post(t, h.url, tc.body)
			if code != tc.want {
				t.Fatalf("got %d %q, want %d", code, body, tc.want)
			}
			if code == 409 {
				if ct := hdr.Get("Content-Type"); ct != witness.SizeMediaType {
					t.Errorf("409 Content-Type = %q, want %q", ct, witness.SizeMediaType)
				}
				if body != "3\n" && body != "5\n" {
					t.Errorf("409 body = %q, want the witness's size", body)
				}
			}
		})
	}
}

// TestCosignatureVerifiesWithXModNote checks a witness cosignature with
// golang.org/x/mod/sumdb/note's Open and transparency-dev's cosignature/v1
// verifier, built from the vkey the witness prints: no code of ours.
func TestCosignatureVerifiesWithXModNote(t *testing.T) {
	log := newTestLog(t, [2]string{})
	h := startWitness(t, filepath.Join(t.TempDir(), "w.db"), "", map[string]string{origin: log.vkey})
	log.append("a", "b")
	cp := log.checkpoint(t)
	code, sigs, _ := post(t, h.url, (&witness.AddCheckpoint{Old: 0, Checkpoint: cp}).Marshal())
	if code != 200 {
		t.Fatalf("got %d %q", code, sigs)
	}
	if !strings.HasPrefix(sigs, "— witness.test/w1 ") || !strings.HasSuffix(sigs, "\n") {
		t.Fatalf("answer %q is not a note signature line", sigs)
	}
	v, err := fnote.NewVerifierForCosignatureV1(h.vkey)
	if err != nil {
		t.Fatal(err)
	}
	n, err := note.Open(append(cp, sigs...), note.VerifierList(v))
	if err != nil {
		t.Fatalf("note.Open with the witness's cosignature/v1 verifier: %v", err)
	}
	if len(n.Sigs) != 1 || n.Sigs[0].Name != "witness.test/w1" {
		t.Fatalf("verified signatures %+v, want the witness's", n.Sigs)
	}
	ts, err := fnote.CoSigV1Timestamp(n.Sigs[0])
	if err != nil || ts.Unix() == 0 {
		t.Fatalf("cosignature timestamp %v, %v: want a non-zero time", ts, err)
	}
	// The same line does not verify over another checkpoint body.
	log.append("c")
	if _, err := note.Open(append(log.checkpoint(t), sigs...), note.VerifierList(v)); err == nil {
		t.Fatal("the cosignature verified over another checkpoint")
	}
	// The monitoring endpoint serves the cosigned checkpoint.
	resp, err := http.Get(h.url + "/" + witness.OriginHash(origin) + "/checkpoint")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if _, err := note.Open(b, note.VerifierList(v)); resp.StatusCode != 200 || err != nil {
		t.Fatalf("GET checkpoint: %d %v", resp.StatusCode, err)
	}
}

// TestRestartedWitnessRefusesFork: the state survives a restart, so a
// fork shown after it is still refused, and a rollback still gets 409.
func TestRestartedWitnessRefusesFork(t *testing.T) {
	keys := newLogKey(t)
	honest, fork := newTestLog(t, keys), newTestLog(t, keys)
	honest.append("a", "b", "c")
	fork.append("a", "b", "EVIL")
	db := filepath.Join(t.TempDir(), "w.db")
	logs := map[string]string{origin: honest.vkey}
	h := startWitness(t, db, "", logs)
	if code, body, _ := post(t, h.url, honest.request(t, 0)); code != 200 {
		t.Fatalf("honest checkpoint: %d %q", code, body)
	}
	h.stop()

	h2 := startWitness(t, db, h.skey, logs)
	for _, old := range []uint64{0, 3} {
		code, body, _ := post(t, h2.url, (&witness.AddCheckpoint{Old: old, Checkpoint: fork.checkpoint(t)}).Marshal())
		want := map[uint64]int{0: 409, 3: 422}[old]
		if code != want {
			t.Fatalf("fork with old %d after restart: got %d %q, want %d", old, code, body, want)
		}
	}
	fork.append("more")
	p, err := fork.tree.ConsistencyProof(3, 4)
	if err != nil {
		t.Fatal(err)
	}
	if code, body, _ := post(t, h2.url, (&witness.AddCheckpoint{Old: 3, Proof: p, Checkpoint: fork.checkpoint(t)}).Marshal()); code != 422 {
		t.Fatalf("an extension of the fork after restart: got %d %q, want 422", code, body)
	}
	honest.append("d")
	if code, body, _ := post(t, h2.url, honest.request(t, 3)); code != 200 {
		t.Fatalf("honest extension after restart: got %d %q, want 200", code, body)
	}
}

// TestParseAddCheckpoint pins the format rules.
func TestParseAddCheckpoint(t *testing.T) {
	h := strings.Repeat("A", 43) + "="
	for _, tc := range []struct {
		body string
		ok   bool
	}{
		{"old 0\n\ncp\n", true},
		{"old 12\n" + h + "\n" + h + "\n\ncp\n", true},
		{"old 012\n\ncp\n", false},
		{"old -1\n\ncp\n", false},
		{"old 1 \n\ncp\n", false},
		{"old 18446744073709551616\n\ncp\n", false},
		{"old 1\nnot base64\n\ncp\n", false},
		{"old 1\nAAAA\n\ncp\n", false},
		{"old 1\n" + h + "\n", false},
		{"old 1\n\n", false},
		{"new 1\n\ncp\n", false},
		{"old 1\n" + strings.Repeat(h+"\n", 64) + "\ncp\n", false},
	} {
		_, err := witness.ParseAddCheckpoint([]byte(tc.body))
		if (err == nil) != tc.ok {
			t.Errorf("ParseAddCheckpoint(%q): err = %v, want ok=%v", tc.body, err, tc.ok)
		}
	}
}

// TestConcurrentAddsNeverRollBack: the spec's race. Requests for several
// sizes, all from the same old size, arrive at once: exactly one is
// cosigned, the others get 409, and the stored checkpoint is the cosigned
// one.
func TestConcurrentAddsNeverRollBack(t *testing.T) {
	log := newTestLog(t, [2]string{})
	h := startWitness(t, filepath.Join(t.TempDir(), "w.db"), "", map[string]string{origin: log.vkey})
	var bodies [][]byte
	for i := 1; i <= 8; i++ {
		log.append(fmt.Sprint(i))
		bodies = append(bodies, (&witness.AddCheckpoint{Old: 0, Checkpoint: log.checkpoint(t)}).Marshal())
	}
	codes := make([]int, len(bodies))
	var wg sync.WaitGroup
	for i, b := range bodies {
		wg.Go(func() { codes[i], _, _ = post(t, h.url, b) })
	}
	wg.Wait()
	won := -1
	for i, c := range codes {
		switch {
		case c == 200 && won < 0:
			won = i
		case c == 409:
		default:
			t.Fatalf("answers %v: want one 200 and 409s", codes)
		}
	}
	if won < 0 {
		t.Fatalf("answers %v: none cosigned", codes)
	}
	resp, err := http.Get(h.url + "/" + witness.OriginHash(origin) + "/checkpoint")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	want := bytes.SplitN(bodies[won], []byte("\n\n"), 2)[1]
	wantBody, _, _ := bytes.Cut(want, []byte("\n\n"))
	if !bytes.HasPrefix(got, append(wantBody, "\n\n"...)) {
		t.Fatalf("stored checkpoint %q, want the cosigned one %q", got, wantBody)
	}
}

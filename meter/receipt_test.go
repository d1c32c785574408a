package meter_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/merkle/testonly"
	"golang.org/x/mod/sumdb/note"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/meter"
	"github.com/provgate/provgate/registry"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

// tamperingRegistry is a loopback proxy in front of a real registry whose
// operator holds the checkpoint key: it can rewrite the answers to
// metering batches and serve checkpoints of its choosing.
type tamperingRegistry struct {
	url  string
	skey string
	h    *registrytest.Harness

	mu       sync.Mutex
	metering func(*contract.MeteringResponse)
	// fork, when set, is the log the proxy serves instead of the real one:
	// its checkpoint and its proofs.
	fork       *testonly.Tree
	checkpoint []byte
}

func startTamperingRegistry(t *testing.T) *tamperingRegistry {
	t.Helper()
	skey, _, err := verify.GenerateCheckpointKey("registrytest")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tr := &tamperingRegistry{url: "http://" + ln.Addr().String(), skey: skey}
	tr.h = registrytest.Start(t, registrytest.WithConfig(func(c *registry.Config) {
		c.PublicURL = tr.url
		c.CheckpointKey = skey
	}))
	target, _ := url.Parse(tr.h.URL)
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ModifyResponse = func(r *http.Response) error {
		if r.Request.Method != http.MethodPost || !strings.HasSuffix(r.Request.URL.Path, "/metering") || r.StatusCode != http.StatusOK {
			return nil
		}
		tr.mu.Lock()
		rewrite := tr.metering
		tr.mu.Unlock()
		if rewrite == nil {
			return nil
		}
		var resp contract.MeteringResponse
		if err := json.NewDecoder(r.Body).Decode(&resp); err != nil {
			return err
		}
		r.Body.Close()
		rewrite(&resp)
		b, _ := json.Marshal(resp)
		r.Body = io.NopCloser(bytes.NewReader(b))
		r.ContentLength = int64(len(b))
		r.Header.Set("Content-Length", strconv.Itoa(len(b)))
		return nil
	}
	mux := http.NewServeMux()
	mux.Handle("/", rp)
	forked := func(w http.ResponseWriter, r *http.Request) (*testonly.Tree, []byte) {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		if tr.fork == nil {
			rp.ServeHTTP(w, r)
		}
		return tr.fork, tr.checkpoint
	}
	uintQ := func(r *http.Request, name string) uint64 {
		n, _ := strconv.ParseUint(r.URL.Query().Get(name), 10, 64)
		return n
	}
	mux.HandleFunc("GET /provenance/{id}/checkpoint", func(w http.ResponseWriter, r *http.Request) {
		if fork, cp := forked(w, r); fork != nil {
			w.Header().Set("Content-Type", contract.CheckpointMediaType)
			w.Write(cp)
		}
	})
	mux.HandleFunc("GET /provenance/{id}/proof/inclusion", func(w http.ResponseWriter, r *http.Request) {
		if fork, _ := forked(w, r); fork != nil {
			seq, size := uintQ(r, "seq"), uintQ(r, "size")
			if seq == 0 || seq > size || size > fork.Size() {
				http.Error(w, `{"error":{"code":"bad_request","message":"no such entry"}}`, http.StatusBadRequest)
				return
			}
			hashes, err := fork.InclusionProof(seq-1, size)
			if err != nil {
				http.Error(w, `{"error":{"code":"bad_request","message":"no such entry"}}`, http.StatusBadRequest)
				return
			}
			json.NewEncoder(w).Encode(contract.InclusionProof{Seq: seq, TreeSize: size, Hashes: hashes})
		}
	})
	mux.HandleFunc("GET /provenance/{id}/proof/consistency", func(w http.ResponseWriter, r *http.Request) {
		if fork, _ := forked(w, r); fork != nil {
			from, to := uintQ(r, "from"), uintQ(r, "to")
			var hashes [][]byte
			var err error
			if from == 0 || from > to || to > fork.Size() {
				err = errors.New("no such size")
			} else {
				hashes, err = fork.ConsistencyProof(from, to)
			}
			if err != nil {
				http.Error(w, `{"error":{"code":"bad_request","message":"no such size"}}`, http.StatusBadRequest)
				return
			}
			json.NewEncoder(w).Encode(contract.ConsistencyProof{From: from, To: to, Hashes: hashes})
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return tr
}

func (tr *tamperingRegistry) setMetering(f func(*contract.MeteringResponse)) {
	tr.mu.Lock()
	tr.metering = f
	tr.mu.Unlock()
}

// dropEntry makes the proxy serve, signed with the registry's key, a log
// rewritten without entry seq (a filler leaf at the end keeps its size):
// its checkpoint and proofs. It is the registry dropping a batch it
// receipted.
func (tr *tamperingRegistry) dropEntry(t *testing.T, c *contract.Contract, seq uint64) {
	t.Helper()
	page, err := tr.h.Client.Events(context.Background(), c.ContractID, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	fork := testonly.New(rfc6962.DefaultHasher)
	for _, e := range page.Entries {
		if e.Seq != seq {
			fork.AppendData(e.Entry)
		}
	}
	fork.AppendData([]byte("filler"))
	signer, err := verify.NewCheckpointSigner(tr.skey)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := signer.Sign(c.Log.Origin, fork.Size(), fork.Hash())
	if err != nil {
		t.Fatal(err)
	}
	tr.mu.Lock()
	tr.fork, tr.checkpoint = fork, cp
	tr.mu.Unlock()
}

// receiptSyncer is a syncer of l through the tampering registry, logging
// into logs.
func receiptSyncer(t *testing.T, tr *tamperingRegistry, l *meter.Ledger, logs *syncedLog) *meter.Syncer {
	t.Helper()
	sc := newSidecar(t, tr.url, nil)
	sy, err := meter.NewSyncer(l, meter.SyncConfig{Client: sc.client, Key: sc.key, Tokens: sc.tokens,
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return sy
}

// syncRows writes n rows from row from and syncs them: one batch.
func syncRows(t *testing.T, l *meter.Ledger, sy *meter.Syncer, contractID string, from, n int) {
	t.Helper()
	write(t, l, contractID, from, n)
	if _, err := sy.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// Every batch the registry counts comes back with a receipt that the
// sidecar keeps; a third party checks it with golang.org/x/mod/sumdb/note
// and transparency-dev/merkle alone, knowing only the contract's log
// origin and checkpoint key.
func TestReceiptsCheckWithPlainNoteAndMerkle(t *testing.T) {
	ctx := context.Background()
	tr := startTamperingRegistry(t)
	c := tr.h.CreateContract(t, newContract(t, "did:example:receipted"))
	l := openLedger(t, filepath.Join(t.TempDir(), "ledger.db"), c.ContractID)
	var logs syncedLog
	sy := receiptSyncer(t, tr, l, &logs)
	for i := range 3 {
		syncRows(t, l, sy, c.ContractID, i*10, 10)
	}
	rs, err := l.Receipts(ctx, c.ContractID)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 3 {
		t.Fatalf("%d receipts after 3 batches, want 3", len(rs))
	}
	if d := l.DisputeStatus(c.ContractID); d.Batches != 0 {
		t.Fatalf("honest registry disputed: %+v", d)
	}
	v, err := note.NewVerifier(c.Log.CheckpointKey)
	if err != nil {
		t.Fatal(err)
	}
	var rows int64
	for _, r := range rs {
		n, err := note.Open([]byte(r.Checkpoint), note.VerifierList(v))
		if err != nil {
			t.Fatalf("batch %s: checkpoint: %v", r.Batch, err)
		}
		lines := strings.Split(n.Text, "\n")
		if len(lines) < 3 || lines[0] != c.Log.Origin {
			t.Fatalf("batch %s: checkpoint body %q", r.Batch, n.Text)
		}
		size, err := strconv.ParseUint(lines[1], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		root, err := base64.StdEncoding.DecodeString(lines[2])
		if err != nil {
			t.Fatal(err)
		}
		leaf := rfc6962.DefaultHasher.HashLeaf(r.Entry)
		if !bytes.Equal(leaf, r.Leaf) {
			t.Fatalf("batch %s: leaf is not the hash of the entry", r.Batch)
		}
		if err := proof.VerifyInclusion(rfc6962.DefaultHasher, r.Index, size, leaf, r.Inclusion, root); err != nil {
			t.Fatalf("batch %s: inclusion: %v", r.Batch, err)
		}
		var e struct {
			Seq      uint64   `json:"seq"`
			Kind     string   `json:"kind"`
			JWS      string   `json:"jws"`
			Accepted []string `json:"accepted"`
		}
		if err := json.Unmarshal(r.Entry, &e); err != nil {
			t.Fatal(err)
		}
		if e.Kind != "metering" || e.Seq != r.Index+1 || len(e.Accepted) != 0 {
			t.Fatalf("batch %s: entry %+v", r.Batch, e)
		}
		// The entry commits the aggregate batch: its sums and the root of
		// exactly the receipted rows.
		b := entryPayload(t, e.JWS)
		rowsRoot, count, err := l.RowsRootOf(ctx, c.ContractID, meter.RowRange{AfterSeq: r.AfterSeq, LastSeq: r.LastSeq})
		if err != nil {
			t.Fatal(err)
		}
		if b.Rows == nil || b.Rows.Count != 10 || count != 10 || !bytes.Equal(b.Rows.Root, rowsRoot) || b.Rows.Ledger != l.ID() {
			t.Fatalf("batch %s: entry's rows %+v, want the 10 rows (%d, %d] with root %x", r.Batch, b.Rows, r.AfterSeq, r.LastSeq, rowsRoot)
		}
		rows += r.LastSeq - r.AfterSeq
	}
	if rows != 30 {
		t.Fatalf("receipts cover %d rows, want 30", rows)
	}
	// The log's later checkpoint extends the receipted one: no alarm, and
	// the checked checkpoint moves on.
	if err := sy.CheckLog(ctx); err != nil {
		t.Fatal(err)
	}
	if d := l.DisputeStatus(c.ContractID); d.Batches != 0 {
		t.Fatalf("honest log check disputed: %+v", d)
	}
}

// A receipt that does not prove the batch is refused: not stored, the
// batch disputed (error log, counter, status). The registry took the
// batch, so the rows are acknowledged all the same.
func TestBadReceiptRefused(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		tamper func(r, first *contract.MeteringResponse)
		want   string
	}{
		{"no receipt", func(r, first *contract.MeteringResponse) { r.Receipt = nil }, "no metering receipt"},
		{"bad signature", func(r, first *contract.MeteringResponse) {
			cp := []byte(r.Receipt.Checkpoint)
			i := bytes.LastIndexByte(cp[:len(cp)-1], '\n')
			sig, _ := base64.StdEncoding.DecodeString(string(cp[bytes.LastIndexByte(cp[:i], ' ')+1 : i]))
			sig[len(sig)-1] ^= 1
			r.Receipt.Checkpoint = string(cp[:bytes.LastIndexByte(cp[:i], ' ')+1]) + base64.StdEncoding.EncodeToString(sig) + "\n"
		}, "bad checkpoint"},
		{"wrong proof", func(r, first *contract.MeteringResponse) { r.Receipt.Inclusion[0][0] ^= 1 }, "not included"},
		{"another entry", func(r, first *contract.MeteringResponse) {
			var e contract.Entry
			json.Unmarshal(r.Receipt.Entry, &e)
			e.Accepted = append(e.Accepted, "forged-999")
			r.Receipt.Entry, _ = json.Marshal(e)
			r.Receipt.Leaf = contract.LeafHash(r.Receipt.Entry)
		}, "not included"},
		{"leaf of another entry", func(r, first *contract.MeteringResponse) {
			r.Receipt.Entry = bytes.Replace(r.Receipt.Entry, []byte(`"kind"`), []byte(` "kind"`), 1)
		}, "not the hash"},
		{"entry without the batch", func(r, first *contract.MeteringResponse) {
			// A registry committing something else than the batch sent: its
			// own receipt, whole and valid, of the previous entry.
			r.Receipt, r.Seq = first.Receipt, first.Seq
		}, "does not carry the batch sent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := startTamperingRegistry(t)
			c := tr.h.CreateContract(t, newContract(t, "did:example:bad-receipt"))
			l := openLedger(t, filepath.Join(t.TempDir(), "ledger.db"), c.ContractID)
			var logs syncedLog
			sy := receiptSyncer(t, tr, l, &logs)
			// A first entry: the proof of the next is not empty.
			var first contract.MeteringResponse
			tr.setMetering(func(r *contract.MeteringResponse) { first = *r })
			syncRows(t, l, sy, c.ContractID, 0, 10)
			tr.setMetering(func(r *contract.MeteringResponse) { tc.tamper(r, &first) })
			syncRows(t, l, sy, c.ContractID, 10, 10)
			rs, err := l.Receipts(ctx, c.ContractID)
			if err != nil {
				t.Fatal(err)
			}
			if len(rs) != 1 {
				t.Errorf("%d receipts stored, want only the good one", len(rs))
			}
			d := l.DisputeStatus(c.ContractID)
			if d.Batches != 1 || l.Stats().Disputed != 1 || !strings.Contains(d.Detail, "metering receipt refused") || !strings.Contains(d.Detail, tc.want) {
				t.Errorf("disputes %+v (counter %d), want 1 naming %q", d, l.Stats().Disputed, tc.want)
			}
			if !strings.Contains(logs.String(), "level=ERROR") {
				t.Errorf("no error logged:\n%s", logs.String())
			}
			if n := l.OutboxDepth(c.ContractID); n != 0 {
				t.Errorf("outbox %d after the registry took the batch, want 0", n)
			}
		})
	}
}

// A registry that drops a receipted batch from its log (it serves a
// checkpoint, signed with its key, of the log without that entry) is
// caught when the sidecar follows the log: the alarm names the batch.
func TestLogDroppingReceiptedBatchAlarms(t *testing.T) {
	ctx := context.Background()
	tr := startTamperingRegistry(t)
	c := tr.h.CreateContract(t, newContract(t, "did:example:dropped"))
	l := openLedger(t, filepath.Join(t.TempDir(), "ledger.db"), c.ContractID)
	var logs syncedLog
	sy := receiptSyncer(t, tr, l, &logs)
	for i := range 3 {
		syncRows(t, l, sy, c.ContractID, i*10, 10)
	}
	rs, err := l.Receipts(ctx, c.ContractID)
	if err != nil || len(rs) != 3 {
		t.Fatalf("receipts: %d, %v", len(rs), err)
	}
	if err := sy.CheckLog(ctx); err != nil {
		t.Fatal(err)
	}
	if d := l.DisputeStatus(c.ContractID); d.Batches != 0 {
		t.Fatalf("honest log: %+v", d)
	}

	dropped := rs[1]
	tr.dropEntry(t, c, dropped.Seq())
	if err := sy.CheckLog(ctx); err != nil {
		t.Fatal(err)
	}
	d := l.DisputeStatus(c.ContractID)
	if d.Batches != 1 || l.Stats().Disputed != 1 || !strings.Contains(d.Detail, dropped.Batch) {
		t.Fatalf("after the log dropped batch %s: disputes %+v, counter %d; want 1 naming it", dropped.Batch, d, l.Stats().Disputed)
	}
	if strings.Contains(d.Detail, rs[0].Batch) {
		t.Errorf("the alarm names batch %s, which the forged checkpoint still includes: %s", rs[0].Batch, d.Detail)
	}
	if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "dropped or rewrote") {
		t.Errorf("no error logged:\n%s", logs.String())
	}
	// The checked checkpoint stays the good one: the same lie checked again
	// is the same alarm, and the next batch's receipt (from the real log)
	// is accepted against it.
	if err := sy.CheckLog(ctx); err != nil {
		t.Fatal(err)
	}
	if d := l.DisputeStatus(c.ContractID); d.Batches != 1 {
		t.Errorf("the same forged checkpoint checked twice: %d disputes, want 1", d.Batches)
	}
	cpv, err := verify.NewCheckpointVerifier(c.Log.Origin, c.Log.CheckpointKey)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := l.LogCheckpoint(ctx, c.ContractID)
	if err != nil {
		t.Fatal(err)
	}
	checked, err := cpv.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	realRaw, err := tr.h.Client.Checkpoint(ctx, c.ContractID)
	if err != nil {
		t.Fatal(err)
	}
	real, err := cpv.Parse(realRaw)
	if err != nil {
		t.Fatal(err)
	}
	if checked.Size != real.Size || !bytes.Equal(checked.Hash, real.Hash) {
		t.Errorf("checked checkpoint is size %d root %x after the alarm, want the real log's %d %x", checked.Size, checked.Hash, real.Size, real.Hash)
	}
	// The registry stops lying: the next batch's receipt checks against
	// the checkpoint kept.
	tr.mu.Lock()
	tr.fork = nil
	tr.mu.Unlock()
	syncRows(t, l, sy, c.ContractID, 30, 10)
	if rs, err := l.Receipts(ctx, c.ContractID); err != nil || len(rs) != 4 {
		t.Errorf("after the alarm, the next batch: %d receipts (%v), want 4", len(rs), err)
	}
}

// Reconcile agrees with an honest registry, and names the batch a
// registry dropped from its log (with the later ones its rewrite moved).
func TestReconcileNamesDroppedBatch(t *testing.T) {
	ctx := context.Background()
	tr := startTamperingRegistry(t)
	c := tr.h.CreateContract(t, newContract(t, "did:example:reconciled"))
	l := openLedger(t, filepath.Join(t.TempDir(), "ledger.db"), c.ContractID)
	var logs syncedLog
	sy := receiptSyncer(t, tr, l, &logs)
	for i := range 3 {
		syncRows(t, l, sy, c.ContractID, i*10, 10)
	}
	client, err := contract.NewClient(tr.url)
	if err != nil {
		t.Fatal(err)
	}
	res, err := meter.Reconcile(ctx, l, client, c.ContractID)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Findings) != 0 || res.Receipts != 3 || res.LedgerEvents != 30 || res.RegistryEvents != 30 || res.Ledger != res.Registry {
		t.Fatalf("honest registry: %+v", res)
	}
	rs, _ := l.Receipts(ctx, c.ContractID)
	dropped := rs[1]
	tr.dropEntry(t, c, dropped.Seq())
	res, err = meter.Reconcile(ctx, l, client, c.ContractID)
	if err != nil {
		t.Fatal(err)
	}
	var log, missing bool
	for _, f := range res.Findings {
		switch {
		case f.Kind == meter.FindingLog:
			log = true
		case f.Batch == dropped.Batch && f.Kind == meter.FindingMissing:
			missing = true
		case f.Batch == rs[0].Batch:
			t.Errorf("batch %s, which the rewritten log still holds, named: %+v", rs[0].Batch, f)
		}
	}
	if !log || !missing {
		t.Errorf("after the log dropped batch %s: findings %+v; want the log and the batch named", dropped.Batch, res.Findings)
	}
}

package registry_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera/api"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/testenv"
	"github.com/provgate/provgate/registry"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

// tilesLog starts a registry and fills a contract's log with the terms
// entry and n-1 contributions. The checkpoint loop is slowed down so
// that only appends move the checkpoint.
func tilesLog(t *testing.T, n int, opts ...registrytest.Option) (*registrytest.Harness, *contract.Contract, *registrytest.Contributor) {
	t.Helper()
	opts = append(opts, registrytest.WithConfig(func(c *registry.Config) {
		c.SyncNormalUnsafe = true
		c.CheckpointInterval = time.Hour
	}))
	h := registrytest.Start(t, opts...)
	alice := h.NewContributor(t, "did:example:alice")
	c := h.CreateContract(t, registrytest.NewContract("did:example:tiles", "bucket", alice))
	attest(t, c, alice, 1, n-1)
	return h, c, alice
}

func attest(t *testing.T, c *contract.Contract, alice *registrytest.Contributor, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		name := fmt.Sprintf("obj/%04d.txt", i)
		alice.Attest(t, c.ContractID, registrytest.Object(name, []byte(name)))
	}
}

func get(t *testing.T, url string) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// tlogTiles is golang.org/x/mod/sumdb/tlog's view of a tlog-tiles log
// over HTTP: an independent tiles client (tlog's tile paths carry the
// height, "tile/8/L/N"; tlog-tiles leave it out).
type tlogTiles struct {
	t    *testing.T
	base string
}

func (r tlogTiles) Height() int { return 8 }

func (r tlogTiles) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, tile := range tiles {
		p := "tile/" + strings.TrimPrefix(tile.Path(), "tile/8/")
		resp, b := get(r.t, r.base+p)
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("GET %s: %s", p, resp.Status)
		}
		out[i] = b
	}
	return out, nil
}

func (r tlogTiles) SaveTiles([]tlog.Tile, [][]byte) {}

// parseNote reads a checkpoint's size and root hash without our code.
func parseNote(t *testing.T, note []byte) (int64, tlog.Hash) {
	t.Helper()
	lines := strings.SplitN(string(note), "\n", 4)
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		t.Fatalf("checkpoint %q: %v", note, err)
	}
	root, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(root) != 32 {
		t.Fatalf("checkpoint %q: root: %v", note, err)
	}
	return size, tlog.Hash(root)
}

// checkIndependently verifies the tiles log at base (ending in "/") with
// tlog (tiles authenticated against the checkpoint's root, a
// consistency proof from an older checkpoint) and tessera's bundle
// parser: every bundle entry is the leaf the tree hashes. It returns the
// entries.
func checkIndependently(t *testing.T, base string, old []byte) [][]byte {
	t.Helper()
	resp, note := get(t, base+"checkpoint")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET checkpoint: %s", resp.Status)
	}
	size, root := parseNote(t, note)
	thr := tlog.TileHashReader(tlog.Tree{N: size, Hash: root}, tlogTiles{t, base})
	idx := make([]int64, size)
	for i := range idx {
		idx[i] = tlog.StoredHashIndex(0, int64(i))
	}
	leaves, err := thr.ReadHashes(idx)
	if err != nil {
		t.Fatalf("tlog: tiles do not authenticate against the checkpoint: %v", err)
	}
	var entries [][]byte
	for n := int64(0); n*256 < size; n++ {
		w := min(size-n*256, 256)
		p := "tile/entries/" + strings.TrimPrefix(tlog.Tile{H: 8, L: -1, N: n, W: int(w)}.Path(), "tile/8/data/")
		resp, b := get(t, base+p)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s", p, resp.Status)
		}
		var bundle api.EntryBundle
		if err := bundle.UnmarshalText(b); err != nil {
			t.Fatalf("tessera: %s: %v", p, err)
		}
		if int64(len(bundle.Entries)) != w {
			t.Fatalf("%s holds %d entries, want %d", p, len(bundle.Entries), w)
		}
		entries = append(entries, bundle.Entries...)
	}
	for i, e := range entries {
		if got := rfc6962.DefaultHasher.HashLeaf(e); !bytes.Equal(got, leaves[i][:]) {
			t.Fatalf("entry %d does not hash to leaf %d", i+1, i)
		}
	}
	if old != nil {
		oldSize, oldRoot := parseNote(t, old)
		p, err := tlog.ProveTree(size, oldSize, thr)
		if err != nil {
			t.Fatal(err)
		}
		if err := tlog.CheckTree(p, size, root, oldSize, oldRoot); err != nil {
			t.Fatalf("tlog: checkpoint %d is not consistent with %d: %v", size, oldSize, err)
		}
	}
	return entries
}

// TestTilesServedByRegistry: the registry serves each log as tlog-tiles
// that an independent client (x/mod's tlog, tessera's bundle parser)
// authenticates against the signed checkpoint, with the exact entry
// bytes of the dynamic endpoint, and cache headers by mutability.
func TestTilesServedByRegistry(t *testing.T) {
	h, c, alice := tilesLog(t, 100)
	ctx := context.Background()
	old, err := h.Client.Checkpoint(ctx, c.ContractID)
	if err != nil {
		t.Fatal(err)
	}
	attest(t, c, alice, 100, 200) // 300 entries: a full tile, a partial one, a level-1 tile
	base := h.URL + "/logs/" + c.ContractID + "/"

	resp, note := get(t, base+"checkpoint")
	want, err := h.Client.Checkpoint(ctx, c.ContractID)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(note, want) {
		t.Fatalf("tiles checkpoint = %q, want the registry's %q", note, want)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != registry.CacheCheckpoint {
		t.Errorf("checkpoint Cache-Control = %q", cc)
	}
	entries := checkIndependently(t, base, old)
	page, err := h.Client.Events(ctx, c.ContractID, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 300 || len(page.Entries) != 300 {
		t.Fatalf("%d entries in bundles, %d from the events endpoint, want 300", len(entries), len(page.Entries))
	}
	for i, we := range page.Entries {
		if !bytes.Equal(we.Entry, entries[i]) {
			t.Fatalf("bundle entry %d differs from the events endpoint's", i+1)
		}
	}
	for _, tc := range []struct {
		path, cacheControl string
		status             int
	}{
		{"tile/0/000", registry.CacheImmutable, 200},
		{"tile/entries/000", registry.CacheImmutable, 200},
		{"tile/0/001.p/44", registry.CachePartial, 200},
		{"tile/0/001.p/20", registry.CachePartial, 200}, // an older partial tile stays readable
		{"tile/1/000.p/1", registry.CachePartial, 200},
		{"tile/0/001.p/45", "", 404}, // beyond the log
		{"tile/0/001", "", 404},
		{"tile/0/002.p/1", "", 404},
		{"tile/0/1", "", 404}, // not canonical
		{"tile/0/x000/001", "", 404},
		{"tile/entries/001.p/45", "", 404},
		{"tile/64/000", "", 404},
		{"tiles", "", 404},
	} {
		resp, body := get(t, base+tc.path)
		if resp.StatusCode != tc.status {
			t.Errorf("GET %s = %s, want %d", tc.path, resp.Status, tc.status)
			continue
		}
		if tc.status == 200 && resp.Header.Get("Cache-Control") != tc.cacheControl {
			t.Errorf("GET %s: Cache-Control %q, want %q", tc.path, resp.Header.Get("Cache-Control"), tc.cacheControl)
		}
		if tc.status == 404 && !strings.Contains(string(body), `"not_found"`) {
			t.Errorf("GET %s: body %s", tc.path, body)
		}
	}
	if resp, _ := get(t, h.URL+"/logs/did:example:nope/checkpoint"); resp.StatusCode != 404 {
		t.Errorf("unknown contract: %s", resp.Status)
	}
}

// publicBucket makes a bucket whose objects anyone may read (what a CDN
// or a public R2 bucket serves).
func publicBucket(t *testing.T, s *testenv.MinIOServer) string {
	t.Helper()
	b := s.Bucket(t)
	policy := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":["*"]},"Action":["s3:GetObject"],"Resource":["arn:aws:s3:::` + b + `/*"]}]}`
	if err := s.Client(t).SetBucketPolicy(context.Background(), b, policy); err != nil {
		t.Fatal(err)
	}
	return b
}

func publish(t *testing.T, h *registrytest.Harness, mc *minio.Client, bucket string) registry.PublishReport {
	t.Helper()
	reps, err := registry.PublishTiles(context.Background(), registry.PublishConfig{DBPath: h.DBPath, S3: mc, Bucket: bucket, Prefix: "logs"})
	if err != nil {
		t.Fatal(err)
	}
	if len(reps) != 1 {
		t.Fatalf("published %d logs, want 1", len(reps))
	}
	return reps[0]
}

// TestPublishTilesIncremental: publish-tiles writes the log to a bucket
// in the layout the registry serves; a second run uploads nothing, and
// after an append only the tiles that grew and the checkpoint. An
// independent client verifies what the bucket serves.
func TestPublishTilesIncremental(t *testing.T) {
	s := testenv.MinIO(t)
	mc := s.Client(t)
	bucket := publicBucket(t, s)
	h, c, alice := tilesLog(t, 300)

	rep := publish(t, h, mc, bucket)
	want := registry.PublishReport{Contract: c.ContractID, From: 0, Size: 300, Tiles: 3, Bundles: 2, Checkpoint: true}
	if rep != want {
		t.Fatalf("first publish = %+v, want %+v", rep, want)
	}
	base := s.URL() + "/" + bucket + "/logs/" + c.ContractID + "/"
	old, err := h.Client.Checkpoint(context.Background(), c.ContractID)
	if err != nil {
		t.Fatal(err)
	}
	checkIndependently(t, base, nil)

	if rep = publish(t, h, mc, bucket); rep.Checkpoint || rep.Tiles != 0 || rep.Bundles != 0 {
		t.Fatalf("second publish = %+v, want nothing uploaded", rep)
	}
	st, err := mc.StatObject(context.Background(), bucket, "logs/"+c.ContractID+"/tile/0/000", minio.StatObjectOptions{})
	if err != nil || st.Metadata.Get("Cache-Control") != registry.CacheImmutable {
		t.Fatalf("full tile in the bucket: %v, Cache-Control %q", err, st.Metadata.Get("Cache-Control"))
	}

	if registry.IsPostgresURL(h.DBPath) {
		return // the rollback below snapshots a SQLite file
	}
	snap := snapshotDB(t, h.DBPath) // the log at size 300

	attest(t, c, alice, 300, 1)
	rep = publish(t, h, mc, bucket)
	// Level 0: tile 1 grew to 45; level 1 still holds one node.
	want = registry.PublishReport{Contract: c.ContractID, From: 300, Size: 301, Tiles: 1, Bundles: 1, Checkpoint: true}
	if rep != want {
		t.Fatalf("publish after an append = %+v, want %+v", rep, want)
	}
	checkIndependently(t, base, old)

	// A database behind the bucket (a lagging replica, a restored backup)
	// does not roll the bucket back.
	_, err = registry.PublishTiles(context.Background(), registry.PublishConfig{DBPath: snap, S3: mc, Bucket: bucket, Prefix: "logs"})
	if err == nil || !strings.Contains(err.Error(), "newer than the database's 300") {
		t.Fatalf("publishing an older log over a newer one: %v, want a refusal", err)
	}
	if _, note := get(t, base+"checkpoint"); !bytes.Contains(note, []byte("\n301\n")) {
		t.Fatalf("the bucket's checkpoint changed: %q", note)
	}
}

// snapshotDB copies a live SQLite database.
func snapshotDB(t *testing.T, path string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "snapshot.db")
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`VACUUM INTO ?`, dst); err != nil {
		t.Fatal(err)
	}
	return dst
}

// tileFollower is a follower of c that reads the log from the tiles at
// logURL, with a fresh state in dir.
func tileFollower(t *testing.T, c *contract.Contract, logURL, dir string, reg ...*prometheus.Registry) *verify.Follower {
	t.Helper()
	tf, err := contract.NewTileFetcher(logURL, c.ContractID, nil)
	if err != nil {
		t.Fatal(err)
	}
	ts, err := verify.NewTileSource(c, tf)
	if err != nil {
		t.Fatal(err)
	}
	store, err := verify.OpenStore(dir + "/" + verify.StateFile)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	cfg := verify.FollowerConfig{Contract: c, Source: ts, Store: store}
	if len(reg) > 0 {
		cfg.Metrics = verify.NewMetrics(reg[0])
	}
	f, err := verify.NewFollower(context.Background(), cfg, verify.WithTrustOnFirstUse())
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// counter is the value of the metric name whose label is value.
func counter(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

// dropLast re-encodes a bundle of w entries without its last one.
func dropLast(t *testing.T, w int) func([]byte) []byte {
	return func(b []byte) []byte {
		entries, err := verify.ParseEntryBundle(b, w)
		if err != nil {
			t.Fatal(err)
		}
		var out []byte
		for _, e := range entries[:w-1] {
			out = append(out, byte(len(e)>>8), byte(len(e)))
			out = append(out, e...)
		}
		return out
	}
}

// TestFollowerRefusesTamperedTiles: a follower reading a bucket's tiles
// refuses, with a clear error, tiles and bundles that are not the signed
// log, a checkpoint signed by another key and a rolled-back checkpoint,
// and serves nothing from them.
func TestFollowerRefusesTamperedTiles(t *testing.T) {
	s := testenv.MinIO(t)
	mc := s.Client(t)
	bucket := publicBucket(t, s)
	h, c, alice := tilesLog(t, 280)
	publish(t, h, mc, bucket)
	ctx := context.Background()
	logURL := s.URL() + "/" + bucket + "/logs"
	prefix := "logs/" + c.ContractID + "/"

	f := tileFollower(t, c, logURL, t.TempDir())
	if err := f.Sync(ctx); err != nil {
		t.Fatalf("sync from untampered tiles: %v", err)
	}
	if _, err := f.Lookup("obj/0279.txt"); err != nil {
		t.Fatalf("Lookup after a sync from tiles: %v", err)
	}

	read := func(key string) []byte {
		o, err := mc.GetObject(ctx, bucket, prefix+key, minio.GetObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer o.Close()
		b, err := io.ReadAll(o)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	write := func(key string, b []byte) {
		if _, err := mc.PutObject(ctx, bucket, prefix+key, bytes.NewReader(b), int64(len(b)), minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	flip := func(b []byte, i int) []byte {
		b = bytes.Clone(b)
		b[i] ^= 0x01
		return b
	}
	cp := read("checkpoint")
	otherSKey, _, err := verify.GenerateCheckpointKey(strings.SplitN(c.Log.CheckpointKey, "+", 2)[0])
	if err != nil {
		t.Fatal(err)
	}
	signer, err := verify.NewCheckpointSigner(otherSKey)
	if err != nil {
		t.Fatal(err)
	}
	size, root := parseNote(t, cp)
	forged, err := signer.Sign(c.Log.Origin, uint64(size), root[:])
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, key string
		tamper    func([]byte) []byte
		want      error
		evidence  string
	}{
		{"a changed hash in a level-0 tile", "tile/0/000", func(b []byte) []byte { return flip(b, 5*32+7) }, verify.ErrTiles, "hash 5 of tile/0/000"},
		{"a changed hash in a level-1 tile", "tile/1/000.p/1", func(b []byte) []byte { return flip(b, 0) }, verify.ErrTiles, "tile/entries/001.p/24"},
		{"a changed entry in a bundle", "tile/entries/000", func(b []byte) []byte { return flip(b, len(b)-3) }, verify.ErrTiles, "entry 256 in tile/entries/000"},
		{"a bundle with an entry missing", "tile/entries/001.p/24", dropLast(t, 24), verify.ErrTiles, "tile/entries/001.p/24"},
		{"a checkpoint signed by another key", "checkpoint", func([]byte) []byte { return forged }, verify.ErrCheckpoint, "verif"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			orig := read(tc.key)
			write(tc.key, tc.tamper(orig))
			defer write(tc.key, orig)
			reg := prometheus.NewRegistry()
			f := tileFollower(t, c, logURL, t.TempDir(), reg)
			err := f.Sync(ctx)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.evidence) {
				t.Fatalf("Sync = %v, want %v naming %q", err, tc.want, tc.evidence)
			}
			t.Logf("refused: %v", err)
			reason := verify.Reason(tc.want)
			if n := counter(t, reg, "provgate_log_refusals_total", "reason", reason); n != 1 {
				t.Errorf("provgate_log_refusals_total{reason=%q} = %v, want 1", reason, n)
			}
			if err := f.Ready(); !errors.Is(err, verify.ErrNotVerified) {
				t.Fatalf("Ready = %v, want not verified", err)
			}
			if _, err := f.Lookup("obj/0001.txt"); err == nil {
				t.Fatal("Lookup served from tampered tiles")
			}
		})
	}

	t.Run("a rolled-back checkpoint", func(t *testing.T) {
		attest(t, c, alice, 280, 3)
		publish(t, h, mc, bucket)
		if err := f.Sync(ctx); err != nil {
			t.Fatalf("sync to the new size: %v", err)
		}
		if _, err := f.Lookup("obj/0282.txt"); err != nil {
			t.Fatal(err)
		}
		write("checkpoint", cp) // validly signed, but older than what f trusts
		err := f.Sync(ctx)
		if !errors.Is(err, verify.ErrQuarantined) || !errors.Is(err, verify.ErrRollback) {
			t.Fatalf("Sync = %v, want a quarantine for a rollback", err)
		}
		if _, err := f.Lookup("obj/0001.txt"); !errors.Is(err, verify.ErrQuarantined) {
			t.Fatalf("Lookup = %v, want quarantined", err)
		}
	})
}

// faultyS3 is a loopback reverse proxy to MinIO that refuses uploads whose
// key contains fail: an upload fault MinIO itself will not produce.
func faultyS3(t *testing.T, target, fail string) *minio.Client {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	rp := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(u)
		r.Out.Host = r.In.Host // what the client signed
	}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && strings.Contains(r.URL.Path, fail) {
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusForbidden)
			io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>refused by the test</Message></Error>`)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	mc, err := minio.New(strings.TrimPrefix(srv.URL, "http://"), &minio.Options{
		Creds: credentials.NewStaticV4(testenv.MinIOAccessKey, testenv.MinIOSecretKey, ""), Region: testenv.MinIORegion})
	if err != nil {
		t.Fatal(err)
	}
	return mc
}

// TestPublishTilesCheckpointLast: when a tile fails to upload, the
// bucket keeps its old checkpoint (whose tiles are all there), so
// followers never see a checkpoint whose tiles are missing; the next run
// completes the publication.
func TestPublishTilesCheckpointLast(t *testing.T) {
	s := testenv.MinIO(t)
	mc := s.Client(t)
	bucket := publicBucket(t, s)
	h, c, alice := tilesLog(t, 250)
	publish(t, h, mc, bucket)
	base := s.URL() + "/" + bucket + "/logs/" + c.ContractID + "/"
	_, before := get(t, base+"checkpoint")

	attest(t, c, alice, 250, 20) // bundle 0 fills, bundle 1 starts
	_, err := registry.PublishTiles(context.Background(), registry.PublishConfig{DBPath: h.DBPath, S3: faultyS3(t, s.URL(), "/tile/entries/001"),
		Bucket: bucket, Prefix: "logs"})
	if err == nil || !strings.Contains(err.Error(), "tile/entries/001") {
		t.Fatalf("publish with a failing upload = %v, want its error", err)
	}
	if _, after := get(t, base+"checkpoint"); !bytes.Equal(after, before) {
		t.Fatalf("the checkpoint was replaced although a tile it commits to is missing:\n%s", after)
	}
	checkIndependently(t, base, nil)

	rep := publish(t, h, mc, bucket)
	if !rep.Checkpoint || rep.Size != 270 || rep.From != 250 {
		t.Fatalf("publish after the fault = %+v", rep)
	}
	checkIndependently(t, base, before)
}

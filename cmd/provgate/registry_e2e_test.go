package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/klauspost/compress/zstd"
	"github.com/minio/minio-go/v7"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/testenv"
)

// cli runs provgate in-process and returns its exit code and output.
func cli(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	code = run(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

func mustCLI(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errs := cli(t, args...)
	if code != 0 {
		t.Fatalf("provgate %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

// startRegistryCLI runs `provgate registry` in-process until the test ends.
func startRegistryCLI(t *testing.T, args ...string) string {
	t.Helper()
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	ctx, cancel := context.WithCancel(context.Background())
	logs := &testenv.SyncBuffer{}
	done := make(chan int)
	go func() {
		done <- run(ctx, append([]string{"registry", "--listen", fmt.Sprintf("127.0.0.1:%d", port)}, args...), io.Discard, logs)
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("registry exited %d: %s", code, logs.String())
		}
	})
	client, err := contract.NewClient(url)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		rctx, rcancel := context.WithTimeout(context.Background(), time.Second)
		_, err := client.JWKS(rctx, client.RegistryJWKSURL())
		rcancel()
		if err == nil {
			return url
		}
		if time.Now().After(deadline) {
			t.Fatalf("registry not ready: %v\n%s", err, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRegistryEndToEnd is issue 2's acceptance path: keygen, registry,
// contract create, contribute 100 files to MinIO, verify log passes; then
// one byte of one stored entry is changed in the registry's database and
// verify log fails naming that entry.
func TestRegistryEndToEnd(t *testing.T) {
	mio := testenv.MinIO(t)
	bucket := mio.Bucket(t)
	t.Setenv("AWS_ACCESS_KEY_ID", testenv.MinIOAccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", testenv.MinIOSecretKey)
	t.Setenv("AWS_REGION", testenv.MinIORegion)
	dir := t.TempDir()

	// keygen: a private JWK with mode 0600, its public half on stdout.
	keyFile := filepath.Join(dir, "alice.jwk")
	var pub struct {
		JWK        jose.JSONWebKey `json:"jwk"`
		Thumbprint string          `json:"thumbprint"`
	}
	if err := json.Unmarshal([]byte(mustCLI(t, "keygen", "--out", keyFile)), &pub); err != nil {
		t.Fatalf("keygen output: %v", err)
	}
	if st, err := os.Stat(keyFile); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, mode %v", err, st.Mode())
	}
	if !pub.JWK.IsPublic() || pub.Thumbprint == "" {
		t.Fatalf("keygen printed %+v", pub)
	}
	if code, _, _ := cli(t, "keygen", "--out", keyFile); code == 0 {
		t.Fatal("keygen overwrote an existing key")
	}

	db := filepath.Join(dir, "registry.db")
	adminFile := filepath.Join(dir, "admin-token")
	url := startRegistryCLI(t, "--db", db, "--key", filepath.Join(dir, "registry.jwk"),
		"--admin-token-file", adminFile, "--s3-endpoint", mio.URL(), "--name", "e2e.test")

	const id = "did:example:dataset-123"
	spec := contract.Contract{
		ContractID: id, Version: "2026-01-15", License: "cc-by-4.0",
		Pricing:      contract.Pricing{Unit: contract.UnitSample, PriceUSD: 0.0005},
		Usage:        contract.Usage{Purposes: []string{"training-for-sentiment-model"}, RetentionDays: 30, MaxSamples: 1000000},
		Contributors: []contract.Contributor{{ID: "did:example:contributor-321", JWKS: &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{pub.JWK}}}},
		Origin:       contract.Origin{Bucket: bucket, Prefix: "dataset-123/"},
	}
	b, _ := json.Marshal(spec)
	contractFile := filepath.Join(dir, "contract.json")
	os.WriteFile(contractFile, b, 0o644)
	var created contract.Contract
	json.Unmarshal([]byte(mustCLI(t, "contract", "create", "--registry", url, "--admin-token-file", adminFile, "--file", contractFile)), &created)
	if created.Log.Origin != "e2e.test/log/"+id || created.Log.CheckpointKey == "" {
		t.Fatalf("created contract log = %+v", created.Log)
	}

	data := filepath.Join(dir, "data")
	for i := range 100 {
		p := filepath.Join(data, fmt.Sprintf("shard-%d", i%4), fmt.Sprintf("sample-%03d.txt", i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, bytes.Repeat([]byte(fmt.Sprintf("sample %d ", i)), 50+i), 0o644)
	}
	contribute := []string{"contribute", "--registry", url, "--contract", id, "--key", keyFile,
		"--s3-endpoint", mio.URL(), "--bucket", bucket, "--encoding", "zstd", "--batch-size", "1", data}
	if out := mustCLI(t, contribute...); !strings.Contains(out, "contributed 100 objects") {
		t.Fatalf("contribute: %s", out)
	}
	// Re-running is idempotent: nothing new is uploaded or appended.
	if out := mustCLI(t, contribute...); !strings.Contains(out, "contributed 0 objects") || !strings.Contains(out, "100 already in the log") {
		t.Fatalf("contribute again: %s", out)
	}
	// The stored object is the zstd encoding of the file.
	obj, err := mio.Client(t).GetObject(context.Background(), bucket, "dataset-123/shard-1/sample-005.txt", minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	zr, err := zstd.NewReader(obj)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(zr)
	zr.Close()
	obj.Close()
	if want, _ := os.ReadFile(filepath.Join(data, "shard-1", "sample-005.txt")); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("stored object decodes to %d bytes (%v), want the file's %d", len(got), err, len(want))
	}

	trusted := filepath.Join(dir, "trusted.checkpoint")
	verifyLog := []string{"verify", "log", "--registry", url, "--contract", id, "--trusted-checkpoint", trusted}
	if out := mustCLI(t, verifyLog...); !strings.Contains(out, "OK "+id+": 101 entries") {
		t.Fatalf("verify log: %s", out)
	}
	if _, err := os.Stat(trusted); err != nil {
		t.Fatalf("trusted checkpoint not written: %v", err)
	}
	if out := mustCLI(t, verifyLog...); !strings.Contains(out, "consistent with the trusted checkpoint of size 101") {
		t.Fatalf("verify log again: %s", out)
	}

	// Tamper with entry 37 in the database, two ways: inside the JWS (the
	// signature no longer verifies) and in the time field (the entry still
	// verifies, but no longer hashes to what the checkpoint commits to).
	sqldb, err := sql.Open("sqlite3", db)
	if err != nil {
		t.Fatal(err)
	}
	defer sqldb.Close()
	var orig []byte
	if err := sqldb.QueryRow(`SELECT body FROM entries WHERE contract = ? AND seq = 37`, id).Scan(&orig); err != nil {
		t.Fatal(err)
	}
	for name, at := range map[string]int{
		"jws byte":  bytes.Index(orig, []byte(`"jws":"`)) + 40,
		"time byte": bytes.Index(orig, []byte(`"time":"`)) + len(`"time":"2026-11-2`),
	} {
		t.Run(name, func(t *testing.T) {
			bad := bytes.Clone(orig)
			bad[at] = flipDigitOrLetter(bad[at])
			if _, err := sqldb.Exec(`UPDATE entries SET body = ? WHERE contract = ? AND seq = 37`, bad, id); err != nil {
				t.Fatal(err)
			}
			defer sqldb.Exec(`UPDATE entries SET body = ? WHERE contract = ? AND seq = 37`, orig, id)
			code, out, errs := cli(t, verifyLog...)
			t.Logf("verify log: %s", strings.TrimSpace(errs))
			if code != 1 || !strings.Contains(errs, "entry 37:") {
				t.Fatalf("verify log on a tampered log: exit %d, stdout %q, stderr %q; want exit 1 naming entry 37", code, out, errs)
			}
		})
	}
	if out := mustCLI(t, verifyLog...); !strings.Contains(out, "OK") {
		t.Fatalf("verify log after restoring: %s", out)
	}
}

// flipDigitOrLetter changes a byte into another of the same class, so the
// entry stays well-formed JSON and only its meaning changes.
func flipDigitOrLetter(c byte) byte {
	switch {
	case c >= '0' && c <= '8', c >= 'a' && c <= 'y', c >= 'A' && c <= 'Y':
		return c + 1
	case c == '9':
		return '0'
	default:
		return c - 1
	}
}

package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/testenv"
	"github.com/provgate/provgate/registry/registrytest"
	"github.com/provgate/provgate/verify"
)

// TestContributeBatches: many files go into the log as batch attestations
// of --batch-size objects; progress on a non-terminal is plain lines (no
// carriage returns); a re-run appends nothing; verify log checks the
// batches' manifests.
func TestContributeBatches(t *testing.T) {
	mio := testenv.MinIO(t)
	bucket := mio.Bucket(t)
	t.Setenv("AWS_ACCESS_KEY_ID", testenv.MinIOAccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", testenv.MinIOSecretKey)
	h := registrytest.Start(t)
	alice := h.NewContributor(t, "did:example:alice")
	c := h.CreateContract(t, registrytest.NewContract("did:example:c1", bucket, alice))
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "alice.jwk")
	verify.SaveKey(keyFile, alice.Key)
	data := filepath.Join(dir, "data")
	os.Mkdir(data, 0o755)
	for i := range 25 {
		os.WriteFile(filepath.Join(data, fmt.Sprintf("f%02d.txt", i)), []byte(fmt.Sprintf("sample %d", i)), 0o644)
	}
	args := []string{"contribute", "--registry", h.URL, "--contract", c.ContractID, "--key", keyFile, "--s3-endpoint", mio.URL(),
		"--batch-size", "10", "--progress-interval", "0s", data}
	code, out, errs := cli(t, args...)
	if code != 0 || !strings.Contains(out, "contributed 25 objects to did:example:c1 in 3 batch attestations") {
		t.Fatalf("contribute: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	if strings.Contains(errs, "\r") || !strings.Contains(errs, "contribute: 25/25 files") || strings.Count(errs, "\n") < 2 {
		t.Fatalf("progress on a non-terminal: %q; want plain lines ending with the total", errs)
	}
	page, err := h.Client.Events(context.Background(), c.ContractID, 0, 100)
	if err != nil || len(page.Entries) != 4 {
		t.Fatalf("log has %d entries (%v), want 4 (the terms and 3 batches)", len(page.Entries), err)
	}
	if out := mustCLI(t, args...); !strings.Contains(out, "contributed 0 objects") || !strings.Contains(out, "25 already in the log") {
		t.Fatalf("contribute again: %s", out)
	}
	if out := mustCLI(t, "verify", "log", "--registry", h.URL, "--contract", c.ContractID, "--trusted-checkpoint", filepath.Join(dir, "cp")); !strings.Contains(out, "OK did:example:c1: 4 entries") {
		t.Fatalf("verify log: %s", out)
	}
}

// TestContributeRetriesALostBatchAppendOnce: the registry appends a batch
// but the answer is lost; contribute retries the same attestation and
// manifest, and the batch is in the log once.
func TestContributeRetriesALostBatchAppendOnce(t *testing.T) {
	mio := testenv.MinIO(t)
	bucket := mio.Bucket(t)
	t.Setenv("AWS_ACCESS_KEY_ID", testenv.MinIOAccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", testenv.MinIOSecretKey)
	h := registrytest.Start(t)
	alice := h.NewContributor(t, "did:example:alice")
	c := h.CreateContract(t, registrytest.NewContract("did:example:c1", bucket, alice))
	target, _ := url.Parse(h.URL)
	var lost atomic.Int32
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.Method == http.MethodPost && strings.HasSuffix(resp.Request.URL.Path, "/batches") && lost.Add(1) <= 1 {
			resp.Body.Close()
			resp.StatusCode = http.StatusServiceUnavailable
			resp.Body = io.NopCloser(strings.NewReader(`{"error":{"code":"unavailable","message":"lost"}}`))
			resp.Header.Del("Content-Length")
		}
		return nil
	}
	front := httptest.NewServer(proxy)
	defer front.Close()
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "alice.jwk")
	verify.SaveKey(keyFile, alice.Key)
	data := filepath.Join(dir, "data")
	os.Mkdir(data, 0o755)
	for i := range 3 {
		os.WriteFile(filepath.Join(data, fmt.Sprintf("f%d", i)), []byte{byte(i)}, 0o644)
	}
	out := mustCLI(t, "contribute", "--registry", front.URL, "--contract", c.ContractID, "--key", keyFile, "--s3-endpoint", mio.URL(), data)
	if !strings.Contains(out, "contributed 3 objects") {
		t.Fatalf("contribute: %s", out)
	}
	page, err := h.Client.Events(context.Background(), c.ContractID, 0, 100)
	if err != nil || len(page.Entries) != 2 {
		t.Fatalf("log has %d entries (%v), want 2 (the terms and one batch)", len(page.Entries), err)
	}
	if e, _ := contract.DecodeEntry(page.Entries[1].Entry); e == nil || !strings.Contains(e.JWS, ".") {
		t.Fatal("entry 2 is not the batch")
	}
}

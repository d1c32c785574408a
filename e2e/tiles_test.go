package e2e_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/provgate/provgate/internal/testenv"
	"github.com/provgate/provgate/registry"
)

// publishTiles runs provgate registry publish-tiles on the registry's
// database into bucket/logs.
func (e *env) publishTiles(t *testing.T, bucket string) string {
	t.Helper()
	cmd := exec.Command(provgateBinary(t), "registry", "publish-tiles", "--db", e.reg.DBPath,
		"--s3-endpoint", e.minio.URL(), "--bucket", bucket, "--prefix", "logs")
	cmd.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID="+testenv.MinIOAccessKey, "AWS_SECRET_ACCESS_KEY="+testenv.MinIOSecretKey,
		"AWS_REGION="+testenv.MinIORegion)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("publish-tiles: %v\n%s", err, out)
	}
	return string(out)
}

// readyz is the sidecar's readiness status code.
func readyz(t *testing.T, base string) int {
	t.Helper()
	resp, err := http.Get(base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// TestServeFromTilesWithRegistryStopped: provgate serve --log-url reads
// the log from tiles in a public-read MinIO bucket. With the registry
// stopped, a sidecar whose checkpoint went stale becomes ready again
// from freshly published tiles (its capability token, fetched while the
// registry was up, is still valid) and serves an object the registry
// logged before it stopped; a rolled-back checkpoint in the bucket is
// refused.
func TestServeFromTilesWithRegistryStopped(t *testing.T) {
	e := newEnv(t, envOpt{regConfig: func(c *registry.Config) { c.CheckpointInterval = 300 * time.Millisecond }})
	ctx := context.Background()
	tiles := e.minio.Bucket(t)
	policy := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":["*"]},"Action":["s3:GetObject"],"Resource":["arn:aws:s3:::` + tiles + `/*"]}]}`
	if err := e.s3.SetBucketPolicy(ctx, tiles, policy); err != nil {
		t.Fatal(err)
	}
	a := []byte("object a")
	e.put("a.txt", a, false)
	if out := e.publishTiles(t, tiles); !strings.Contains(out, "published size 2") {
		t.Fatalf("publish-tiles: %s", out)
	}
	cpKey := "logs/" + e.c.ContractID + "/checkpoint"
	first := readObject(t, e.s3, tiles, cpKey)

	const maxAge = 6 * time.Second
	p := e.startServe(t, "--log-url", e.minio.URL()+"/"+tiles+"/logs", "--poll-interval", "100ms", "--max-checkpoint-age", maxAge.String())
	if code, body := get(t, http.DefaultClient, p.URL, e.c.ContractID, "a.txt", 1, "j"); code != 200 || !bytes.Equal(body, a) {
		t.Fatalf("GET a.txt = %d %q", code, body)
	}

	// Logged, not yet published: the sidecar does not know it.
	b := []byte("object b")
	e.put("b.txt", b, false)
	if code, _ := get(t, http.DefaultClient, p.URL, e.c.ContractID, "b.txt", 1, "j"); code != http.StatusNotFound {
		t.Fatalf("GET b.txt before it is published = %d, want 404", code)
	}
	// No tiles newer than the freshness window: not ready, nothing served.
	waitFor(t, "the published checkpoint to go stale", 2*maxAge, func() bool { return readyz(t, p.URL) == http.StatusServiceUnavailable })
	if code, _ := get(t, http.DefaultClient, p.URL, e.c.ContractID, "a.txt", 1, "j"); code != http.StatusServiceUnavailable {
		t.Fatalf("GET a.txt with a stale checkpoint = %d, want 503", code)
	}

	// The registry stops; its database is published.
	e.front.down.Store(true)
	e.reg.Server.Close()
	if out := e.publishTiles(t, tiles); !strings.Contains(out, "published size") {
		t.Fatalf("publish-tiles: %s", out)
	}
	waitFor(t, "ready from the new tiles", maxAge/2, func() bool { return readyz(t, p.URL) == http.StatusOK })
	if code, body := get(t, http.DefaultClient, p.URL, e.c.ContractID, "b.txt", 1, "j"); code != 200 || !bytes.Equal(body, b) {
		t.Fatalf("GET b.txt from the new tiles = %d %q", code, body)
	}

	// The bucket rolls back to the first checkpoint: refused (stale
	// here, before it is a rollback; a fresh one quarantines, see
	// registry's TestFollowerRefusesTamperedTiles), and nothing is served
	// once the trusted checkpoint ages out.
	if _, err := e.s3.PutObject(ctx, tiles, cpKey, bytes.NewReader(first), int64(len(first)), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the rolled-back checkpoint to be refused", 2*maxAge, func() bool {
		code, _ := get(t, http.DefaultClient, p.URL, e.c.ContractID, "a.txt", 1, "j")
		return code == http.StatusServiceUnavailable
	})
}

func readObject(t *testing.T, mc *minio.Client, bucket, key string) []byte {
	t.Helper()
	o, err := mc.GetObject(context.Background(), bucket, key, minio.GetObjectOptions{})
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

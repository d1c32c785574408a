package e2e_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/provgate/provgate/internal/sidecar"
	"github.com/provgate/provgate/internal/testenv"
	"github.com/provgate/provgate/proxy"
)

// TestServeEndToEnd reads 1,000 objects over two epochs through every face
// of the sidecar — the data endpoint, batch reads, the S3 facade (minio-go
// as the client) and the forward proxy (an HTTPS client trusting the
// exported CA) — checks every byte, and checks that the registry's
// metering totals equal what was served.
func TestServeEndToEnd(t *testing.T) {
	const n = 1000
	e := newEnv(t, envOpt{})
	names := make([]string, n)
	want := map[string][]byte{}
	for i := range n {
		names[i] = fmt.Sprintf("shard-%d/sample-%04d.bin", i%4, i)
		want[names[i]] = randomBytes(t, 512+(i*37)%3000)
		e.put(names[i], want[names[i]], i%2 == 0)
	}
	sc := e.sidecar(nil)
	base, id := sc.URL(), e.c.ContractID
	hc := &http.Client{}
	var served struct {
		sync.Mutex
		count, bytes [3]int64 // by epoch
	}
	count := func(epoch int64, b []byte) {
		served.Lock()
		served.count[epoch]++
		served.bytes[epoch] += int64(len(b))
		served.Unlock()
	}

	// Epoch 1: the data endpoint, 8 loaders in parallel.
	parallel(t, names, 8, func(name string) {
		code, b := get(t, hc, base, id, name, 1, "e2e")
		if code != http.StatusOK || !bytes.Equal(b, want[name]) {
			t.Errorf("epoch 1 %s: status %d, %d bytes (want %d)", name, code, len(b), len(want[name]))
			return
		}
		count(1, b)
	})
	endEpoch(t, base, id, 1, "e2e")

	// Epoch 2, a quarter through each face.
	q := n / 4
	parallel(t, names[:q], 4, func(name string) {
		code, b := get(t, hc, base, id, name, 2, "e2e")
		if code != http.StatusOK || !bytes.Equal(b, want[name]) {
			t.Errorf("epoch 2 %s: status %d", name, code)
			return
		}
		count(2, b)
	})
	for i := q; i < 2*q; i += 50 {
		for name, b := range batchRead(t, base, id, names[i:i+50], 2, "e2e") {
			if !bytes.Equal(b, want[name]) {
				t.Errorf("batch %s: wrong bytes", name)
			}
			count(2, b)
		}
	}
	s3 := facadeClient(t, sc.Addr())
	parallel(t, names[2*q:3*q], 4, func(name string) {
		opts := minio.GetObjectOptions{}
		opts.Set("X-Provgate-Epoch", "2") // S3 SDKs carry the metering headers as extra headers
		opts.Set("X-Provgate-Job", "e2e")
		obj, err := s3.GetObject(context.Background(), e.bucket, e.c.Origin.Key(name), opts)
		if err != nil {
			t.Errorf("s3 get %s: %v", name, err)
			return
		}
		b, err := io.ReadAll(obj)
		if err != nil || !bytes.Equal(b, want[name]) {
			t.Errorf("s3 get %s: %v", name, err)
			return
		}
		count(2, b)
	})
	listed := 0
	for o := range s3.ListObjects(context.Background(), e.bucket, minio.ListObjectsOptions{Prefix: "ds/shard-1/", Recursive: true}) {
		if o.Err != nil {
			t.Fatalf("s3 list: %v", o.Err)
		}
		listed++
	}
	if listed != n/4 {
		t.Errorf("ListObjectsV2 ds/shard-1/: %d keys, want %d", listed, n/4)
	}
	// With a delimiter, the shards come back as common prefixes, once each,
	// across pages of 3.
	var prefixes []string
	for o := range s3.ListObjects(context.Background(), e.bucket, minio.ListObjectsOptions{Prefix: "ds/", MaxKeys: 3}) {
		if o.Err != nil {
			t.Fatalf("s3 list with delimiter: %v", o.Err)
		}
		prefixes = append(prefixes, o.Key)
	}
	if strings.Join(prefixes, ",") != "ds/shard-0/,ds/shard-1/,ds/shard-2/,ds/shard-3/" {
		t.Errorf("ListObjectsV2 ds/ with delimiter /: %v", prefixes)
	}
	pc := proxyClient(t, sc)
	origin := strings.TrimPrefix(e.minio.URL(), "http://")
	parallel(t, names[3*q:], 4, func(name string) {
		req, _ := http.NewRequest(http.MethodGet, "https://"+origin+"/"+e.bucket+"/"+e.c.Origin.Key(name), nil)
		req.Header.Set("X-Provgate-Epoch", "2")
		req.Header.Set("X-Provgate-Job", "e2e")
		resp, err := pc.Do(req)
		if err != nil {
			t.Errorf("proxy get %s: %v", name, err)
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(b, want[name]) {
			t.Errorf("proxy get %s: status %d err %v", name, resp.StatusCode, err)
			return
		}
		count(2, b)
	})
	endEpoch(t, base, id, 2, "e2e")
	if t.Failed() {
		t.FailNow()
	}

	drain(t, sc, id)
	ctx := context.Background()
	for epoch := int64(1); epoch <= 2; epoch++ {
		tot, err := e.client.MeteringTotals(ctx, id, "e2e", epoch)
		if err != nil {
			t.Fatal(err)
		}
		if tot.AccessEvents != served.count[epoch] || tot.AccessBytes != served.bytes[epoch] {
			t.Errorf("epoch %d: registry counted %d events / %d bytes, clients received %d / %d",
				epoch, tot.AccessEvents, tot.AccessBytes, served.count[epoch], served.bytes[epoch])
		}
		if tot.EpochEvents != 1 || tot.EpochSamples != n {
			t.Errorf("epoch %d: registry has %d epoch summaries with %d samples, want 1 with %d", epoch, tot.EpochEvents, tot.EpochSamples, n)
		}
	}
}

func parallel(t testing.TB, names []string, workers int, fn func(string)) {
	ch := make(chan string)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for name := range ch {
				fn(name)
			}
		})
	}
	for _, name := range names {
		ch <- name
	}
	close(ch)
	wg.Wait()
}

func endEpoch(t testing.TB, base, id string, epoch int64, job string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, fmt.Sprintf("%s/v1/contracts/%s/epochs/%d/end", base, id, epoch), nil)
	req.Header.Set("X-Provgate-Job", job)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("end epoch %d: %d %s", epoch, resp.StatusCode, b)
	}
}

// batchRead reads names in one batch request and parses the frames.
func batchRead(t testing.TB, base, id string, names []string, epoch int64, job string) map[string][]byte {
	t.Helper()
	body, _ := json.Marshal(map[string][]string{"names": names})
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/contracts/"+id+"/batch", bytes.NewReader(body))
	req.Header.Set("X-Provgate-Epoch", fmt.Sprint(epoch))
	req.Header.Set("X-Provgate-Job", job)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != proxy.FramesMediaType {
		t.Fatalf("batch: content type %q", ct)
	}
	frames := parseFrames(t, resp)
	if len(frames) != len(names) {
		t.Fatalf("batch: %d frames for %d names", len(frames), len(names))
	}
	out := map[string][]byte{}
	for i, f := range frames {
		if f.name != names[i] || f.status != http.StatusOK {
			t.Fatalf("frame %d: %q status %d, want %q 200", i, f.name, f.status, names[i])
		}
		out[f.name] = f.body
	}
	return out
}

// facadeClient is minio-go pointed at the sidecar's S3 facade.
func facadeClient(t testing.TB, addr string) *minio.Client {
	t.Helper()
	c, err := minio.New(addr, &minio.Options{Creds: credentials.NewStaticV4("any", "any-secret", ""), Region: testenv.MinIORegion})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// proxyClient is an HTTPS client that goes through the sidecar's forward
// proxy and trusts only the CA that `provgate ca export` prints.
func proxyClient(t testing.TB, sc *sidecar.Sidecar) *http.Client {
	t.Helper()
	caPEM := exportCA(t, sc)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("exported CA is not PEM")
	}
	pu, _ := url.Parse("http://" + sc.ProxyAddr())
	return &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu), TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

package pytorch_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/clicheck"
	"github.com/provgate/provgate/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// pricePerSample is what docker/pilot_setup.py puts in the contract.
const pricePerSample = 0.0005

// stack is a real deployment on loopback: MinIO, `provgate registry`, a
// contract with a contributed dataset, and `provgate serve`.
type stack struct {
	bin        string
	registry   string // base URL
	sidecar    string // base URL
	contractID string
	data       string // the original files, by object name
	token      string // the sidecar's local bearer token, if any
	serve      *proc
}

// Origin modes of the stack (contract.ModeSelfHosted, ModeMarketplace).
type stackMode struct {
	mode       string
	localToken bool // run serve with --local-token-file
}

// proc is a child process whose output goes to a log file, shown when the
// test fails.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

func start(tb testing.TB, dir, name string, env []string, bin string, args ...string) *proc {
	tb.Helper()
	p := &proc{name: name, log: filepath.Join(dir, name+".log"), done: make(chan struct{})}
	f, err := os.Create(p.log)
	if err != nil {
		tb.Fatal(err)
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append(cleanEnv(), env...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if err := p.cmd.Start(); err != nil {
		f.Close()
		tb.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		f.Close()
		close(p.done)
	}()
	tb.Cleanup(func() {
		p.stop(tb)
		if tb.Failed() {
			b, _ := os.ReadFile(p.log)
			tb.Logf("--- %s log (last 4 KiB):\n%s", name, tail(b, 4<<10))
		}
	})
	return p
}

// stop sends SIGTERM and waits (SIGKILL after 15 s).
func (p *proc) stop(tb testing.TB) {
	tb.Helper()
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		tb.Errorf("%s did not stop within 15s of SIGTERM; killing it", p.name)
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// cleanEnv is the test's environment without AWS_* and PROVGATE_*
// settings: each process gets exactly the credentials and flags it is
// given (in marketplace mode the sidecar must have no bucket credentials).
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "AWS_") && !strings.HasPrefix(kv, "PROVGATE_") {
			env = append(env, kv)
		}
	}
	return env
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// waitHTTP polls url until it answers 200, failing if p exits first.
func waitHTTP(tb testing.TB, p *proc, url string, timeout time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		if p.exited() {
			tb.Fatalf("%s exited before %s answered: %v", p.name, url, p.err)
		}
		resp, err := http.Get(url)
		if err == nil {
			b := make([]byte, 512)
			n, _ := resp.Body.Read(b)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, b[:n])
		} else {
			last = err.Error()
		}
		time.Sleep(200 * time.Millisecond)
	}
	tb.Fatalf("%s: %s not ready after %v: %s", p.name, url, timeout, last)
}

func freeAddr(tb testing.TB) string {
	tb.Helper()
	port, err := testenv.FreePort()
	if err != nil {
		tb.Fatal(err)
	}
	return "127.0.0.1:" + strconv.Itoa(port)
}

func randomID(tb testing.TB) string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// startStack runs registry, setup (docker/pilot_setup.py: contributor key,
// contract, dataset of samples files around size bytes, zstd-encoded) and
// serve, all from the binary built from this tree. Self-hosted: the sidecar
// reads MinIO with its own credentials. Marketplace: only the registry has
// credentials and presigns; the sidecar has none.
func startStack(tb testing.TB, m stackMode, samples, size int) *stack {
	tb.Helper()
	requireTorch(tb)
	dir := tb.TempDir()
	root, err := testenv.ModuleRoot()
	if err != nil {
		tb.Fatal(err)
	}
	s := &stack{bin: clicheck.Build(tb, dir), contractID: "did:example:e2e-" + randomID(tb)}
	minio := testenv.MinIO(tb)
	bucket := minio.Bucket(tb)
	aws := []string{"AWS_ACCESS_KEY_ID=" + testenv.MinIOAccessKey, "AWS_SECRET_ACCESS_KEY=" + testenv.MinIOSecretKey,
		"AWS_REGION=" + testenv.MinIORegion}

	regAddr := freeAddr(tb)
	s.registry = "http://" + regAddr
	regArgs := []string{"registry", "--listen", regAddr, "--db", filepath.Join(dir, "registry.db"),
		"--key", filepath.Join(dir, "registry.jwk"), "--admin-token-file", filepath.Join(dir, "admin-token")}
	if m.mode == contract.ModeMarketplace {
		regArgs = append(regArgs, "--s3-endpoint", minio.URL())
	}
	reg := start(tb, dir, "registry", aws, s.bin, regArgs...)
	waitHTTP(tb, reg, s.registry+"/.well-known/jwks.json", 30*time.Second)

	pilot := filepath.Join(dir, "pilot")
	setup := exec.Command(python, filepath.Join(root, "docker", "pilot_setup.py"), "--provgate", s.bin,
		"--registry", s.registry, "--admin-token-file", filepath.Join(dir, "admin-token"),
		"--s3-endpoint", minio.URL(), "--state", pilot, "--contract", s.contractID, "--bucket", bucket,
		"--mode", m.mode, "--purpose", "e2e-training", "--price-usd", strconv.FormatFloat(pricePerSample, 'g', -1, 64),
		"--samples", strconv.Itoa(samples), "--size", strconv.Itoa(size), "--encoding", "zstd", "--wait", "30",
		"--sidecar-key", filepath.Join(dir, "sidecar-state", "sidecar.jwk"), "--enrolment-out", filepath.Join(dir, "enrolment.jws"))
	setup.Env = append(cleanEnv(), aws...)
	if out, err := setup.CombinedOutput(); err != nil {
		tb.Fatalf("pilot_setup.py: %v\n%s", err, tail(out, 8<<10))
	}
	s.data = filepath.Join(pilot, "data")

	sideAddr := freeAddr(tb)
	s.sidecar = "http://" + sideAddr
	serveArgs := []string{"serve", "--registry", s.registry, "--contract", s.contractID, "--purpose", "e2e-training",
		"--state-dir", filepath.Join(dir, "sidecar-state"), "--cache-dir", filepath.Join(dir, "sidecar-cache"),
		"--cache-size", "512MiB", "--listen", sideAddr, "--sync-interval", "500ms", "--log-format", "text",
		"--enrolment", filepath.Join(dir, "enrolment.jws")}
	if d := os.Getenv("PROVGATE_BENCH_DEBUG_LISTEN"); d != "" {
		serveArgs = append(serveArgs, "--debug-listen", d) // to profile the sidecar during a benchmark
	}
	var serveEnv []string
	if m.mode == contract.ModeSelfHosted {
		serveArgs = append(serveArgs, "--s3-endpoint", minio.URL())
		serveEnv = aws
	}
	if m.localToken {
		s.token = randomID(tb) + randomID(tb)
		tokenFile := filepath.Join(dir, "local-token")
		if err := os.WriteFile(tokenFile, []byte(s.token+"\n"), 0o600); err != nil {
			tb.Fatal(err)
		}
		serveArgs = append(serveArgs, "--local-token-file", tokenFile)
	}
	s.serve = start(tb, dir, "serve", serveEnv, s.bin, serveArgs...)
	waitHTTP(tb, s.serve, s.sidecar+"/readyz", 90*time.Second)
	return s
}

// dataSize is the number and total size of the original files.
func dataSize(tb testing.TB, dir string) (n, size int64) {
	tb.Helper()
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		n++
		size += info.Size()
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return n, size
}

type e2eResult struct {
	Client  string `json:"client"` // the file provgate_torch was imported from
	Samples int64  `json:"samples"`
	Bytes   int64  `json:"bytes"`
	Epochs  []struct {
		Epoch   int64  `json:"epoch"`
		Loader  string `json:"loader"`
		Samples int64  `json:"samples"`
		Bytes   int64  `json:"bytes"`
	} `json:"epochs"`
}

// TestEndToEndDataLoader reads a contributed dataset through the real
// sidecar with 4-worker DataLoaders over 2 epochs (map-style with batch
// and single reads, then the IterableDataset), checks every sample's bytes
// against the original files and the (seed, epoch) order, and then checks
// that the registry's metering totals equal exactly what was served.
//
// The client is the package as a user installs it: pip install ./python
// into a fresh virtual environment that sees Debian's torch
// (installedPython), and e2e_check.py must have imported it from there.
//
// It runs in both origin modes: self-hosted (the sidecar's own S3
// credentials) and marketplace (no credentials in the sidecar: the registry
// presigns; and a local bearer token, as in a shared pod).
func TestEndToEndDataLoader(t *testing.T) {
	py := installedPython(t)
	for _, m := range []stackMode{{mode: contract.ModeSelfHosted}, {mode: contract.ModeMarketplace, localToken: true}} {
		t.Run(m.mode, func(t *testing.T) { testEndToEnd(t, py, m) })
	}
}

func testEndToEnd(t *testing.T, py string, m stackMode) {
	const samples, size = 96, 4 << 10
	s := startStack(t, m, samples, size)
	n, total := dataSize(t, s.data)
	if n != samples {
		t.Fatalf("pilot wrote %d files, want %d", n, samples)
	}
	job := "e2e-" + randomID(t)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, "e2e_check.py", "--sidecar", s.sidecar, "--contract", s.contractID,
		"--data", s.data, "--epochs", "2", "--workers", "4", "--batch-size", "8",
		"--small-sample", strconv.Itoa(size), // the bigger third of the samples goes through single GETs
		"--job", job)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Env = append(cleanEnv(), "PYTHONDONTWRITEBYTECODE=1", "PROVGATE_SIDECAR_TOKEN="+s.token)
	if err := cmd.Run(); err != nil {
		t.Fatalf("e2e_check.py: %v\n%s%s", err, stdout.Bytes(), tail(stderr.Bytes(), 8<<10))
	}
	var res e2eResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("e2e_check.py output %q: %v", stdout.Bytes(), err)
	}
	if venv := filepath.Dir(filepath.Dir(py)); !strings.HasPrefix(res.Client, venv+string(os.PathSeparator)) {
		t.Fatalf("e2e_check.py imported provgate_torch from %s, want the installed package in %s", res.Client, venv)
	}
	if res.Samples != n || res.Bytes != total || len(res.Epochs) != 2 {
		t.Fatalf("e2e_check: %d samples / %d bytes / %d epochs; want %d / %d / 2", res.Samples, res.Bytes, len(res.Epochs), n, total)
	}
	for _, e := range res.Epochs {
		if e.Samples != n || e.Bytes != total {
			t.Errorf("epoch %d (%s): %d samples, %d bytes; want %d, %d", e.Epoch, e.Loader, e.Samples, e.Bytes, n, total)
		}
	}

	checkWalkthrough(t, s)
	if s.token != "" {
		// The data endpoint wants the local token; the probes do not.
		for path, want := range map[string]int{"/v1/contracts": http.StatusUnauthorized, "/readyz": http.StatusOK} {
			resp, err := http.Get(s.sidecar + path)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != want {
				t.Errorf("GET %s without the local token = %d, want %d", path, resp.StatusCode, want)
			}
		}
	}

	// What the registry counted must equal what was served, exactly: per
	// epoch and in total. The outbox syncs in the background; if it has
	// not caught up, a clean shutdown must flush it.
	client, err := contract.NewClient(s.registry)
	if err != nil {
		t.Fatal(err)
	}
	nano := contract.Pricing{Unit: contract.UnitSample, PriceUSD: pricePerSample}.NanoUSD()
	want := func(epochs int64) contract.MeteringTotals {
		return contract.MeteringTotals{Contract: s.contractID, AccessBytes: epochs * total, EpochEvents: epochs,
			EpochSamples: epochs * n, EpochBytes: epochs * total, Units: epochs * n, CostNanoUSD: epochs * n * nano,
			BilledSamples: epochs * n, BilledBytes: epochs * total, BilledUnits: epochs * n, BilledCostNanoUSD: epochs * n * nano}
	}
	got := func(epoch int64) contract.MeteringTotals {
		tot, err := client.MeteringTotals(ctx, s.contractID, job, epoch)
		if err != nil {
			t.Fatalf("metering totals: %v", err)
		}
		// Access events may be aggregated rows; compare the sums. Presigned
		// objects (marketplace mode) are per licensee, not per job or epoch.
		tot.Events, tot.AccessEvents, tot.BilledEvents = 0, 0, 0
		tot.PresignedObjects, tot.PresignedBytes = 0, 0
		return *tot
	}
	settled := func(d time.Duration) bool {
		for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(250 * time.Millisecond) {
			if got(-1) == want(2) {
				return true
			}
		}
		return false
	}
	if !settled(20 * time.Second) {
		t.Logf("registry totals after 20s: %+v; stopping serve to flush its outbox", got(-1))
		s.serve.stop(t)
		if s.serve.err != nil {
			t.Errorf("serve exited with %v after SIGTERM, want a clean exit", s.serve.err)
		}
		if !settled(10 * time.Second) {
			t.Fatalf("registry totals = %+v\nwant              %+v", got(-1), want(2))
		}
	}
	t.Logf("served %d samples / %d bytes per epoch; registry totals %+v", n, total, got(-1))
	for epoch := int64(0); epoch < 2; epoch++ {
		if g, w := got(epoch), want(1); g != w {
			t.Errorf("epoch %d totals = %+v, want %+v", epoch, g, w)
		}
	}
}

var walkthroughURL = regexp.MustCompile(`\$SC(/[^\s'"\)]*)`)

// checkWalkthrough requests every sidecar URL that examples/walkthrough.md
// shows with curl (GET or HEAD; POSTs are exercised by the DataLoader run)
// and checks the status the walkthrough promises: 404 for its unknown names
// and contracts, success for the rest. Reads carry no job header, so they
// do not touch the job's metering totals.
func checkWalkthrough(t *testing.T, s *stack) {
	t.Helper()
	md, err := os.ReadFile(filepath.Join("..", "walkthrough.md"))
	if err != nil {
		t.Fatal(err)
	}
	first := ""
	err = filepath.WalkDir(s.data, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && first == "" {
			first, err = filepath.Rel(s.data, p)
		}
		return err
	})
	if err != nil || first == "" {
		t.Fatalf("no data file: %v", err)
	}
	checked := 0
	inCode := false
	var cmds []string // code lines, continuations joined
	cont := false
	for _, line := range strings.Split(string(md), "\n") {
		if strings.HasPrefix(line, "```") {
			inCode, cont = !inCode, false
			continue
		}
		if !inCode {
			continue
		}
		if cont {
			cmds[len(cmds)-1] += " " + strings.TrimSpace(line)
		} else {
			cmds = append(cmds, line)
		}
		cont = strings.HasSuffix(line, "\\")
	}
	for _, line := range cmds {
		if strings.Contains(line, "-X POST") {
			continue
		}
		for _, m := range walkthroughURL.FindAllStringSubmatch(line, -1) {
			path := strings.NewReplacer("$C", s.contractID, "$N", filepath.ToSlash(first)).Replace(m[1])
			method := http.MethodGet
			if strings.Contains(line, "curl -sI") {
				method = http.MethodHead
			}
			want := http.StatusOK
			if strings.Contains(path, "no/such/name") || strings.Contains(path, "did:example:other") {
				want = http.StatusNotFound
			}
			req, err := http.NewRequest(method, s.sidecar+path, nil)
			if err != nil {
				t.Fatal(err)
			}
			if s.token != "" {
				req.Header.Set("Authorization", "Bearer "+s.token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatalf("walkthrough %s %s: %v", method, path, err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != want {
				t.Errorf("walkthrough: %s %s = %d, want %d", method, path, resp.StatusCode, want)
			}
			checked++
		}
	}
	if checked < 10 {
		t.Errorf("checked only %d walkthrough URLs; the extraction is broken", checked)
	}
}

// BenchmarkDataLoader compares DataLoader samples/s through the sidecar
// (warm cache, metering on, 4 workers, batch reads, each epoch's order
// announced) with the same loader reading the decoded files from local
// disk, via bench_loader.py, for small (16 KiB) and larger (256 KiB)
// samples, in both origin modes (PROVGATE_BENCH_MODES picks a subset). It
// reports sidecar/local as "ratio"; the target is in the name.
//
//	go test -run '^$' -bench DataLoader -benchtime 1x ./examples/pytorch
func BenchmarkDataLoader(b *testing.B) {
	modes := []stackMode{{mode: contract.ModeSelfHosted}, {mode: contract.ModeMarketplace}}
	if v := os.Getenv("PROVGATE_BENCH_MODES"); v != "" {
		modes = nil
		for _, m := range strings.Split(v, ",") {
			switch m {
			case "selfhosted":
				modes = append(modes, stackMode{mode: contract.ModeSelfHosted})
			case "marketplace":
				modes = append(modes, stackMode{mode: contract.ModeMarketplace})
			default:
				b.Fatalf("PROVGATE_BENCH_MODES: unknown mode %q (selfhosted, marketplace)", m)
			}
		}
	}
	for _, m := range modes {
		for _, bc := range []struct {
			name                 string
			samples, size, batch int
		}{
			{"16KiB_target0.85", 4096, 16 << 10, 64},
			{"256KiB_target0.85", 512, 256 << 10, 16},
		} {
			name := "selfhosted/" + bc.name
			if m.mode == contract.ModeMarketplace {
				name = "marketplace/" + bc.name
			}
			b.Run(name, func(b *testing.B) {
				py := installedPython(b)
				s := startStack(b, m, bc.samples, bc.size)
				var res struct {
					Sidecar float64 `json:"sidecar_samples_per_s"`
					Local   float64 `json:"local_samples_per_s"`
					Ratio   float64 `json:"ratio"`
				}
				for b.Loop() {
					out, err := exec.Command(py, "bench_loader.py", "--sidecar", s.sidecar, "--contract", s.contractID,
						"--dir", s.data, "--workers", "4", "--batch-size", strconv.Itoa(bc.batch), "--epochs", "3", "--json").Output()
					if err != nil {
						var ee *exec.ExitError
						if errors.As(err, &ee) {
							b.Fatalf("bench_loader.py: %v\n%s", err, ee.Stderr)
						}
						b.Fatal(err)
					}
					if err := json.Unmarshal(out, &res); err != nil {
						b.Fatalf("bench_loader.py output %q: %v", out, err)
					}
				}
				b.ReportMetric(res.Sidecar, "sidecar-samples/s")
				b.ReportMetric(res.Local, "local-samples/s")
				b.ReportMetric(res.Ratio, "ratio")
			})
		}
	}
}

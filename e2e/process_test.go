package e2e_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/provgate/provgate/internal/testenv"
)

// serveProcess is `provgate serve` running as its own process, as in a pod.
type serveProcess struct {
	URL string
	cmd *exec.Cmd
	log *bytes.Buffer
}

// startServe runs the built binary against e's registry (through the
// front) and MinIO, in self-hosted mode, and waits for /readyz.
func (e *env) startServe(t testing.TB, extra ...string) *serveProcess {
	t.Helper()
	return e.startServeIn(t, t.TempDir(), extra...)
}

// startServeIn is startServe with the state and cache kept under dir, so
// that a test can restart the sidecar on them.
func (e *env) startServeIn(t testing.TB, dir string, extra ...string) *serveProcess {
	t.Helper()
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"serve", "--registry", e.front.URL(), "--contract", e.c.ContractID, "--purpose", "training",
		"--state-dir", filepath.Join(dir, "state"), "--cache-dir", filepath.Join(dir, "cache"), "--cache-size", "2GiB",
		"--listen", fmt.Sprintf("127.0.0.1:%d", port), "--s3-endpoint", "http://" + e.origin, "--log-level", "warn",
		"--enrolment", e.enrolmentFile(filepath.Join(dir, "state")), "--quota-samples", strconv.Itoa(sidecarSlice)}, extra...)
	cmd := exec.Command(provgateBinary(t), args...)
	cmd.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID="+testenv.MinIOAccessKey, "AWS_SECRET_ACCESS_KEY="+testenv.MinIOSecretKey,
		"AWS_REGION="+testenv.MinIORegion)
	p := &serveProcess{URL: fmt.Sprintf("http://127.0.0.1:%d", port), cmd: cmd, log: &bytes.Buffer{}}
	cmd.Stdout, cmd.Stderr = p.log, p.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(p.URL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("provgate serve not ready: %v\n%s", err, p.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *serveProcess) kill() {
	p.cmd.Process.Kill()
	p.cmd.Process.Wait()
}

// peakRSS is the process's high-water resident set (VmHWM), in bytes.
func (p *serveProcess) peakRSS(t testing.TB) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

// nginx serves a directory with sendfile, as the benchmark baseline.
type nginx struct {
	URL string
	cmd *exec.Cmd
}

func startNginx(t testing.TB, root string) *nginx {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/nginx"); serr == nil {
			bin = "/usr/sbin/nginx"
		} else {
			t.Fatalf("nginx not installed (run scripts/install-deps.sh): %v", err)
		}
	}
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, d := range []string{"tmp", "logs"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	conf := fmt.Sprintf(`daemon off;
worker_processes auto;
pid %[1]s/nginx.pid;
error_log %[1]s/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  default_type application/octet-stream;
  client_body_temp_path %[1]s/tmp/body;
  proxy_temp_path %[1]s/tmp/proxy;
  fastcgi_temp_path %[1]s/tmp/fastcgi;
  uwsgi_temp_path %[1]s/tmp/uwsgi;
  scgi_temp_path %[1]s/tmp/scgi;
  server {
    listen 127.0.0.1:%[2]d;
    root %[3]s;
  }
}
`, dir, port, root)
	if os.Geteuid() == 0 {
		conf = "user root;\n" + conf
	}
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-p", dir, "-c", confPath)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGQUIT)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
		}
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return &nginx{URL: "http://" + addr, cmd: cmd}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("nginx did not start: %s", out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

package pytorch_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/provgate/provgate/internal/testenv"
)

// installedPython creates a fresh virtual environment from Debian's
// interpreter (python3-torch visible through --system-site-packages),
// installs the client package into it from the repository path the way a
// user does (pip install ./python; offline: no index, Debian's setuptools),
// and returns the environment's interpreter. It fails unless provgate_torch
// then imports from the environment's site-packages, not from the tree.
func installedPython(tb testing.TB) string {
	tb.Helper()
	requireTorch(tb)
	root, err := testenv.ModuleRoot()
	if err != nil {
		tb.Fatal(err)
	}
	venv := filepath.Join(tb.TempDir(), "venv")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	run := func(name string, args ...string) string {
		tb.Helper()
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Dir = tb.TempDir() // not the tree: nothing importable by accident
		cmd.Env = append(cleanEnv(), "PYTHONDONTWRITEBYTECODE=1", "PIP_DISABLE_PIP_VERSION_CHECK=1", "PIP_NO_INPUT=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			tb.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, tail(out, 8<<10))
		}
		return string(out)
	}
	run(python, "-m", "venv", "--system-site-packages", venv)
	py := filepath.Join(venv, "bin", "python")
	run(py, "-m", "pip", "install", "--no-build-isolation", "--no-index", "--no-deps", filepath.Join(root, "python"))
	where := strings.TrimSpace(run(py, "-c", "import os, provgate_torch, torch; print(os.path.realpath(provgate_torch.__file__))"))
	site, err := filepath.EvalSymlinks(venv)
	if err != nil {
		tb.Fatal(err)
	}
	if !strings.HasPrefix(where, site+string(os.PathSeparator)) {
		tb.Fatalf("provgate_torch imported from %s, want the virtual environment %s", where, site)
	}
	return py
}

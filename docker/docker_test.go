package docker_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/provgate/provgate/internal/clicheck"
	"github.com/provgate/provgate/internal/testenv"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	line int
	cmd  string // upper case
	args string
}

// stage is one FROM ... [AS name] and its instructions.
type stage struct {
	image, name string
	instrs      []instruction
	outputs     []string // files written by `go build -o`
}

// dockerfile is a parsed Dockerfile: ARG defaults before the first FROM and
// the stages.
type dockerfile struct {
	args   map[string]string
	stages []*stage
}

func (d *dockerfile) stage(name string) *stage {
	for _, s := range d.stages {
		if s.name == name {
			return s
		}
	}
	return nil
}

var varRef = regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?`)

func (d *dockerfile) expand(s string) string {
	return varRef.ReplaceAllStringFunc(s, func(m string) string {
		name := varRef.FindStringSubmatch(m)[1]
		if v, ok := d.args[name]; ok {
			return v
		}
		return m
	})
}

func parseDockerfile(t *testing.T, src []byte) *dockerfile {
	t.Helper()
	d := &dockerfile{args: map[string]string{}}
	var instrs []instruction
	sc := bufio.NewScanner(bytes.NewReader(src))
	var cur strings.Builder
	start := 0
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if cur.Len() == 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if cur.Len() == 0 {
			start = n
		}
		if s, ok := strings.CutSuffix(trimmed, "\\"); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(trimmed)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		instrs = append(instrs, instruction{line: start, cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)})
		cur.Reset()
	}
	if cur.Len() != 0 {
		t.Fatalf("Dockerfile ends inside a continued line (line %d)", start)
	}
	var st *stage
	for _, in := range instrs {
		switch {
		case in.cmd == "ARG" && st == nil:
			k, v, _ := strings.Cut(in.args, "=")
			d.args[k] = v
		case in.cmd == "FROM":
			f := strings.Fields(d.expand(in.args))
			st = &stage{image: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				st.name = f[2]
			} else if len(f) != 1 {
				t.Fatalf("line %d: FROM %s: want IMAGE [AS NAME]", in.line, in.args)
			}
			d.stages = append(d.stages, st)
		case st == nil:
			t.Fatalf("line %d: %s before the first FROM", in.line, in.cmd)
		default:
			st.instrs = append(st.instrs, in)
			if in.cmd == "RUN" {
				st.outputs = append(st.outputs, goBuildOutputs(in.args)...)
			}
		}
	}
	return d
}

var goBuildOut = regexp.MustCompile(`go build\b[^&;|]*?\s-o\s+(\S+)`)

func goBuildOutputs(run string) []string {
	var out []string
	for _, m := range goBuildOut.FindAllStringSubmatch(run, -1) {
		out = append(out, m[1])
	}
	return out
}

// goBuildPackages returns the ./... package paths of every `go build`.
func goBuildPackages(run string) []string {
	var pkgs []string
	for _, seg := range regexp.MustCompile(`&&|;|\|\|`).Split(run, -1) {
		f := strings.Fields(seg)
		i := slices.Index(f, "build")
		if i < 1 || f[i-1] != "go" {
			continue
		}
		for _, a := range f[i+1:] {
			if strings.HasPrefix(a, "./") {
				pkgs = append(pkgs, a)
			}
		}
	}
	return pkgs
}

// copyArgs splits a COPY/ADD's arguments into flags, sources and the
// destination (shell or JSON form).
func copyArgs(t *testing.T, in instruction) (flags map[string]string, srcs []string, dst string) {
	t.Helper()
	flags = map[string]string{}
	rest := in.args
	for strings.HasPrefix(rest, "--") {
		var f string
		f, rest, _ = strings.Cut(rest, " ")
		k, v, _ := strings.Cut(strings.TrimPrefix(f, "--"), "=")
		flags[k] = v
		rest = strings.TrimSpace(rest)
	}
	var parts []string
	if strings.HasPrefix(rest, "[") {
		if err := json.Unmarshal([]byte(rest), &parts); err != nil {
			t.Fatalf("line %d: %s %s: %v", in.line, in.cmd, in.args, err)
		}
	} else {
		parts = strings.Fields(rest)
	}
	if len(parts) < 2 {
		t.Fatalf("line %d: %s needs a source and a destination", in.line, in.cmd)
	}
	return flags, parts[:len(parts)-1], parts[len(parts)-1]
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func loadDockerfile(t *testing.T) *dockerfile {
	t.Helper()
	src, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	return parseDockerfile(t, src)
}

func ignorePatterns(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("Dockerfile.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	var pats []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			pats = append(pats, strings.TrimPrefix(strings.TrimPrefix(l, "**/"), "/"))
		}
	}
	return pats
}

// TestDockerfileStages checks the multi-stage shape: a cgo Go build on the
// same Debian release as a slim, non-root runtime whose entrypoint is
// provgate, and a trainer image with Debian's PyTorch.
func TestDockerfileStages(t *testing.T) {
	d := loadDockerfile(t)
	var names []string
	for _, s := range d.stages {
		names = append(names, s.name)
	}
	if !slices.Equal(names, []string{"build", "runtime", "trainer"}) {
		t.Fatalf("stages = %q, want build, runtime, trainer", names)
	}
	build, runtime, trainer := d.stage("build"), d.stage("runtime"), d.stage("trainer")

	if !strings.HasPrefix(build.image, "golang:") {
		t.Errorf("build stage FROM %s, want a golang image", build.image)
	}
	release := build.image[strings.LastIndexByte(build.image, '-')+1:]
	for _, s := range []*stage{runtime, trainer} {
		if want := "debian:" + release + "-slim"; s.image != want {
			t.Errorf("%s stage FROM %s, want %s (the glibc the cgo binary was linked against)", s.name, s.image, want)
		}
	}
	cgo := false
	for _, in := range build.instrs {
		if (in.cmd == "ENV" || in.cmd == "RUN") && strings.Contains(in.args, "CGO_ENABLED=1") {
			cgo = true
		}
		if strings.Contains(in.args, "CGO_ENABLED=0") {
			t.Errorf("line %d: cgo disabled, but mattn/go-sqlite3 needs it", in.line)
		}
	}
	if !cgo {
		t.Error("build stage does not set CGO_ENABLED=1")
	}
	if !slices.Contains(build.outputs, "/out/provgate") {
		t.Errorf("build stage outputs %q, want /out/provgate", build.outputs)
	}

	for _, s := range []*stage{runtime, trainer} {
		user := ""
		for _, in := range s.instrs {
			if in.cmd == "USER" {
				user = in.args
			}
		}
		uid, _, _ := strings.Cut(user, ":")
		if user == "" || uid == "0" || uid == "root" {
			t.Errorf("%s stage runs as %q, want a non-root user", s.name, user)
		}
	}
	entry := ""
	for _, in := range runtime.instrs {
		if in.cmd == "ENTRYPOINT" {
			entry = in.args
		}
	}
	var ep []string
	if err := json.Unmarshal([]byte(entry), &ep); err != nil || len(ep) == 0 || path.Base(ep[0]) != "provgate" {
		t.Errorf("runtime ENTRYPOINT %s, want the provgate binary in exec form", entry)
	}
	torch := false
	for _, in := range trainer.instrs {
		if in.cmd == "RUN" && strings.Contains(in.args, "python3-torch") {
			torch = true
		}
	}
	if !torch {
		t.Error("trainer stage does not install Debian's python3-torch")
	}
}

// TestDockerfilePathsExist checks that what the Dockerfile copies and
// builds exists: COPY sources in the repository (and not excluded by the
// .dockerignore), COPY --from sources produced by that stage, go build
// packages with Go files.
func TestDockerfilePathsExist(t *testing.T) {
	d := loadDockerfile(t)
	root := repoRoot(t)
	ignore := ignorePatterns(t)
	copies := 0
	for i, s := range d.stages {
		for _, in := range s.instrs {
			switch in.cmd {
			case "ADD":
				t.Errorf("line %d: use COPY, not ADD", in.line)
			case "COPY":
				copies++
				flags, srcs, _ := copyArgs(t, in)
				if from, ok := flags["from"]; ok {
					fs := d.stage(from)
					if fs == nil || slices.Index(d.stages, fs) >= i {
						t.Errorf("line %d: COPY --from=%s is not an earlier stage", in.line, from)
						continue
					}
					for _, src := range srcs {
						if !slices.Contains(fs.outputs, src) {
							t.Errorf("line %d: COPY --from=%s %s: that stage builds only %q", in.line, from, src, fs.outputs)
						}
					}
					continue
				}
				for _, src := range srcs {
					p := filepath.Join(root, filepath.FromSlash(src))
					if _, err := os.Stat(p); err != nil {
						t.Errorf("line %d: COPY source %s: %v", in.line, src, err)
					}
					for _, pat := range ignore {
						if ok, _ := path.Match(pat, path.Clean(src)); ok && src != "." {
							t.Errorf("line %d: COPY source %s is excluded by .dockerignore pattern %q", in.line, src, pat)
						}
					}
				}
			case "RUN":
				for _, pkg := range goBuildPackages(in.args) {
					dir := filepath.Join(root, filepath.FromSlash(pkg))
					matches, _ := filepath.Glob(filepath.Join(dir, "*.go"))
					if len(matches) == 0 {
						t.Errorf("line %d: go build %s: no Go files in %s", in.line, pkg, dir)
					}
				}
			}
		}
	}
	if copies < 4 {
		t.Errorf("found %d COPY instructions; the parser missed some", copies)
	}
}

// TestParserCatchesBadPaths makes sure the checks above can fail.
func TestParserCatchesBadPaths(t *testing.T) {
	d := parseDockerfile(t, []byte("ARG V=1\nFROM golang:${V}-bookworm AS build\nRUN go build \\\n  -o /out/x ./cmd/nope\nCOPY [\"a b\", \"c\"]\n"))
	st := d.stage("build")
	if st == nil || st.image != "golang:1-bookworm" {
		t.Fatalf("stage = %+v, want golang:1-bookworm AS build", st)
	}
	if !slices.Equal(st.outputs, []string{"/out/x"}) {
		t.Errorf("outputs = %q", st.outputs)
	}
	if got := goBuildPackages(st.instrs[0].args); !slices.Equal(got, []string{"./cmd/nope"}) {
		t.Errorf("packages = %q", got)
	}
	_, srcs, dst := copyArgs(t, st.instrs[1])
	if !slices.Equal(srcs, []string{"a b"}) || dst != "c" {
		t.Errorf("copy = %q -> %q", srcs, dst)
	}
}

// compose is the part of the compose file the pilot uses; decoding is
// strict, so a misspelt key fails.
type compose struct {
	Name     string                     `json:"name"`
	Services map[string]composeService  `json:"services"`
	Volumes  map[string]json.RawMessage `json:"volumes"`
	XMinIO   map[string]string          `json:"x-minio-credentials"`
}

type composeService struct {
	Image       string            `json:"image"`
	Build       *composeBuild     `json:"build"`
	Command     []string          `json:"command"`
	Entrypoint  []string          `json:"entrypoint"`
	Environment map[string]string `json:"environment"`
	Ports       []string          `json:"ports"`
	Volumes     []string          `json:"volumes"`
	DependsOn   map[string]struct {
		Condition string `json:"condition"`
	} `json:"depends_on"`
	Healthcheck *struct {
		Test     []string `json:"test"`
		Interval string   `json:"interval"`
		Timeout  string   `json:"timeout"`
		Retries  int      `json:"retries"`
	} `json:"healthcheck"`
	ShmSize string `json:"shm_size"`
}

type composeBuild struct {
	Context    string `json:"context"`
	Dockerfile string `json:"dockerfile"`
	Target     string `json:"target"`
}

func loadCompose(t *testing.T) *compose {
	t.Helper()
	raw, err := os.ReadFile("compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c compose
	if err := yaml.UnmarshalStrict(raw, &c, func(d *json.Decoder) *json.Decoder { d.DisallowUnknownFields(); return d }); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	return &c
}

// TestComposeShape checks the pilot's wiring: the services, their images
// and build targets, dependencies, volumes, and that the sidecar, setup and
// trainer agree on the contract and the sidecar's address.
func TestComposeShape(t *testing.T) {
	c := loadCompose(t)
	d := loadDockerfile(t)
	root := repoRoot(t)
	for _, name := range []string{"minio", "createbucket", "registry", "setup", "sidecar", "trainer"} {
		if _, ok := c.Services[name]; !ok {
			t.Errorf("compose has no %s service", name)
		}
	}
	for name, s := range c.Services {
		if (s.Image == "") == (s.Build == nil) {
			t.Errorf("service %s: want exactly one of image and build", name)
		}
		if s.Build != nil {
			df := filepath.Join(root, "docker", filepath.FromSlash(s.Build.Context), filepath.FromSlash(s.Build.Dockerfile))
			if df != filepath.Join(root, "docker", "Dockerfile") {
				t.Errorf("service %s builds %s, want docker/Dockerfile with the repo root as context", name, df)
			}
			if d.stage(s.Build.Target) == nil {
				t.Errorf("service %s: build target %q is not a Dockerfile stage", name, s.Build.Target)
			}
		}
		for dep := range s.DependsOn {
			if _, ok := c.Services[dep]; !ok {
				t.Errorf("service %s depends on unknown service %s", name, dep)
			}
		}
		for _, v := range s.Volumes {
			src, _, _ := strings.Cut(v, ":")
			if _, ok := c.Volumes[src]; !ok {
				t.Errorf("service %s mounts undeclared volume %s", name, src)
			}
		}
	}
	for _, name := range []string{"registry", "sidecar"} {
		if b := c.Services[name].Build; b == nil || b.Target != "runtime" {
			t.Errorf("%s must run the runtime image", name)
		}
	}

	sidecar := flagMap(c.Services["sidecar"].Command[1:])
	setup := flagMap(c.Services["setup"].Command[2:])
	trainer := c.Services["trainer"]
	if sidecar["contract"] != setup["contract"] || sidecar["contract"] != trainer.Environment["PROVGATE_CONTRACT"] {
		t.Errorf("contract ids differ: sidecar %q, setup %q, trainer %q", sidecar["contract"], setup["contract"], trainer.Environment["PROVGATE_CONTRACT"])
	}
	_, port, _ := strings.Cut(sidecar["listen"], ":")
	if want := "http://sidecar:" + port; trainer.Environment["PROVGATE_SIDECAR_URL"] != want {
		t.Errorf("trainer PROVGATE_SIDECAR_URL = %q, want %q", trainer.Environment["PROVGATE_SIDECAR_URL"], want)
	}
	// Marketplace mode: the sidecar holds no bucket credentials, the
	// registry presigns.
	if setup["mode"] != "marketplace" {
		t.Errorf("setup --mode=%q, want marketplace", setup["mode"])
	}
	if _, ok := sidecar["s3-endpoint"]; ok {
		t.Error("sidecar has --s3-endpoint: that is self-hosted mode, not the marketplace pilot")
	}
	for k := range c.Services["sidecar"].Environment {
		if strings.HasPrefix(k, "AWS_") {
			t.Errorf("sidecar env %s: in marketplace mode the sidecar holds no bucket credentials", k)
		}
	}
	if _, ok := flagMap(c.Services["registry"].Command[1:])["s3-endpoint"]; !ok {
		t.Error("registry lacks --s3-endpoint: it cannot presign")
	}
	// The licensee's enrolment: setup writes it, and the sidecar's key it
	// enrols, on the volume the sidecar reads them from (its key as
	// STATE_DIR/sidecar.jwk), or the registry gives the sidecar no token.
	sideVol, sideEnrol := onVolume(c.Services["sidecar"], sidecar["enrolment"])
	setupVol, setupEnrol := onVolume(c.Services["setup"], setup["enrolment-out"])
	if sideVol == "" || sideVol != setupVol || sideEnrol != setupEnrol {
		t.Errorf("sidecar --enrolment=%q (volume %q) is not where setup --enrolment-out=%q (volume %q) writes it",
			sidecar["enrolment"], sideVol, setup["enrolment-out"], setupVol)
	}
	stateVol, stateRel := onVolume(c.Services["sidecar"], sidecar["state-dir"]+"/sidecar.jwk")
	keyVol, keyRel := onVolume(c.Services["setup"], setup["sidecar-key"])
	if stateVol == "" || stateVol != keyVol || stateRel != keyRel {
		t.Errorf("setup --sidecar-key=%q is not the sidecar's STATE_DIR/sidecar.jwk (%s/sidecar.jwk)", setup["sidecar-key"], sidecar["state-dir"])
	}
}

// onVolume names the volume a path inside a service's container is on, and
// the path within that volume.
func onVolume(s composeService, p string) (volume, rel string) {
	for _, v := range s.Volumes {
		src, dst, _ := strings.Cut(v, ":")
		dst, _, _ = strings.Cut(dst, ":")
		if r, ok := strings.CutPrefix(p, strings.TrimSuffix(dst, "/")+"/"); ok && p != "" {
			return src, r
		}
	}
	return "", ""
}

// TestComposeCommandsAreReal checks every provgate command line in the
// compose file against the binary built from this tree, and the Python
// scripts' flags against their --help.
func TestComposeCommandsAreReal(t *testing.T) {
	c := loadCompose(t)
	bin := clicheck.Build(t, t.TempDir())
	for name, s := range c.Services {
		if s.Build == nil || s.Build.Target != "runtime" {
			continue
		}
		t.Run(name, func(t *testing.T) { clicheck.CheckArgs(t, bin, s.Command) })
	}
	root := repoRoot(t)
	d := loadDockerfile(t)
	for _, name := range []string{"setup", "trainer"} {
		cmd := c.Services[name].Command
		if len(cmd) < 2 || cmd[0] != "/usr/bin/python3" {
			t.Errorf("%s: command %q, want /usr/bin/python3 SCRIPT ...", name, cmd)
			continue
		}
		script := repoPathOf(t, d, cmd[1])
		if script == "" {
			continue
		}
		known := pythonFlags(t, filepath.Join(root, script))
		for f := range flagMap(cmd[2:]) {
			if !known[f] {
				t.Errorf("%s: %s has no --%s", name, script, f)
			}
		}
	}
}

// repoPathOf maps a path inside the trainer image back to the repository
// file the Dockerfile copied there.
func repoPathOf(t *testing.T, d *dockerfile, imagePath string) string {
	t.Helper()
	for _, in := range d.stage("trainer").instrs {
		if in.cmd != "COPY" {
			continue
		}
		flags, srcs, dst := copyArgs(t, in)
		if _, ok := flags["from"]; ok || len(srcs) != 1 {
			continue
		}
		if imagePath == dst {
			return srcs[0]
		}
		if rel, ok := strings.CutPrefix(imagePath, strings.TrimSuffix(dst, "/")+"/"); ok {
			return path.Join(srcs[0], rel)
		}
	}
	t.Errorf("%s is not copied into the trainer image", imagePath)
	return ""
}

var pyFlag = regexp.MustCompile(`--([a-z][a-z0-9-]*)`)

func pythonFlags(t *testing.T, script string) map[string]bool {
	t.Helper()
	out, err := exec.Command("/usr/bin/python3", script, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("%s --help: %v\n%s", script, err, out)
	}
	flags := map[string]bool{}
	for _, m := range pyFlag.FindAllStringSubmatch(string(out), -1) {
		flags[m[1]] = true
	}
	return flags
}

func flagMap(args []string) map[string]string {
	out := map[string]string{}
	for _, a := range args {
		if !strings.HasPrefix(a, "--") {
			continue
		}
		k, v, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		out[k] = v
	}
	return out
}

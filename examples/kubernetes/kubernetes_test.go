package kubernetes_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/provgate/provgate/internal/clicheck"
)

// decodePod decodes a manifest into a corev1.Pod, refusing any field the
// API types do not have (a typo such as "restartPolicy" on the wrong level
// or "readinesProbe" would otherwise be dropped silently).
func decodePod(t *testing.T, path string) *corev1.Pod {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	js, err := yaml.YAMLToJSONStrict(raw)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	var pod corev1.Pod
	if err := dec.Decode(&pod); err != nil {
		t.Fatalf("%s: strict decode into corev1.Pod: %v", path, err)
	}
	if pod.APIVersion != "v1" || pod.Kind != "Pod" {
		t.Fatalf("%s: apiVersion/kind = %s/%s, want v1/Pod", path, pod.APIVersion, pod.Kind)
	}
	return &pod
}

func TestStrictDecodeRefusesUnknownFields(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	src, err := os.ReadFile("pod.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// a misspelt probe must not decode
	if err := os.WriteFile(bad, bytes.Replace(src, []byte("readinessProbe:"), []byte("readinesProbe:"), 1), 0o600); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(bad)
	js, err := yaml.YAMLToJSONStrict(raw)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	var pod corev1.Pod
	if err := dec.Decode(&pod); err == nil || !strings.Contains(err.Error(), "readinesProbe") {
		t.Fatalf("decoding a misspelt field: err = %v, want unknown field readinesProbe", err)
	}
}

func TestPodSidecarShape(t *testing.T) {
	pod := decodePod(t, "pod.yaml")

	if len(pod.Spec.InitContainers) != 1 {
		t.Fatalf("init containers = %d, want 1 (the sidecar)", len(pod.Spec.InitContainers))
	}
	sc := pod.Spec.InitContainers[0]
	if sc.RestartPolicy == nil || *sc.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("sidecar restartPolicy = %v, want Always (a native sidecar)", sc.RestartPolicy)
	}
	if len(sc.Args) == 0 || sc.Args[0] != "serve" {
		t.Fatalf("sidecar args = %q, want provgate serve ...", sc.Args)
	}
	args := flagValues(sc.Args[1:])

	// Probes: readiness (and startup, which gates the trainer's start) on
	// /readyz, liveness on /healthz, all on the port serve listens on.
	port := sc.Ports[0]
	if !strings.HasSuffix(args["listen"], ":"+itoa(port.ContainerPort)) {
		t.Errorf("--listen=%q does not match containerPort %d", args["listen"], port.ContainerPort)
	}
	if strings.HasPrefix(args["listen"], "127.") {
		t.Errorf("--listen=%q: the kubelet probes the pod IP, a loopback listener is never ready", args["listen"])
	}
	for name, p := range map[string]*corev1.Probe{"readiness": sc.ReadinessProbe, "startup": sc.StartupProbe, "liveness": sc.LivenessProbe} {
		want := "/readyz"
		if name == "liveness" {
			want = "/healthz"
		}
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s probe: want an httpGet probe on %s", name, want)
			continue
		}
		if p.HTTPGet.Path != want {
			t.Errorf("%s probe path = %q, want %q", name, p.HTTPGet.Path, want)
		}
		if p.HTTPGet.Port.String() != port.Name && p.HTTPGet.Port.IntValue() != int(port.ContainerPort) {
			t.Errorf("%s probe port = %s, want %s/%d", name, p.HTTPGet.Port.String(), port.Name, port.ContainerPort)
		}
	}

	// Volumes: the cache and state dirs are emptyDirs mounted where the
	// flags point; the key comes from a secret, read-only.
	vols := map[string]corev1.Volume{}
	for _, v := range pod.Spec.Volumes {
		vols[v.Name] = v
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range sc.VolumeMounts {
		mounts[m.MountPath] = m
		if _, ok := vols[m.Name]; !ok {
			t.Errorf("sidecar mounts undefined volume %q", m.Name)
		}
	}
	for _, flag := range []string{"cache-dir", "state-dir"} {
		m, ok := mounts[args[flag]]
		if !ok {
			t.Errorf("--%s=%s is not a mount of the sidecar", flag, args[flag])
			continue
		}
		if vols[m.Name].EmptyDir == nil || m.ReadOnly {
			t.Errorf("--%s volume %q: want a writable emptyDir", flag, m.Name)
		}
	}
	cache := vols[mounts[args["cache-dir"]].Name].EmptyDir
	if cache == nil || cache.SizeLimit == nil {
		t.Fatal("cache emptyDir needs a sizeLimit")
	}
	size := parseGiB(t, args["cache-size"])
	if limit := cache.SizeLimit.Value(); size >= limit {
		t.Errorf("--cache-size %s (%d bytes) must stay under the emptyDir's sizeLimit (%d bytes), or the pod is evicted", args["cache-size"], size, limit)
	}
	// The sidecar's identity key: serve loads STATE_DIR/sidecar.jwk, so
	// the secret is mounted there as one read-only file.
	keyPath := args["state-dir"] + "/sidecar.jwk"
	if m, ok := mounts[keyPath]; !ok || !m.ReadOnly || m.SubPath != "sidecar.jwk" || vols[m.Name].Secret == nil {
		t.Errorf("want the sidecar key secret mounted read-only at %s (subPath sidecar.jwk)", keyPath)
	}
	// The licensee's enrolment: a file in a read-only secret volume (not a
	// subPath mount, so that a renewed secret reaches the running sidecar,
	// which re-reads the file at every token request).
	enrolment := args["enrolment"]
	if i := strings.LastIndexByte(enrolment, '/'); i <= 0 {
		t.Errorf("--enrolment=%q: want a file from a secret", enrolment)
	} else if m, ok := mounts[enrolment[:i]]; !ok || !m.ReadOnly || m.SubPath != "" || vols[m.Name].Secret == nil {
		t.Errorf("--enrolment=%s: want it in a read-only secret volume mounted without subPath", enrolment)
	}
	// The local bearer token: a file from a secret for the sidecar, the
	// same secret as env for the trainer.
	tokenFile := args["local-token-file"]
	tokenDir := tokenFile[:strings.LastIndexByte(tokenFile, '/')]
	tokenSecret := ""
	if m, ok := mounts[tokenDir]; !ok || !m.ReadOnly || vols[m.Name].Secret == nil {
		t.Errorf("--local-token-file=%s: want it in a read-only secret volume", tokenFile)
	} else {
		tokenSecret = vols[m.Name].Secret.SecretName
	}

	// Secrets: origin credentials and the local bearer token come from
	// secrets, never literal values.
	secretEnv := map[string]string{}
	for _, e := range sc.Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			secretEnv[e.Name] = e.ValueFrom.SecretKeyRef.Name
		} else if strings.Contains(e.Name, "SECRET") || strings.Contains(e.Name, "TOKEN") {
			t.Errorf("env %s is a literal; secrets must come from a Secret", e.Name)
		}
	}
	for _, name := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} {
		if secretEnv[name] == "" {
			t.Errorf("sidecar env %s: want a secretKeyRef", name)
		}
	}

	// The trainer talks to the sidecar on loopback with the same token.
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("containers = %d, want 1 trainer", len(pod.Spec.Containers))
	}
	tr := pod.Spec.Containers[0]
	env := map[string]corev1.EnvVar{}
	for _, e := range tr.Env {
		env[e.Name] = e
	}
	if got := env["PROVGATE_SIDECAR_URL"].Value; got != "http://127.0.0.1:"+itoa(port.ContainerPort) {
		t.Errorf("trainer PROVGATE_SIDECAR_URL = %q, want the sidecar's port on loopback", got)
	}
	if ref := env["PROVGATE_SIDECAR_TOKEN"].ValueFrom; tokenSecret == "" || ref == nil || ref.SecretKeyRef == nil || ref.SecretKeyRef.Name != tokenSecret {
		t.Errorf("trainer PROVGATE_SIDECAR_TOKEN must come from the sidecar's token secret %q", tokenSecret)
	}
	if env["PROVGATE_CONTRACT"].Value != args["contract"] {
		t.Errorf("trainer contract %q != sidecar --contract %q", env["PROVGATE_CONTRACT"].Value, args["contract"])
	}
	if pod.Spec.SecurityContext == nil || pod.Spec.SecurityContext.RunAsNonRoot == nil || !*pod.Spec.SecurityContext.RunAsNonRoot {
		t.Error("pod must run as non-root")
	}
}

// TestPodUsesRealFlags checks the sidecar's command line and PROVGATE_
// variables against the flags of the provgate binary built from this tree.
func TestPodUsesRealFlags(t *testing.T) {
	pod := decodePod(t, "pod.yaml")
	bin := clicheck.Build(t, t.TempDir())
	sc := pod.Spec.InitContainers[0]
	used := clicheck.CheckArgs(t, bin, sc.Args)
	for _, f := range []string{"registry", "contract", "purpose", "state-dir", "cache-dir", "cache-size", "listen", "local-token-file", "enrolment"} {
		if !used[f] {
			t.Errorf("sidecar args lack --%s", f)
		}
	}
	var env []string
	for _, e := range sc.Env {
		env = append(env, e.Name)
	}
	clicheck.CheckEnv(t, bin, []string{"serve"}, env)
}

func flagValues(args []string) map[string]string {
	out := map[string]string{}
	for i := 0; i < len(args); i++ {
		name, val, ok := strings.Cut(strings.TrimLeft(args[i], "-"), "=")
		if !ok && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
			val = args[i+1]
			i++
		}
		out[name] = val
	}
	return out
}

func parseGiB(t *testing.T, s string) int64 {
	t.Helper()
	n, ok := strings.CutSuffix(s, "GiB")
	if !ok {
		t.Fatalf("--cache-size %q: the example uses GiB", s)
	}
	var v int64
	for _, c := range n {
		if c < '0' || c > '9' {
			t.Fatalf("--cache-size %q: not a whole number of GiB", s)
		}
		v = v*10 + int64(c-'0')
	}
	return v << 30
}

func itoa(n int32) string { return strconv.Itoa(int(n)) }

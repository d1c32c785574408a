package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"

	"github.com/provgate/provgate/internal/clicheck"
	"github.com/provgate/provgate/internal/sidecar"
	"github.com/provgate/provgate/registry"
	"github.com/provgate/provgate/registry/registrytest"
)

// strictDecode decodes one YAML document into v, refusing any field the
// API type does not have.
func strictDecode(t *testing.T, doc []byte, v any) {
	t.Helper()
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("strict decode into %T: %v", v, err)
	}
}

type manifests struct {
	deploy  *appsv1.Deployment
	service *corev1.Service
	pdb     *policyv1.PodDisruptionBudget
	cron    *batchv1.CronJob
}

func decodeManifests(t *testing.T, raw []byte) manifests {
	t.Helper()
	var m manifests
	for _, doc := range bytes.Split(raw, []byte("\n---\n")) {
		var meta struct{ APIVersion, Kind string }
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatal(err)
		}
		switch meta.APIVersion + " " + meta.Kind {
		case "apps/v1 Deployment":
			m.deploy = &appsv1.Deployment{}
			strictDecode(t, doc, m.deploy)
		case "v1 Service":
			m.service = &corev1.Service{}
			strictDecode(t, doc, m.service)
		case "policy/v1 PodDisruptionBudget":
			m.pdb = &policyv1.PodDisruptionBudget{}
			strictDecode(t, doc, m.pdb)
		case "batch/v1 CronJob":
			m.cron = &batchv1.CronJob{}
			strictDecode(t, doc, m.cron)
		default:
			t.Fatalf("unexpected document %s %s", meta.APIVersion, meta.Kind)
		}
	}
	if m.deploy == nil || m.service == nil || m.pdb == nil || m.cron == nil {
		t.Fatal("want a Deployment, a Service, a PodDisruptionBudget and a CronJob")
	}
	return m
}

func readManifests(t *testing.T) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("kubernetes", "registry.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestStrictDecodeRefusesUnknownFields(t *testing.T) {
	raw := bytes.Replace(readManifests(t), []byte("livenessProbe:"), []byte("livenesProbe:"), 1)
	js, err := yaml.YAMLToJSONStrict(bytes.Split(raw, []byte("\n---\n"))[0])
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	var d appsv1.Deployment
	if err := dec.Decode(&d); err == nil || !strings.Contains(err.Error(), "livenesProbe") {
		t.Fatalf("decoding a misspelt field: err = %v, want unknown field livenesProbe", err)
	}
}

var envRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// checkContainer checks what every provgate container must have: real
// flags, secrets only from Secrets (the DSN through an env var the args
// reference), no root, resources.
func checkContainer(t *testing.T, bin string, pod *corev1.PodSpec, c *corev1.Container) map[string]string {
	t.Helper()
	clicheck.CheckArgs(t, bin, c.Args)
	sub, _ := clicheck.Split(c.Args)
	var envNames []string
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
		envNames = append(envNames, e.Name)
		secret := e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil
		for _, word := range []string{"SECRET", "TOKEN", "DSN", "PASSWORD", "KEY_ID"} {
			if strings.Contains(e.Name, word) && !secret {
				t.Errorf("%s: env %s is a literal; secrets must come from a Secret", c.Name, e.Name)
			}
		}
	}
	clicheck.CheckEnv(t, bin, sub, envNames)
	args := map[string]string{}
	for _, a := range c.Args[len(sub):] {
		name, val, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		args[name] = val
		for _, m := range envRef.FindAllStringSubmatch(a, -1) {
			if _, ok := env[m[1]]; !ok {
				t.Errorf("%s: %s references $(%s), which the container's env does not define (Kubernetes leaves it unexpanded)", c.Name, a, m[1])
			}
		}
	}
	m := envRef.FindStringSubmatch(args["db"])
	if m == nil || args["db"] != m[0] {
		t.Errorf("%s: --db=%q: want the DSN as $(VAR) from a Secret env var", c.Name, args["db"])
	} else if ref := env[m[1]].ValueFrom; ref == nil || ref.SecretKeyRef == nil {
		t.Errorf("%s: --db comes from env %s, which is not from a Secret", c.Name, m[1])
	}
	sc := pod.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser == 0 {
		t.Errorf("%s: the pod must run as a non-root user", c.Name)
	}
	if cs := c.SecurityContext; cs == nil || cs.AllowPrivilegeEscalation == nil || *cs.AllowPrivilegeEscalation ||
		cs.ReadOnlyRootFilesystem == nil || !*cs.ReadOnlyRootFilesystem || cs.Capabilities == nil || !slices.Contains(cs.Capabilities.Drop, "ALL") {
		t.Errorf("%s: want no privilege escalation, a read-only root filesystem and all capabilities dropped", c.Name)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("%s: want cpu and memory requests and a memory limit", c.Name)
	}
	return args
}

// TestRegistryManifests: the registry's Deployment, Service, PDB and
// publish-tiles CronJob decode strictly, use real flags, take the DSN,
// the signing key and the admin token from Secrets, and probe the health
// endpoint a real registry serves.
func TestRegistryManifests(t *testing.T) {
	m := decodeManifests(t, readManifests(t))
	bin := clicheck.Build(t, t.TempDir())

	d := m.deploy
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 3 {
		t.Errorf("replicas = %v, want 3", d.Spec.Replicas)
	}
	pod := &d.Spec.Template.Spec
	labels := d.Spec.Template.Labels
	for k, v := range d.Spec.Selector.MatchLabels {
		if labels[k] != v {
			t.Errorf("the Deployment's selector %s=%s does not match its pods", k, v)
		}
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("containers = %d, want 1", len(pod.Containers))
	}
	c := &pod.Containers[0]
	if len(c.Args) == 0 || c.Args[0] != "registry" {
		t.Fatalf("args = %q, want provgate registry ...", c.Args)
	}
	args := checkContainer(t, bin, pod, c)
	if len(c.Ports) != 1 || !strings.HasSuffix(args["listen"], ":"+itoa(c.Ports[0].ContainerPort)) {
		t.Fatalf("--listen=%q does not match the container port %v", args["listen"], c.Ports)
	}
	port := c.Ports[0]

	// Key and admin token: files in read-only secret volumes.
	vols := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		vols[v.Name] = v
	}
	for _, flag := range []string{"key", "admin-token-file"} {
		p := args[flag]
		found := false
		for _, vm := range c.VolumeMounts {
			if strings.HasPrefix(p, vm.MountPath+"/") && vm.ReadOnly && vols[vm.Name].Secret != nil {
				found = true
			}
		}
		if !found {
			t.Errorf("--%s=%s: want a file in a read-only secret volume", flag, p)
		}
	}

	// Probes: on the container's port, on paths a real registry answers 200.
	h := registrytest.Start(t)
	for name, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s probe: want an httpGet probe", name)
			continue
		}
		if p.HTTPGet.Port.String() != port.Name && p.HTTPGet.Port.IntValue() != int(port.ContainerPort) {
			t.Errorf("%s probe port = %s, want %s", name, p.HTTPGet.Port.String(), port.Name)
		}
		resp, err := http.Get(h.URL + p.HTTPGet.Path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s probe %s: a running registry answers %s", name, p.HTTPGet.Path, resp.Status)
		}
	}

	// Service and PDB select the Deployment's pods.
	for k, v := range m.service.Spec.Selector {
		if labels[k] != v {
			t.Errorf("the Service's selector %s=%s matches no registry pod", k, v)
		}
	}
	if len(m.service.Spec.Ports) != 1 || (m.service.Spec.Ports[0].TargetPort.String() != port.Name && m.service.Spec.Ports[0].TargetPort.IntValue() != int(port.ContainerPort)) {
		t.Errorf("the Service's targetPort %v is not the registry's port %s", m.service.Spec.Ports, port.Name)
	}
	if m.pdb.Spec.Selector == nil || !equalMaps(m.pdb.Spec.Selector.MatchLabels, d.Spec.Selector.MatchLabels) {
		t.Errorf("the PDB's selector %v is not the Deployment's %v", m.pdb.Spec.Selector, d.Spec.Selector.MatchLabels)
	}
	if mn := m.pdb.Spec.MinAvailable; mn == nil || mn.IntValue() < 1 || mn.IntValue() >= int(*d.Spec.Replicas) {
		t.Errorf("PDB minAvailable = %v: want at least 1 and fewer than the replicas (or no node drain ever proceeds)", mn)
	}

	// The publish-tiles CronJob.
	jp := &m.cron.Spec.JobTemplate.Spec.Template.Spec
	if len(jp.Containers) != 1 || len(jp.Containers[0].Args) < 2 || jp.Containers[0].Args[1] != "publish-tiles" {
		t.Fatalf("CronJob: want one container running provgate registry publish-tiles")
	}
	if m.cron.Spec.ConcurrencyPolicy != batchv1.ForbidConcurrent {
		t.Errorf("CronJob concurrencyPolicy = %q, want Forbid", m.cron.Spec.ConcurrencyPolicy)
	}
	cargs := checkContainer(t, bin, jp, &jp.Containers[0])
	if cargs["bucket"] == "" {
		t.Error("publish-tiles: --bucket is required")
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func itoa(n int32) string { return strconv.Itoa(int(n)) }

// ---- the Grafana dashboard

var (
	promString  = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	promMatcher = regexp.MustCompile(`\{[^}]*\}`)
	promRange   = regexp.MustCompile(`\[[^\]]*\]`)
	promOffset  = regexp.MustCompile(`\boffset\s+-?[0-9a-z]+`)
	promGroup   = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promNumber  = regexp.MustCompile(`(^|[^A-Za-z0-9_:])[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?`)
	promIdent   = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)
	promWords   = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true, "by": true, "without": true,
		"on": true, "ignoring": true, "group_left": true, "group_right": true, "inf": true, "nan": true}
)

// metricNames returns the metric names a PromQL expression reads.
func metricNames(expr string) []string {
	s := promString.ReplaceAllString(expr, `""`)
	s = promMatcher.ReplaceAllString(s, " ")
	s = promRange.ReplaceAllString(s, " ")
	s = promOffset.ReplaceAllString(s, " ")
	s = promGroup.ReplaceAllString(s, " ")
	s = promNumber.ReplaceAllString(s, "$1 ")
	var out []string
	for _, loc := range promIdent.FindAllStringIndex(s, -1) {
		name := s[loc[0]:loc[1]]
		rest := strings.TrimLeft(s[loc[1]:], " ")
		if strings.HasPrefix(rest, "(") || promWords[strings.ToLower(name)] {
			continue // a function or a keyword
		}
		out = append(out, name)
	}
	return out
}

func TestMetricNamesExtractor(t *testing.T) {
	for expr, want := range map[string][]string{
		`sum by (le, route) (rate(a_bucket{route!="GET /x/{id}"}[$__rate_interval]))`: {"a_bucket"},
		`b / clamp_min(c + d, 1e-9) - time()`:                                         {"b", "c", "d"},
		`max by (contract, state) (s{job=~"$j"}) == 1 and on (x) y offset 5m`:         {"s", "y"},
	} {
		if got := metricNames(expr); !slices.Equal(got, want) {
			t.Errorf("metricNames(%q) = %q, want %q", expr, got, want)
		}
	}
}

// dashboardQueries walks a Grafana dashboard for PromQL: panel targets
// (rows nest panels) and query variables.
func dashboardQueries(t *testing.T, path string) []string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels     []json.RawMessage `json:"panels"`
		Templating struct {
			List []struct {
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var out []string
	var walk func([]json.RawMessage)
	walk = func(panels []json.RawMessage) {
		for _, p := range panels {
			var panel struct {
				Title   string            `json:"title"`
				Panels  []json.RawMessage `json:"panels"`
				Targets []struct {
					Expr string `json:"expr"`
				} `json:"targets"`
			}
			if err := json.Unmarshal(p, &panel); err != nil {
				t.Fatal(err)
			}
			for _, tg := range panel.Targets {
				if tg.Expr == "" {
					t.Errorf("panel %q: a target without a PromQL expr", panel.Title)
				}
				out = append(out, tg.Expr)
			}
			walk(panel.Panels)
		}
	}
	walk(d.Panels)
	labelValues := regexp.MustCompile(`label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)`)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if json.Unmarshal(v.Query, &q) != nil {
			json.Unmarshal(v.Query, &q.Query)
		}
		if m := labelValues.FindStringSubmatch(q.Query); m != nil {
			out = append(out, m[1])
		}
	}
	return out
}

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

// described is every metric name reg's collectors describe.
func described(reg *prometheus.Registry) map[string]bool {
	ch := make(chan *prometheus.Desc)
	go func() {
		reg.Describe(ch)
		close(ch)
	}()
	out := map[string]bool{}
	for d := range ch {
		if m := fqName.FindStringSubmatch(d.String()); m != nil {
			out[m[1]] = true
		}
	}
	return out
}

// TestGrafanaDashboardMetrics: every metric the dashboard queries is one
// a running sidecar or registry registers (and serves on /metrics).
func TestGrafanaDashboardMetrics(t *testing.T) {
	regMetrics := prometheus.NewRegistry()
	regMetrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	h := registrytest.Start(t, registrytest.WithConfig(func(c *registry.Config) { c.Metrics = regMetrics }))

	scMetrics := prometheus.NewRegistry()
	scMetrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sc, err := sidecar.Start(ctx, sidecar.Config{Registry: h.URL, Contracts: []string{"did:example:dashboard"}, Purpose: "training",
		StateDir: filepath.Join(dir, "state"), CacheDir: filepath.Join(dir, "cache"), CacheSize: 1 << 20,
		Listen: "127.0.0.1:0", TrustOnFirstUse: true, Metrics: scMetrics})
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Shutdown(context.Background())

	exported := described(regMetrics)
	for name := range described(scMetrics) {
		exported[name] = true
	}
	for _, u := range []string{h.URL + "/metrics", sc.URL() + "/metrics"} {
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte("process_resident_memory_bytes")) {
			t.Fatalf("GET %s = %s", u, resp.Status)
		}
	}
	for _, want := range []string{"provgate_registry_requests_total", "provgate_requests_total", "provgate_log_refusals_total"} {
		if !exported[want] {
			t.Fatalf("%s is not among the described metrics: the collection is broken", want)
		}
	}

	queries := dashboardQueries(t, filepath.Join("grafana", "provgate.json"))
	if len(queries) < 20 {
		t.Fatalf("%d queries in the dashboard", len(queries))
	}
	seen := map[string]bool{}
	for _, q := range queries {
		names := metricNames(q)
		if len(names) == 0 {
			t.Errorf("query %q reads no metric", q)
		}
		for _, n := range names {
			seen[n] = true
			base := n
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if b, ok := strings.CutSuffix(n, suffix); ok && exported[b] {
					base = b
				}
			}
			if !exported[base] {
				t.Errorf("the dashboard queries %s, which neither the sidecar nor the registry exports (query %q)", n, q)
			}
		}
	}
	// The registry's own metrics are on the dashboard.
	for _, n := range []string{"provgate_registry_requests_total", "provgate_registry_request_duration_seconds_bucket", "provgate_registry_appends_total", "provgate_registry_log_size"} {
		if !seen[n] {
			t.Errorf("the dashboard has no panel on %s", n)
		}
	}
}

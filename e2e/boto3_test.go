package e2e_test

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"testing"
)

// TestBoto3ReadsThroughFacade runs Debian's boto3 against the S3 facade:
// paginated ListObjectsV2, GetObject, HeadObject, a ranged GetObject and a
// missing key, and checks every byte against what was contributed.
func TestBoto3ReadsThroughFacade(t *testing.T) {
	py := debianPython(t, "boto3")
	e := newEnv(t, envOpt{})
	want := map[string][]byte{}
	for i := range 20 {
		name := fmt.Sprintf("docs/%02d.txt", i)
		want[e.c.Origin.Key(name)] = randomBytes(t, 100+i*50)
		e.put(name, want[e.c.Origin.Key(name)], i%3 == 0)
	}
	sc := e.sidecar(nil)
	out, err := exec.Command(py, "testdata/boto3_read.py", sc.URL(), e.bucket, e.c.Origin.Prefix).Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			t.Fatalf("boto3 script: %v\n%s", err, ee.Stderr)
		}
		t.Fatal(err)
	}
	var got struct {
		Objects map[string]struct {
			Size   int64  `json:"size"`
			SHA256 string `json:"sha256"`
		} `json:"objects"`
		Pages       int    `json:"pages"`
		HeadLength  int64  `json:"head_length"`
		RangeSHA256 string `json:"range_sha256"`
		Missing     string `json:"missing"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("script output %q: %v", out, err)
	}
	if len(got.Objects) != len(want) || got.Pages != 3 {
		t.Fatalf("boto3 listed %d objects in %d pages, want %d in 3", len(got.Objects), got.Pages, len(want))
	}
	for key, b := range want {
		o := got.Objects[key]
		if o.Size != int64(len(b)) || o.SHA256 != sha(b) {
			t.Errorf("%s: boto3 saw size %d sha %s, want %d %s", key, o.Size, o.SHA256, len(b), sha(b))
		}
	}
	first := e.c.Origin.Key("docs/00.txt")
	if got.HeadLength != int64(len(want[first])) || got.RangeSHA256 != sha(want[first][2:6]) {
		t.Errorf("head %d / range sha %s, want %d / %s", got.HeadLength, got.RangeSHA256, len(want[first]), sha(want[first][2:6]))
	}
	if got.Missing != "NoSuchKey" {
		t.Errorf("missing key: %s, want NoSuchKey", got.Missing)
	}
}

// debianPython returns Debian's python3 after checking that it imports
// module; the project's scripts/install-deps.sh installs it. It fails (never
// skips) when the module is missing.
func debianPython(t testing.TB, module string) string {
	t.Helper()
	const py = "/usr/bin/python3"
	if out, err := exec.Command(py, "-c", "import "+module).CombinedOutput(); err != nil {
		t.Fatalf("%s cannot import %s (run scripts/install-deps.sh): %v\n%s", py, module, err, out)
	}
	return py
}

package main

import (
	"strings"
	"testing"
)

func TestRatios(t *testing.T) {
	in := `goos: linux
BenchmarkWarm_target0.9/1MiB/baseline-2   	    1000	   2000000 ns/op	 524.29 MB/s
BenchmarkWarm_target0.9/1MiB/baseline-2   	    1000	   1000000 ns/op	 524.29 MB/s
BenchmarkWarm_target0.9/1MiB/provgate-2   	    1000	   1250000 ns/op	 419.43 MB/s
BenchmarkCold/baseline-2 	 10	 100 ns/op
BenchmarkCold/provgate-2 	 10	 50 ns/op
BenchmarkLonely/provgate-2 	 10	 50 ns/op
BenchmarkDataLoader/selfhosted/16KiB_target0.85-2 	 1	 9000000000 ns/op	 0.7100 ratio	 12000 sidecar-samples/s
BenchmarkDataLoader/selfhosted/16KiB_target0.85-2 	 1	 8000000000 ns/op	 0.9000 ratio	 12000 sidecar-samples/s
PASS
`
	var out strings.Builder
	if err := run(strings.NewReader(in), &out); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	for _, want := range []string{
		"BenchmarkWarm_target0.9/1MiB", "0.80x", "MISSED", // fastest baseline run (1ms) against 1.25ms
		"BenchmarkCold", "2.00x",
		"BenchmarkDataLoader/selfhosted/16KiB_target0.85", "0.90x", "MET", // the best of its runs' ratio metric
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "Lonely") {
		t.Errorf("a benchmark without a baseline was reported:\n%s", got)
	}
}

func TestNoPairs(t *testing.T) {
	if err := run(strings.NewReader("PASS\n"), &strings.Builder{}); err == nil {
		t.Fatal("want an error when there is nothing to compare")
	}
}

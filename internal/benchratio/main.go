// Command benchratio reads `go test -bench` output and prints, for every
// benchmark that has a "baseline" sub-benchmark and a "provgate" one, the
// throughput ratio provgate/baseline (>1 is faster than the baseline), with
// the target from DESIGN.md when one is named in the benchmark's name
// (…_target0.9).
//
//	go test -run '^$' -bench . ./... | go run ./internal/benchratio
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "benchratio:", err)
		os.Exit(1)
	}
}

// result is the best (lowest ns/op) of a sub-benchmark's runs.
type result struct {
	nsPerOp float64
	extra   map[string]float64
}

var lineRE = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+\d+\s+(.*)$`)

// parse collects results by full benchmark name (without the -GOMAXPROCS
// suffix), keeping the fastest run of each.
func parse(r io.Reader) (map[string]result, error) {
	out := map[string]result{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		m := lineRE.FindStringSubmatch(strings.TrimSpace(sc.Text()))
		if m == nil {
			continue
		}
		fields := strings.Fields(m[2])
		res := result{extra: map[string]float64{}}
		for i := 0; i+1 < len(fields); i += 2 {
			v, err := strconv.ParseFloat(fields[i], 64)
			if err != nil {
				continue
			}
			if fields[i+1] == "ns/op" {
				res.nsPerOp = v
			} else {
				res.extra[fields[i+1]] = v
			}
		}
		if res.nsPerOp == 0 {
			continue
		}
		if old, ok := out[m[1]]; !ok || res.nsPerOp < old.nsPerOp {
			out[m[1]] = res
		}
	}
	return out, sc.Err()
}

var targetRE = regexp.MustCompile(`_target(\d+(?:\.\d+)?)`)

func run(in io.Reader, w io.Writer) error {
	results, err := parse(in)
	if err != nil {
		return err
	}
	var names []string
	for name := range results {
		if base, ok := strings.CutSuffix(name, "/provgate"); ok {
			if _, ok := results[base+"/baseline"]; ok {
				names = append(names, base)
			}
		}
	}
	if len(names) == 0 {
		return fmt.Errorf("no baseline/provgate pairs in the input")
	}
	sort.Strings(names)
	fmt.Fprintf(w, "%-60s %14s %14s %8s %8s\n", "benchmark", "baseline ns/op", "provgate ns/op", "ratio", "target")
	for _, base := range names {
		b, p := results[base+"/baseline"], results[base+"/provgate"]
		ratio := b.nsPerOp / p.nsPerOp
		target, verdict := "-", ""
		if m := targetRE.FindStringSubmatch(base); m != nil {
			target = m[1]
			t, _ := strconv.ParseFloat(m[1], 64)
			verdict = " MET"
			if ratio < t {
				verdict = " MISSED"
			}
		}
		fmt.Fprintf(w, "%-60s %14.0f %14.0f %7.2fx %8s%s\n", base, b.nsPerOp, p.nsPerOp, ratio, target, verdict)
	}
	return nil
}

// Command benchratio reads `go test -bench` output and prints, for every
// benchmark that has a "baseline" sub-benchmark and a "provgate" one, the
// throughput ratio provgate/baseline (>1 is faster than the baseline), with
// the target when one is named in the benchmark's name (…_target0.9).
// A benchmark that measures both sides itself and reports a "ratio"
// metric (the DataLoader's) is printed with that ratio, the best of its
// runs.
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
// suffix), keeping the fastest run of each, and the best "ratio" metric of
// each benchmark that reports one.
func parse(r io.Reader) (map[string]result, map[string]float64, error) {
	out := map[string]result{}
	ratios := map[string]float64{}
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
		if v, ok := res.extra["ratio"]; ok && v > ratios[m[1]] {
			ratios[m[1]] = v
		}
		if res.nsPerOp == 0 {
			continue
		}
		if old, ok := out[m[1]]; !ok || res.nsPerOp < old.nsPerOp {
			out[m[1]] = res
		}
	}
	return out, ratios, sc.Err()
}

var targetRE = regexp.MustCompile(`_target(\d+(?:\.\d+)?)`)

func run(in io.Reader, w io.Writer) error {
	results, ratios, err := parse(in)
	if err != nil {
		return err
	}
	type row struct {
		name       string
		base, prov string // ns/op, or "-"
		ratio      float64
	}
	var rows []row
	for name := range results {
		if base, ok := strings.CutSuffix(name, "/provgate"); ok {
			if b, ok := results[base+"/baseline"]; ok {
				p := results[name]
				rows = append(rows, row{base, fmt.Sprintf("%.0f", b.nsPerOp), fmt.Sprintf("%.0f", p.nsPerOp), b.nsPerOp / p.nsPerOp})
			}
		}
	}
	for name, ratio := range ratios {
		rows = append(rows, row{name, "-", "-", ratio})
	}
	if len(rows) == 0 {
		return fmt.Errorf("no baseline/provgate pairs or ratio metrics in the input")
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].name < rows[j].name })
	fmt.Fprintf(w, "%-60s %14s %14s %8s %8s\n", "benchmark", "baseline ns/op", "provgate ns/op", "ratio", "target")
	for _, r := range rows {
		target, verdict := "-", ""
		if m := targetRE.FindStringSubmatch(r.name); m != nil {
			target = m[1]
			t, _ := strconv.ParseFloat(m[1], 64)
			verdict = " MET"
			if r.ratio < t {
				verdict = " MISSED"
			}
		}
		fmt.Fprintf(w, "%-60s %14s %14s %7.2fx %8s%s\n", r.name, r.base, r.prov, r.ratio, target, verdict)
	}
	return nil
}

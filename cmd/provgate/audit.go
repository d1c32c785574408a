package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/provgate/provgate/audit"
	"github.com/provgate/provgate/cache"
	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/meter"
	"github.com/provgate/provgate/verify"
)

func init() {
	commands["audit"] = command{summary: "offline audit bundles of a contract and a ledger: export | verify | check", run: runAudit}
}

const auditSynopsis = `audit export|verify|check [flags]

  export --registry URL --ledger FILE --contract ID [--job J] [--epochs A-B] [--rows SEQ,...] -o FILE
         one self-contained bundle (docs/AUDIT.md): the contract's whole log up to a signed checkpoint,
         the keys it needs, the ledger's metering batches with their receipts, disclosed rows with proofs
  verify [--checkpoint-key VKEY] [--witness VKEY]... [--witness-quorum N] [--max-age D] [--json] BUNDLE
         checks everything in the bundle with no network; exits 1 naming every thing that broke
  check  --ledger FILE (--bundle FILE | --registry URL) [--contract ID] [--purpose P] [--licensee ID]
         [--cache-dir DIR] [--redaction-grace D] [--checkpoint-key VKEY] [--json]
         compliance findings: reads after a redaction, past retention, for a purpose the terms do not
         allow, beyond a quota, under terms not yet in force; exits 1 when there are any`

func runAudit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fs := newFlagSet("audit", auditSynopsis, stderr)
		if err := parseFlags(fs, args); err != nil {
			return err
		}
		return &usageError{msg: "audit: want a subcommand: export, verify or check"}
	}
	sub, args := args[0], args[1:]
	fs := newFlagSet("audit "+sub, auditSynopsis, stderr)
	registryURL := fs.String("registry", "", "export, check: the registry's base URL")
	ledgerPath := fs.String("ledger", "", "export, check: the sidecar's ledger (STATE_DIR/ledger.db)")
	contractID := fs.String("contract", "", "export, check: the contract id")
	job := fs.String("job", "", "export: only the ledger's events of this job")
	epochs := fs.String("epochs", "", "export: only the ledger's events of epochs A-B (or one epoch A)")
	rows := fs.String("rows", "", "export: ledger row seqs to disclose with their proofs, comma-separated")
	out := fs.String("o", "", "export: the bundle file to write")
	fs.StringVar(out, "out", "", "export: same as -o")
	bundlePath := fs.String("bundle", "", "check: a bundle to take the log from (verified first), instead of --registry")
	pinKey := fs.String("checkpoint-key", "", "verify, check: the log's checkpoint verifier key as you know it (from the contract as published)")
	var witnesses stringList
	fs.Var(&witnesses, "witness", "verify: verifier key (vkey) of a witness whose cosignature the checkpoint needs (repeatable)")
	quorum := fs.Int("witness-quorum", 0, "verify: how many of the --witness keys must have cosigned (0: all of them)")
	maxAge := fs.Duration("max-age", 0, "verify: refuse a checkpoint signed longer ago than this (0: no freshness check)")
	purpose := fs.String("purpose", "", "check: the purpose the sidecar asked its tokens for (its --purpose)")
	licensee := fs.String("licensee", "", "check: the licensee whose terms apply (default: the contract's only one)")
	cacheDir := fs.String("cache-dir", "", "check: the sidecar's cache dir, to find copies kept past retention")
	grace := fs.Duration("redaction-grace", 0, "check: reads this soon after a redaction was logged are not findings (the sidecar's time to see it)")
	asJSON := fs.Bool("json", false, "verify, check: print JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	switch sub {
	case "export":
		if *registryURL == "" || *ledgerPath == "" || *contractID == "" || *out == "" || fs.NArg() != 0 {
			return &usageError{msg: "audit export: --registry, --ledger, --contract and -o are required"}
		}
		opts := audit.ExportOptions{Contract: *contractID, Job: *job}
		var err error
		if opts.Epochs, err = parseEpochs(*epochs); err != nil {
			return &usageError{msg: "audit export: --epochs: " + err.Error()}
		}
		if opts.Rows, err = parseSeqs(*rows); err != nil {
			return &usageError{msg: "audit export: --rows: " + err.Error()}
		}
		return auditExport(ctx, *registryURL, *ledgerPath, *out, opts, stdout)
	case "verify":
		if fs.NArg() != 1 {
			return &usageError{msg: "audit verify: want one BUNDLE file (flags before it)"}
		}
		wp, err := witnessPolicy(witnesses, *quorum)
		if err != nil {
			return err
		}
		return auditVerify(fs.Arg(0), audit.VerifyOptions{CheckpointKey: *pinKey, Witnesses: wp, MaxAge: *maxAge}, *asJSON, stdout)
	case "check":
		if *ledgerPath == "" || (*bundlePath == "") == (*registryURL == "") || fs.NArg() != 0 {
			return &usageError{msg: "audit check: --ledger and one of --bundle or --registry are required"}
		}
		return auditCheck(ctx, checkArgs{registry: *registryURL, ledger: *ledgerPath, bundle: *bundlePath, contract: *contractID,
			purpose: *purpose, licensee: *licensee, cacheDir: *cacheDir, pinKey: *pinKey, grace: *grace}, *asJSON, stdout)
	default:
		return &usageError{msg: fmt.Sprintf("audit: unknown subcommand %q: want export, verify or check", sub)}
	}
}

func witnessPolicy(vkeys []string, quorum int) (*verify.WitnessPolicy, error) {
	if len(vkeys) == 0 {
		if quorum != 0 {
			return nil, &usageError{msg: "audit verify: --witness-quorum needs --witness keys"}
		}
		return nil, nil
	}
	wp, err := verify.NewWitnessPolicy(vkeys, quorum)
	if err != nil {
		return nil, &usageError{msg: fmt.Sprintf("audit verify: --witness: %v", err)}
	}
	return wp, nil
}

// parseEpochs reads "A-B" or "A".
func parseEpochs(s string) (*audit.EpochRange, error) {
	if s == "" {
		return nil, nil
	}
	a, b, found := strings.Cut(s, "-")
	from, err := strconv.ParseInt(a, 10, 64)
	if err != nil || from < 0 {
		return nil, fmt.Errorf("%q: want A-B or A, non-negative", s)
	}
	to := from
	if found {
		if to, err = strconv.ParseInt(b, 10, 64); err != nil || to < from {
			return nil, fmt.Errorf("%q: want A-B with A <= B", s)
		}
	}
	return &audit.EpochRange{From: from, To: to}, nil
}

func parseSeqs(s string) ([]int64, error) {
	if s == "" {
		return nil, nil
	}
	var out []int64
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.ParseInt(strings.TrimSpace(f), 10, 64)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%q is not a row seq", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func auditExport(ctx context.Context, registryURL, ledgerPath, out string, opts audit.ExportOptions, stdout io.Writer) error {
	client, err := contract.NewClient(registryURL)
	if err != nil {
		return err
	}
	l, err := meter.OpenReadOnly(ctx, ledgerPath)
	if err != nil {
		return fmt.Errorf("audit export: %w", err)
	}
	defer l.Close()
	b, err := audit.Export(ctx, client, l, opts)
	var ve *audit.VerifyError
	if err != nil && (b == nil || !errors.As(err, &ve)) {
		return err
	}
	// A bundle that does not verify is written too: in a dispute it is the
	// evidence.
	data, merr := b.Marshal()
	if merr != nil {
		return merr
	}
	if err := verify.WriteFileAtomic(out, data, 0o644); err != nil {
		return fmt.Errorf("audit export: %w", err)
	}
	if ve != nil {
		return fmt.Errorf("audit export: wrote %s, which does not verify: the registry's log and the ledger disagree: %w", out, ve)
	}
	fmt.Fprintf(stdout, "audit export: wrote %s: contract %s, %d entries, %d batches of ledger %s (%s), %d rows disclosed\n",
		out, b.Contract, len(b.Entries), len(b.Batches), b.Ledger.ID, b.Totals, len(b.Rows))
	return nil
}

func readBundle(path string) (*audit.Bundle, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return audit.Parse(f)
}

func auditVerify(path string, opts audit.VerifyOptions, asJSON bool, stdout io.Writer) error {
	b, err := readBundle(path)
	if err != nil {
		return fmt.Errorf("audit verify: %s: %w", path, err)
	}
	rep, verr := audit.Verify(b, opts)
	if asJSON {
		type problem struct {
			Where string `json:"where"`
			Error string `json:"error"`
		}
		res := struct {
			OK bool `json:"ok"`
			*audit.Report
			Problems []problem `json:"problems"`
		}{OK: verr == nil, Report: rep, Problems: []problem{}}
		var ve *audit.VerifyError
		if errors.As(verr, &ve) {
			for _, p := range ve.Problems {
				res.Problems = append(res.Problems, problem{p.Where, p.Err.Error()})
			}
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return err
		}
	}
	if verr != nil {
		return fmt.Errorf("audit verify: %s: %w", path, verr)
	}
	if asJSON {
		return nil
	}
	cp := rep.Checkpoint
	pin := "the bundle's own key, NOT pinned: pass --checkpoint-key to check it is the contract's"
	if rep.Pinned {
		pin = "the pinned key"
	}
	fmt.Fprintf(stdout, "audit verify: OK %s: %d entries (%d attestations, %d metering, %d redactions, %d revocations) match checkpoint size %d root %x signed %s by %s\n",
		rep.Contract, rep.Entries, rep.Attestations, rep.Metering, rep.Redactions, rep.Revocations, cp.Size, cp.Hash, cp.Time.UTC().Format(time.RFC3339), pin)
	if rep.Witnessed {
		fmt.Fprintln(stdout, "audit verify: witness quorum met")
	}
	fmt.Fprintf(stdout, "audit verify: %d terms versions, %d earlier checkpoints consistent; ledger %s: %d batches with receipts, %s; %d rows disclosed and proven\n",
		len(rep.Facts.Terms), rep.Checkpoints, b.Ledger.ID, rep.Batches, rep.Totals, rep.Rows)
	return nil
}

type checkArgs struct {
	registry, ledger, bundle, contract, purpose, licensee, cacheDir, pinKey string
	grace                                                                   time.Duration
}

func auditCheck(ctx context.Context, a checkArgs, asJSON bool, stdout io.Writer) error {
	l, err := meter.OpenReadOnly(ctx, a.ledger)
	if err != nil {
		return fmt.Errorf("audit check: %w", err)
	}
	defer l.Close()
	var b *audit.Bundle
	if a.bundle != "" {
		if b, err = readBundle(a.bundle); err != nil {
			return fmt.Errorf("audit check: %s: %w", a.bundle, err)
		}
		if a.contract != "" && a.contract != b.Contract {
			return fmt.Errorf("audit check: the bundle is of contract %s, not %s", b.Contract, a.contract)
		}
	} else {
		if a.contract == "" {
			return &usageError{msg: "audit check: --registry needs --contract"}
		}
		client, err := contract.NewClient(a.registry)
		if err != nil {
			return err
		}
		if b, err = audit.Export(ctx, client, l, audit.ExportOptions{Contract: a.contract}); err != nil {
			return fmt.Errorf("audit check: %w", err)
		}
	}
	rep, err := audit.Verify(b, audit.VerifyOptions{CheckpointKey: a.pinKey})
	if err != nil {
		return fmt.Errorf("audit check: %w", err)
	}
	if err := checkLicenseeNamed(rep.Facts, a.licensee); err != nil {
		return err
	}
	in := audit.CheckInput{Facts: rep.Facts, Purpose: a.purpose, Licensee: a.licensee, RedactionGrace: a.grace}
	err = l.Rows(ctx, 0, func(r *meter.Row) error {
		if r.Contract == b.Contract {
			in.Rows = append(in.Rows, *r)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("audit check: %w", err)
	}
	if a.cacheDir != "" {
		entries, err := cache.ReadJournal(a.cacheDir)
		if err != nil {
			return fmt.Errorf("audit check: %w", err)
		}
		in.Cached = []audit.CachedObject{}
		for _, e := range entries {
			if e.Contract == b.Contract {
				in.Cached = append(in.Cached, audit.CachedObject{Name: e.Name, DecodedSHA: e.DecodedSHA, Committed: e.Committed})
			}
		}
	}
	findings := audit.Check(in)
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(findings); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "KIND\tROW\tNAME\tTIME\tDETAIL")
		for _, f := range findings {
			row, name := "-", f.Name
			if f.Seq != 0 {
				row = strconv.FormatInt(f.Seq, 10)
			}
			if name == "" {
				name = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", f.Kind, row, name, f.Time.Format(time.RFC3339), f.Detail)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if len(findings) > 0 {
		return fmt.Errorf("audit check: %s: %d findings in ledger %s (%d rows)", b.Contract, len(findings), l.ID(), len(in.Rows))
	}
	if !asJSON {
		fmt.Fprintf(stdout, "audit check: OK %s: no findings in ledger %s (%d rows)\n", b.Contract, l.ID(), len(in.Rows))
	}
	return nil
}

// checkLicenseeNamed refuses a check whose licensee is unknown, or left to
// guess among several: the quota, expiry and purpose checks are one
// licensee's, and leaving them out unsaid would pass what they would find.
func checkLicenseeNamed(f *audit.Facts, licensee string) error {
	if f == nil || len(f.Terms) == 0 {
		return nil
	}
	var ids []string
	for _, t := range f.Terms {
		for _, l := range t.Terms.Licensees {
			if !slices.Contains(ids, l.ID) {
				ids = append(ids, l.ID)
			}
		}
	}
	switch {
	case licensee != "" && !slices.Contains(ids, licensee):
		return &usageError{msg: fmt.Sprintf("audit check: --licensee %q is no licensee of the contract (%s)", licensee, strings.Join(ids, ", "))}
	case licensee == "" && len(ids) > 1:
		return &usageError{msg: fmt.Sprintf("audit check: the contract has %d licensees (%s); name whose terms apply with --licensee", len(ids), strings.Join(ids, ", "))}
	}
	return nil
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/meter"
	"github.com/provgate/provgate/verify"
)

func init() {
	commands["meter"] = command{summary: "read, check and re-send a metering ledger offline: report | export | replay | verify | reconcile", run: runMeter}
}

const meterSynopsis = `meter report|export|replay|verify|reconcile --ledger FILE [flags]

  report   per contract, epoch and job: events, samples, bytes, units, cost, unsynced (--json for JSON)
  export   every row as JSON lines (schema provgate.meter.export/v1; see meter.ExportRow)
  replay   send the unsynced rows to the registry (--all: every row; the registry counts each event once
           per sending key, so sign with the sidecar's own --key)
           --to URL --key FILE and --purpose P (a token is requested with the key) or --token-file FILE
  verify   check the hash chain; exits 1 naming the first edited, deleted or inserted row
  reconcile --registry URL [--contract ID] [--json]
           the ledger's metering receipts against the registry's log: names every batch missing from it,
           different in it, or in it without a receipt, and a log that does not extend the receipted
           checkpoint; exits 1 on any difference, 0 when they agree`

func runMeter(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fs := newFlagSet("meter", meterSynopsis, stderr)
		if err := parseFlags(fs, args); err != nil {
			return err
		}
		return &usageError{msg: "meter: want a subcommand: report, export, replay, verify or reconcile"}
	}
	sub, args := args[0], args[1:]
	fs := newFlagSet("meter "+sub, meterSynopsis, stderr)
	ledger := fs.String("ledger", "", "the ledger file (the sidecar's STATE_DIR/ledger.db)")
	asJSON := fs.Bool("json", false, "report, verify: print JSON")
	to := fs.String("to", "", "replay: the registry's base URL")
	keyFile := fs.String("key", "", "replay: the sidecar's private JWK (signs batches and proofs)")
	purpose := fs.String("purpose", "", "replay: request a token for this purpose")
	tokenFile := fs.String("token-file", "", "replay: a capability token bound to --key, instead of --purpose")
	var enrolments stringList
	fs.Var(&enrolments, "enrolment", "replay: a licensee's enrolment of --key (file, from provgate enroll; repeatable, one per contract), sent with --purpose's token requests")
	all := fs.Bool("all", false, "replay: re-send every row, synced or not")
	after := fs.Int64("after", 0, "export: only rows with seq > AFTER")
	registryURL := fs.String("registry", "", "reconcile: the registry's base URL")
	contractID := fs.String("contract", "", "reconcile: only this contract (default: every contract in the ledger)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *ledger == "" || fs.NArg() != 0 {
		return &usageError{msg: "meter " + sub + ": --ledger FILE is required and takes no arguments"}
	}
	switch sub {
	case "report":
		return meterReport(ctx, *ledger, *asJSON, stdout)
	case "export":
		return meterExport(ctx, *ledger, *after, stdout)
	case "verify":
		return meterVerify(ctx, *ledger, *asJSON, stdout)
	case "replay":
		if *to == "" || *keyFile == "" || (*purpose == "") == (*tokenFile == "") {
			return &usageError{msg: "meter replay: --to URL, --key FILE and one of --purpose P or --token-file FILE are required"}
		}
		return meterReplay(ctx, *ledger, *to, *keyFile, *purpose, *tokenFile, enrolments, *all, stdout)
	case "reconcile":
		if *registryURL == "" {
			return &usageError{msg: "meter reconcile: --registry URL is required"}
		}
		return meterReconcile(ctx, *ledger, *registryURL, *contractID, *asJSON, stdout)
	default:
		return &usageError{msg: fmt.Sprintf("meter: unknown subcommand %q: want report, export, replay, verify or reconcile", sub)}
	}
}

func meterReport(ctx context.Context, path string, asJSON bool, stdout io.Writer) error {
	l, err := meter.OpenReadOnly(ctx, path)
	if err != nil {
		return fmt.Errorf("meter report: %w", err)
	}
	defer l.Close()
	lines, err := l.Report(ctx)
	if err != nil {
		return fmt.Errorf("meter report: %w", err)
	}
	if asJSON {
		if lines == nil {
			lines = []meter.ReportLine{}
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(lines)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "CONTRACT\tEPOCH\tJOB\tEVENTS\tSERVED\tNOT SERVED\tSAMPLES\tBYTES\tDISTINCT\tUNITS\tCOST USD\tUNSYNCED\tCLOSED\t")
	for _, ln := range lines {
		job := ln.Job
		if job == "" {
			job = "-"
		}
		closed := "no"
		if ln.Closed {
			closed = "yes"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%d\t%s\t\n", ln.Contract, ln.Epoch, job, ln.Events, ln.Served,
			ln.Refused, ln.Samples, ln.Bytes, ln.Distinct, ln.Units, strings.TrimPrefix(meter.FormatUSD(ln.CostNanoUSD), "$"), ln.Unsynced, closed)
	}
	return tw.Flush()
}

func meterExport(ctx context.Context, path string, after int64, stdout io.Writer) error {
	l, err := meter.OpenReadOnly(ctx, path)
	if err != nil {
		return fmt.Errorf("meter export: %w", err)
	}
	defer l.Close()
	enc := json.NewEncoder(stdout)
	if err := l.Export(ctx, after, func(r meter.ExportRow) error { return enc.Encode(r) }); err != nil {
		return fmt.Errorf("meter export: %w", err)
	}
	return nil
}

func meterVerify(ctx context.Context, path string, asJSON bool, stdout io.Writer) error {
	l, err := meter.OpenReadOnly(ctx, path)
	if err != nil {
		return fmt.Errorf("meter verify: %w", err)
	}
	defer l.Close()
	res, err := l.Verify(ctx)
	var te *meter.TamperError
	if err != nil && !errors.As(err, &te) {
		return fmt.Errorf("meter verify: %w", err)
	}
	if asJSON {
		out := map[string]any{"ok": err == nil, "ledger_id": l.ID()}
		if te != nil {
			out["seq"], out["id"], out["reason"] = te.Seq, te.ID, te.Reason
		} else {
			out["rows"], out["first_seq"], out["head_seq"], out["head_hash"] = res.Rows, res.FirstSeq, res.HeadSeq, res.HeadHash
		}
		b, _ := json.MarshalIndent(out, "", "  ")
		fmt.Fprintf(stdout, "%s\n", b)
	} else if te == nil {
		fmt.Fprintf(stdout, "ok: %d rows chained (seq %d to %d), head %s\n", res.Rows, res.FirstSeq, res.HeadSeq, res.HeadHash)
	}
	if te != nil {
		return fmt.Errorf("meter verify: %w", te)
	}
	return nil
}

// fileToken is a capability token read from a file.
type fileToken string

func (t fileToken) Token(context.Context, string) (string, error) { return string(t), nil }

func meterReplay(ctx context.Context, path, to, keyFile, purpose, tokenFile string, enrolments []string, all bool, stdout io.Writer) error {
	key, err := verify.LoadKey(keyFile)
	if err != nil {
		return fmt.Errorf("meter replay: %w", err)
	}
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("meter replay: %w", err)
	}
	client, err := contract.NewClient(to)
	if err != nil {
		return &usageError{msg: "meter replay: " + err.Error()}
	}
	client.Proof = verify.ProofFunc(key)
	var tokens meter.Tokens = &meter.RequestedTokens{Client: client, Key: key, Purpose: purpose, Enrolment: enrolmentFiles(enrolments)}
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return fmt.Errorf("meter replay: %w", err)
		}
		tokens = fileToken(strings.TrimSpace(string(b)))
	}
	l, err := meter.Open(ctx, path, meter.Config{})
	if err != nil {
		return fmt.Errorf("meter replay: %w", err)
	}
	defer l.Close()
	sy, err := meter.NewSyncer(l, meter.SyncConfig{Client: client, Key: key, Tokens: tokens})
	if err != nil {
		return fmt.Errorf("meter replay: %w", err)
	}
	cursors, err := l.Cursors(ctx)
	if err != nil {
		return fmt.Errorf("meter replay: %w", err)
	}
	ids := make([]string, 0, len(cursors))
	for id := range cursors {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	if all {
		for _, id := range ids {
			res, err := sy.Resend(ctx, id)
			fmt.Fprintf(stdout, "%s: re-sent %d events: %d new, %d already counted\n", id, res.Events, res.Accepted, res.Duplicates)
			if err != nil {
				return fmt.Errorf("meter replay: %w", err)
			}
		}
	}
	n, err := sy.Sync(ctx)
	fmt.Fprintf(stdout, "synced %d unsynced rows\n", n)
	for _, id := range ids {
		if d := l.OutboxDepth(id); d > 0 {
			fmt.Fprintf(stdout, "%s: %d rows still unsynced\n", id, d)
		}
	}
	if err != nil {
		return fmt.Errorf("meter replay: %w", err)
	}
	return nil
}

func meterReconcile(ctx context.Context, path, registryURL, contractID string, asJSON bool, stdout io.Writer) error {
	l, err := meter.OpenReadOnly(ctx, path)
	if err != nil {
		return fmt.Errorf("meter reconcile: %w", err)
	}
	defer l.Close()
	client, err := contract.NewClient(registryURL)
	if err != nil {
		return fmt.Errorf("meter reconcile: %w", err)
	}
	ids := []string{contractID}
	if contractID == "" {
		cursors, err := l.Cursors(ctx)
		if err != nil {
			return fmt.Errorf("meter reconcile: %w", err)
		}
		ids = ids[:0]
		for id := range cursors {
			ids = append(ids, id)
		}
		sort.Strings(ids)
	}
	results := []*meter.ReconcileResult{}
	differences := 0
	for _, id := range ids {
		res, err := meter.Reconcile(ctx, l, client, id)
		if err != nil {
			return fmt.Errorf("meter reconcile: %w", err)
		}
		results = append(results, res)
		differences += len(res.Findings)
	}
	if asJSON {
		b, _ := json.MarshalIndent(map[string]any{"ok": differences == 0, "contracts": results}, "", "  ")
		fmt.Fprintf(stdout, "%s\n", b)
	} else {
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "CONTRACT\tRECEIPTS\tLOG SIZE\tLEDGER EVENTS\tLEDGER COST USD\tREGISTRY EVENTS\tREGISTRY COST USD")
		for _, r := range results {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%.9f\t%d\t%.9f\n", r.Contract, r.Receipts, r.TreeSize, r.LedgerEvents,
				float64(r.Ledger.CostNanoUSD)/1e9, r.RegistryEvents, float64(r.Registry.CostNanoUSD)/1e9)
		}
		tw.Flush()
		if differences > 0 {
			fmt.Fprintln(stdout)
			tw = tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "CONTRACT\tKIND\tBATCH\tENTRY\tDETAIL")
			for _, r := range results {
				for _, f := range r.Findings {
					entry := "-"
					if f.Seq > 0 {
						entry = fmt.Sprint(f.Seq)
					}
					batch := f.Batch
					if batch == "" {
						batch = "-"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", f.Contract, f.Kind, batch, entry, f.Detail)
				}
			}
			tw.Flush()
		}
	}
	if differences > 0 {
		return fmt.Errorf("meter reconcile: %d difference(s) between the ledger and the registry", differences)
	}
	return nil
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

func init() {
	commands["contract"] = command{summary: "manage contracts on a registry: 'contract create|update|versions'", run: runContract}
}

const contractUsage = "usage: provgate contract create|update --registry URL --admin-token-file FILE --file contract.json\n" +
	"       provgate contract versions --registry URL --contract ID [--json]"

func runContract(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return &usageError{msg: contractUsage}
	}
	switch args[0] {
	case "create", "update":
		return runContractWrite(ctx, args[0], args[1:], stdout, stderr)
	case "versions":
		return runContractVersions(ctx, args[1:], stdout, stderr)
	case "-h", "--help":
		return runContractWrite(ctx, "create", []string{"-h"}, stdout, stderr)
	}
	return &usageError{msg: contractUsage}
}

// runContractWrite creates a contract, or appends a new version of its
// terms (update): either way the terms become an entry of its log.
func runContractWrite(ctx context.Context, verb string, args []string, stdout, stderr io.Writer) error {
	name := "contract " + verb
	fs := newFlagSet(name, name+" --registry URL --admin-token-file FILE --file contract.json", stderr)
	reg := fs.String("registry", "", "registry base URL")
	tokenFile := fs.String("admin-token-file", "", "file holding the registry's admin token")
	file := fs.String("file", "", "contract JSON file ('-' for stdin)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *reg == "" || *tokenFile == "" || *file == "" {
		return &usageError{msg: name + ": --registry, --admin-token-file and --file are required"}
	}
	token, err := readSecretFile(*tokenFile)
	if err != nil {
		return err
	}
	var b []byte
	if *file == "-" {
		b, err = io.ReadAll(io.LimitReader(os.Stdin, 1<<20))
	} else {
		b, err = os.ReadFile(*file)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	var c contract.Contract
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return fmt.Errorf("%s: %s: %w", name, *file, err)
	}
	if err := c.Validate(); err != nil {
		return fmt.Errorf("%s: %s: %w", name, *file, err)
	}
	client, err := contract.NewClient(*reg)
	if err != nil {
		return err
	}
	var out *contract.Contract
	if verb == "update" {
		c.TermsSeq = 0
		out, err = client.UpdateContract(ctx, token, &c, time.Time{})
	} else {
		out, err = client.CreateContract(ctx, token, &c)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	enc, _ := json.MarshalIndent(out, "", "  ")
	fmt.Fprintf(stdout, "%s\n", enc)
	return nil
}

// runContractVersions lists the versions of a contract's terms held in
// its log, each checked against the log's key that the contract names.
// (provgate verify log checks them with the whole log.)
func runContractVersions(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("contract versions", "contract versions --registry URL --contract ID [--json]", stderr)
	reg := fs.String("registry", "", "registry base URL")
	id := fs.String("contract", "", "contract id")
	asJSON := fs.Bool("json", false, "print JSON lines")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *reg == "" || *id == "" {
		return &usageError{msg: "contract versions: --registry and --contract are required"}
	}
	client, err := contract.NewClient(*reg)
	if err != nil {
		return err
	}
	c, _, err := client.GetContract(ctx, *id, "")
	if err != nil {
		return fmt.Errorf("contract versions: %w", err)
	}
	cpv, err := verify.NewCheckpointVerifier(c.Log.Origin, c.Log.CheckpointKey)
	if err != nil {
		return fmt.Errorf("contract versions: %w", err)
	}
	entries, err := client.ContractVersions(ctx, *id)
	if err != nil {
		return fmt.Errorf("contract versions: %w", err)
	}
	for _, we := range entries {
		e, err := contract.DecodeEntry(we.Entry)
		if err != nil || e.Seq != we.Seq || e.Kind != contract.EntryContract {
			return fmt.Errorf("contract versions: entry %d is not a terms entry: %v", we.Seq, err)
		}
		tv, err := cpv.OpenTerms(e.Note)
		if err != nil {
			return fmt.Errorf("contract versions: entry %d: %w", e.Seq, err)
		}
		if *asJSON {
			b, _ := json.Marshal(map[string]any{"seq": e.Seq, "time": e.Time, "effective_from": tv.EffectiveFrom, "terms": tv.Terms})
			fmt.Fprintf(stdout, "%s\n", b)
			continue
		}
		fmt.Fprintf(stdout, "seq %d  logged %s  effective %s  version %q  %s %g USD  contributors %d  licensees %d\n",
			e.Seq, e.Time.UTC().Format(time.RFC3339), tv.EffectiveFrom.UTC().Format(time.RFC3339), tv.Terms.Version,
			tv.Terms.Pricing.Unit, tv.Terms.Pricing.PriceUSD, len(tv.Terms.Contributors), len(tv.Terms.Licensees))
	}
	if c.TermsSeq != 0 && (len(entries) == 0 || entries[len(entries)-1].Seq != c.TermsSeq) {
		return fmt.Errorf("contract versions: the registry serves terms_seq %d, not its latest logged version", c.TermsSeq)
	}
	return nil
}

// readSecretFile reads a one-line secret (an admin token).
func readSecretFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return s, nil
}

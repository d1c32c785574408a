package main

import (
	"context"
	"fmt"
	"io"

	"github.com/provgate/provgate/contract"
)

func init() {
	commands["redact"] = command{summary: "append signed redactions of objects you contributed (right to erasure)", run: runRedact}
}

const redactSynopsis = "redact --registry URL --contract ID --key FILE [--contributor ID] [--reason TEXT] NAME...\n\n" +
	"Appends one redaction per NAME (a logical object name, as contribute printed it and\n" +
	"readers ask for it), signed with your contributor key. Sidecars that follow the log\n" +
	"answer 451 for the name from then on and delete its bytes from their caches; the\n" +
	"registry stops presigning it. Delete the stored object from the bucket yourself."

func runRedact(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("redact", redactSynopsis, stderr)
	reg := fs.String("registry", "", "registry base URL")
	contractID := fs.String("contract", "", "contract id")
	keyFile := fs.String("key", "", "the contributor's private JWK (a key of the contributor who contributed the names)")
	contributor := fs.String("contributor", "", "contributor id (default: the contract's contributor whose keys include --key)")
	reason := fs.String("reason", "", "why, recorded in the log (public: no personal data)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *reg == "" || *contractID == "" || *keyFile == "" || fs.NArg() == 0 {
		return &usageError{msg: "redact: --registry, --contract, --key and at least one NAME are required"}
	}
	for _, name := range fs.Args() {
		if err := contract.ValidateName(name); err != nil {
			return &usageError{msg: fmt.Sprintf("redact: %v", err)}
		}
	}
	s, err := loadSigner(ctx, *reg, *contractID, *keyFile, *contributor)
	if err != nil {
		return fmt.Errorf("redact: %w", err)
	}
	for _, name := range fs.Args() {
		seq, err := s.sign(ctx, &contract.Attestation{Type: contract.Redaction,
			Redaction: &contract.RedactionClaim{Name: name, Reason: *reason}})
		if err != nil {
			return fmt.Errorf("redact %s: %w", name, err)
		}
		fmt.Fprintf(stdout, "redacted %s in %s (entry %d)\n", name, s.c.ContractID, seq)
	}
	return nil
}

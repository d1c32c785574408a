package main

import (
	"context"
	"fmt"
	"io"

	"github.com/provgate/provgate/contract"
)

func init() {
	commands["revoke-key"] = command{summary: "append a signed revocation of one of your contributor keys", run: runRevokeKey}
}

const revokeKeySynopsis = "revoke-key --registry URL --contract ID --key FILE --kid KID [--retroactive] [--contributor ID] [--reason TEXT]\n\n" +
	"Appends a revocation of your key KID, signed with --key (KID itself, or another of\n" +
	"your keys). From this entry on the registry and every sidecar refuse what KID signs.\n" +
	"With --retroactive, the objects KID signed earlier are dropped too: sidecars answer\n" +
	"404 for them and delete their bytes from their caches (re-contribute them with\n" +
	"another key to keep them)."

func runRevokeKey(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("revoke-key", revokeKeySynopsis, stderr)
	reg := fs.String("registry", "", "registry base URL")
	contractID := fs.String("contract", "", "contract id")
	keyFile := fs.String("key", "", "the contributor's private JWK that signs the revocation")
	kid := fs.String("kid", "", "key id (kid) of the key to revoke")
	retro := fs.Bool("retroactive", false, "also refuse every entry the key signed before (a compromised key)")
	contributor := fs.String("contributor", "", "contributor id (default: the contract's contributor whose keys include --key)")
	reason := fs.String("reason", "", "why, recorded in the log")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *reg == "" || *contractID == "" || *keyFile == "" || *kid == "" || fs.NArg() != 0 {
		return &usageError{msg: "revoke-key: --registry, --contract, --key and --kid are required, and no arguments"}
	}
	s, err := loadSigner(ctx, *reg, *contractID, *keyFile, *contributor)
	if err != nil {
		return fmt.Errorf("revoke-key: %w", err)
	}
	seq, err := s.sign(ctx, &contract.Attestation{Type: contract.Revocation,
		Revocation: &contract.RevocationClaim{KeyID: *kid, Reason: *reason, Retroactive: *retro}})
	if err != nil {
		return fmt.Errorf("revoke-key: %w", err)
	}
	how := "from now on"
	if *retro {
		how = "retroactively"
	}
	fmt.Fprintf(stdout, "revoked key %s of %s in %s, %s (entry %d)\n", *kid, s.contributor, s.c.ContractID, how, seq)
	return nil
}

package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/provgate/provgate/verify"
)

const verifyResetSynopsis = "verify reset --state-dir DIR --contract ID"

// runVerifyReset forgets what a (stopped) sidecar trusts of a contract's
// log, quarantine included: the next start is first contact again (trust on
// first use, or the pinned checkpoint). It is the operator's way out of a
// quarantine, after finding out why the log forked.
func runVerifyReset(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("verify reset", verifyResetSynopsis, stderr)
	stateDir := fs.String("state-dir", "", "the sidecar's state directory (stop the sidecar first)")
	var contracts stringList
	fs.Var(&contracts, "contract", "contract whose trusted state is forgotten (repeatable)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *stateDir == "" || len(contracts) == 0 || fs.NArg() != 0 {
		return &usageError{msg: "verify reset: --state-dir and --contract are required"}
	}
	path := filepath.Join(*stateDir, verify.StateFile)
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("verify reset: no trusted state at %s: %w", path, err)
	}
	st, err := verify.OpenStore(path)
	if err != nil {
		return err
	}
	defer st.Close()
	for _, id := range contracts {
		if err := st.Reset(ctx, id); err != nil {
			return fmt.Errorf("verify reset %s: %w", id, err)
		}
		fmt.Fprintf(stdout, "forgot the trusted log state of %s; the next start trusts on first contact\n", id)
	}
	return nil
}

package main

import (
	"context"
	"fmt"
	"io"

	"github.com/provgate/provgate/proxy"
)

func init() {
	commands["ca"] = command{summary: "the forward proxy's local CA: 'ca export' prints its certificate", run: runCA}
}

func runCA(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "export" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fmt.Fprintln(stderr, "Usage: provgate ca export --state-dir DIR\n\nPrints the local CA certificate (PEM) that the forward proxy signs origin certificates with;\nadd it to the training job's trust store (e.g. SSL_CERT_FILE, AWS_CA_BUNDLE, REQUESTS_CA_BUNDLE).")
			return errHelp
		}
		return &usageError{msg: "usage: provgate ca export --state-dir DIR"}
	}
	fs := newFlagSet("ca export", "ca export --state-dir DIR", stderr)
	stateDir := fs.String("state-dir", "", "the sidecar's state directory (the CA is created there on first use)")
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	if *stateDir == "" {
		return &usageError{msg: "--state-dir is required"}
	}
	_, pem, err := proxy.LoadOrCreateCA(*stateDir, nil)
	if err != nil {
		return err
	}
	_, err = stdout.Write(pem)
	return err
}

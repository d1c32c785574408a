package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/verify"
)

func init() {
	commands["keygen"] = command{summary: "make a signing key (private JWK, mode 0600); print its public JWK and thumbprint", run: runKeygen}
}

func runKeygen(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("keygen", "keygen --out FILE [--alg EdDSA|ES256] [--force]", stderr)
	out := fs.String("out", "", "where to write the private JWK (mode 0600)")
	alg := fs.String("alg", "EdDSA", "signature algorithm: EdDSA or ES256")
	force := fs.Bool("force", false, "overwrite an existing key file")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *out == "" || fs.NArg() != 0 {
		return &usageError{msg: "keygen: --out FILE is required and takes no arguments"}
	}
	if _, err := os.Stat(*out); err == nil && !*force {
		return fmt.Errorf("keygen: %s exists; refusing to overwrite a key (use --force)", *out)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("keygen: %w", err)
	}
	k, err := verify.GenerateKey(jose.SignatureAlgorithm(*alg))
	if err != nil {
		return &usageError{msg: fmt.Sprintf("keygen: %v (want EdDSA or ES256)", err)}
	}
	if err := verify.SaveKey(*out, k); err != nil {
		return fmt.Errorf("keygen: %w", err)
	}
	return printPublicKey(stdout, k)
}

// printPublicKey writes {"jwk": public JWK, "thumbprint": ...} as JSON.
func printPublicKey(w io.Writer, k *jose.JSONWebKey) error {
	tp, err := verify.Thumbprint(k)
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(struct {
		JWK        jose.JSONWebKey `json:"jwk"`
		Thumbprint string          `json:"thumbprint"`
	}{k.Public(), tp}, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

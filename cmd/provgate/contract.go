package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/provgate/provgate/contract"
)

func init() {
	commands["contract"] = command{summary: "manage contracts on a registry: 'contract create'", run: runContract}
}

func runContract(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "create" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return runContract(ctx, []string{"create", "-h"}, stdout, stderr)
		}
		return &usageError{msg: "usage: provgate contract create --registry URL --admin-token-file FILE --file contract.json"}
	}
	fs := newFlagSet("contract create", "contract create --registry URL --admin-token-file FILE --file contract.json", stderr)
	reg := fs.String("registry", "", "registry base URL")
	tokenFile := fs.String("admin-token-file", "", "file holding the registry's admin token")
	file := fs.String("file", "", "contract JSON file ('-' for stdin)")
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	if *reg == "" || *tokenFile == "" || *file == "" {
		return &usageError{msg: "contract create: --registry, --admin-token-file and --file are required"}
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
		return fmt.Errorf("contract create: %w", err)
	}
	var c contract.Contract
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return fmt.Errorf("contract create: %s: %w", *file, err)
	}
	if err := c.Validate(); err != nil {
		return fmt.Errorf("contract create: %s: %w", *file, err)
	}
	client, err := contract.NewClient(*reg)
	if err != nil {
		return err
	}
	out, err := client.CreateContract(ctx, token, &c)
	if err != nil {
		return fmt.Errorf("contract create: %w", err)
	}
	enc, _ := json.MarshalIndent(out, "", "  ")
	fmt.Fprintf(stdout, "%s\n", enc)
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

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/verify"
)

func init() {
	commands["enroll"] = command{summary: "as a licensee, enrol a sidecar key under a contract (the sidecar sends it with --enrolment)", run: runEnroll}
}

const enrollSynopsis = `enroll --licensee ID --contract ID --key FILE (--sidecar-key FILE | --sidecar-jkt JKT)
                [--ttl D] [--out FILE]`

// DefaultEnrolmentTTL is how long an enrolment made by provgate enroll is
// valid for when --ttl is not given.
const DefaultEnrolmentTTL = 30 * 24 * time.Hour

func runEnroll(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("enroll", enrollSynopsis, stderr)
	licensee := fs.String("licensee", "", "the licensee's id, as the contract lists it (required)")
	contractID := fs.String("contract", "", "the contract id (required)")
	keyFile := fs.String("key", "", "the licensee's private JWK, one of the keys the contract lists for it (required)")
	sidecarKey := fs.String("sidecar-key", "", "the sidecar's key file (private or public JWK, e.g. STATE_DIR/sidecar.jwk, or keygen's output); only its public part is read")
	sidecarJKT := fs.String("sidecar-jkt", "", "the sidecar key's RFC 7638 thumbprint, instead of --sidecar-key (provgate keygen prints it)")
	ttl := fs.Duration("ttl", DefaultEnrolmentTTL, "how long the enrolment is valid")
	out := fs.String("out", "", "write the enrolment here (mode 0600); default: stdout")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *licensee == "" || *contractID == "" || *keyFile == "" || fs.NArg() != 0 {
		return &usageError{msg: "enroll: --licensee, --contract and --key are required, and it takes no arguments"}
	}
	if (*sidecarKey == "") == (*sidecarJKT == "") {
		return &usageError{msg: "enroll: give exactly one of --sidecar-key FILE or --sidecar-jkt JKT"}
	}
	if *ttl <= 0 || *ttl > verify.MaxEnrolmentTTL {
		return &usageError{msg: fmt.Sprintf("enroll: --ttl must be positive and at most %s", verify.MaxEnrolmentTTL)}
	}
	if err := contract.ValidateID(*contractID); err != nil {
		return &usageError{msg: "enroll: --contract: " + err.Error()}
	}
	key, err := verify.LoadKey(*keyFile)
	if err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	jkt := *sidecarJKT
	if *sidecarKey != "" {
		if jkt, err = thumbprintOfFile(*sidecarKey); err != nil {
			return fmt.Errorf("enroll: %w", err)
		}
	}
	now := time.Now()
	claims := &contract.EnrolmentClaims{Issuer: *licensee, Subject: jkt, Contract: *contractID,
		IssuedAt: now.Unix(), Expiry: now.Add(*ttl).Unix(), ID: verify.NewID()}
	jws, err := verify.SignEnrolment(key, claims)
	if err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	if *out == "" {
		_, err := fmt.Fprintln(stdout, jws)
		return err
	}
	if err := verify.WriteFileAtomic(*out, []byte(jws+"\n"), 0o600); err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	fmt.Fprintf(stdout, "enrolled sidecar key %s under %s for licensee %s until %s: %s\n",
		jkt, *contractID, *licensee, time.Unix(claims.Expiry, 0).UTC().Format(time.RFC3339), *out)
	return nil
}

// thumbprintOfFile reads a JWK file (private or public; keygen's
// {"jwk": ..., "thumbprint": ...} output also works) and returns the
// thumbprint of its public part.
func thumbprintOfFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	var wrapped struct {
		JWK *jose.JSONWebKey `json:"jwk"`
	}
	var k jose.JSONWebKey
	if json.Unmarshal(b, &wrapped) == nil && wrapped.JWK != nil && wrapped.JWK.Key != nil {
		k = *wrapped.JWK
	} else if err := json.Unmarshal(b, &k); err != nil {
		return "", fmt.Errorf("sidecar key %s: %w", path, err)
	}
	if err := verify.CheckKey(&k, verify.KeyAlgorithm(&k)); err != nil {
		return "", fmt.Errorf("sidecar key %s: %w", path, err)
	}
	return verify.Thumbprint(&k)
}

// enrolmentFiles returns the enrolment for a contract from files (read
// anew on each call): the first whose contract_id is the contract. Nil
// when there are no files.
func enrolmentFiles(paths []string) func(contractID string) (string, error) {
	if len(paths) == 0 {
		return nil
	}
	return func(contractID string) (string, error) {
		for _, p := range paths {
			b, err := os.ReadFile(p)
			if err != nil {
				return "", err
			}
			jws := strings.TrimSpace(string(b))
			if e, err := verify.PeekEnrolment(jws); err == nil && e.Contract == contractID {
				return jws, nil
			}
		}
		return "", fmt.Errorf("no enrolment for contract %s in %s", contractID, strings.Join(paths, ", "))
	}
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/provgate/provgate/registry"
	"github.com/provgate/provgate/verify"
	"github.com/provgate/provgate/witness"
)

func init() {
	commands["witness"] = command{summary: "run a C2SP tlog-witness that cosigns registries' checkpoints it has seen extend consistently", run: runWitness}
}

const witnessSynopsis = "witness --listen ADDR --key FILE --db FILE --log ORIGIN=VKEY [--log ORIGIN=VKEY...] [--name NAME] [--config FILE]"

// defaultWitnessListen is the witness's default address (loopback).
const defaultWitnessListen = "127.0.0.1:8710"

func runWitness(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("witness", witnessSynopsis, stderr)
	listen := fs.String("listen", defaultWitnessListen, "address to serve on (loopback by default)")
	keyFile := fs.String("key", "", "the witness's signed-note private key (generated, mode 0600, if the file is missing)")
	db := fs.String("db", "", "SQLite file with the last cosigned checkpoint of each log (created if missing)")
	name := fs.String("name", "provgate-witness", "key name for a generated key (a schema-less URL naming the witness)")
	var logs stringList
	fs.Var(&logs, "log", "a log to witness: ORIGIN=VKEY, the checkpoint origin and the log's verifier key (the contract's log.origin and log.checkpoint_key); an ORIGIN ending in * is a prefix, e.g. provgate-registry/log/* (repeatable)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	fs.String("config", "", `JSON file of settings named like the flags, e.g. {"log": ["ORIGIN=VKEY", ...]} (flags and PROVGATE_* win)`)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *db == "" || *keyFile == "" || len(logs) == 0 || fs.NArg() != 0 {
		return &usageError{msg: "witness: --db, --key and at least one --log are required"}
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return &usageError{msg: fmt.Sprintf("witness: --log-level: %v", err)}
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	cfg := witness.Config{DBPath: *db, Logs: map[string]string{}, Logger: logger}
	for _, l := range logs {
		origin, vkey, ok := strings.Cut(l, "=")
		if !ok || origin == "" || vkey == "" {
			return &usageError{msg: fmt.Sprintf("witness: --log %q: want ORIGIN=VKEY", l)}
		}
		cfg.Logs[origin] = vkey
	}
	var err error
	if cfg.Key, err = loadOrCreateWitnessKey(*keyFile, *name, logger); err != nil {
		return err
	}
	w, err := witness.New(ctx, cfg)
	if err != nil {
		return err
	}
	defer w.Close()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("witness: %w", err)
	}
	hs := &http.Server{Handler: w.Handler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute}
	fmt.Fprintf(stdout, "witness verifier key: %s\n", w.VerifierKey())
	fmt.Fprintf(stdout, "provgate witness on http://%s (give registries --witness http://%s=%s)\n", ln.Addr(), ln.Addr(), w.VerifierKey())
	logger.Info("witness listening", "url", "http://"+ln.Addr().String(), "db", *db, "logs", len(cfg.Logs))
	return serveUntilDone(ctx, "witness", ln, hs, nil)
}

// loadOrCreateWitnessKey reads a signed-note skey from path, or writes a
// new one there (mode 0600) when the file does not exist.
func loadOrCreateWitnessKey(path, name string, logger *slog.Logger) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("witness key: %w", err)
	}
	skey, vkey, err := witness.GenerateKey(name)
	if err != nil {
		return "", fmt.Errorf("witness key: %w", err)
	}
	if err := verify.WriteFileAtomic(path, []byte(skey+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("witness key: %w", err)
	}
	logger.Info("generated a witness key", "file", path, "vkey", vkey)
	return skey, nil
}

// parseWitnesses reads the registry's --witness URL=VKEY values.
func parseWitnesses(vals []string) ([]registry.Witness, error) {
	var out []registry.Witness
	for _, v := range vals {
		u, k, ok := strings.Cut(v, "=")
		if !ok || u == "" || k == "" {
			return nil, &usageError{msg: fmt.Sprintf("--witness %q: want URL=VKEY", v)}
		}
		out = append(out, registry.Witness{URL: u, VKey: k})
	}
	return out, nil
}

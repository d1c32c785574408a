package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/registry"
	"github.com/provgate/provgate/verify"
)

func init() {
	commands["registry"] = command{summary: "run the reference contract + provenance registry; 'registry rotate-key' rotates its signing key; 'registry publish-tiles' writes its logs as static tiles to S3", run: runRegistry}
}

const registrySynopsis = "registry --listen ADDR --db FILE|postgres://URL --key FILE [--admin-token-file FILE] [--s3-endpoint URL]\n       provgate registry rotate-key --db FILE|postgres://URL --key FILE [--alg EdDSA|ES256]\n       provgate " + publishTilesSynopsis

func runRegistry(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "rotate-key" {
		return runRotateKey(ctx, args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "publish-tiles" {
		return runPublishTiles(ctx, args[1:], stdout, stderr)
	}
	fs := newFlagSet("registry", registrySynopsis, stderr)
	listen := fs.String("listen", "127.0.0.1:8700", "address to serve on")
	db := fs.String("db", "", "SQLite database file (created if missing), or a PostgreSQL URL (postgres://USER@HOST/DB) that several replicas share")
	keyFile := fs.String("key", "", "the registry's token signing key, a private JWK (generated if the file is missing)")
	adminFile := fs.String("admin-token-file", "", "file with the admin token for POST /contracts (a random token is written there if missing); without it contracts cannot be created")
	s3Endpoint := fs.String("s3-endpoint", "", "S3 endpoint URL; enables presigning with AWS_* credentials (marketplace mode)")
	name := fs.String("name", registry.DefaultName, "public name: log origins are NAME/log/CONTRACT_ID")
	publicURL := fs.String("public-url", "", "base URL clients use (default: from each request's Host)")
	tokenTTL := fs.Duration("token-ttl", registry.DefaultTokenTTL, "capability token lifetime")
	cpInterval := fs.Duration("checkpoint-interval", registry.DefaultCheckpointInterval, "re-sign every log's checkpoint at least this often")
	transition := fs.Duration("key-transition", registry.DefaultKeyTransition, "how long a rotated-out signing key stays published")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	var witnessFlags stringList
	fs.Var(&witnessFlags, "witness", "URL=VKEY of a tlog-witness asked to cosign each new checkpoint (repeatable; see provgate witness)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *db == "" || *keyFile == "" || fs.NArg() != 0 {
		return &usageError{msg: "registry: --db and --key are required"}
	}
	witnesses, err := parseWitnesses(witnessFlags)
	if err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return &usageError{msg: fmt.Sprintf("registry: --log-level: %v", err)}
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	key, err := loadOrCreateKey(*keyFile, logger)
	if err != nil {
		return err
	}
	cfg := registry.Config{
		DBPath: *db, SigningKey: key, Name: *name, PublicURL: *publicURL,
		TokenTTL: *tokenTTL, CheckpointInterval: *cpInterval, KeyTransition: *transition, Logger: logger,
		Witnesses: witnesses,
	}
	if *adminFile != "" {
		if cfg.AdminToken, err = loadOrCreateAdminToken(*adminFile, logger); err != nil {
			return err
		}
	}
	if *s3Endpoint != "" {
		if cfg.S3, err = newS3Client(*s3Endpoint); err != nil {
			return err
		}
	}
	srv, err := registry.New(ctx, cfg)
	if err != nil {
		return err
	}
	defer srv.Close()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute, IdleTimeout: 2 * time.Minute}
	logger.Info("registry listening", "url", "http://"+ln.Addr().String(), "db", dbForLog(*db), "kid", key.KeyID, "presign", cfg.S3 != nil)
	// Closing the registry ends live streams, so that Shutdown does not
	// wait for them.
	if err := serveUntilDone(ctx, "registry", ln, hs, func() { srv.Close() }); err != nil {
		return err
	}
	logger.Info("registry stopped")
	return nil
}

// dbForLog is the --db value without a PostgreSQL URL's password.
func dbForLog(db string) string {
	if !registry.IsPostgresURL(db) {
		return db
	}
	u, err := url.Parse(db)
	if err != nil {
		return "postgres://(unparsable URL)"
	}
	return u.Redacted()
}

func loadOrCreateKey(path string, logger *slog.Logger) (*jose.JSONWebKey, error) {
	k, err := verify.LoadKey(path)
	if err == nil {
		return k, nil
	}
	if _, statErr := os.Stat(path); !errors.Is(statErr, os.ErrNotExist) {
		return nil, err
	}
	if k, err = verify.GenerateKey(jose.EdDSA); err != nil {
		return nil, err
	}
	if err := verify.SaveKey(path, k); err != nil {
		return nil, err
	}
	logger.Info("generated a signing key", "file", path, "kid", k.KeyID)
	return k, nil
}

func loadOrCreateAdminToken(path string, logger *slog.Logger) (string, error) {
	tok, err := readSecretFile(path)
	if err == nil {
		return tok, nil
	}
	if _, statErr := os.Stat(path); !errors.Is(statErr, os.ErrNotExist) {
		return "", err
	}
	var b [32]byte
	rand.Read(b[:])
	tok = base64.RawURLEncoding.EncodeToString(b[:])
	if err := verify.WriteFileAtomic(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", err
	}
	logger.Info("generated an admin token", "file", path)
	return tok, nil
}

func runRotateKey(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("registry rotate-key", "registry rotate-key --db FILE|postgres://URL --key FILE [--alg EdDSA|ES256]", stderr)
	db := fs.String("db", "", "the registry's SQLite database file or PostgreSQL URL")
	keyFile := fs.String("key", "", "the registry's key file: the new key is written there")
	alg := fs.String("alg", "EdDSA", "algorithm of the new key: EdDSA or ES256")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *db == "" || *keyFile == "" {
		return &usageError{msg: "registry rotate-key: --db and --key are required"}
	}
	if !registry.IsPostgresURL(*db) {
		if _, err := os.Stat(*db); err != nil {
			return fmt.Errorf("registry rotate-key: %w", err)
		}
	}
	k, err := verify.GenerateKey(jose.SignatureAlgorithm(*alg))
	if err != nil {
		return &usageError{msg: fmt.Sprintf("registry rotate-key: %v", err)}
	}
	// The database first: a running registry signs with the new key from
	// its next token on; the old key stays published for the transition
	// window. Then the key file, so that a restart keeps the new key.
	if err := registry.RotateKey(ctx, *db, k, time.Now()); err != nil {
		return err
	}
	if err := verify.SaveKey(*keyFile, k); err != nil {
		return fmt.Errorf("registry rotate-key: the database has the new key %s but %s could not be written: %w", k.KeyID, *keyFile, err)
	}
	fmt.Fprintf(stderr, "rotated: new signing key %s\n", k.KeyID)
	return printPublicKey(stdout, k)
}

package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
	"time"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/sidecar"
	"github.com/provgate/provgate/meter"
	"github.com/provgate/provgate/verify"
)

func init() {
	commands["serve"] = command{summary: "run the sidecar: verified, metered data endpoint, S3 facade, forward proxy", run: runServe}
}

const serveSynopsis = `serve --registry URL --contract ID [--contract ID...] [--s3-endpoint URL]
                --enrolment FILE [--enrolment FILE...]
                --purpose P --state-dir DIR --cache-dir DIR --cache-size SIZE --listen ADDR
                [--proxy-listen ADDR] [--log-url URL] [--config FILE]`

// serveFlags are the sidecar's flags, shared by serve and prefetch.
type serveFlags struct {
	registry, purpose, stateDir, cacheDir, listen, unixSocket, proxyListen  string
	s3Endpoint, s3Region, s3Lookup, localTokenFile, trust, pinned, logLevel string
	logFormat, ledgerSync, debugListen, logURL                              string
	contracts, allowHosts, originHosts, enrolments, witnesses               stringList
	cacheSize                                                               byteSize
	maxSamples, maxBytes                                                    int64
	maxCheckpointAge, pollInterval, syncInterval, shutdownTimeout           time.Duration
	maxFetches, witnessQuorum                                               int
	verifyOnHit, streamWhileFetching                                        bool
}

func addServeFlags(fs *flag.FlagSet) *serveFlags {
	f := &serveFlags{cacheSize: 10 << 30}
	fs.StringVar(&f.registry, "registry", "", "registry base URL (required)")
	fs.Var(&f.contracts, "contract", "contract id to mount (repeatable; comma-separated in the environment)")
	fs.Var(&f.enrolments, "enrolment", "file holding a licensee's enrolment of this sidecar's key under a contract (provgate enroll; repeatable, one per contract; re-read at every token request)")
	fs.StringVar(&f.purpose, "purpose", "", "purpose asked for in token requests (default: the contract's first purpose)")
	fs.StringVar(&f.stateDir, "state-dir", "", "state directory: sidecar key, trusted log state, ledger, local CA (required)")
	fs.StringVar(&f.cacheDir, "cache-dir", "", "verified object cache directory (required)")
	fs.Var(&f.cacheSize, "cache-size", "cache size bound, e.g. 10GiB")
	fs.StringVar(&f.listen, "listen", sidecar.DefaultListen, "data endpoint address (loopback by default)")
	fs.StringVar(&f.unixSocket, "unix-socket", "", "also serve the data endpoint on this unix socket")
	fs.StringVar(&f.proxyListen, "proxy-listen", "", "forward proxy address (HTTP(S)_PROXY target); off when empty")
	fs.Var(&f.allowHosts, "allow-host", "host the forward proxy lets through untouched (repeatable; 'host', 'host:port' or '*.suffix'); everything else is denied")
	fs.Var(&f.originHosts, "origin-host", "host[:port] the forward proxy serves from the verified cache, besides the --s3-endpoint host (repeatable; e.g. the bucket provider's host)")
	fs.StringVar(&f.s3Endpoint, "s3-endpoint", "", "S3 endpoint URL: self-hosted mode with the sidecar's own AWS_* credentials; empty: marketplace mode (presigned URLs)")
	fs.StringVar(&f.s3Region, "s3-region", "", "S3 region (default: AWS_REGION)")
	fs.StringVar(&f.s3Lookup, "s3-lookup", "auto", "S3 addressing: auto, path or dns (virtual-host)")
	fs.StringVar(&f.localTokenFile, "local-token-file", "", "file holding a bearer token local clients must present (for shared pods)")
	fs.StringVar(&f.logURL, "log-url", "", "read the contracts' logs as static tlog-tiles from LOG_URL/<contract id>/ (a CDN, a public-read S3 bucket filled by provgate registry publish-tiles, or REGISTRY/logs) instead of the registry's dynamic endpoints; verified the same way")
	fs.StringVar(&f.trust, "trust", "tofu", "first contact with a log: tofu (trust the first checkpoint) or pinned (needs --trusted-checkpoint)")
	fs.StringVar(&f.pinned, "trusted-checkpoint", "", "signed checkpoint file to pin trust to (with --trust pinned)")
	fs.DurationVar(&f.maxCheckpointAge, "max-checkpoint-age", verify.DefaultMaxCheckpointAge, "freshness window: an older checkpoint is a frozen log and is refused")
	fs.Var(&f.witnesses, "witness", "verifier key (vkey) of a witness whose cosignature every checkpoint needs (repeatable; see provgate witness)")
	fs.IntVar(&f.witnessQuorum, "witness-quorum", 0, "how many of the --witness keys must have cosigned a checkpoint (0: all of them)")
	fs.DurationVar(&f.pollInterval, "poll-interval", verify.DefaultPollInterval, "how often the log is polled besides the live feed")
	fs.Int64Var(&f.maxSamples, "quota-samples", 0, "samples asked for in token requests (0: the contract's limit)")
	fs.Int64Var(&f.maxBytes, "quota-bytes", 0, "bytes asked for in token requests (0: the contract's limit)")
	fs.IntVar(&f.maxFetches, "max-fetches", 0, "concurrent origin fetches, read-ahead included (0: 16)")
	fs.BoolVar(&f.verifyOnHit, "verify-on-hit", false, "re-check each cached file's checksum on every hit (bit-rot guard)")
	fs.BoolVar(&f.streamWhileFetching, "stream-while-fetching", false, "serve cold objects as they arrive instead of after verification; a failed verification aborts the response (never a clean end)")
	fs.StringVar(&f.ledgerSync, "ledger-sync", "normal", "ledger durability: normal (survives process crashes) or full (also power loss; fsync per group commit)")
	fs.DurationVar(&f.syncInterval, "sync-interval", 0, "how often the metering outbox is pushed when idle (0: the default)")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 30*time.Second, "how long a graceful shutdown waits for in-flight responses")
	fs.StringVar(&f.debugListen, "debug-listen", "", "serve Go's pprof profiles at this address (loopback only; off when empty)")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&f.logFormat, "log-format", "json", "json or text")
	fs.String("config", "", "JSON file of settings named like the flags (flags and PROVGATE_* win)")
	return f
}

// sidecarConfig checks the flags and builds the sidecar's configuration.
func (f *serveFlags) sidecarConfig(stderr io.Writer) (sidecar.Config, error) {
	var missing []string
	for name, v := range map[string]string{"--registry": f.registry, "--state-dir": f.stateDir, "--cache-dir": f.cacheDir} {
		if v == "" {
			missing = append(missing, name)
		}
	}
	if len(f.contracts) == 0 {
		missing = append(missing, "--contract")
	}
	if len(missing) > 0 {
		return sidecar.Config{}, &usageError{msg: "missing " + strings.Join(missing, ", ")}
	}
	logger, err := newLogger(stderr, f.logLevel, f.logFormat)
	if err != nil {
		return sidecar.Config{}, err
	}
	cfg := sidecar.Config{
		Registry: f.registry, Contracts: f.contracts, Purpose: f.purpose, EnrolmentFiles: f.enrolments,
		Quota:    contract.Quota{MaxSamples: f.maxSamples, MaxBytes: f.maxBytes},
		StateDir: f.stateDir, CacheDir: f.cacheDir, CacheSize: int64(f.cacheSize),
		Listen: f.listen, UnixSocket: f.unixSocket, ProxyListen: f.proxyListen, AllowHosts: f.allowHosts, OriginHosts: f.originHosts,
		S3Endpoint: f.s3Endpoint, S3Region: f.s3Region, S3Lookup: f.s3Lookup,
		MaxCheckpointAge: f.maxCheckpointAge, PollInterval: f.pollInterval, LogURL: f.logURL,
		MaxFetches: f.maxFetches, VerifyOnHit: f.verifyOnHit, StreamWhileFetching: f.streamWhileFetching, SyncInterval: f.syncInterval, Logger: logger,
	}
	if cfg.Witnesses, err = verify.NewWitnessPolicy(f.witnesses, f.witnessQuorum); err != nil {
		return cfg, &usageError{msg: fmt.Sprintf("--witness: %v", err)}
	}
	switch f.ledgerSync {
	case "normal":
		cfg.LedgerSync = meter.SyncNormal
	case "full":
		cfg.LedgerSync = meter.SyncFull
	default:
		return cfg, &usageError{msg: fmt.Sprintf("--ledger-sync %q: want normal or full", f.ledgerSync)}
	}
	switch f.trust {
	case "tofu":
		cfg.TrustOnFirstUse = true
	case "pinned":
		if f.pinned == "" {
			return cfg, &usageError{msg: "--trust pinned needs --trusted-checkpoint FILE"}
		}
		if cfg.PinnedCheckpoint, err = os.ReadFile(f.pinned); err != nil {
			return cfg, fmt.Errorf("trusted checkpoint: %w", err)
		}
	default:
		return cfg, &usageError{msg: fmt.Sprintf("--trust %q: want tofu or pinned", f.trust)}
	}
	if f.localTokenFile != "" {
		b, err := os.ReadFile(f.localTokenFile)
		if err != nil {
			return cfg, fmt.Errorf("local token: %w", err)
		}
		if cfg.LocalToken = strings.TrimSpace(string(b)); cfg.LocalToken == "" {
			return cfg, fmt.Errorf("local token file %s is empty", f.localTokenFile)
		}
	}
	return cfg, nil
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, &usageError{msg: fmt.Sprintf("--log-level: %v", err)}
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	default:
		return nil, &usageError{msg: fmt.Sprintf("--log-format %q: want json or text", format)}
	}
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("serve", serveSynopsis, stderr)
	f := addServeFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return &usageError{msg: "serve takes no arguments"}
	}
	cfg, err := f.sidecarConfig(stderr)
	if err != nil {
		return err
	}
	if f.debugListen != "" {
		stop, err := serveDebug(f.debugListen, cfg.Logger)
		if err != nil {
			return err
		}
		defer stop()
	}
	sc, err := sidecar.Start(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "provgate serving on http://%s", sc.Addr())
	if p := sc.ProxyAddr(); p != "" {
		fmt.Fprintf(stdout, " (forward proxy %s)", p)
	}
	fmt.Fprintln(stdout)
	<-ctx.Done()
	cfg.Logger.Info("shutting down: draining responses, flushing the ledger")
	sctx, cancel := context.WithTimeout(context.Background(), f.shutdownTimeout)
	defer cancel()
	return sc.Shutdown(sctx)
}

// serveDebug serves net/http/pprof on a loopback address.
func serveDebug(addr string, log *slog.Logger) (stop func(), err error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, &usageError{msg: fmt.Sprintf("--debug-listen %q: %v", addr, err)}
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, &usageError{msg: fmt.Sprintf("--debug-listen %q: profiles are served on loopback only", addr)}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("debug listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	log.Info("pprof profiles served", "addr", ln.Addr().String())
	return func() { srv.Close() }, nil
}

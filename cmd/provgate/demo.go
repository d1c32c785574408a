package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"golang.org/x/mod/sumdb/note"

	"github.com/provgate/provgate/contract"
	"github.com/provgate/provgate/internal/sidecar"
	"github.com/provgate/provgate/meter"
	"github.com/provgate/provgate/proxy"
	"github.com/provgate/provgate/registry"
	"github.com/provgate/provgate/verify"
	"github.com/provgate/provgate/witness"
)

func init() {
	commands["demo"] = command{summary: "run the whole chain on this machine: registry, origin, contributor, sidecar, two epochs, metering report", run: runDemo}
}

const (
	demoContract    = "did:example:dataset-123"
	demoContributor = "did:example:contributor-321"
	demoBucket      = "datasets"
	demoJob         = "demo-job"
	demoPurpose     = "training-for-sentiment-model"
	demoLicensee    = "did:example:licensee-acme"
)

// demoEnv is everything the demo starts; close stops it in reverse order.
type demoEnv struct {
	dir      string
	origin   *http.Server
	originLn net.Listener
	reg      *registry.Server
	regSrv   *http.Server
	regURL   string
	sc       *sidecar.Sidecar
	logger   *slog.Logger

	wit     *witness.Witness
	witSrv  *http.Server
	witURL  string
	witVKey string
	cpSKey  string // the registry's checkpoint key, known to the witness
}

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo", "demo [--once] [--dir DIR] [--listen ADDR] [--samples N]", stderr)
	once := fs.Bool("once", false, "exit after the report instead of staying up")
	dir := fs.String("dir", "", "working directory for the registry database, sidecar state and cache (default: a temporary one)")
	listen := fs.String("listen", "127.0.0.1:0", "the sidecar's data endpoint address")
	samples := fs.Int("samples", 48, "samples in the generated dataset")
	logLevel := fs.String("log-level", "warn", "log level of the parts (logs go to stderr)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *samples < 1 || *samples > 10000 {
		return &usageError{msg: "--samples must be 1 to 10000"}
	}
	logger, err := newLogger(stderr, *logLevel, "text")
	if err != nil {
		return err
	}
	if *dir == "" {
		d, err := os.MkdirTemp("", "provgate-demo-*")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		*dir = d
	}
	env := &demoEnv{dir: *dir, logger: logger}
	defer env.close()
	say := func(format string, a ...any) { fmt.Fprintf(stdout, format+"\n", a...) }

	// 1. The origin: an in-process S3-compatible server. The sidecar still
	// reaches it only through presigned URLs made with minio-go.
	s3c, err := env.startOrigin()
	if err != nil {
		return err
	}
	say("origin    in-process S3 at http://%s, bucket %q", env.originLn.Addr(), demoBucket)

	// 2. A witness, and the registry that asks it to cosign every
	// checkpoint.
	if err := env.startWitness(ctx); err != nil {
		return err
	}
	say("witness   %s, cosigning key %s", env.witURL, env.witVKey)
	if err := env.startRegistry(ctx, s3c); err != nil {
		return err
	}
	say("registry  %s (SQLite %s)", env.regURL, filepath.Join(env.dir, "registry.db"))

	// 3. A contributor, a licensee and the contract.
	ckey, err := verify.GenerateKey(jose.EdDSA)
	if err != nil {
		return err
	}
	lkey, err := verify.GenerateKey(jose.EdDSA)
	if err != nil {
		return err
	}
	client, err := contract.NewClient(env.regURL)
	if err != nil {
		return err
	}
	c, err := createDemoContract(ctx, client, ckey, lkey)
	if err != nil {
		return err
	}
	say("contract  %s: %s, $%.4f per %s, purposes %v", c.ContractID, c.License, c.Pricing.PriceUSD, c.Pricing.Unit, c.Usage.Purposes)
	l := c.Licensee(demoLicensee)
	say("licensee  %s: up to %d samples, across all its sidecars", l.ID, l.Terms.MaxSamples)

	// 4. The dataset: uploaded and attested, one signed entry per sample.
	names, err := env.contribute(ctx, client, s3c, c, ckey, *samples)
	if err != nil {
		return err
	}
	say("contribute %d samples (identity, gzip and zstd), each with a signed attestation in the log", len(names))

	// 5. The licensee enrols the sidecar's key (as provgate enroll does);
	// without that enrolment the registry gives the sidecar no token.
	stateDir := filepath.Join(env.dir, "sidecar-state")
	enrolment, jkt, exp, err := demoEnrol(stateDir, lkey, c.ContractID)
	if err != nil {
		return err
	}
	say("enrol     %s enrolled sidecar key %s until %s (%s)", demoLicensee, jkt, exp.Format(time.RFC3339), enrolment)

	// 6. The sidecar, in marketplace mode: no bucket credentials; it
	// trusts no checkpoint the witness has not cosigned.
	witnesses, err := verify.NewWitnessPolicy([]string{env.witVKey}, 1)
	if err != nil {
		return err
	}
	env.sc, err = sidecar.Start(ctx, sidecar.Config{
		Witnesses: witnesses,
		Registry:  env.regURL, Contracts: []string{c.ContractID}, Purpose: demoPurpose, EnrolmentFiles: []string{enrolment},
		StateDir: stateDir, CacheDir: filepath.Join(env.dir, "sidecar-cache"),
		CacheSize: 256 << 20, Listen: *listen, TrustOnFirstUse: true, Logger: logger.With("part", "sidecar"),
		SyncInterval: 200 * time.Millisecond,
	})
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := env.sc.WaitReady(rctx); err != nil {
		return err
	}
	status, err := demoStatus(ctx, env.sc.URL(), c.ContractID)
	if err != nil {
		return err
	}
	root := hex.EncodeToString(status.Root)
	if len(root) > 16 {
		root = root[:16] + "…"
	}
	say("sidecar   %s: log verified, %d entries, checkpoint root %s signed %s, token until %s",
		env.sc.URL(), status.TreeSize, root, status.CheckpointTime.Format(time.RFC3339), status.TokenExpiry.Format(time.RFC3339))
	say("witness   cosigned that checkpoint (cosignature/v1); the sidecar requires 1 of 1 witness cosignatures")

	// 7. Two epochs of reading, as a training loop would.
	hc := &http.Client{Timeout: 30 * time.Second}
	manifest, err := demoManifest(ctx, hc, env.sc.URL(), c.ContractID)
	if err != nil {
		return err
	}
	for epoch := int64(1); epoch <= 2; epoch++ {
		start := time.Now()
		var n, bytesRead int64
		for _, m := range manifest {
			b, err := demoGet(ctx, hc, env.sc.URL(), c.ContractID, m.Name, epoch)
			if err != nil {
				return err
			}
			if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != m.SHA256 {
				return fmt.Errorf("epoch %d: %s: bytes do not match the verified manifest", epoch, m.Name)
			}
			n++
			bytesRead += int64(len(b))
		}
		if err := demoEndEpoch(ctx, hc, env.sc.URL(), c.ContractID, epoch); err != nil {
			return err
		}
		say("epoch %d   read %d samples (%d bytes) in %s, every sha256 checked", epoch, n, bytesRead, time.Since(start).Round(time.Millisecond))
	}
	cs := env.sc.Cache().Stats()
	say("cache     %d hits, %d misses (origin fetches), %d bytes on disk", cs.Hits, cs.Misses, cs.Bytes)

	// 8. The ledger syncs to the registry; the report is what the registry
	// recorded.
	if err := env.drainOutbox(ctx, c.ContractID); err != nil {
		return err
	}
	say("\nmetering, as the registry recorded it (job %q):", demoJob)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "epoch\tbilled reads\tbilled bytes\tbilled samples\tcost USD\t")
	for epoch := int64(1); epoch <= 2; epoch++ {
		t, err := client.MeteringTotals(ctx, c.ContractID, demoJob, epoch)
		if err != nil {
			return err
		}
		fmt.Fprintf(tw, "%d\t%d\t%d\t%d\t%s\t\n", epoch, t.BilledEvents, t.BilledBytes, t.BilledSamples, meter.FormatUSD(t.BilledCostNanoUSD))
	}
	tw.Flush()
	all, err := client.MeteringTotals(ctx, c.ContractID, "", -1)
	if err != nil {
		return err
	}
	say("total billed: %d reads, %d samples, %d bytes, %s; unbilled: %d reads", all.BilledEvents, all.BilledSamples, all.BilledBytes,
		meter.FormatUSD(all.BilledCostNanoUSD), all.UnbilledEvents)

	if *once {
		return nil
	}
	u := env.sc.URL()
	say("\nstill running; try:")
	say("  curl %s/v1/contracts", u)
	say("  curl %s/v1/contracts/%s/manifest", u, c.ContractID)
	say("  curl -H 'X-Provgate-Epoch: 3' %s/v1/contracts/%s/objects/%s", u, c.ContractID, manifest[0].Name)
	say("  curl %s/metrics", u)
	say("  curl %s/provenance/%s/checkpoint", env.regURL, url.PathEscape(c.ContractID))
	say("press Ctrl-C to stop")
	<-ctx.Done()
	return nil
}

func (env *demoEnv) startOrigin() (*minio.Client, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	env.originLn = ln
	fake := gofakes3.New(s3mem.New(), gofakes3.WithLogger(gofakes3.DiscardLog()))
	env.origin = &http.Server{Handler: fake.Server(), ReadHeaderTimeout: 10 * time.Second}
	go env.origin.Serve(ln)
	s3c, err := minio.New(ln.Addr().String(), &minio.Options{Creds: credentials.NewStaticV4("demo", "demo-secret", ""), Region: "us-east-1"})
	if err != nil {
		return nil, err
	}
	if err := s3c.MakeBucket(context.Background(), demoBucket, minio.MakeBucketOptions{Region: "us-east-1"}); err != nil {
		return nil, fmt.Errorf("origin: %w", err)
	}
	return s3c, nil
}

func (env *demoEnv) startRegistry(ctx context.Context, s3c *minio.Client) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	env.regURL = "http://" + ln.Addr().String()
	cfg := registry.Config{DBPath: filepath.Join(env.dir, "registry.db"), AdminToken: "demo-admin",
		S3: s3c, PublicURL: env.regURL, CheckpointInterval: 5 * time.Second, Logger: env.logger.With("part", "registry"),
		CheckpointKey: env.cpSKey}
	if env.witURL != "" {
		cfg.Witnesses = []registry.Witness{{URL: env.witURL, VKey: env.witVKey}}
	}
	reg, err := registry.New(ctx, cfg)
	if err != nil {
		ln.Close()
		return err
	}
	env.reg = reg
	env.regSrv = &http.Server{Handler: reg.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go env.regSrv.Serve(ln)
	return nil
}

// startWitness starts an in-process witness for the registry's logs; the
// registry's checkpoint key is made here so that the witness knows it.
func (env *demoEnv) startWitness(ctx context.Context) error {
	skey, vkey, err := note.GenerateKey(rand.Reader, registry.DefaultName)
	if err != nil {
		return err
	}
	env.cpSKey = skey
	wkey, wvkey, err := witness.GenerateKey("demo-witness")
	if err != nil {
		return err
	}
	w, err := witness.New(ctx, witness.Config{Key: wkey, DBPath: filepath.Join(env.dir, "witness.db"),
		Logs: map[string]string{registry.Origin(registry.DefaultName, "*"): vkey}, Logger: env.logger.With("part", "witness")})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		w.Close()
		return err
	}
	env.wit, env.witVKey, env.witURL = w, wvkey, "http://"+ln.Addr().String()
	env.witSrv = &http.Server{Handler: w.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go env.witSrv.Serve(ln)
	return nil
}

// demoEnrol makes the sidecar key in stateDir (as the sidecar would on
// first start) and writes the licensee's enrolment of it next to it.
func demoEnrol(stateDir string, lkey *jose.JSONWebKey, contractID string) (path, jkt string, exp time.Time, err error) {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return "", "", exp, err
	}
	sk, err := sidecar.LoadOrCreateKey(filepath.Join(stateDir, sidecar.KeyFile))
	if err != nil {
		return "", "", exp, err
	}
	if jkt, err = verify.Thumbprint(sk); err != nil {
		return "", "", exp, err
	}
	now := time.Now()
	exp = now.Add(DefaultEnrolmentTTL).UTC().Truncate(time.Second)
	jws, err := verify.SignEnrolment(lkey, &contract.EnrolmentClaims{Issuer: demoLicensee, Subject: jkt, Contract: contractID,
		IssuedAt: now.Unix(), Expiry: exp.Unix(), ID: verify.NewID()})
	if err != nil {
		return "", "", exp, err
	}
	path = filepath.Join(filepath.Dir(stateDir), "enrolment.jws")
	return path, jkt, exp, verify.WriteFileAtomic(path, []byte(jws+"\n"), 0o600)
}

func createDemoContract(ctx context.Context, client *contract.Client, ckey, lkey *jose.JSONWebKey) (*contract.Contract, error) {
	return client.CreateContract(ctx, "demo-admin", &contract.Contract{
		Licensees:  []contract.Licensee{{ID: demoLicensee, JWKS: verify.PublicJWKS(lkey), Terms: contract.LicenseTerms{MaxSamples: 100_000}}},
		ContractID: demoContract, Version: "2026-01-15", SchemaURL: "https://example.com/schemas/v1/dataset",
		License: "cc-by-4.0", Pricing: contract.Pricing{Unit: contract.UnitSample, PriceUSD: 0.0005},
		Usage:        contract.Usage{Purposes: []string{demoPurpose}, RetentionDays: 30, MaxSamples: 1_000_000},
		Contributors: []contract.Contributor{{ID: demoContributor, JWKS: verify.PublicJWKS(ckey)}},
		Origin:       contract.Origin{Bucket: demoBucket, Prefix: "dataset-123/", Mode: contract.ModeMarketplace},
	})
}

var demoTexts = []string{
	"the plot was thin but the acting carried it", "an absolute delight from start to finish",
	"I want those two hours back", "a quiet, beautifully shot film", "the sequel nobody asked for",
	"funny, warm and far too short", "the soundtrack was the best part", "a tedious, overlong mess",
}

// contribute writes a small sentiment dataset and contributes it with the
// same code path as `provgate contribute`.
func (env *demoEnv) contribute(ctx context.Context, client *contract.Client, s3c *minio.Client, c *contract.Contract, key *jose.JSONWebKey, n int) ([]string, error) {
	src := filepath.Join(env.dir, "dataset")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return nil, err
	}
	o := &contributeOpts{client: client, s3: s3c, c: c, key: key, contributor: demoContributor, tmpDir: env.dir,
		existing: map[string]contract.ObjectClaim{}}
	encodings := []string{contract.EncodingIdentity, contract.EncodingGzip, contract.EncodingZstd}
	var names []string
	for i := range n {
		sample := map[string]any{"id": i, "text": demoTexts[i%len(demoTexts)], "label": i % 2}
		b, _ := json.Marshal(sample)
		b = append(b, '\n')
		b = append(b, bytes.Repeat([]byte(" "), i*17%512)...) // varied sizes
		name := fmt.Sprintf("train/%05d.json", i)
		path := filepath.Join(src, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(path, b, 0o644); err != nil {
			return nil, err
		}
		o.encoding = encodings[i%len(encodings)]
		if _, _, err := o.one(ctx, contributeItem{path: path, name: name}); err != nil {
			return nil, fmt.Errorf("contribute %s: %w", name, err)
		}
		names = append(names, name)
	}
	return names, nil
}

func demoStatus(ctx context.Context, base, id string) (proxy.Status, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/contracts", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return proxy.Status{}, err
	}
	defer resp.Body.Close()
	var out struct {
		Contracts []proxy.Status `json:"contracts"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return proxy.Status{}, err
	}
	for _, s := range out.Contracts {
		if s.ID == id {
			return s, nil
		}
	}
	return proxy.Status{}, fmt.Errorf("contract %s not mounted", id)
}

type demoEntry struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

func demoManifest(ctx context.Context, hc *http.Client, base, id string) ([]demoEntry, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/contracts/"+id+"/manifest", nil)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, contract.ReadError(resp)
	}
	var out []demoEntry
	dec := json.NewDecoder(resp.Body)
	for dec.More() {
		var e demoEntry
		if err := dec.Decode(&e); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	if len(out) == 0 {
		return nil, errors.New("empty manifest")
	}
	return out, nil
}

func demoGet(ctx context.Context, hc *http.Client, base, id, name string, epoch int64) ([]byte, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/contracts/"+id+"/objects/"+name, nil)
	req.Header.Set(proxy.HeaderEpoch, fmt.Sprint(epoch))
	req.Header.Set(proxy.HeaderJob, demoJob)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %w", name, contract.ReadError(resp))
	}
	return io.ReadAll(resp.Body)
}

func demoEndEpoch(ctx context.Context, hc *http.Client, base, id string, epoch int64) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("%s/v1/contracts/%s/epochs/%d/end", base, id, epoch), nil)
	req.Header.Set(proxy.HeaderJob, demoJob)
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return contract.ReadError(resp)
	}
	return nil
}

// drainOutbox syncs until the registry has acknowledged every event.
func (env *demoEnv) drainOutbox(ctx context.Context, id string) error {
	deadline := time.Now().Add(30 * time.Second)
	for env.sc.Ledger().OutboxDepth(id) > 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("metering outbox still holds %d events", env.sc.Ledger().OutboxDepth(id))
		}
		if _, err := env.sc.SyncNow(ctx); err != nil && !strings.Contains(err.Error(), "context") {
			env.logger.Warn("sync", "err", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

func (env *demoEnv) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if env.sc != nil {
		env.sc.Shutdown(ctx)
	}
	if env.regSrv != nil {
		env.regSrv.Shutdown(ctx)
	}
	if env.reg != nil {
		env.reg.Close()
	}
	if env.witSrv != nil {
		env.witSrv.Shutdown(ctx)
		env.wit.Close()
	}
	if env.origin != nil {
		env.origin.Shutdown(ctx)
	}
}

package witness

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"sync"

	tlog "github.com/transparency-dev/formats/log"
	fnote "github.com/transparency-dev/formats/note"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
)

// SizeMediaType is the Content-Type of a 409 answer's body.
const SizeMediaType = "text/x.tlog.size"

// Log attribute keys.
const (
	logKeyOrigin = "origin"
	logKeySize   = "size"
	logKeyErr    = "err"
)

// Config configures a Witness.
type Config struct {
	// Key is the witness's Ed25519 signed-note private key (skey); its
	// cosignature/v1 verifier key is VerifierKey(Key).
	Key string
	// Logs maps a log's origin to its checkpoint verifier key (vkey). An
	// origin ending in "*" is a prefix: "registry.example/log/*" covers
	// every contract's log of that registry, each with its own state.
	Logs map[string]string
	// DBPath is the SQLite file holding each log's last cosigned
	// checkpoint; it is created if missing.
	DBPath string
	// Logger; nil: slog.Default().
	Logger *slog.Logger
}

// Witness is a tlog-witness server. Serve its Handler; Close it when done.
type Witness struct {
	signer *fnote.Signer
	vkey   string
	logs   map[string]note.Verifier
	prefix []string // origin prefixes, longest first
	st     *store
	logger *slog.Logger
	// mu makes each log's check-then-update atomic (the spec's race
	// between two add-checkpoint calls).
	mu sync.Mutex
}

// New opens (or creates) the state database and loads the keys.
func New(ctx context.Context, cfg Config) (*Witness, error) {
	if cfg.DBPath == "" {
		return nil, errors.New("witness: DBPath is required")
	}
	if len(cfg.Logs) == 0 {
		return nil, errors.New("witness: no log configured")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	signer, err := fnote.NewSignerForCosignatureV1(cfg.Key)
	if err != nil {
		return nil, fmt.Errorf("witness: key: %w", err)
	}
	vkey, err := VerifierKey(cfg.Key)
	if err != nil {
		return nil, fmt.Errorf("witness: %w", err)
	}
	w := &Witness{signer: signer, vkey: vkey, logs: map[string]note.Verifier{}, logger: cfg.Logger}
	for origin, lk := range cfg.Logs {
		v, err := note.NewVerifier(lk)
		if err != nil {
			return nil, fmt.Errorf("witness: log %q: key: %w", origin, err)
		}
		if origin == "" || origin == "*" {
			return nil, fmt.Errorf("witness: log %q: empty origin", origin)
		}
		if v.Name() == signer.Name() {
			return nil, fmt.Errorf("witness: log %q: its key name %q is the witness's own", origin, v.Name())
		}
		w.logs[origin] = v
		if p, ok := strings.CutSuffix(origin, "*"); ok {
			w.prefix = append(w.prefix, p)
		}
	}
	sort.Slice(w.prefix, func(i, j int) bool { return len(w.prefix[i]) > len(w.prefix[j]) })
	if w.st, err = openStore(ctx, cfg.DBPath); err != nil {
		return nil, fmt.Errorf("witness: %w", err)
	}
	return w, nil
}

// Close closes the database.
func (w *Witness) Close() error { return w.st.close() }

// VerifierKey is the witness's cosignature/v1 verifier key, the one
// sidecars are given (provgate serve --witness).
func (w *Witness) VerifierKey() string { return w.vkey }

// GenerateKey makes a witness key pair named name: skey is the private
// key (keep it secret), vkey its cosignature/v1 verifier key.
func GenerateKey(name string) (skey, vkey string, err error) {
	skey, _, err = note.GenerateKey(rand.Reader, name)
	if err != nil {
		return "", "", err
	}
	vkey, err = VerifierKey(skey)
	return skey, vkey, err
}

// VerifierKey derives the cosignature/v1 verifier key (type 0x04) of an
// Ed25519 signed-note private key.
func VerifierKey(skey string) (string, error) {
	parts := strings.SplitN(skey, "+", 5)
	if len(parts) != 5 || parts[0] != "PRIVATE" || parts[1] != "KEY" {
		return "", errors.New("witness key: not a signed-note private key")
	}
	raw, err := base64.StdEncoding.DecodeString(parts[4])
	if err != nil || len(raw) != 1+ed25519.SeedSize || (raw[0] != 1 && raw[0] != 4) {
		return "", errors.New("witness key: not an Ed25519 signed-note key")
	}
	pub := ed25519.NewKeyFromSeed(raw[1:]).Public().(ed25519.PublicKey)
	vkey, err := note.NewEd25519VerifierKey(parts[2], pub)
	if err != nil {
		return "", fmt.Errorf("witness key: %w", err)
	}
	return fnote.VKeyToCosignatureV1(vkey)
}

// verifier returns the key of the log with this origin.
func (w *Witness) verifier(origin string) (note.Verifier, bool) {
	if v, ok := w.logs[origin]; ok && !strings.HasSuffix(origin, "*") {
		return v, true
	}
	for _, p := range w.prefix {
		if strings.HasPrefix(origin, p) {
			return w.logs[p+"*"], true
		}
	}
	return nil, false
}

// Handler serves POST /add-checkpoint and GET /{origin hash}/checkpoint.
func (w *Witness) Handler() http.Handler {
	mux := http.NewServeMux()
	h := func(pattern string, f func(http.ResponseWriter, *http.Request) error) {
		mux.Handle(pattern, http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			if err := f(rw, r); err != nil {
				w.writeError(rw, r, err)
			}
		}))
	}
	h("POST /add-checkpoint", w.handleAdd)
	h("GET /{hash}/checkpoint", w.handleGet)
	h("/", func(http.ResponseWriter, *http.Request) error {
		return &statusError{status: http.StatusNotFound, msg: "no such endpoint"}
	})
	return mux
}

// statusError is a refusal with its HTTP status; a 409 carries the
// witness's size.
type statusError struct {
	status int
	msg    string
	size   uint64
}

func (e *statusError) Error() string { return fmt.Sprintf("%d: %s", e.status, e.msg) }

func refuse(status int, format string, args ...any) error {
	return &statusError{status: status, msg: fmt.Sprintf(format, args...)}
}

// writeError is the one place errors become responses.
func (w *Witness) writeError(rw http.ResponseWriter, r *http.Request, err error) {
	var se *statusError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &se):
	case errors.As(err, &mbe):
		se = &statusError{status: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("body exceeds %d bytes", mbe.Limit)}
	case errors.Is(err, ErrBadRequest):
		se = &statusError{status: http.StatusBadRequest, msg: err.Error()}
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		return
	default:
		w.logger.Error("request failed", "path", r.URL.Path, logKeyErr, err)
		se = &statusError{status: http.StatusInternalServerError, msg: "internal error"}
	}
	if se.status == http.StatusConflict {
		rw.Header().Set("Content-Type", SizeMediaType)
		rw.WriteHeader(se.status)
		fmt.Fprintf(rw, "%d\n", se.size)
		return
	}
	rw.Header().Set("Content-Type", "text/plain; charset=utf-8")
	rw.WriteHeader(se.status)
	fmt.Fprintln(rw, se.msg)
}

func (w *Witness) handleAdd(rw http.ResponseWriter, r *http.Request) error {
	body, err := io.ReadAll(http.MaxBytesReader(rw, r.Body, MaxRequestSize))
	if err != nil {
		return err
	}
	req, err := ParseAddCheckpoint(body)
	if err != nil {
		return err
	}
	sigs, err := w.Add(r.Context(), req)
	if err != nil {
		return err
	}
	rw.Header().Set("Content-Type", "text/plain; charset=utf-8")
	rw.Write(sigs)
	return nil
}

// Add checks a request and, when the checkpoint extends the last one
// cosigned for its log, persists it and returns the cosignature line(s).
func (w *Witness) Add(ctx context.Context, req *AddCheckpoint) ([]byte, error) {
	origin, _, _ := bytes.Cut(req.Checkpoint, []byte("\n"))
	lv, ok := w.verifier(string(origin))
	if !ok {
		return nil, refuse(http.StatusNotFound, "unknown log origin %q", origin)
	}
	cp, _, n, err := tlog.ParseCheckpoint(req.Checkpoint, string(origin), lv)
	if err != nil {
		return nil, refuse(http.StatusForbidden, "checkpoint: %v", err)
	}
	if len(cp.Hash) != sha256.Size {
		return nil, refuse(http.StatusBadRequest, "root hash must be %d bytes", sha256.Size)
	}
	if req.Old > cp.Size {
		return nil, refuse(http.StatusBadRequest, "old size %d is beyond the checkpoint's size %d", req.Old, cp.Size)
	}
	if cp.Size == 0 && !bytes.Equal(cp.Hash, rfc6962.DefaultHasher.EmptyRoot()) {
		return nil, refuse(http.StatusUnprocessableEntity, "a checkpoint of size 0 must have the empty tree's root")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	cur, err := w.st.get(ctx, cp.Origin)
	if err != nil {
		return nil, err
	}
	if req.Old != cur.Size {
		w.logger.Info("add-checkpoint: stale old size", logKeyOrigin, cp.Origin, "old", req.Old, logKeySize, cur.Size)
		return nil, &statusError{status: http.StatusConflict, msg: "old size is not the last cosigned size", size: cur.Size}
	}
	if req.Old == 0 {
		if len(req.Proof) != 0 {
			return nil, refuse(http.StatusUnprocessableEntity, "a proof from size 0 must be empty")
		}
	} else if err := proof.VerifyConsistency(rfc6962.DefaultHasher, cur.Size, cp.Size, req.Proof, cur.Root, cp.Hash); err != nil {
		w.logger.Warn("add-checkpoint: inconsistent checkpoint (evidence of a fork?)", logKeyOrigin, cp.Origin,
			logKeySize, cp.Size, "root", hex.EncodeToString(cp.Hash), "cosigned_size", cur.Size,
			"cosigned_root", hex.EncodeToString(cur.Root), logKeyErr, err, "checkpoint", string(req.Checkpoint))
		return nil, refuse(http.StatusUnprocessableEntity, "not consistent with the cosigned checkpoint of size %d: %v", cur.Size, err)
	}
	signed, err := note.Sign(&note.Note{Text: n.Text}, w.signer)
	if err != nil {
		return nil, fmt.Errorf("cosign: %w", err)
	}
	sigs := signed[len(n.Text)+1:]
	// The stored note: the log's verified signatures and ours.
	stored, err := note.Sign(&note.Note{Text: n.Text, Sigs: n.Sigs}, w.signer)
	if err != nil {
		return nil, fmt.Errorf("cosign: %w", err)
	}
	if err := w.st.put(ctx, logState{Origin: cp.Origin, Size: cp.Size, Root: cp.Hash, Note: stored}); err != nil {
		return nil, err
	}
	w.logger.Debug("cosigned", logKeyOrigin, cp.Origin, logKeySize, cp.Size)
	return sigs, nil
}

func (w *Witness) handleGet(rw http.ResponseWriter, r *http.Request) error {
	want := r.PathValue("hash")
	st, err := w.st.byHash(r.Context(), want)
	if err != nil {
		return err
	}
	if st == nil {
		return refuse(http.StatusNotFound, "no checkpoint cosigned for that origin")
	}
	rw.Header().Set("Content-Type", "text/plain; charset=utf-8")
	rw.Write(st.Note)
	return nil
}

// OriginHash is the monitoring path element for a log: the lowercase hex
// SHA-256 of its origin.
func OriginHash(origin string) string {
	h := sha256.Sum256([]byte(origin))
	return hex.EncodeToString(h[:])
}

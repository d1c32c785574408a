package proxy

import (
	"context"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"time"

	"github.com/provgate/provgate/contract"
)

// Errors a Source, Cache or Meter returns (or wraps) to get the status code
// DESIGN.md promises. Verification failures wrap verify's sentinels and map
// to 502.
var (
	ErrUnknownContract = errors.New("contract not mounted")
	ErrNotFound        = errors.New("not in the verified manifest")
	ErrRedacted        = errors.New("redacted")
	ErrNotReady        = errors.New("contract not verified yet")
	ErrQuarantined     = errors.New("contract quarantined")
	ErrTokenExpired    = errors.New("capability token expired and not refreshable")
	ErrQuotaSpent      = errors.New("quota spent")
	ErrBusy            = errors.New("ledger is full; retry shortly")
	ErrUnauthorized    = errors.New("missing or bad local bearer token")
	// ErrVerification: the origin's bytes failed verification (502).
	ErrVerification = errors.New("origin bytes failed verification")
)

// VerificationError is a failed verification of origin bytes, with its kind
// (digest, size, decode, ...) for the metrics.
type VerificationError struct {
	Kind string
	Err  error
}

func (e *VerificationError) Error() string { return e.Err.Error() }

// Unwrap makes errors.Is(err, ErrVerification) true and keeps the cause.
func (e *VerificationError) Unwrap() []error { return []error{ErrVerification, e.Err} }

// Contract states, shown at /v1/contracts and /readyz.
const (
	StateStarting    = "starting"
	StateVerifying   = "verifying"
	StateReady       = "ready"
	StateDegraded    = "degraded"    // registry unreachable, token still valid
	StateQuarantined = "quarantined" // fork or rollback detected
	StateExpired     = "expired"     // token expired, not refreshable
)

// Status is a mounted contract's state as /v1/contracts shows it.
type Status struct {
	ID             string    `json:"contract_id"`
	State          string    `json:"state"`
	TreeSize       uint64    `json:"verified_size"`
	Root           HexBytes  `json:"checkpoint_root,omitempty"`
	CheckpointTime time.Time `json:"checkpoint_time,omitzero"`
	Objects        int       `json:"objects"`
	TokenExpiry    time.Time `json:"token_expiry,omitzero"`
	Error          string    `json:"error,omitempty"`
	// MeteringDisputes counts metering batches the registry acknowledged
	// without counting exactly what was sent; MeteringDispute is the
	// latest one's detail. The contract still serves: the alarm is for an
	// operator (the rows are kept in the ledger).
	MeteringDisputes int64  `json:"metering_disputes,omitempty"`
	MeteringDispute  string `json:"metering_dispute,omitempty"`
}

// HexBytes is JSON-encoded as lowercase hex, only when it is encoded: the
// data path reads Status on every request and never pays for the text.
type HexBytes []byte

// MarshalText encodes b as hex.
func (b HexBytes) MarshalText() ([]byte, error) {
	return []byte(hex.EncodeToString(b)), nil
}

// UnmarshalText decodes hex.
func (b *HexBytes) UnmarshalText(t []byte) error {
	v, err := hex.DecodeString(string(t))
	*b = v
	return err
}

// Serving reports whether bytes may be served in this state.
func (s Status) Serving() bool { return s.State == StateReady || s.State == StateDegraded }

// ManifestEntry is one verified object of a contract.
type ManifestEntry struct {
	contract.ObjectClaim
	Seq uint64
}

// Grant is the capability in force: the token's id, its licensee, and the
// quota lease it draws on with its quota (cumulative over every token of
// the lease; a token without a lease has its own).
type Grant struct {
	TokenID  string
	LeaseID  string
	Licensee string
	Quota    contract.Quota
	Expiry   time.Time
}

// Source is one mounted contract.
type Source interface {
	ID() string
	Contract() *contract.Contract
	Status() Status
	// Lookup returns the verified entry for name, or an error wrapping
	// ErrNotFound, ErrRedacted, ErrNotReady or ErrQuarantined.
	Lookup(name string) (*ManifestEntry, error)
	// Manifest lists the verified, unredacted objects sorted by name.
	Manifest() []ManifestEntry
	// Grant returns the capability in force, or an error wrapping
	// ErrTokenExpired.
	Grant() (Grant, error)
}

// Cache hands out verified, decoded objects.
type Cache interface {
	// Get returns the committed, verified object, fetching it first if it
	// is not cached. The caller must Close it.
	Get(ctx context.Context, contractID string, obj *contract.ObjectClaim) (Object, error)
	// Stream returns the object while it is being fetched; its final Read
	// returns the verification error, never io.EOF, if the bytes fail.
	Stream(ctx context.Context, contractID string, obj *contract.ObjectClaim) (io.ReadCloser, error)
	// Purge drops a name's bytes and any fetch of it in flight (a
	// redaction the proxy saw before the cache did).
	Purge(contractID, name string) error
}

// Object is a verified object on disk, pinned until Close. Its File is
// at offset 0 when it is handed out.
type Object interface {
	File() *os.File
	Close() error
}

// Access is one served (or refused) object, for the ledger.
type Access struct {
	Time     time.Time
	Contract string
	Name     string
	// Bytes, Samples and Tokens are what the access bills: its bytes sent,
	// and, when it opened a pass over the object, one sample and the
	// object's attested token count.
	Bytes      int64
	Samples    int64
	Tokens     int64
	DecodedSHA string
	Epoch      int64
	Job        string
	TokenID    string
	Lease      string
	Outcome    string
}

// Access outcomes.
const (
	OutcomeServed   = "served"  // a whole object
	OutcomePartial  = "partial" // a range that opens a pass: one sample
	OutcomeRange    = "range"   // a range that continues a pass: its bytes only
	OutcomeAborted  = "aborted" // the client went away mid-body: bills what was sent
	OutcomeVerifyKO = "verification_failed"
)

// Meter records accesses and closes epochs.
type Meter interface {
	// Submit queues one access that holds no reservation (a verification
	// failure, which bills nothing), or fails with an error wrapping
	// ErrBusy when the ledger cannot take it now. The returned wait
	// returns once the access is durable.
	Submit(ctx context.Context, a Access) (wait func(context.Context) error, err error)
	// EndEpoch closes an epoch's summary and returns it (JSON-encodable).
	EndEpoch(ctx context.Context, contractID, job string, epoch int64) (any, error)
	// Reserve refuses, with an error wrapping ErrQuotaSpent, when samples
	// more samples of bytes in all would pass the grant's quota (counted
	// over its lease, or its token when it has none) or the contract's
	// usage limits u, counting what other responses have reserved;
	// otherwise it reserves them.
	Reserve(contractID string, g Grant, u contract.Usage, samples, bytes int64) (Reservation, error)
}

// Reservation is quota held by a response in flight.
type Reservation interface {
	// Submit is Meter.Submit for the reserved access: its usage replaces
	// the reservation in one step. On an error the reservation is held.
	Submit(ctx context.Context, a Access) (wait func(context.Context) error, err error)
	// Release gives back what is still reserved; it is idempotent and
	// does nothing after a successful Submit.
	Release()
}

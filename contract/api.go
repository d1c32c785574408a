package contract

import "time"

// InclusionProof answers GET /provenance/{id}/proof/inclusion?seq=&size=.
// The leaf index is seq-1. Hashes are base64 in JSON.
type InclusionProof struct {
	Seq      uint64   `json:"seq"`
	TreeSize uint64   `json:"tree_size"`
	Hashes   [][]byte `json:"hashes"`
}

// ConsistencyProof answers GET /provenance/{id}/proof/consistency?from=&to=.
type ConsistencyProof struct {
	From   uint64   `json:"from"`
	To     uint64   `json:"to"`
	Hashes [][]byte `json:"hashes"`
}

// Checkpoints are served as C2SP tlog-checkpoint signed notes with media
// type CheckpointMediaType, signed by the key in Contract.Log.
const CheckpointMediaType = "text/plain; charset=utf-8"

// VerifyRequest is the body of POST /provenance/verify: a checkpoint that a
// client holds, to be checked against the registry's log.
type VerifyRequest struct {
	Contract   string `json:"contract_id"`
	Checkpoint string `json:"checkpoint"`
}

// VerifyResponse answers POST /provenance/verify. Consistent means the
// submitted checkpoint is signed by the log, and is a prefix of the current
// log (Proof proves it from the submitted size to TreeSize).
type VerifyResponse struct {
	Consistent bool              `json:"consistent"`
	TreeSize   uint64            `json:"tree_size"`
	Checkpoint string            `json:"checkpoint"`
	Proof      *ConsistencyProof `json:"proof,omitempty"`
	Message    string            `json:"message,omitempty"`
}

// PresignRequest is the body of POST /contracts/{id}/objects/presign.
type PresignRequest struct {
	Names []string `json:"names"`
}

// MaxPresignNames bounds one presign request.
const MaxPresignNames = 1000

// PresignResponse answers a presign request, one result per name, in
// order. A name the registry refuses (redacted: 451, not an object of the
// contract: 404, not a valid name: 400) gets an Error instead of a URL and
// never fails the others; a refusal of the whole request (token, proof,
// quota) is still an error response.
type PresignResponse struct {
	URLs []PresignedURL `json:"urls"`
}

// PresignedURL is a short-lived GET URL for one object, or (Error set, URL
// and ExpiresAt empty) why that object gets none.
type PresignedURL struct {
	Name      string       `json:"name"`
	URL       string       `json:"url,omitempty"`
	ExpiresAt time.Time    `json:"expires_at,omitzero"`
	Error     *ErrorDetail `json:"error,omitempty"`
}

// Err returns the name's refusal as an *APIError (its status derived from
// the code), or nil when u carries a URL.
func (u PresignedURL) Err() error {
	if u.Error == nil {
		return nil
	}
	return &APIError{Status: StatusForCode(u.Error.Code), Code: u.Error.Code, Message: u.Error.Message}
}

// ContributorKeys answers GET /contributors/{id}/jwks.json: the JWKS is
// served as-is with media type application/jwk-set+json.
const JWKSMediaType = "application/jwk-set+json"

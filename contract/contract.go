package contract

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/tokenize"
)

// Origin modes.
const (
	// ModeMarketplace: the sidecar holds no bucket credentials and reads
	// through short-lived presigned URLs that the registry issues.
	ModeMarketplace = "marketplace"
	// ModeSelfHosted: the sidecar reads the bucket with its own credentials.
	ModeSelfHosted = "self-hosted"
)

// Pricing units.
const (
	UnitSample       = "sample"
	UnitToken        = "token"
	UnitByte         = "byte"
	UnitSubscription = "subscription"
)

// Contract is a data contract's metadata, as served by GET /contracts/{id}.
type Contract struct {
	ContractID         string        `json:"contract_id"`
	Version            string        `json:"version"`
	SchemaURL          string        `json:"schema_url,omitempty"`
	License            string        `json:"license"`
	Pricing            Pricing       `json:"pricing"`
	Usage              Usage         `json:"usage"`
	ProvenanceEndpoint string        `json:"provenance_endpoint,omitempty"`
	Contributors       []Contributor `json:"contributors"`
	// Licensees are who may use the data; a token needs an enrolment by
	// one of them.
	Licensees []Licensee `json:"licensees,omitempty"`
	Origin    Origin     `json:"origin"`
	// Log is filled in by the registry when the contract is created.
	Log LogInfo `json:"log"`
	// CreatedAt is set by the registry.
	CreatedAt time.Time `json:"created_at,omitzero"`
	// Curators are contributor ids that may replace or redact any name;
	// any other contributor may only replace or redact the names it
	// attested first.
	Curators []string `json:"curators,omitempty"`
	// TermsSeq is the seq of the log entry that holds these terms
	// (EntryContract), set by the registry when it serves the contract.
	// Sidecars take terms only from that entry, verified in the log.
	TermsSeq uint64 `json:"terms_seq,omitempty"`
}

// Pricing says what one unit of use costs.
type Pricing struct {
	Unit     string  `json:"unit"`
	PriceUSD float64 `json:"price_usd"`
	// Tokenizer names the deterministic tokenizer whose counts, attested
	// per object by contributors, a "token" unit bills.
	Tokenizer string `json:"tokenizer,omitempty"`
}

// validate refuses a pricing that cannot be billed: an unknown unit, a
// "token" unit without a tokenizer this build implements, a tokenizer under
// another unit. A "subscription" is billed outside metering (a flat fee
// for the license's term); its reads are metered for quotas and audit at
// units 0, cost 0.
func (p Pricing) validate() []error {
	var errs []error
	switch p.Unit {
	case UnitSample, UnitByte, UnitSubscription:
		if p.Tokenizer != "" {
			errs = append(errs, fmt.Errorf("pricing.tokenizer %q: only a token unit names a tokenizer", p.Tokenizer))
		}
	case UnitToken:
		if !tokenize.Known(p.Tokenizer) {
			errs = append(errs, fmt.Errorf("pricing.tokenizer %q: a token unit needs a known tokenizer (%s)", p.Tokenizer, strings.Join(tokenize.Names(), ", ")))
		}
	default:
		errs = append(errs, fmt.Errorf("pricing.unit %q: want sample, token, byte or subscription", p.Unit))
	}
	return errs
}

// NanoUSD is the unit price in billionths of a dollar, so that totals can be
// summed exactly.
func (p Pricing) NanoUSD() int64 {
	return int64(p.PriceUSD*1e9 + 0.5)
}

// Usage holds the contract's usage constraints.
type Usage struct {
	Purposes       []string `json:"purposes"`
	RetentionDays  int      `json:"retention_days,omitempty"`
	Redistribution bool     `json:"redistribution"`
	MaxSamples     int64    `json:"max_samples,omitempty"`
	MaxBytes       int64    `json:"max_bytes,omitempty"`
	// DownstreamModels constrains what models may be trained, free text.
	DownstreamModels string `json:"downstream_models,omitempty"`
}

// AllowsPurpose reports whether purpose is one the contract permits.
func (u Usage) AllowsPurpose(purpose string) bool {
	for _, p := range u.Purposes {
		if p == purpose {
			return true
		}
	}
	return false
}

// Retention is how long a licensee may keep the data, zero for no limit.
func (u Usage) Retention() time.Duration {
	return time.Duration(u.RetentionDays) * 24 * time.Hour
}

// Contributor is a party allowed to append attestations to the contract's
// log. Its keys come inline (JWKS) or from JWKSURI.
type Contributor struct {
	ID      string              `json:"id"`
	JWKS    *jose.JSONWebKeySet `json:"jwks,omitempty"`
	JWKSURI string              `json:"jwks_uri,omitempty"`
	// KeyWindows optionally bounds when each key (by kid) may sign: an
	// attestation whose iat falls outside its key's window is refused.
	KeyWindows map[string]KeyWindow `json:"key_windows,omitempty"`
}

// KeyWindow is a key's validity window; a zero bound is open.
type KeyWindow struct {
	NotBefore time.Time `json:"not_before,omitzero"`
	NotAfter  time.Time `json:"not_after,omitzero"`
}

// Contains reports whether t lies inside the window.
func (w KeyWindow) Contains(t time.Time) bool {
	if !w.NotBefore.IsZero() && t.Before(w.NotBefore) {
		return false
	}
	if !w.NotAfter.IsZero() && t.After(w.NotAfter) {
		return false
	}
	return true
}

// Origin is where the contract's objects are stored.
type Origin struct {
	Bucket string `json:"bucket"`
	Prefix string `json:"prefix,omitempty"`
	// Mode is ModeMarketplace (default) or ModeSelfHosted.
	Mode string `json:"mode,omitempty"`
	// Endpoint and Region are informative for self-hosted sidecars.
	Endpoint string `json:"endpoint,omitempty"`
	Region   string `json:"region,omitempty"`
}

// Key returns the bucket key of a logical object name.
func (o Origin) Key(name string) string { return o.Prefix + name }

// LogInfo identifies the contract's provenance log and the key that signs
// its checkpoints.
type LogInfo struct {
	// Origin is the C2SP checkpoint origin line.
	Origin string `json:"origin"`
	// CheckpointKey is the note verifier key (C2SP signed-note vkey) for
	// the registry's checkpoint signatures (cosignature/v1, Ed25519), which
	// carry a signed timestamp.
	CheckpointKey string `json:"checkpoint_key"`
}

// Contributor returns the contributor with id, or nil.
func (c *Contract) Contributor(id string) *Contributor {
	for i := range c.Contributors {
		if c.Contributors[i].ID == id {
			return &c.Contributors[i]
		}
	}
	return nil
}

// IsCurator reports whether the contract names id as a curator.
func (c *Contract) IsCurator(id string) bool {
	for _, cur := range c.Curators {
		if cur == id {
			return true
		}
	}
	return false
}

// MayRewrite reports whether issuer may replace or redact a name owned by
// owner: its owner, or a curator.
func (c *Contract) MayRewrite(issuer, owner string) bool {
	return owner == "" || issuer == owner || c.IsCurator(issuer)
}

// Validate checks the fields a contract file must carry. It does not check
// Log, which the registry fills in.
func (c *Contract) Validate() error {
	var errs []error
	if c.ContractID == "" {
		errs = append(errs, errors.New("contract_id is required"))
	} else if err := ValidateID(c.ContractID); err != nil {
		errs = append(errs, fmt.Errorf("contract_id: %w", err))
	}
	if c.Version == "" {
		errs = append(errs, errors.New("version is required"))
	}
	if c.License == "" {
		errs = append(errs, errors.New("license is required"))
	}
	errs = append(errs, c.Pricing.validate()...)
	if c.Pricing.PriceUSD < 0 {
		errs = append(errs, errors.New("pricing.price_usd must not be negative"))
	}
	if len(c.Usage.Purposes) == 0 {
		errs = append(errs, errors.New("usage.purposes: at least one purpose is required"))
	}
	if c.Usage.MaxSamples < 0 || c.Usage.MaxBytes < 0 || c.Usage.RetentionDays < 0 {
		errs = append(errs, errors.New("usage limits must not be negative"))
	}
	if len(c.Contributors) == 0 {
		errs = append(errs, errors.New("contributors: at least one contributor is required"))
	}
	seen := map[string]bool{}
	for i, ct := range c.Contributors {
		switch {
		case ct.ID == "":
			errs = append(errs, fmt.Errorf("contributors[%d].id is required", i))
		case seen[ct.ID]:
			errs = append(errs, fmt.Errorf("contributors[%d]: duplicate id %q", i, ct.ID))
		}
		seen[ct.ID] = true
		errs = append(errs, validateKeys(fmt.Sprintf("contributors[%d]", i), ct.JWKS, ct.JWKSURI)...)
	}
	errs = append(errs, c.validateLicensees()...)
	for i, cur := range c.Curators {
		if c.Contributor(cur) == nil {
			errs = append(errs, fmt.Errorf("curators[%d]: %q is not a contributor", i, cur))
		}
	}
	if c.Origin.Bucket == "" {
		errs = append(errs, errors.New("origin.bucket is required"))
	}
	switch c.Origin.Mode {
	case "", ModeMarketplace, ModeSelfHosted:
	default:
		errs = append(errs, fmt.Errorf("origin.mode %q: want marketplace or self-hosted", c.Origin.Mode))
	}
	return errors.Join(errs...)
}

// validateKeys checks a party's keys: inline public keys with a kid, or
// an http(s) jwks_uri.
func validateKeys(what string, set *jose.JSONWebKeySet, uri string) []error {
	var errs []error
	if (set == nil || len(set.Keys) == 0) && uri == "" {
		errs = append(errs, fmt.Errorf("%s: jwks or jwks_uri is required", what))
	}
	if uri != "" {
		if u, err := url.Parse(uri); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			errs = append(errs, fmt.Errorf("%s.jwks_uri %q is not an http(s) URL", what, uri))
		}
	}
	if set != nil {
		for _, k := range set.Keys {
			if k.KeyID == "" {
				errs = append(errs, fmt.Errorf("%s: every key needs a kid", what))
			}
			if !k.IsPublic() {
				errs = append(errs, fmt.Errorf("%s: key %q is not a public key", what, k.KeyID))
			}
		}
	}
	return errs
}

// MaxIDLen bounds contract and contributor ids.
const MaxIDLen = 256

// ValidateID checks a contract id: printable ASCII without '/', '?', '#',
// '%' or spaces, so that it can sit in a URL path segment unescaped.
func ValidateID(id string) error {
	if id == "" || len(id) > MaxIDLen {
		return fmt.Errorf("id must be 1 to %d characters", MaxIDLen)
	}
	if strings.ContainsAny(id, "/?#% \\") {
		return fmt.Errorf("id %q must not contain '/', '?', '#', '%%', '\\' or spaces", id)
	}
	for _, r := range id {
		if r < 0x21 || r > 0x7e {
			return fmt.Errorf("id %q must be printable ASCII", id)
		}
	}
	return nil
}

// ValidateName checks a logical object name: a relative slash-separated
// path with no empty, "." or ".." segment, no backslash, no control
// characters, at most 1024 bytes.
func ValidateName(name string) error {
	if name == "" || len(name) > 1024 {
		return errors.New("object name must be 1 to 1024 bytes")
	}
	if strings.HasPrefix(name, "/") || strings.Contains(name, "\\") {
		return fmt.Errorf("object name %q must be a relative path without backslashes", name)
	}
	for _, seg := range strings.Split(name, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("object name %q has an empty, '.' or '..' segment", name)
		}
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f || r == 0xfffd {
			return fmt.Errorf("object name %q has a control or invalid character", name)
		}
	}
	return nil
}

package verify

import (
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/provgate/provgate/contract"
)

// NewBatch makes the batch attestation of objs by issuer for contractID
// (unsigned, iat now and a fresh jti) and the manifest bytes it covers.
func NewBatch(issuer, contractID string, objs []contract.ObjectClaim) (*contract.Attestation, []byte, error) {
	raw, err := contract.EncodeBatchManifest(&contract.BatchManifest{V: contract.BatchManifestVersion, Contract: contractID, Objects: objs})
	if err != nil {
		return nil, nil, err
	}
	a := &contract.Attestation{Issuer: issuer, Subject: contractID, IssuedAt: time.Now().Unix(), ID: NewID(), Type: contract.Batch,
		Batch: &contract.BatchClaim{ManifestSHA256: contract.ManifestDigest(raw), ManifestSize: int64(len(raw)), Objects: len(objs)}}
	return a, raw, nil
}

// SignBatch signs the batch attestation of objs with a contributor's key:
// it returns the compact JWS and the manifest bytes to post with it.
func SignBatch(key *jose.JSONWebKey, issuer, contractID string, objs []contract.ObjectClaim) (jws string, manifest []byte, err error) {
	a, raw, err := NewBatch(issuer, contractID, objs)
	if err != nil {
		return "", nil, err
	}
	if jws, err = SignAttestation(key, a); err != nil {
		return "", nil, err
	}
	return jws, raw, nil
}

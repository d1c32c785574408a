package proxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/provgate/provgate/verify"
)

// CA files in the sidecar's state directory.
const (
	CACertFile = "ca.pem"
	CAKeyFile  = "ca-key.pem"
	// CALifetime is how long a generated local CA is valid.
	CALifetime = 2 * 365 * 24 * time.Hour
)

// LoadOrCreateCA loads the forward proxy's local CA from stateDir, creating
// an ECDSA P-256 CA (key mode 0600) on first use. It returns the CA and its
// certificate in PEM, for `provgate ca export`.
func LoadOrCreateCA(stateDir string) (*tls.Certificate, []byte, error) {
	certPath, keyPath := filepath.Join(stateDir, CACertFile), filepath.Join(stateDir, CAKeyFile)
	certPEM, err := os.ReadFile(certPath)
	if errors.Is(err, fs.ErrNotExist) {
		if err := createCA(certPath, keyPath); err != nil {
			return nil, nil, err
		}
		certPEM, err = os.ReadFile(certPath)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("local CA: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, fmt.Errorf("local CA: %w", err)
	}
	ca, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("local CA: %w", err)
	}
	if ca.Leaf, err = x509.ParseCertificate(ca.Certificate[0]); err != nil {
		return nil, nil, fmt.Errorf("local CA: %w", err)
	}
	if time.Now().After(ca.Leaf.NotAfter) {
		return nil, nil, fmt.Errorf("local CA in %s expired at %s; remove %s and %s to make a new one",
			stateDir, ca.Leaf.NotAfter.Format(time.RFC3339), CACertFile, CAKeyFile)
	}
	return &ca, certPEM, nil
}

func createCA(certPath, keyPath string) error {
	if err := os.MkdirAll(filepath.Dir(certPath), 0o700); err != nil {
		return fmt.Errorf("local CA: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("local CA: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return fmt.Errorf("local CA: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "provgate local CA", Organization: []string{"provgate sidecar"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(CALifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("local CA: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("local CA: %w", err)
	}
	if err := verify.WriteFileAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return fmt.Errorf("local CA: %w", err)
	}
	return verify.WriteFileAtomic(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

package proxy_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/provgate/provgate/proxy"
)

// leafFor signs a server certificate for host with the CA, as the forward
// proxy (or anyone holding the CA key) could.
func leafFor(t *testing.T, dir, host string) *x509.Certificate {
	t.Helper()
	ca, _, err := proxy.LoadOrCreateCA(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: host},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	if ip := net.ParseIP(host); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = []string{host}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Leaf, &key.PublicKey, ca.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return leaf
}

func verifyLeaf(dir string, leaf *x509.Certificate, host string) error {
	pemBytes, err := os.ReadFile(filepath.Join(dir, proxy.CACertFile))
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemBytes)
	_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: host})
	return err
}

// The local CA that jobs trust is good for the origin hosts only (a stolen
// CA key or a confused proxy cannot mint a certificate for any other name
// a job would accept), lives a short time, and is re-issued when the
// origin hosts change or when it is an old, unconstrained one.
func TestLocalCANameConstrainedAndShortLived(t *testing.T) {
	dir := t.TempDir()
	hosts := []string{"s3.example.com:9000", "127.0.0.1:9000"}
	ca, _, err := proxy.LoadOrCreateCA(dir, hosts)
	if err != nil {
		t.Fatal(err)
	}
	if life := time.Until(ca.Leaf.NotAfter); life > proxy.CALifetime || proxy.CALifetime > 31*24*time.Hour {
		t.Fatalf("CA lives %s (lifetime %s), want at most a month", life, proxy.CALifetime)
	}
	for _, host := range []string{"s3.example.com", "127.0.0.1"} {
		if err := verifyLeaf(dir, leafFor(t, dir, host), host); err != nil {
			t.Fatalf("certificate for origin host %s: %v", host, err)
		}
	}
	for _, host := range []string{"registry.example.com", "169.254.169.254", "s3.example.com.evil.org"} {
		err := verifyLeaf(dir, leafFor(t, dir, host), host)
		if err == nil || !strings.Contains(err.Error(), "constraint") {
			t.Fatalf("certificate for %s, not an origin host: %v, want a name constraint error", host, err)
		}
	}
	// Same hosts: the same CA (jobs keep trusting it).
	again, _, err := proxy.LoadOrCreateCA(dir, []string{"127.0.0.1:9000", "s3.example.com:9000"})
	if err != nil || !again.Leaf.Equal(ca.Leaf) {
		t.Fatalf("same hosts re-issued the CA: %v", err)
	}
	// Other hosts: a new CA for them.
	moved, _, err := proxy.LoadOrCreateCA(dir, []string{"minio.internal:9000"})
	if err != nil || moved.Leaf.Equal(ca.Leaf) {
		t.Fatalf("changed hosts kept the old CA: %v", err)
	}
	if err := verifyLeaf(dir, leafFor(t, dir, "s3.example.com"), "s3.example.com"); err == nil {
		t.Fatal("the re-issued CA still vouches for the old host")
	}
}

// A CA made before name constraints (unconstrained, two years) is replaced.
func TestLocalCAOldUnconstrainedReplaced(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := proxy.LoadOrCreateCA(dir, nil); err != nil {
		t.Fatal(err)
	}
	// Forge an old-style CA in place with the same key file.
	ca, _, _ := proxy.LoadOrCreateCA(dir, nil)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(9), Subject: pkix.Name{CommonName: "provgate local CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(2 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, ca.Leaf.PublicKey, ca.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, proxy.CACertFile), der)
	got, _, err := proxy.LoadOrCreateCA(dir, []string{"s3.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if !got.Leaf.PermittedDNSDomainsCritical || len(got.Leaf.PermittedDNSDomains) != 1 || got.Leaf.PermittedDNSDomains[0] != "s3.example.com" {
		t.Fatalf("old CA kept: constraints %v", got.Leaf.PermittedDNSDomains)
	}
}

func writePEM(t *testing.T, path string, der []byte) {
	t.Helper()
	b := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

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
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/provgate/provgate/verify"
)

// CA files in the sidecar's state directory.
const (
	CACertFile = "ca.pem"
	CAKeyFile  = "ca-key.pem"
	// CALifetime is how long a generated local CA is valid; one with less
	// than CARenewBefore left is re-issued when loaded.
	CALifetime    = 30 * 24 * time.Hour
	CARenewBefore = 10 * 24 * time.Hour
)

// noHost is the DNS name a CA is constrained to when no origin host is known
// yet: a reserved name (RFC 6761) that no real server has.
const noHost = "provgate.invalid"

// LoadOrCreateCA loads the forward proxy's local CA from stateDir. It
// (re-)creates it, an ECDSA P-256 CA (key mode 0600) valid for CALifetime,
// when there is none, when it expires within CARenewBefore, or when it is
// not name-constrained to exactly the hosts given (host or host:port; IP
// addresses are constrained as such). With hosts nil it loads the CA as it
// is (creating one constrained to no real name if there is none), for
// `provgate ca export`. It returns the CA and its certificate in PEM.
//
// The constraints make the CA good for the origin hosts only: a job that
// trusts it accepts no certificate it signs for any other name.
func LoadOrCreateCA(stateDir string, hosts []string) (*tls.Certificate, []byte, error) {
	certPath, keyPath := filepath.Join(stateDir, CACertFile), filepath.Join(stateDir, CAKeyFile)
	ca, certPEM, err := loadCA(certPath, keyPath)
	switch {
	case errors.Is(err, fs.ErrPermission):
		return nil, nil, err
	case err != nil:
		// Missing, or a torn pair (a crash between the two writes): make
		// a new one.
	case hosts == nil && time.Now().Before(ca.Leaf.NotAfter):
		return ca, certPEM, nil
	case hosts != nil && time.Until(ca.Leaf.NotAfter) > CARenewBefore && constrainedTo(ca.Leaf, hosts):
		return ca, certPEM, nil
	}
	if err := createCA(certPath, keyPath, hosts); err != nil {
		return nil, nil, err
	}
	return loadCA(certPath, keyPath)
}

func loadCA(certPath, keyPath string) (*tls.Certificate, []byte, error) {
	certPEM, err := os.ReadFile(certPath)
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
	return &ca, certPEM, nil
}

// caNames splits hosts into the DNS names and IP networks a CA for them is
// constrained to, sorted and without duplicates.
func caNames(hosts []string) (dns []string, ips []*net.IPNet) {
	for _, h := range hosts {
		if host, _, err := net.SplitHostPort(h); err == nil {
			h = host
		}
		h = strings.ToLower(strings.Trim(h, "[]"))
		if h == "" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil {
			bits := 128
			if ip4 := ip.To4(); ip4 != nil {
				ip, bits = ip4, 32
			}
			n := &net.IPNet{IP: ip, Mask: net.CIDRMask(bits, bits)}
			if !slices.ContainsFunc(ips, func(o *net.IPNet) bool { return o.String() == n.String() }) {
				ips = append(ips, n)
			}
			continue
		}
		if !slices.Contains(dns, h) {
			dns = append(dns, h)
		}
	}
	// An empty list would leave that kind of name unconstrained: permit
	// only a name and an address that no origin has.
	if len(dns) == 0 {
		dns = []string{noHost}
	}
	if len(ips) == 0 {
		ips = []*net.IPNet{{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(32, 32)}}
	}
	slices.Sort(dns)
	slices.SortFunc(ips, func(a, b *net.IPNet) int { return strings.Compare(a.String(), b.String()) })
	return dns, ips
}

// constrainedTo reports whether cert is name-constrained to exactly hosts.
func constrainedTo(cert *x509.Certificate, hosts []string) bool {
	dns, ips := caNames(hosts)
	if !cert.PermittedDNSDomainsCritical || len(cert.ExcludedDNSDomains) > 0 {
		return false
	}
	got := slices.Clone(cert.PermittedDNSDomains)
	slices.Sort(got)
	if !slices.Equal(got, dns) || len(cert.PermittedIPRanges) != len(ips) {
		return false
	}
	gotIPs := make([]string, len(cert.PermittedIPRanges))
	for i, n := range cert.PermittedIPRanges {
		gotIPs[i] = n.String()
	}
	slices.Sort(gotIPs)
	for i, n := range ips {
		if gotIPs[i] != n.String() {
			return false
		}
	}
	return true
}

func createCA(certPath, keyPath string, hosts []string) error {
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
	dns, ips := caNames(hosts)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:                serial,
		Subject:                     pkix.Name{CommonName: "provgate local CA", Organization: []string{"provgate sidecar"}},
		NotBefore:                   now.Add(-time.Hour),
		NotAfter:                    now.Add(CALifetime),
		KeyUsage:                    x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid:       true,
		IsCA:                        true,
		MaxPathLenZero:              true,
		PermittedDNSDomainsCritical: true,
		PermittedDNSDomains:         dns,
		PermittedIPRanges:           ips,
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

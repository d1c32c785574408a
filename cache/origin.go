package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// Origin is where a contract's stored objects are read from.
type Origin interface {
	// Open returns the stored bytes of the object with this logical name,
	// from byte off to the end. Errors are *OriginError where the status
	// is known. The cache verifies every byte itself; an Origin checks
	// nothing.
	Open(ctx context.Context, name string, off int64) (io.ReadCloser, error)
}

// forgetter is an Origin that keeps per-name credentials (presigned
// URLs): the cache tells it to drop a name's when it purges the name.
type forgetter interface {
	Forget(name string)
}

// Interface guards.
var (
	_ Origin = (*S3Origin)(nil)
	_ Origin = (*PresignedOrigin)(nil)
)

// S3Config configures a self-hosted origin: a bucket reached with the
// sidecar's own credentials.
type S3Config struct {
	// Endpoint is a URL (https://host[:port], http:// for plain) or a bare
	// host[:port], which means https.
	Endpoint string
	// Region; empty reads AWS_REGION, then AWS_DEFAULT_REGION, then lets
	// minio-go discover it.
	Region string
	Bucket string
	// Prefix is prepended to logical names to make bucket keys.
	Prefix string
	// Lookup is "auto" (default), "path" or "dns" (virtual-host style).
	Lookup string
	// AccessKey, SecretKey and SessionToken, when AccessKey is set, are
	// used as given. Otherwise credentials come the way AWS tools read
	// them: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN,
	// then the shared files (~/.aws/credentials and ~/.aws/config,
	// AWS_PROFILE or Profile), then MinIO's MINIO_ACCESS_KEY env, then an
	// IAM role (web identity, ECS or EC2 metadata).
	AccessKey, SecretKey, SessionToken string
	Profile                            string
	// Transport is the HTTP transport; nil is minio-go's default.
	Transport http.RoundTripper
}

// S3Origin reads objects through minio-go. It asks minio-go for a single
// attempt per request: retries and ranged resumes are the cache's.
type S3Origin struct {
	core   *minio.Core
	bucket string
	prefix string
}

// NewS3Origin makes an S3 origin. It does not contact the endpoint.
func NewS3Origin(cfg S3Config) (*S3Origin, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("s3 origin: bucket is required")
	}
	host, secure, err := parseEndpoint(cfg.Endpoint)
	if err != nil {
		return nil, err
	}
	region := cfg.Region
	for _, env := range []string{"AWS_REGION", "AWS_DEFAULT_REGION"} {
		if region == "" {
			region = os.Getenv(env)
		}
	}
	lookup := minio.BucketLookupAuto
	switch cfg.Lookup {
	case "", "auto":
	case "path":
		lookup = minio.BucketLookupPath
	case "dns", "virtual-host":
		lookup = minio.BucketLookupDNS
	default:
		return nil, fmt.Errorf("s3 origin: lookup %q: want auto, path or dns", cfg.Lookup)
	}
	var creds *credentials.Credentials
	if cfg.AccessKey != "" {
		creds = credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, cfg.SessionToken)
	} else {
		creds = credentials.NewChainCredentials([]credentials.Provider{
			&credentials.EnvAWS{},
			&credentials.FileAWSCredentials{Profile: cfg.Profile},
			&credentials.EnvMinio{},
			&credentials.IAM{},
		})
	}
	core, err := minio.NewCore(host, &minio.Options{
		Creds:        creds,
		Secure:       secure,
		Region:       region,
		BucketLookup: lookup,
		Transport:    cfg.Transport,
		MaxRetries:   1,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 origin: %w", err)
	}
	return &S3Origin{core: core, bucket: cfg.Bucket, prefix: cfg.Prefix}, nil
}

func parseEndpoint(ep string) (host string, secure bool, err error) {
	if ep == "" {
		return "", false, errors.New("s3 origin: endpoint is required")
	}
	if !strings.Contains(ep, "://") {
		return ep, true, nil
	}
	u, err := url.Parse(ep)
	if err != nil {
		return "", false, fmt.Errorf("s3 origin: endpoint: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return "", false, fmt.Errorf("s3 origin: endpoint %q: want http(s)://host[:port]", ep)
	}
	return u.Host, u.Scheme == "https", nil
}

// Open implements Origin with a GetObject, ranged from off.
func (o *S3Origin) Open(ctx context.Context, name string, off int64) (io.ReadCloser, error) {
	var opts minio.GetObjectOptions
	if off > 0 {
		if err := opts.SetRange(off, 0); err != nil {
			return nil, &OriginError{Op: "get", Name: name, Err: err}
		}
	}
	body, _, _, err := o.core.GetObject(ctx, o.bucket, o.prefix+name, opts)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		resp := minio.ToErrorResponse(err)
		return nil, &OriginError{Op: "get", Name: name, Status: resp.StatusCode, Err: err}
	}
	return body, nil
}

// Package s3server serves a small S3-compatible object store for tests and demos: gofakes3 behind a check of AWS Signature Version 4.
//
// Every request must be signed (AWS4-HMAC-SHA256 in an Authorization
// header) with the one access key and secret key the server is given.
// What is checked: the access key; the signature over the method, path,
// query, the signed headers (host, x-amz-date and x-amz-content-sha256
// among them, and every x-amz-* header present) and the payload hash;
// that X-Amz-Date is within 15 minutes of the server's clock and matches
// the credential scope's date; and the body against the payload hash: its
// SHA-256 when one is given, the chained chunk signatures of a
// STREAMING-AWS4-HMAC-SHA256-PAYLOAD body. UNSIGNED-PAYLOAD bodies are
// taken as they come. The scope's region is not checked (any region
// signs). Presigned URLs, signature version 2, session tokens and
// anonymous requests are refused.
package s3server

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3afero"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"github.com/spf13/afero"
)

// Config configures New.
type Config struct {
	AccessKey string
	SecretKey string
	// Buckets are created at start unless they exist.
	Buckets []string
	// DataDir keeps the objects in files under this directory; with ""
	// they are kept in memory.
	DataDir string
	// Log, if set, is told of each refused request, one line each.
	Log io.Writer
	// Now is the server's clock; time.Now if nil.
	Now func() time.Time
}

// Handler serves the store.
type Handler struct {
	v       verifier
	next    http.Handler
	log     io.Writer
	refused atomic.Int64
}

// New makes the store's handler.
func New(cfg Config) (*Handler, error) {
	if cfg.AccessKey == "" || cfg.SecretKey == "" {
		return nil, errors.New("s3server: no access key or secret key")
	}
	var backend gofakes3.Backend
	if cfg.DataDir != "" {
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return nil, fmt.Errorf("s3server: %w", err)
		}
		b, err := s3afero.MultiBucket(afero.NewBasePathFs(afero.NewOsFs(), cfg.DataDir))
		if err != nil {
			return nil, fmt.Errorf("s3server: data directory %s: %w", cfg.DataDir, err)
		}
		backend = b
	} else {
		backend = s3mem.New()
	}
	for _, b := range cfg.Buckets {
		if err := gofakes3.ValidateBucketName(b); err != nil {
			return nil, fmt.Errorf("s3server: bucket %q: %w", b, err)
		}
		ok, err := backend.BucketExists(b)
		if err != nil {
			return nil, fmt.Errorf("s3server: bucket %s: %w", b, err)
		}
		if !ok {
			if err := backend.CreateBucket(b); err != nil {
				return nil, fmt.Errorf("s3server: creating bucket %s: %w", b, err)
			}
		}
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	faker := gofakes3.New(backend, gofakes3.WithAutoBucket(false))
	return &Handler{
		v:    verifier{accessKey: cfg.AccessKey, secretKey: cfg.SecretKey, now: now},
		next: faker.Server(),
		log:  cfg.Log,
	}, nil
}

// Refused counts the requests refused so far.
func (h *Handler) Refused() int64 { return h.refused.Load() }

// ServeHTTP checks the request's signature and passes it on, or answers
// with an S3 error.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := h.v.verify(r); err != nil {
		h.refused.Add(1)
		if h.log != nil {
			fmt.Fprintf(h.log, "khib-s3d: refused %s %s from %s: %v\n", r.Method, short(r.URL.Path), r.RemoteAddr, err)
		}
		writeError(w, r, err)
		return
	}
	h.next.ServeHTTP(w, r)
}

// writeError answers with S3's XML error document.
func writeError(w http.ResponseWriter, r *http.Request, e *authError) {
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(e.status)
	if r.Method == http.MethodHead {
		return
	}
	body := struct {
		XMLName  xml.Name `xml:"Error"`
		Code     string
		Message  string
		Resource string
	}{Code: e.code, Message: e.msg, Resource: r.URL.Path}
	io.WriteString(w, xml.Header)
	xml.NewEncoder(w).Encode(body)
}

package objstore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// defaultAttempts is how often a request is tried before it fails
// (minio-go's own default).
const defaultAttempts = 10

// ErrNotFound says that an object does not exist.
var ErrNotFound = errors.New("no such object")

// newCore makes a client for loc, signing with creds (nil only with
// creds=none). attempts bounds the tries of each request, 0 for the default.
func newCore(loc *Location, creds *Credentials, attempts int) (*minio.Core, error) {
	if loc == nil {
		return nil, errors.New("objstore: no location")
	}
	var mc *credentials.Credentials
	switch {
	case creds != nil:
		if creds.AccessKey == "" || creds.SecretKey == "" {
			return nil, fmt.Errorf("%s: the access key or secret key is empty", creds.source())
		}
		mc = credentials.NewStaticV4(creds.AccessKey, creds.SecretKey, creds.SessionToken)
	case loc.Anonymous():
		mc = credentials.NewStatic("", "", "", credentials.SignatureAnonymous)
	default:
		return nil, fmt.Errorf("%s: no credentials; load %s with LoadCredentials", loc.Object(), loc.Creds)
	}
	tr, err := minio.DefaultTransport(loc.TLS)
	if err != nil {
		return nil, fmt.Errorf("objstore: %w", err)
	}
	if loc.CA != "" {
		pem, err := os.ReadFile(loc.CA)
		if err != nil {
			return nil, fmt.Errorf("ca=: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca=%s holds no PEM certificate; give the CA certificate of the store", loc.CA)
		}
		if tr.TLSClientConfig == nil {
			tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	if attempts <= 0 {
		attempts = defaultAttempts
	}
	core, err := minio.NewCore(loc.Endpoint, &minio.Options{
		Creds:      mc,
		Secure:     loc.TLS,
		Region:     loc.Region,
		Transport:  tr,
		MaxRetries: attempts,
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", loc.Object(), err)
	}
	return core, nil
}

// storeError carries an error of the store with a one-line text that
// names the server's code and HTTP status.
type storeError struct{ err error }

func (e *storeError) Error() string {
	r, ok := asResponse(e.err)
	if !ok {
		return oneLine(e.err.Error())
	}
	msg := oneLine(r.Message)
	if len(msg) > 300 {
		msg = msg[:300] + "..."
	}
	status := ""
	if r.StatusCode != 0 {
		status = fmt.Sprintf("HTTP %d", r.StatusCode)
		if t := http.StatusText(r.StatusCode); t != "" {
			status += " " + t
		}
	}
	code := r.Code
	if code == "" || strings.HasPrefix(code, fmt.Sprint(r.StatusCode)) {
		// minio-go puts the status line there when the answer had no
		// error document, and often the message too.
		if msg == code {
			msg = ""
		}
		code = ""
	}
	what := code
	switch {
	case code != "" && status != "":
		what = code + " (" + status + ")"
	case code == "":
		what = status
	}
	if msg == "" {
		return "the store said " + what
	}
	return "the store said " + what + ": " + msg
}

func (e *storeError) Unwrap() error { return e.err }

// wrapStore wraps an error of minio-go so that it reads as one line.
func wrapStore(err error) error {
	if err == nil {
		return nil
	}
	return &storeError{err}
}

// asResponse finds the store's answer in err's chain.
func asResponse(err error) (minio.ErrorResponse, bool) {
	var r minio.ErrorResponse
	if errors.As(err, &r) {
		return r, true
	}
	var rp *minio.ErrorResponse
	if errors.As(err, &rp) && rp != nil {
		return *rp, true
	}
	return r, false
}

// errCode is the S3 error code of err, or "".
func errCode(err error) string {
	r, _ := asResponse(err)
	return r.Code
}

// retryable tells whether a failed request is worth another try.
func retryable(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	if r, ok := asResponse(err); ok {
		switch r.StatusCode {
		case 408, 429, 499, 500, 502, 503, 504, 520:
			return true
		}
		switch r.Code {
		case "RequestTimeout", "SlowDown", "InternalError", "ServiceUnavailable":
			return true
		}
		return false
	}
	var ue *url.Error
	if !errors.As(err, &ue) {
		return false // not a request that failed on the way
	}
	var unknownCA x509.UnknownAuthorityError
	var badHost x509.HostnameError
	var badCert x509.CertificateInvalidError
	if errors.As(err, &unknownCA) || errors.As(err, &badHost) || errors.As(err, &badCert) ||
		strings.Contains(err.Error(), "server gave HTTP response to HTTPS client") {
		return false
	}
	return true
}

// withRetry runs op up to attempts times, with growing pauses, while it
// fails in a way worth another try. It is for requests with a body that
// minio-go is not to send again itself (see bodyReader).
func withRetry(ctx context.Context, attempts int, op func() error) error {
	if attempts <= 0 {
		attempts = defaultAttempts
	}
	pause := 200 * time.Millisecond
	for i := 1; ; i++ {
		err := op()
		if err == nil || i >= attempts || !retryable(ctx, err) {
			return err
		}
		t := time.NewTimer(pause + rand.N(pause/2))
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		pause = min(2*pause, 3*time.Second)
	}
}

// bodyReader hands a buffer to one request as its body. It is no
// io.Seeker, so minio-go sends it once and leaves retries to withRetry,
// which makes a new bodyReader for each try. Once closed it reads
// nothing more: net/http may go on reading a request's body after the
// request returned (when the server answered before it read all of it),
// and the buffer is about to be reused.
type bodyReader struct {
	mu     sync.Mutex
	data   []byte
	closed bool
}

func newBodyReader(data []byte) *bodyReader { return &bodyReader{data: data} }

func (r *bodyReader) Read(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return 0, errors.New("objstore: request body read after the request ended")
	}
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

// Close ends the reads; minio-go calls it when the request is done.
func (r *bodyReader) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	r.data = nil
	return nil
}

// oneLine folds whitespace runs, newlines included, into single spaces.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

package objstore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/minio/minio-go/v7"
)

// The refusals of Preflight, to be tested with errors.Is.
var (
	ErrUnreachable    = errors.New("object store unreachable")
	ErrBadCredentials = errors.New("object store refused the credentials")
	ErrNoBucket       = errors.New("no such bucket")
)

// Time limits of Preflight, unless ctx has an earlier deadline.
const (
	preflightDial    = 5 * time.Second
	preflightTimeout = 15 * time.Second
)

// refusal is a one-line message that matches a sentinel with errors.Is
// and unwraps to the cause.
type refusal struct {
	msg   string
	kind  error
	cause error
}

func (r *refusal) Error() string        { return r.msg }
func (r *refusal) Is(target error) bool { return target == r.kind }
func (r *refusal) Unwrap() error        { return r.cause }

// Preflight checks, before a hibernation, that loc can be used: that the
// endpoint answers (ErrUnreachable), that the store accepts the
// credentials (ErrBadCredentials) and that the bucket exists
// (ErrNoBucket). Each refusal is one line that says what to do. It reads
// and writes nothing: it asks for the first byte of the image, which may
// or may not exist.
func Preflight(ctx context.Context, loc *Location, creds *Credentials) error {
	ctx, cancel := context.WithTimeout(ctx, preflightTimeout)
	defer cancel()
	d := net.Dialer{Timeout: preflightDial}
	conn, err := d.DialContext(ctx, "tcp", loc.Endpoint)
	if err != nil {
		return unreachable(loc, err)
	}
	conn.Close()

	core, err := newCore(loc, creds, 2)
	if err != nil {
		return err
	}
	var opts minio.GetObjectOptions
	if err := opts.SetRange(0, 0); err != nil {
		return err
	}
	body, _, _, err := core.GetObject(ctx, loc.Bucket, loc.Key, opts)
	if err == nil {
		body.Close()
		return nil
	}
	r, ok := asResponse(err)
	if !ok {
		// No answer from S3: the connection, TLS or the deadline failed.
		return unreachable(loc, err)
	}
	cause := wrapStore(err)
	switch r.Code {
	case "NoSuchKey", "InvalidRange":
		return nil // there is no image yet, or an empty one
	case "NoSuchBucket":
		return &refusal{fmt.Sprintf("bucket %s does not exist on %s; create it first", loc.Bucket, loc.Endpoint), ErrNoBucket, cause}
	case "RequestTimeTooSkewed":
		return refused(creds, cause, "set this system's clock")
	case "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
		"InvalidSecurity", "AccessDenied", "AllAccessDisabled", "AuthorizationHeaderMalformed",
		"InvalidClientTokenId", "UnrecognizedClientException", "MissingSecurityHeader":
		what := "fix the access key and secret key"
		if r.Code == "AccessDenied" {
			what = "give them read and write access to s3://" + loc.Bucket
		}
		return refused(creds, cause, what)
	}
	if r.StatusCode == 401 || r.StatusCode == 403 {
		return refused(creds, cause, "fix the credentials or their access to s3://"+loc.Bucket)
	}
	return fmt.Errorf("%s: checking the store: %w", loc.Object(), cause)
}

// refused is the refusal of credentials, or of anonymous access.
func refused(creds *Credentials, cause error, what string) error {
	who := "the credentials in " + creds.source()
	if creds == nil {
		who = "anonymous access (creds=none)"
		what = "give creds=FILE with an access key and secret key"
	}
	return &refusal{fmt.Sprintf("the store refused %s: %v; %s", who, cause, what), ErrBadCredentials, cause}
}

func unreachable(loc *Location, err error) error {
	scheme := "https"
	if !loc.TLS {
		scheme = "http"
	}
	return &refusal{fmt.Sprintf("cannot reach %s (%s): %s; check the endpoint and the network", loc.Endpoint, scheme, oneLine(err.Error())), ErrUnreachable, err}
}

// Command khib-s3d is a small S3-compatible object store for testing
// khib's s3:// targets: gofakes3 behind a check of AWS Signature Version 4
// with the credentials of one file.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/khib/khib/internal/objstore"
	"github.com/khib/khib/internal/objstore/s3server"
)

const help = `NAME
    khib-s3d - a small S3-compatible object store for testing khib

SYNOPSIS
    khib-s3d --creds FILE [--listen ADDR] [--bucket NAME]... [--data DIR]
             [--tls-cert FILE --tls-key FILE] [--quiet]

DESCRIPTION
    khib-s3d serves the S3 API (gofakes3) on ADDR so that khib can save
    images to s3://BUCKET/KEY targets and read them back without a real
    object store. It is a test server: simple, not fast, not hardened.

    It prints one line "khib-s3d: listening on ADDR" to standard error
    when it is ready, and runs until SIGINT or SIGTERM.

    Every request must be signed with the access key and secret key in
    the credentials file; gofakes3 itself checks no signature, so
    khib-s3d does, before a request reaches it. Checked:
      - the Authorization header, AWS4-HMAC-SHA256 only: the access key
        (else InvalidAccessKeyId) and the signature over the method, path,
        query, signed headers and payload hash (else SignatureDoesNotMatch);
      - that host, x-amz-date and x-amz-content-sha256 are signed, and
        every x-amz-* header present;
      - that X-Amz-Date is within 15 minutes of this machine's clock
        (else RequestTimeTooSkewed) and is the credential scope's date;
      - the body: against its SHA-256 when the client signed one (else
        XAmzContentSHA256Mismatch), chunk by chunk for a
        STREAMING-AWS4-HMAC-SHA256-PAYLOAD body; an UNSIGNED-PAYLOAD body
        is taken as it comes.
    Not checked: the region of the credential scope (any region signs).
    Refused outright: anonymous requests, presigned URLs, signature
    version 2 and session tokens. Each refusal is logged to standard
    error, one line each, unless --quiet.

OPTIONS
    --creds FILE
        The credentials requests must be signed with (required). The same
        format khib reads: lines "access_key = ..." and "secret_key = ...",
        # comments; or an AWS credentials file's [default] profile
        (aws_access_key_id, aws_secret_access_key). The file must not be
        readable by group or others: chmod 600 FILE.

    --listen ADDR
        Where to listen, HOST:PORT (default 127.0.0.1:9000). Port 0 picks
        a free port; the line printed when ready says which.

    --bucket NAME
        A bucket to create at start unless it exists (default khib).
        Repeat it, or give a comma-separated list, for several.

    --data DIR
        Keep the objects in files under DIR (gofakes3's afero backend:
        DIR/buckets/BUCKET/KEY and their metadata under DIR/metadata), so
        they outlive the server. Without it everything is kept in memory
        and lost when the server stops. Either way an upload's parts are
        held in memory until it completes, and with --data an object is
        written to its file in place, so a server killed mid-write can
        leave it half-written.

    --tls-cert FILE, --tls-key FILE
        Serve https with this PEM certificate and key (khib's spec then
        takes tls=1 and ca=FILE for a self-signed certificate). Without
        them, plain http (tls=0).

    --quiet
        Do not log refused requests.

    -h, --help
        Show this text.

EXIT STATUS
    0 after SIGINT or SIGTERM, 1 if the server failed, 2 for bad usage.

EXAMPLE
    printf 'access_key = khib\nsecret_key = %s\n' "$(head -c 24 /dev/urandom | base64)" >s3.creds
    chmod 600 s3.creds
    khib-s3d --listen 127.0.0.1:9000 --bucket khib --creds s3.creds &

    and name an image in it with the spec
    s3://khib/host-a.img?endpoint=127.0.0.1:9000&creds=$PWD/s3.creds&tls=0
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// bucketList is a repeatable, comma-separated flag.
type bucketList []string

func (b *bucketList) String() string { return strings.Join(*b, ",") }

func (b *bucketList) Set(v string) error {
	for name := range strings.SplitSeq(v, ",") {
		if name = strings.TrimSpace(name); name != "" {
			*b = append(*b, name)
		}
	}
	return nil
}

// run is main with its surroundings given; it returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("khib-s3d", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	listen := fs.String("listen", "127.0.0.1:9000", "")
	credsFile := fs.String("creds", "", "")
	dataDir := fs.String("data", "", "")
	certFile := fs.String("tls-cert", "", "")
	keyFile := fs.String("tls-key", "", "")
	quiet := fs.Bool("quiet", false, "")
	var buckets bucketList
	fs.Var(&buckets, "bucket", "")
	usage := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "khib-s3d: "+format+"\n", a...)
		fmt.Fprintln(stderr, "usage: khib-s3d --creds FILE [--listen ADDR] [--bucket NAME]... [--data DIR] [--tls-cert FILE --tls-key FILE] [--quiet]; see --help")
		return 2
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			io.WriteString(stdout, help)
			return 0
		}
		return usage("%v", err)
	}
	if fs.NArg() > 0 {
		return usage("unexpected argument %q", fs.Arg(0))
	}
	if *credsFile == "" {
		return usage("no --creds FILE; requests are signed with the keys in it")
	}
	if (*certFile == "") != (*keyFile == "") {
		return usage("--tls-cert and --tls-key go together")
	}
	if len(buckets) == 0 {
		buckets = bucketList{"khib"}
	}
	creds, err := objstore.LoadCredentials(*credsFile)
	if err != nil {
		fmt.Fprintf(stderr, "khib-s3d: %v\n", err)
		return 1
	}
	var refusals io.Writer = stderr
	if *quiet {
		refusals = nil
	}
	h, err := s3server.New(s3server.Config{
		AccessKey: creds.AccessKey,
		SecretKey: creds.SecretKey,
		Buckets:   buckets,
		DataDir:   *dataDir,
		Log:       refusals,
	})
	if err != nil {
		fmt.Fprintf(stderr, "khib-s3d: %v\n", err)
		return 1
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          log.New(stderr, "khib-s3d: ", 0),
	}
	if *certFile != "" {
		cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			fmt.Fprintf(stderr, "khib-s3d: --tls-cert/--tls-key: %v\n", err)
			return 1
		}
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(stderr, "khib-s3d: %v\n", err)
		return 1
	}
	done := make(chan error, 1)
	go func() {
		if srv.TLSConfig != nil {
			done <- srv.ServeTLS(ln, "", "")
		} else {
			done <- srv.Serve(ln)
		}
	}()
	fmt.Fprintf(stderr, "khib-s3d: listening on %s\n", ln.Addr())
	select {
	case err := <-done:
		fmt.Fprintf(stderr, "khib-s3d: %v\n", err)
		return 1
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	return 0
}

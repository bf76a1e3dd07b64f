package objstore

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/khib/khib/internal/objstore/s3server"
)

// closedPort is an address on which nothing listens.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestPreflight(t *testing.T) {
	s := newTestStore(t, nil)
	s.put("images/exists.img", []byte("an image"))
	s.put("images/empty-ish.img", []byte("x"))

	wrongSecret := *s.creds
	wrongSecret.SecretKey = "not the secret"
	wrongKey := *s.creds
	wrongKey.AccessKey = "SOMEONEELSE"
	noBucket := *s.loc
	noBucket.Bucket = "nobucket"
	closed := *s.loc
	closed.Endpoint = closedPort(t)
	httpsToHTTP := *s.loc
	httpsToHTTP.TLS = true
	anonymous := *s.loc
	anonymous.Creds = CredsNone

	tests := []struct {
		name  string
		loc   *Location
		creds *Credentials
		kind  error // nil for success
		want  []string
	}{
		{"no image yet", s.loc, s.creds, nil, nil},
		{"an image", s.location("images/exists.img"), s.creds, nil, nil},
		{"closed port", &closed, s.creds, ErrUnreachable, []string{"cannot reach " + closed.Endpoint, "check the endpoint and the network"}},
		{"https to an http store", &httpsToHTTP, s.creds, ErrUnreachable, []string{"cannot reach", "(https)", "check the endpoint and the network"}},
		{"wrong secret", s.loc, &wrongSecret, ErrBadCredentials, []string{"the store refused the credentials in " + s.file, "SignatureDoesNotMatch", "fix the access key and secret key"}},
		{"wrong access key", s.loc, &wrongKey, ErrBadCredentials, []string{"the store refused the credentials in " + s.file, "InvalidAccessKeyId"}},
		{"anonymous", &anonymous, nil, ErrBadCredentials, []string{"refused anonymous access (creds=none)", "give creds=FILE"}},
		{"missing bucket", &noBucket, s.creds, ErrNoBucket, []string{"bucket nobucket does not exist on " + s.loc.Endpoint + "; create it first"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			err := Preflight(testCtx(t), tt.loc, tt.creds)
			if time.Since(start) > 20*time.Second {
				t.Errorf("Preflight took %v", time.Since(start))
			}
			if tt.kind == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, tt.kind) {
				t.Fatalf("Preflight = %v, want %v", err, tt.kind)
			}
			for _, k := range []error{ErrUnreachable, ErrBadCredentials, ErrNoBucket} {
				if k != tt.kind && errors.Is(err, k) {
					t.Errorf("Preflight error %v also matches %v", err, k)
				}
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Preflight = %q; want it to say %q", err, w)
				}
			}
			oneLineErr(t, err)
			if strings.Contains(err.Error(), testSecret) || strings.Contains(err.Error(), "not the secret") {
				t.Errorf("the error shows a secret: %v", err)
			}
		})
	}
}

// A store whose clock is far off refuses with a hint about the clock.
func TestPreflightClockSkew(t *testing.T) {
	h, err := s3server.New(s3server.Config{
		AccessKey: testAccess, SecretKey: testSecret, Buckets: []string{testBucket},
		Now: func() time.Time { return time.Now().Add(time.Hour) },
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, h, false)
	s := newTestStore(t, nil)
	loc := *s.loc
	loc.Endpoint = strings.TrimPrefix(srv.URL, "http://")
	err = Preflight(testCtx(t), &loc, s.creds)
	if !errors.Is(err, ErrBadCredentials) || !strings.Contains(err.Error(), "clock") {
		t.Fatalf("Preflight against a skewed store: %v", err)
	}
}

// A context that has ended makes Preflight fail at once.
func TestPreflightCancelled(t *testing.T) {
	s := newTestStore(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Preflight(ctx, s.loc, s.creds); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("Preflight with a cancelled context: %v", err)
	}
}

// https with ca=: the whole way over TLS.
func TestTLS(t *testing.T) {
	h, err := s3server.New(s3server.Config{AccessKey: testAccess, SecretKey: testSecret, Buckets: []string{testBucket}})
	if err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, h, true)
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	cert := srv.Certificate()
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := x509.ParseCertificate(cert.Raw); err != nil {
		t.Fatal(err)
	}
	credsFile := writeCreds(t, "access_key = "+testAccess+"\nsecret_key = "+testSecret+"\n")
	creds, err := LoadCredentials(credsFile)
	if err != nil {
		t.Fatal(err)
	}
	// httptest's certificate is for 127.0.0.1 and example.com.
	endpoint := strings.TrimPrefix(srv.URL, "https://")
	loc, err := ParseURL("s3://" + testBucket + "/tls.img?endpoint=" + endpoint + "&creds=" + credsFile + "&ca=" + ca)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	if err := Preflight(ctx, loc, creds); err != nil {
		t.Fatal(err)
	}
	up, err := Create(ctx, loc, creds, Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := randomBytes(9<<20, 5)
	if _, err := up.WriteAt(want, 0); err != nil {
		t.Fatal(err)
	}
	if err := up.Close(); err != nil {
		t.Fatal(err)
	}
	obj, err := Open(ctx, loc, creds)
	if err != nil {
		t.Fatal(err)
	}
	defer obj.Close()
	got := make([]byte, obj.Size())
	if _, err := obj.ReadAt(got, 0); err != nil || firstDiff(got, want) >= 0 {
		t.Fatalf("read back over TLS: %v", err)
	}

	// Without ca= the store's certificate is not trusted.
	noCA := *loc
	noCA.CA = ""
	if err := Preflight(ctx, &noCA, creds); !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("Preflight without ca=: %v", err)
	}
	badCA := *loc
	badCA.CA = credsFile
	if err := Preflight(ctx, &badCA, creds); err == nil || !strings.Contains(err.Error(), "holds no PEM certificate") {
		t.Fatalf("Preflight with a ca= that is no certificate: %v", err)
	}
}

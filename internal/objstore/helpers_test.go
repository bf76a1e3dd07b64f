package objstore

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/khib/khib/internal/objstore/s3server"
)

const (
	testBucket = "khib"
	testAccess = "KHIBTESTACCESS"
	testSecret = "khib/test+secret=="
)

// testStore is an in-process S3 store (gofakes3 behind khib-s3d's
// signature check) and a location in it.
type testStore struct {
	t       *testing.T
	srv     *httptest.Server
	handler *s3server.Handler
	loc     *Location
	creds   *Credentials
	file    string // the credentials file
}

// newTestStore starts a store; wrap, if set, wraps its handler (to inject
// failures).
func newTestStore(t *testing.T, wrap func(http.Handler) http.Handler) *testStore {
	t.Helper()
	h, err := s3server.New(s3server.Config{AccessKey: testAccess, SecretKey: testSecret, Buckets: []string{testBucket}})
	if err != nil {
		t.Fatal(err)
	}
	var handler http.Handler = h
	if wrap != nil {
		handler = wrap(h)
	}
	srv := startServer(t, handler, false)
	file := writeCreds(t, fmt.Sprintf("access_key = %s\nsecret_key = %s\n", testAccess, testSecret))
	creds, err := LoadCredentials(file)
	if err != nil {
		t.Fatal(err)
	}
	s := &testStore{t: t, srv: srv, handler: h, creds: creds, file: file}
	s.loc = s.location("images/host-a.img")
	return s
}

// location parses a spec for key in the test bucket.
func (s *testStore) location(key string) *Location {
	s.t.Helper()
	loc, err := ParseURL(fmt.Sprintf("s3://%s/%s?endpoint=%s&creds=%s&tls=0", testBucket, key, strings.TrimPrefix(s.srv.URL, "http://"), s.file))
	if err != nil {
		s.t.Fatal(err)
	}
	return loc
}

// client is a plain minio-go client of the store, to look behind objstore.
func (s *testStore) client() *minio.Core {
	s.t.Helper()
	c, err := newCore(s.loc, s.creds, 1)
	if err != nil {
		s.t.Fatal(err)
	}
	return c
}

// exists tells whether key is an object in the test bucket.
func (s *testStore) exists(key string) bool {
	s.t.Helper()
	_, err := s.client().StatObject(context.Background(), testBucket, key, minio.StatObjectOptions{})
	if err == nil {
		return true
	}
	if errCode(err) != "NoSuchKey" {
		s.t.Fatalf("stat %s: %v", key, err)
	}
	return false
}

// uploads counts the unfinished multipart uploads of key.
func (s *testStore) uploads(key string) int {
	s.t.Helper()
	res, err := s.client().ListMultipartUploads(context.Background(), testBucket, key, "", "", "", 1000)
	if err != nil {
		s.t.Fatalf("listing uploads: %v", err)
	}
	n := 0
	for _, u := range res.Uploads {
		if u.Key == key {
			n++
		}
	}
	return n
}

// put stores data at key the plain way.
func (s *testStore) put(key string, data []byte) {
	s.t.Helper()
	loc := *s.loc
	loc.Key = key
	up, err := Create(context.Background(), &loc, s.creds, Options{})
	if err != nil {
		s.t.Fatal(err)
	}
	if _, err := up.WriteAt(data, 0); err != nil {
		s.t.Fatal(err)
	}
	if err := up.Close(); err != nil {
		s.t.Fatal(err)
	}
}

// readAll reads key back through Open.
func (s *testStore) readAll(loc *Location) []byte {
	s.t.Helper()
	obj, err := Open(context.Background(), loc, s.creds)
	if err != nil {
		s.t.Fatal(err)
	}
	defer obj.Close()
	buf := make([]byte, obj.Size())
	if _, err := obj.ReadAt(buf, 0); err != nil {
		s.t.Fatal(err)
	}
	return buf
}

// writeCreds writes a credentials file of mode 0600.
func writeCreds(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "s3.creds")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// testCtx is a context that ends with the test, or after a minute.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// oneLineErr fails unless err's message is one line.
func oneLineErr(t *testing.T, err error) {
	t.Helper()
	if err != nil && strings.ContainsAny(err.Error(), "\r\n") {
		t.Errorf("error is not one line: %q", err)
	}
}

// startServer serves h on the loopback, logging the server's own
// complaints to the test log.
func startServer(t *testing.T, h http.Handler, tls bool) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = log.New(testWriter{t}, "server: ", 0)
	if tls {
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	return srv
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

package s3server

import (
	"bytes"
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

func client(t *testing.T, url, access, secret string) *minio.Client {
	t.Helper()
	c, err := minio.New(strings.TrimPrefix(url, "http://"), &minio.Options{
		Creds:      credentials.NewStaticV4(access, secret, ""),
		Region:     "us-east-1",
		MaxRetries: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestServer(t *testing.T) {
	for _, dir := range []string{"", t.TempDir()} {
		name := "memory"
		if dir != "" {
			name = "files"
		}
		t.Run(name, func(t *testing.T) {
			var log bytes.Buffer
			h, err := New(Config{AccessKey: "AK", SecretKey: "SK", Buckets: []string{"khib", "other"}, DataDir: dir, Log: &log})
			if err != nil {
				t.Fatal(err)
			}
			srv := httptest.NewServer(h)
			defer srv.Close()
			ctx := context.Background()
			c := client(t, srv.URL, "AK", "SK")
			for _, b := range []string{"khib", "other"} {
				if ok, err := c.BucketExists(ctx, b); err != nil || !ok {
					t.Fatalf("bucket %s: %v, %v", b, ok, err)
				}
			}
			// minio-go's default streaming signature over http, and a
			// multipart upload of its own.
			data := bytes.Repeat([]byte("khib"), 3<<20)
			if _, err := c.PutObject(ctx, "khib", "dir/obj", bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{PartSize: 5 << 20}); err != nil {
				t.Fatal(err)
			}
			small := []byte("small")
			if _, err := c.PutObject(ctx, "khib", "small", bytes.NewReader(small), int64(len(small)), minio.PutObjectOptions{}); err != nil {
				t.Fatal(err)
			}
			for key, want := range map[string][]byte{"dir/obj": data, "small": small} {
				o, err := c.GetObject(ctx, "khib", key, minio.GetObjectOptions{})
				if err != nil {
					t.Fatal(err)
				}
				got, err := io.ReadAll(o)
				o.Close()
				if err != nil || !bytes.Equal(got, want) {
					t.Fatalf("%s: read %d bytes, %v", key, len(got), err)
				}
			}
			if h.Refused() != 0 {
				t.Fatalf("%d requests refused: %s", h.Refused(), log.String())
			}

			bad := minio.Core{Client: client(t, srv.URL, "AK", "wrong")}
			if _, err := bad.StatObject(ctx, "khib", "small", minio.StatObjectOptions{}); err == nil {
				t.Fatal("a wrong secret was taken")
			}
			_, _, _, err = bad.GetObject(ctx, "khib", "small", minio.GetObjectOptions{})
			if code := minio.ToErrorResponse(err).Code; code != "SignatureDoesNotMatch" {
				t.Fatalf("a wrong secret: %v (code %q)", err, code)
			}
			if h.Refused() == 0 || !strings.Contains(log.String(), "khib-s3d: refused GET /khib/small from 127.0.0.1:") {
				t.Fatalf("refusals not logged: %q", log.String())
			}
		})
	}
}

// Objects kept with DataDir outlive the server.
func TestServerDataDir(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	for i, step := range []string{"put", "get"} {
		h, err := New(Config{AccessKey: "AK", SecretKey: "SK", Buckets: []string{"khib"}, DataDir: dir})
		if err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
		srv := httptest.NewServer(h)
		c := client(t, srv.URL, "AK", "SK")
		switch step {
		case "put":
			if _, err := c.PutObject(ctx, "khib", "a/b", strings.NewReader("kept"), 4, minio.PutObjectOptions{}); err != nil {
				t.Fatal(err)
			}
		case "get":
			o, err := c.GetObject(ctx, "khib", "a/b", minio.GetObjectOptions{})
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(o)
			if err != nil || string(got) != "kept" {
				t.Fatalf("after a restart: %q, %v", got, err)
			}
		}
		srv.Close()
	}
}

func TestNewRefusals(t *testing.T) {
	if _, err := New(Config{AccessKey: "AK"}); err == nil {
		t.Error("no secret key was taken")
	}
	if _, err := New(Config{AccessKey: "AK", SecretKey: "SK", Buckets: []string{"Bad_Bucket"}}); err == nil {
		t.Error("a bad bucket name was taken")
	}
}

package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/khib/khib/internal/objstore"
)

// syncBuffer is a bytes.Buffer safe for a writer and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// server runs khib-s3d with args until the test ends and returns the
// address it listens on.
func server(t *testing.T, args ...string) (addr string, stderr *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stderr = &syncBuffer{}
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, args, io.Discard, io.MultiWriter(stderr, pw))
		pw.Close()
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case rc := <-done:
			if rc != 0 {
				t.Errorf("khib-s3d exited %d: %s", rc, stderr.String())
			}
		case <-time.After(10 * time.Second):
			t.Error("khib-s3d did not stop")
		}
	})
	line, err := bufio.NewReader(pr).ReadString('\n')
	go io.Copy(io.Discard, pr)
	if err != nil {
		t.Fatalf("no line from khib-s3d: %v (%s)", err, stderr.String())
	}
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "khib-s3d: listening on ")
	if !ok {
		t.Fatalf("khib-s3d said %q, want its address", line)
	}
	return addr, stderr
}

func writeFile(t *testing.T, name, text string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestServe(t *testing.T) {
	creds := writeFile(t, "s3.creds", "# test\naccess_key = khibtest\nsecret_key = 7Xp/3+q==\n", 0o600)
	data := t.TempDir()
	addr, stderr := server(t, "--listen", "127.0.0.1:0", "--bucket", "khib,more", "--bucket", "third", "--creds", creds, "--data", data)
	ctx := context.Background()

	c, err := objstore.LoadCredentials(creds)
	if err != nil {
		t.Fatal(err)
	}
	for _, bucket := range []string{"khib", "more", "third"} {
		loc, err := objstore.ParseURL(fmt.Sprintf("s3://%s/host-a.img?endpoint=%s&creds=%s&tls=0", bucket, addr, creds))
		if err != nil {
			t.Fatal(err)
		}
		if err := objstore.Preflight(ctx, loc, c); err != nil {
			t.Fatalf("bucket %s: %v", bucket, err)
		}
	}
	loc, _ := objstore.ParseURL(fmt.Sprintf("s3://khib/host-a.img?endpoint=%s&creds=%s&tls=0", addr, creds))
	up, err := objstore.Create(ctx, loc, c, objstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Repeat([]byte("khib-s3d "), 2<<20)
	if _, err := up.WriteAt(want, 0); err != nil {
		t.Fatal(err)
	}
	if err := up.Close(); err != nil {
		t.Fatal(err)
	}
	obj, err := objstore.Open(ctx, loc, c)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, obj.Size())
	if _, err := obj.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read back %d bytes: %v", len(got), err)
	}
	obj.Close()
	if _, err := os.Stat(filepath.Join(data, "buckets", "khib", "host-a.img")); err != nil {
		t.Errorf("--data keeps no file: %v", err)
	}

	// The auth check: wrong keys are refused, and said so on stderr.
	for _, bad := range []objstore.Credentials{
		{AccessKey: "khibtest", SecretKey: "wrong", File: "wrong-secret"},
		{AccessKey: "intruder", SecretKey: "7Xp/3+q==", File: "wrong-key"},
	} {
		err := objstore.Preflight(ctx, loc, &bad)
		if !errors.Is(err, objstore.ErrBadCredentials) || !strings.Contains(err.Error(), "the store refused the credentials in "+bad.File) {
			t.Errorf("Preflight with %s: %v", bad.File, err)
		}
	}
	anon := *loc
	anon.Creds = objstore.CredsNone
	if err := objstore.Preflight(ctx, &anon, nil); !errors.Is(err, objstore.ErrBadCredentials) {
		t.Errorf("anonymous Preflight: %v", err)
	}
	missing := *loc
	missing.Bucket = "missing"
	if err := objstore.Preflight(ctx, &missing, c); !errors.Is(err, objstore.ErrNoBucket) {
		t.Errorf("Preflight of a missing bucket: %v", err)
	}
	for _, want := range []string{"SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied: anonymous requests are refused"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr does not log %q:\n%s", want, stderr.String())
		}
	}
}

func TestServeTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := selfSigned(t, dir)
	creds := writeFile(t, "s3.creds", "access_key = k\nsecret_key = s\n", 0o600)
	addr, _ := server(t, "--listen", "127.0.0.1:0", "--creds", creds, "--tls-cert", certFile, "--tls-key", keyFile, "--quiet")
	loc, err := objstore.ParseURL(fmt.Sprintf("s3://khib/x?endpoint=%s&creds=%s&ca=%s", addr, creds, certFile))
	if err != nil {
		t.Fatal(err)
	}
	c, err := objstore.LoadCredentials(creds)
	if err != nil {
		t.Fatal(err)
	}
	if err := objstore.Preflight(context.Background(), loc, c); err != nil {
		t.Fatal(err)
	}
}

// selfSigned writes a certificate for 127.0.0.1 and its key.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "khib-s3d test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	return certFile, keyFile
}

func TestUsage(t *testing.T) {
	good := writeFile(t, "s3.creds", "access_key = k\nsecret_key = s\n", 0o600)
	open := writeFile(t, "open.creds", "access_key = k\nsecret_key = s\n", 0o644)
	tests := []struct {
		args    []string
		rc      int
		stdout  string
		stderr  string
		noStart bool
	}{
		{args: []string{"--help"}, rc: 0, stdout: "SYNOPSIS"},
		{args: []string{"-h"}, rc: 0, stdout: "Not checked: the region"},
		{args: nil, rc: 2, stderr: "no --creds FILE"},
		{args: []string{"--creds", good, "extra"}, rc: 2, stderr: `unexpected argument "extra"`},
		{args: []string{"--bogus"}, rc: 2, stderr: "flag provided but not defined: -bogus"},
		{args: []string{"--creds", good, "--tls-cert", "x"}, rc: 2, stderr: "go together"},
		{args: []string{"--creds", open}, rc: 1, stderr: "chmod 600 " + open},
		{args: []string{"--creds", good, "--bucket", "Bad_Name"}, rc: 1, stderr: "Bad_Name"},
		{args: []string{"--creds", good, "--listen", "127.0.0.1:99999"}, rc: 1, stderr: "khib-s3d: listen tcp"},
		{args: []string{"--creds", good, "--tls-cert", good, "--tls-key", good, "--listen", "127.0.0.1:0"}, rc: 1, stderr: "--tls-cert/--tls-key"},
	}
	for _, tt := range tests {
		var stdout, stderr bytes.Buffer
		rc := run(context.Background(), tt.args, &stdout, &stderr)
		if rc != tt.rc || !strings.Contains(stdout.String(), tt.stdout) || !strings.Contains(stderr.String(), tt.stderr) {
			t.Errorf("khib-s3d %q: exit %d, stdout %q, stderr %q; want %d, %q, %q", tt.args, rc, stdout.String(), stderr.String(), tt.rc, tt.stdout, tt.stderr)
		}
		if strings.Contains(stderr.String(), "listening on") {
			t.Errorf("khib-s3d %q said it listens", tt.args)
		}
	}
}

package s3server

import (
	"bytes"
	"crypto/sha256"
	"hash"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7/pkg/signer"
)

// The example keys of AWS's Signature Version 4 documentation for S3.
const (
	exampleAccess = "AKIAIOSFODNN7EXAMPLE"
	exampleSecret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
)

var exampleTime = time.Date(2013, 5, 24, 0, 0, 0, 0, time.UTC)

func exampleVerifier() *verifier {
	return &verifier{accessKey: exampleAccess, secretKey: exampleSecret, now: func() time.Time { return exampleTime }}
}

// AWS's published example "GET Object" (with a Range header).
func TestVerifyAWSExampleGet(t *testing.T) {
	r := httptest.NewRequest("GET", "http://examplebucket.s3.amazonaws.com/test.txt", nil)
	r.Header.Set("Range", "bytes=0-9")
	r.Header.Set("X-Amz-Content-Sha256", emptySHA256)
	r.Header.Set("X-Amz-Date", "20130524T000000Z")
	r.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
	if err := exampleVerifier().verify(r); err != nil {
		t.Fatal(err)
	}
	r.Header.Set("Range", "bytes=0-10")
	if err := exampleVerifier().verify(r); err == nil || err.code != "SignatureDoesNotMatch" {
		t.Fatalf("a changed signed header: %v", err)
	}
}

// AWS's published example of a chunked upload: 66560 bytes of 'a' in
// chunks of 64 KiB, 1 KiB and 0, each signed in a chain from the seed.
func TestVerifyAWSExampleStreaming(t *testing.T) {
	chunk := func(n int, sig string) string {
		return strconv.FormatInt(int64(n), 16) + ";chunk-signature=" + sig + "\r\n" + strings.Repeat("a", n) + "\r\n"
	}
	body := chunk(65536, "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648") +
		chunk(1024, "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497") +
		"0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n\r\n"
	if len(body) != 66824 {
		t.Fatalf("the example body is %d bytes, want 66824", len(body))
	}
	req := func(body string) *http.Request {
		r := httptest.NewRequest("PUT", "http://s3.amazonaws.com/examplebucket/chunkObject.txt", strings.NewReader(body))
		r.Header.Set("Content-Encoding", "aws-chunked")
		r.Header.Set("Content-Length", "66824")
		r.Header.Set("X-Amz-Content-Sha256", streamingSigned)
		r.Header.Set("X-Amz-Date", "20130524T000000Z")
		r.Header.Set("X-Amz-Decoded-Content-Length", "66560")
		r.Header.Set("X-Amz-Storage-Class", "REDUCED_REDUNDANCY")
		r.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class,Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9")
		return r
	}
	r := req(body)
	if err := exampleVerifier().verify(r); err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(r.Body)
	if string(got) != strings.Repeat("a", 66560) || r.ContentLength != 66560 || r.Header.Get("Content-Encoding") != "" {
		t.Fatalf("decoded %d bytes, Content-Length %d, Content-Encoding %q", len(got), r.ContentLength, r.Header.Get("Content-Encoding"))
	}
	if r.Header.Get("X-Amz-Content-Sha256") != hexSHA256(got) {
		t.Fatal("the payload hash header was not replaced by the decoded payload's")
	}
	// One byte of the payload changed: its chunk's signature fails.
	bad := strings.Replace(body, "aaaa\r\n0;", "aaab\r\n0;", 1)
	if err := exampleVerifier().verify(req(bad)); err == nil || err.code != "SignatureDoesNotMatch" {
		t.Fatalf("a changed chunk: %v", err)
	}
	// Cut short.
	if err := exampleVerifier().verify(req(body[:1000])); err == nil || err.code != "IncompleteBody" {
		t.Fatalf("a short body: %v", err)
	}
}

// signed makes a request signed by minio-go's signer, an implementation
// independent of the verifier.
func signed(method, target string, body []byte, payload, access, secret string) *http.Request {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	r := httptest.NewRequest(method, target, rd)
	r.RequestURI = ""
	r.Header.Set("X-Amz-Content-Sha256", payload)
	r.Header.Set("X-Amz-Meta-Note", "  two  spaces ")
	r.Header.Set("Content-Type", "application/octet-stream")
	return signer.SignV4(*r, access, secret, "", "eu-west-1")
}

func TestVerifyMinioSigned(t *testing.T) {
	now := time.Now()
	v := &verifier{accessKey: "AK", secretKey: "SK/+=", now: func() time.Time { return now }}
	body := []byte("hello, world")
	tests := []struct {
		name     string
		req      func() *http.Request
		wantCode string // "" for accepted
	}{
		{"GET", func() *http.Request {
			return signed("GET", "http://127.0.0.1:9000/khib/dir/a%20b%2Bc~d?versionId=x&partNumber=2", nil, emptySHA256, "AK", "SK/+=")
		}, ""},
		{"list with empty values", func() *http.Request {
			return signed("GET", "http://127.0.0.1:9000/khib?list-type=2&prefix=&delimiter=%2F&uploads", nil, emptySHA256, "AK", "SK/+=")
		}, ""},
		{"PUT with the body's hash", func() *http.Request {
			return signed("PUT", "http://127.0.0.1:9000/khib/x", body, hexSHA256(body), "AK", "SK/+=")
		}, ""},
		{"PUT unsigned payload", func() *http.Request {
			return signed("PUT", "http://127.0.0.1:9000/khib/x", body, unsignedPayload, "AK", "SK/+=")
		}, ""},
		{"wrong secret", func() *http.Request {
			return signed("GET", "http://127.0.0.1:9000/khib/x", nil, emptySHA256, "AK", "other")
		}, "SignatureDoesNotMatch"},
		{"wrong access key", func() *http.Request {
			return signed("GET", "http://127.0.0.1:9000/khib/x", nil, emptySHA256, "AK2", "SK/+=")
		}, "InvalidAccessKeyId"},
		{"body not the signed hash", func() *http.Request {
			r := signed("PUT", "http://127.0.0.1:9000/khib/x", body, hexSHA256(body), "AK", "SK/+=")
			r.Body = io.NopCloser(strings.NewReader("hello, World"))
			return r
		}, "XAmzContentSHA256Mismatch"},
		{"path changed", func() *http.Request {
			r := signed("GET", "http://127.0.0.1:9000/khib/x", nil, emptySHA256, "AK", "SK/+=")
			r.URL.Path = "/khib/y"
			return r
		}, "SignatureDoesNotMatch"},
		{"query changed", func() *http.Request {
			r := signed("GET", "http://127.0.0.1:9000/khib/x?partNumber=1", nil, emptySHA256, "AK", "SK/+=")
			r.URL.RawQuery = "partNumber=2"
			return r
		}, "SignatureDoesNotMatch"},
		{"method changed", func() *http.Request {
			r := signed("GET", "http://127.0.0.1:9000/khib/x", nil, emptySHA256, "AK", "SK/+=")
			r.Method = "DELETE"
			return r
		}, "SignatureDoesNotMatch"},
		{"host changed", func() *http.Request {
			r := signed("GET", "http://127.0.0.1:9000/khib/x", nil, emptySHA256, "AK", "SK/+=")
			r.Host = "127.0.0.1:9001"
			return r
		}, "SignatureDoesNotMatch"},
		{"unsigned x-amz header", func() *http.Request {
			r := signed("GET", "http://127.0.0.1:9000/khib/x", nil, emptySHA256, "AK", "SK/+=")
			r.Header.Set("X-Amz-Acl", "public-read")
			return r
		}, "AccessDenied"},
		{"anonymous", func() *http.Request {
			return httptest.NewRequest("GET", "http://127.0.0.1:9000/khib/x", nil)
		}, "AccessDenied"},
		{"presigned", func() *http.Request {
			return httptest.NewRequest("GET", "http://127.0.0.1:9000/khib/x?X-Amz-Signature=00", nil)
		}, "AccessDenied"},
		{"signature v2", func() *http.Request {
			r := httptest.NewRequest("GET", "http://127.0.0.1:9000/khib/x", nil)
			r.Header.Set("Authorization", "AWS AK:c2lnbmF0dXJl")
			return r
		}, "InvalidRequest"},
		{"malformed", func() *http.Request {
			r := httptest.NewRequest("GET", "http://127.0.0.1:9000/khib/x", nil)
			r.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=AK/x")
			return r
		}, "AuthorizationHeaderMalformed"},
		{"session token", func() *http.Request {
			r := httptest.NewRequest("GET", "http://127.0.0.1:9000/khib/x", nil)
			r.Header.Set("X-Amz-Security-Token", "t")
			r.Header.Set("X-Amz-Content-Sha256", emptySHA256)
			r.RequestURI = ""
			return signer.SignV4(*r, "AK", "SK/+=", "", "us-east-1")
		}, "InvalidToken"},
		{"trailer payload", func() *http.Request {
			return signed("PUT", "http://127.0.0.1:9000/khib/x", body, "STREAMING-UNSIGNED-PAYLOAD-TRAILER", "AK", "SK/+=")
		}, "NotImplemented"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := v.verify(tt.req())
			switch {
			case tt.wantCode == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.wantCode != "" && (err == nil || err.code != tt.wantCode):
				t.Fatalf("verify = %v, want %s", err, tt.wantCode)
			}
		})
	}

	// The clock.
	for _, skew := range []time.Duration{16 * time.Minute, -16 * time.Minute} {
		v := &verifier{accessKey: "AK", secretKey: "SK/+=", now: func() time.Time { return time.Now().Add(skew) }}
		r := signed("GET", "http://127.0.0.1:9000/khib/x", nil, emptySHA256, "AK", "SK/+=")
		if err := v.verify(r); err == nil || err.code != "RequestTimeTooSkewed" {
			t.Errorf("a clock %v off: %v", skew, err)
		}
	}
}

// minio-go's own streaming signer, through the verifier.
func TestVerifyMinioStreaming(t *testing.T) {
	v := &verifier{accessKey: "AK", secretKey: "SK", now: time.Now}
	payload := bytes.Repeat([]byte("0123456789"), 20000)
	r := httptest.NewRequest("PUT", "http://127.0.0.1:9000/khib/big", bytes.NewReader(payload))
	r.RequestURI = ""
	r.ContentLength = int64(len(payload))
	r = signer.StreamingSignV4(r, "AK", "SK", "", "us-east-1", int64(len(payload)), time.Now().UTC(), sha256Hasher{sha256.New()})
	// The signer wraps the body to produce the chunks; read them as a
	// server would receive them.
	wire, err := io.ReadAll(r.Body)
	if err != nil {
		t.Fatal(err)
	}
	r.Body = io.NopCloser(bytes.NewReader(wire))
	if err := v.verify(r); err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(r.Body)
	if !bytes.Equal(got, payload) {
		t.Fatalf("decoded %d bytes, want the %d of the payload", len(got), len(payload))
	}
}

func TestCanonicalQuery(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"uploads", "uploads="},
		{"b=2&a=1&a=0", "a=0&a=1&b=2"},
		{"prefix=a%20b&x=%2F~", "prefix=a%20b&x=%2F~"},
		{"k=a+b", "k=a%2Bb"},
		{"k=%zz", "k=%25zz"},
	}
	for _, tt := range tests {
		if got := canonicalQuery(tt.in); got != tt.want {
			t.Errorf("canonicalQuery(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// sha256Hasher is the hasher minio-go's streaming signer wants.
type sha256Hasher struct{ hash.Hash }

func (sha256Hasher) Close() {}

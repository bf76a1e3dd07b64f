package objstore

import (
	"strings"
	"testing"
)

func TestParseURL(t *testing.T) {
	tests := []struct {
		spec string
		want Location
		// the canonical spec, if it differs from spec
		canon string
	}{
		{
			spec: "s3://khib/host-a.img?endpoint=10.0.2.2:9000&region=us-east-1&creds=/etc/khib/s3.creds&tls=0",
			want: Location{Bucket: "khib", Key: "host-a.img", Endpoint: "10.0.2.2:9000", Region: "us-east-1", Creds: "/etc/khib/s3.creds"},
		},
		{
			spec:  "s3://khib/host-a.img?endpoint=s3.example.com:443&creds=/etc/khib/s3.creds",
			want:  Location{Bucket: "khib", Key: "host-a.img", Endpoint: "s3.example.com:443", Region: "us-east-1", Creds: "/etc/khib/s3.creds", TLS: true},
			canon: "s3://khib/host-a.img?endpoint=s3.example.com:443&region=us-east-1&creds=/etc/khib/s3.creds&tls=1",
		},
		{
			spec:  "S3://my.bucket-1/dir/sub/img%20x%2B1?creds=none&tls=1&endpoint=[::1]:9000&region=eu-west-3&ca=/etc/ssl/../khib/ca.pem",
			want:  Location{Bucket: "my.bucket-1", Key: "dir/sub/img x+1", Endpoint: "[::1]:9000", Region: "eu-west-3", Creds: CredsNone, TLS: true, CA: "/etc/khib/ca.pem"},
			canon: "s3://my.bucket-1/dir/sub/img%20x%2B1?endpoint=[::1]:9000&region=eu-west-3&creds=none&tls=1&ca=/etc/khib/ca.pem",
		},
		{
			spec:  "s3://khib/a+b%C3%A9?endpoint=host:1&creds=/c%26d&tls=0",
			want:  Location{Bucket: "khib", Key: "a+bé", Endpoint: "host:1", Region: "us-east-1", Creds: "/c&d"},
			canon: "s3://khib/a%2Bb%C3%A9?endpoint=host:1&region=us-east-1&creds=/c%26d&tls=0",
		},
	}
	for _, tt := range tests {
		loc, err := ParseURL(tt.spec)
		if err != nil {
			t.Errorf("ParseURL(%q): %v", tt.spec, err)
			continue
		}
		if *loc != tt.want {
			t.Errorf("ParseURL(%q) = %+v, want %+v", tt.spec, *loc, tt.want)
		}
		canon := tt.canon
		if canon == "" {
			canon = tt.spec
		}
		if got := loc.String(); got != canon {
			t.Errorf("String() = %q, want %q", got, canon)
		}
		again, err := ParseURL(loc.String())
		if err != nil || *again != *loc {
			t.Errorf("ParseURL(String()) = %+v, %v; want %+v", again, err, *loc)
		}
	}
}

func TestParseURLRefusals(t *testing.T) {
	const ok = "?endpoint=h:9000&creds=/c"
	tests := []struct {
		spec, want string
	}{
		{"", "want s3://BUCKET/KEY"},
		{"khib/img", "want s3://BUCKET/KEY"},
		{"https://khib/img" + ok, `scheme "https", want s3`},
		{"s3://AKIA:s3cr3t@khib/img" + ok, "credentials do not belong in the spec"},
		{"s3://AKIA@khib/img" + ok, "credentials do not belong in the spec"},
		{"s3://khib/img?endpoint=h:9000&creds=/c&access_key=AKIA", "credentials do not belong in the spec"},
		{"s3://khib/img?secret_key=s3cr3t&endpoint=h:9000", "credentials do not belong in the spec"},
		{"s3://khib/img?AWS_SECRET_ACCESS_KEY=s3cr3t&" + strings.TrimPrefix(ok, "?"), "credentials do not belong in the spec"},
		{"s3://khib/img?bogus=1&endpoint=h:9000&secret%5Fkey=s3cr3t", "credentials do not belong in the spec"},
		{"s3://khib/img", "no endpoint"},
		{"s3://khib/img?creds=/c", "no endpoint; add endpoint=HOST:PORT"},
		{"s3://khib/img?endpoint=h:9000", "no credentials file; add creds=FILE"},
		{"s3://khib/img?endpoint=h&creds=/c", "not HOST:PORT; give the port too"},
		{"s3://khib/img?endpoint=http://h:9000&creds=/c", "not a URL"},
		{"s3://khib/img?endpoint=h:9000/x&creds=/c", "drop any path"},
		{"s3://khib/img?endpoint=h:0&creds=/c", "port \"0\""},
		{"s3://khib/img?endpoint=h:70000&creds=/c", "port \"70000\""},
		{"s3://khib/img?endpoint=:9000&creds=/c", "has no host"},
		{"s3://khib/img?endpoint=h!:9000&creds=/c", "want a host name or IP address"},
		{"s3://khib/img?endpoint=h:9000&creds=s3.creds", "not an absolute path"},
		{"s3://khib/img?endpoint=h:9000&creds=/", "is a directory"},
		{"s3://khib/img?endpoint=h:9000&creds=/c&tls=yes", "write tls=1 for https or tls=0"},
		{"s3://khib/img?endpoint=h:9000&creds=/c&tls=0&ca=/ca.pem", "ca= is for https"},
		{"s3://khib/img?endpoint=h:9000&creds=/c&region=us east", "space or control character"},
		{"s3://khib/img?endpoint=h:9000&creds=/c&region=us%2Feast", "want letters, digits"},
		{"s3://khib/img?endpoint=h:9000&creds=/c&endpoint=g:1", "given twice"},
		{"s3://khib/img?endpoint=h:9000&creds=/c&colour=blue", `unknown parameter "colour"`},
		{"s3://khib/img?endpoint=h:9000&&creds=/c", "a stray '&'"},
		{"s3://khib/img?endpoint&creds=/c", "has no value"},
		{"s3://khib/img?endpoint=&creds=/c", "is empty"},
		{"s3://khib/img?endpoint=h:9000&creds=/c%zz", "malformed %-escape in creds="},
		{"s3://khib/img#frag" + ok, "'#' is not allowed"},
		{"s3:///img" + ok, "no bucket"},
		{"s3://khib" + ok, "no object key"},
		{"s3://khib/" + ok, "no object key"},
		{"s3://khib:9000/img" + ok, "a port after the bucket"},
		{"s3://Khib/img" + ok, "S3 wants 3 to 63 lowercase letters"},
		{"s3://kh/img" + ok, "bucket name of 2 characters"},
		{"s3://-khib/img" + ok, "starting and ending with a letter or digit"},
		{"s3://10.0.2.2/img" + ok, "looks like an IP address"},
		{"s3://khib/dir/" + ok, "ends with '/'"},
		{"s3://khib//img" + ok, "empty, '.' or '..' path segment"},
		{"s3://khib/a/../img" + ok, "empty, '.' or '..' path segment"},
		{"s3://khib/a%00b" + ok, "control character"},
		{"s3://khib/a%0Ab" + ok, "control character"},
		{"s3://khib/a%ffb" + ok, "not valid UTF-8"},
		{"s3://khib/a%2" + ok, "malformed %-escape in the key"},
		{"s3://khib/" + strings.Repeat("k", 1020) + ok, "a key of 1020 bytes"},
		{"s3://khib/img x" + ok, "space or control character at byte 13"},
	}
	for _, tt := range tests {
		loc, err := ParseURL(tt.spec)
		if err == nil {
			t.Errorf("ParseURL(%q) = %+v, want an error with %q", tt.spec, *loc, tt.want)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseURL(%q): %v; want %q", tt.spec, err, tt.want)
		}
		oneLineErr(t, err)
		for _, secret := range []string{"s3cr3t", "AKIA"} {
			if strings.Contains(tt.spec, secret) && strings.Contains(err.Error(), secret) {
				t.Errorf("ParseURL(%q): the error repeats %q: %v", tt.spec, secret, err)
			}
		}
	}
}

func TestLocationNames(t *testing.T) {
	loc, err := ParseURL("s3://khib/a%20b/c?endpoint=h:1&creds=none&tls=0")
	if err != nil {
		t.Fatal(err)
	}
	if !loc.Anonymous() {
		t.Error("creds=none is not anonymous")
	}
	if got := loc.Object(); got != "s3://khib/a%20b/c" {
		t.Errorf("Object() = %q", got)
	}
	if got := loc.UsedKey(); got != "a b/c.used" {
		t.Errorf("UsedKey() = %q", got)
	}
}

package objstore

import (
	"strings"
	"testing"
)

func FuzzParseURL(f *testing.F) {
	for _, s := range []string{
		"s3://khib/host-a.img?endpoint=10.0.2.2:9000&region=us-east-1&creds=/etc/khib/s3.creds&tls=0",
		"s3://khib/a/b%20c?endpoint=[::1]:9000&creds=none",
		"s3://khib/a?endpoint=h:1&creds=/c&tls=1&ca=/ca.pem",
		"s3://key:secret@khib/a?endpoint=h:1&creds=/c",
		"s3://khib/a?endpoint=h:1&access_key=x",
		"s3://khib/a%zz?endpoint=h:1&creds=/c",
		"s3://khib/%2B+%25?endpoint=h:1&creds=/%26&region=R",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		loc, err := ParseURL(spec)
		if err != nil {
			if strings.ContainsAny(err.Error(), "\r\n") {
				t.Fatalf("error is not one line: %q", err)
			}
			if loc != nil {
				t.Fatal("a Location with an error")
			}
			return
		}
		canon := loc.String()
		again, err := ParseURL(canon)
		if err != nil {
			t.Fatalf("ParseURL(%q) took it, but not its String %q: %v", spec, canon, err)
		}
		if *again != *loc {
			t.Fatalf("round trip of %q through %q: %+v, want %+v", spec, canon, *again, *loc)
		}
		if again.String() != canon {
			t.Fatalf("String is not stable: %q, then %q", canon, again.String())
		}
		if loc.Endpoint == "" || loc.Creds == "" || loc.Bucket == "" || loc.Key == "" || loc.Region == "" {
			t.Fatalf("ParseURL(%q) left a field empty: %+v", spec, *loc)
		}
		if strings.ContainsAny(canon, " \r\n#") {
			t.Fatalf("canonical spec %q holds a space, newline or '#'", canon)
		}
	})
}

func FuzzCredentials(f *testing.F) {
	for _, s := range []string{
		"access_key = AK\nsecret_key = SK\n",
		"# c\r\naccess_key=AK\r\nsecret_key=S=K==\r\nsession_token=T\r\n",
		"[default]\naws_access_key_id = AK\naws_secret_access_key = SK\n[x]\nfoo=bar\n",
		"[profile default]\naws_access_key_id=AK\naws_secret_access_key=SK\nregion=x\n",
		"access_key\n",
		"[\n",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseCredentials(data)
		if err != nil {
			if strings.ContainsAny(err.Error(), "\r\n") {
				t.Fatalf("error is not one line: %q", err)
			}
			if c != nil {
				t.Fatal("credentials with an error")
			}
			return
		}
		if c.AccessKey == "" || c.SecretKey == "" {
			t.Fatalf("empty key accepted: %+v", *c)
		}
		for _, v := range []string{c.AccessKey, c.SecretKey, c.SessionToken} {
			if strings.ContainsAny(v, " \t\r\n") {
				t.Fatalf("a value with white space: %q", v)
			}
			if v != "" && !strings.Contains(string(data), v) {
				t.Fatalf("value %q is not in the input", v)
			}
		}
		// The same keys written in khib's format parse to the same.
		text := "access_key = " + c.AccessKey + "\nsecret_key = " + c.SecretKey + "\n"
		if c.SessionToken != "" {
			text += "session_token = " + c.SessionToken + "\n"
		}
		again, err := ParseCredentials([]byte(text))
		if err != nil || again.AccessKey != c.AccessKey || again.SecretKey != c.SecretKey || again.SessionToken != c.SessionToken {
			t.Fatalf("rewritten credentials do not parse back: %v", err)
		}
	})
}

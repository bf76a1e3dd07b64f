package objstore

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseCredentials(t *testing.T) {
	tests := []struct {
		name, text     string
		ak, sk, token  string
		wantErr        string
		secretsInError []string
	}{
		{name: "khib", text: "# khib\naccess_key = AK1\nsecret_key = s/e+c=\n", ak: "AK1", sk: "s/e+c="},
		{name: "no spaces, CRLF", text: "access_key=AK1\r\nsecret_key=SK1\r\n", ak: "AK1", sk: "SK1"},
		{name: "token", text: "access_key = AK1\nsecret_key = SK1\nsession_token = T1\n", ak: "AK1", sk: "SK1", token: "T1"},
		{
			name: "aws default profile",
			text: "[other]\naws_access_key_id = NO\naws_secret_access_key = NO\nweird = 1\n\n; comment\n[default]\naws_access_key_id = AK2\naws_secret_access_key = SK2\nregion = eu-west-1\n",
			ak:   "AK2", sk: "SK2",
		},
		{name: "aws profile default", text: "[profile default]\naws_access_key_id=AK3\naws_secret_access_key=SK3\n", ak: "AK3", sk: "SK3"},
		{name: "only other profiles", text: "[work]\naws_access_key_id = AK\naws_secret_access_key = SK\n", wantErr: "in the [default] profile"},
		{name: "empty", text: "", wantErr: "no access key and secret key; add lines"},
		{name: "no secret", text: "access_key = AK\n", wantErr: "no secret key"},
		{name: "no access key", text: "secret_key = hunter2\n", wantErr: "no access key", secretsInError: []string{"hunter2"}},
		{name: "typo", text: "acess_key = AK\nsecret_key = hunter2\n", wantErr: `line 1: unknown name "acess_key"`, secretsInError: []string{"hunter2"}},
		{name: "no =", text: "access_key AK\nhunter2\n", wantErr: "line 1: want NAME = VALUE", secretsInError: []string{"hunter2"}},
		{name: "empty value", text: "access_key =\nsecret_key = x\n", wantErr: "line 1: access_key is empty"},
		{name: "twice", text: "access_key = a\naws_access_key_id = b\nsecret_key = x\n", wantErr: "line 2: access_key given twice"},
		{name: "space in value", text: "access_key = a b\nsecret_key = hunter2\n", wantErr: "space or control character"},
		{name: "bad section", text: "[default\naccess_key = a\n", wantErr: "without ']'"},
		{name: "empty section", text: "[ ]\n", wantErr: "empty section"},
		{name: "binary", text: "access_key = \xff\n", wantErr: "not UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseCredentials([]byte(tt.text))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want %q", err, tt.wantErr)
				}
				oneLineErr(t, err)
				for _, s := range tt.secretsInError {
					if strings.Contains(err.Error(), s) {
						t.Errorf("the error shows the secret %q: %v", s, err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.AccessKey != tt.ak || c.SecretKey != tt.sk || c.SessionToken != tt.token {
				t.Fatalf("got %q %q %q, want %q %q %q", c.AccessKey, c.SecretKey, c.SessionToken, tt.ak, tt.sk, tt.token)
			}
		})
	}
}

func TestLoadCredentials(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("access_key = AK\nsecret_key = hunter2\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good", 0o600)
	c, err := LoadCredentials(good)
	if err != nil {
		t.Fatal(err)
	}
	if c.AccessKey != "AK" || c.SecretKey != "hunter2" || c.File != good {
		t.Fatalf("got %+v", *c)
	}
	if _, err := LoadCredentials(write("owner-only-read", 0o400)); err != nil {
		t.Errorf("mode 0400: %v", err)
	}
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o660, 0o602} {
		p := write(fmt.Sprintf("mode%o", mode), mode)
		_, err := LoadCredentials(p)
		if err == nil || !strings.Contains(err.Error(), "chmod 600 "+p) || !strings.Contains(err.Error(), fmt.Sprintf("%04o", mode)) {
			t.Errorf("mode %04o: %v; want a refusal that says chmod 600 %s", mode, err, p)
		}
		oneLineErr(t, err)
	}
	if _, err := LoadCredentials(filepath.Join(dir, "missing")); err == nil || !os.IsNotExist(unwrapAll(err)) {
		t.Errorf("a missing file: %v", err)
	}
	if _, err := LoadCredentials(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a directory: %v", err)
	}
	if _, err := LoadCredentials(""); err == nil {
		t.Error("an empty path was taken")
	}
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("secret_key = hunter2\n"), 0o600)
	if _, err := LoadCredentials(bad); err == nil || !strings.Contains(err.Error(), "credentials file "+bad+": no access key") {
		t.Errorf("a file without an access key: %v", err)
	}
	big := filepath.Join(dir, "big")
	os.WriteFile(big, make([]byte, maxCredsFile+1), 0o600)
	if _, err := LoadCredentials(big); err == nil || !strings.Contains(err.Error(), "is over") {
		t.Errorf("a big file: %v", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}

func TestCredentialsHideSecrets(t *testing.T) {
	c := &Credentials{AccessKey: "AKIAEXAMPLE", SecretKey: "hunter2", SessionToken: "tok", File: "/etc/khib/s3.creds"}
	for _, s := range []string{fmt.Sprint(c), fmt.Sprintf("%v %+v %#v %s", c, *c, *c, c)} {
		for _, secret := range []string{"hunter2", "tok"} {
			if strings.Contains(s, secret) {
				t.Errorf("%q shows a secret", s)
			}
		}
		if !strings.Contains(s, "/etc/khib/s3.creds") {
			t.Errorf("%q does not name the file", s)
		}
	}
}

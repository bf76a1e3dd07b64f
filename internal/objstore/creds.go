package objstore

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode/utf8"
)

// maxCredsFile bounds what LoadCredentials reads.
const maxCredsFile = 64 << 10

// Credentials sign requests to the store. Its String method leaves the
// secrets out, so that a Credentials printed by mistake discloses nothing.
type Credentials struct {
	AccessKey    string
	SecretKey    string
	SessionToken string // optional, for temporary credentials
	File         string // where they were read from, for messages
}

// String names the credentials without their secrets.
func (c Credentials) String() string {
	from := c.File
	if from == "" {
		from = "(not from a file)"
	}
	return fmt.Sprintf("credentials from %s, secrets not shown", from)
}

// GoString is String, so that %#v hides the secrets too.
func (c Credentials) GoString() string { return c.String() }

// source names the credentials in a message.
func (c *Credentials) source() string {
	if c == nil {
		return "creds=none"
	}
	if c.File == "" {
		return "the given credentials"
	}
	return c.File
}

// LoadCredentials reads a credentials file. It refuses a file that group
// or others may read or write (mode & 0o077 != 0): chmod 600 it.
//
// The file holds lines KEY = VALUE and # comments:
//
//	access_key = AKIA...
//	secret_key = ...
//
// An AWS credentials file is read too: aws_access_key_id and
// aws_secret_access_key (and aws_session_token) of its [default] profile;
// other profiles are ignored. Errors never show a secret.
func LoadCredentials(path string) (*Credentials, error) {
	if path == "" {
		return nil, errors.New("no credentials file given; name one with creds=FILE")
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("credentials file: %w", err)
	}
	defer f.Close()
	// Stat what was opened, so the check and the read are of one file.
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("credentials file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("credentials file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("credentials file %s may be read or written by group or others (mode %04o); chmod 600 %s", path, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxCredsFile+1))
	if err != nil {
		return nil, fmt.Errorf("credentials file %s: %w", path, err)
	}
	if len(data) > maxCredsFile {
		return nil, fmt.Errorf("credentials file %s is over %d KiB; is it the right file?", path, maxCredsFile>>10)
	}
	c, err := ParseCredentials(data)
	if err != nil {
		return nil, fmt.Errorf("credentials file %s: %w", path, err)
	}
	c.File = path
	return c, nil
}

// credKeys maps the names a file may use to the field they set.
var credKeys = map[string]string{
	"access_key":            "access_key",
	"secret_key":            "secret_key",
	"session_token":         "session_token",
	"aws_access_key_id":     "access_key",
	"aws_secret_access_key": "secret_key",
	"aws_session_token":     "session_token",
}

// ignoredKeys are settings an AWS file may hold that do not concern us.
var ignoredKeys = map[string]bool{
	"region": true, "output": true, "aws_security_token": true,
}

// ParseCredentials parses the contents of a credentials file (see
// LoadCredentials). Errors name the line, never its value.
func ParseCredentials(data []byte) (*Credentials, error) {
	if !utf8.Valid(data) {
		return nil, errors.New("not UTF-8 text")
	}
	vals := map[string]string{}
	section := "" // "" before any [section]; then its name
	sections := false
	for i, line := range bytes.Split(data, []byte("\n")) {
		n := i + 1
		s := strings.TrimSpace(strings.TrimSuffix(string(line), "\r"))
		if s == "" || s[0] == '#' || s[0] == ';' {
			continue
		}
		if s[0] == '[' {
			if !strings.HasSuffix(s, "]") {
				return nil, fmt.Errorf("line %d: a section header without ']'", n)
			}
			section = strings.TrimSpace(s[1 : len(s)-1])
			section = strings.TrimSpace(strings.TrimPrefix(section, "profile "))
			if section == "" {
				return nil, fmt.Errorf("line %d: an empty section name", n)
			}
			sections = true
			continue
		}
		name, value, ok := strings.Cut(s, "=")
		if !ok {
			return nil, fmt.Errorf("line %d: want NAME = VALUE (access_key = ... and secret_key = ...)", n)
		}
		name = strings.ToLower(strings.TrimSpace(name))
		value = strings.TrimSpace(value)
		if section != "" && section != "default" {
			continue // another AWS profile
		}
		field, known := credKeys[name]
		if !known {
			if ignoredKeys[name] {
				continue
			}
			return nil, fmt.Errorf("line %d: unknown name %s; want access_key and secret_key", n, quoteShort(name))
		}
		if value == "" {
			return nil, fmt.Errorf("line %d: %s is empty", n, name)
		}
		for _, r := range value {
			if r < ' ' || r == 0x7f || r == ' ' {
				return nil, fmt.Errorf("line %d: the value of %s holds a space or control character", n, name)
			}
		}
		if _, dup := vals[field]; dup {
			return nil, fmt.Errorf("line %d: %s given twice", n, field)
		}
		vals[field] = value
	}
	c := &Credentials{
		AccessKey:    vals["access_key"],
		SecretKey:    vals["secret_key"],
		SessionToken: vals["session_token"],
	}
	switch {
	case c.AccessKey == "" && c.SecretKey == "":
		if sections {
			return nil, errors.New("no access key and secret key in the [default] profile; add access_key = ... and secret_key = ...")
		}
		return nil, errors.New("no access key and secret key; add lines access_key = ... and secret_key = ...")
	case c.AccessKey == "":
		return nil, errors.New("no access key; add a line access_key = ...")
	case c.SecretKey == "":
		return nil, errors.New("no secret key; add a line secret_key = ...")
	}
	return c, nil
}

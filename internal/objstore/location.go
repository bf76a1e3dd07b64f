// Package objstore keeps khib images as objects in an S3-compatible object store.
//
// An image is named by a spec such as
//
//	s3://BUCKET/KEY?endpoint=10.0.2.2:9000&region=us-east-1&creds=/etc/khib/s3.creds&tls=0
//
// (ParseURL). Create streams a new image to the store as a multipart upload
// whose completion is the commit; Open reads one back with ranged GETs.
// An object cannot be rewritten in place, so an image that was resumed is
// marked used by a small sibling object KEY.used (MarkUsed, UsedMarker).
// Credentials never appear in a spec: they are read from a file that only
// its owner may read (LoadCredentials).
package objstore

import (
	"errors"
	"fmt"
	"net"
	"path"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Defaults of a spec's optional parameters.
const (
	DefaultRegion = "us-east-1"
	// CredsNone as creds= asks for anonymous (unsigned) requests.
	CredsNone = "none"
)

// maxKeyLen is S3's limit on an object key, in bytes.
const maxKeyLen = 1024

// Location names one image in an object store. The zero value is not
// valid; make one with ParseURL. Locations are comparable.
type Location struct {
	Bucket   string // S3 bucket name
	Key      string // object key, not escaped
	Endpoint string // HOST:PORT of the store
	Region   string // signing region
	Creds    string // absolute path of the credentials file, or CredsNone
	TLS      bool   // https (with tls=1, the default) or plain http
	CA       string // optional absolute path of PEM CA certificates for https
}

// Anonymous tells whether the spec asked for unsigned requests (creds=none).
func (l *Location) Anonymous() bool { return l.Creds == CredsNone }

// UsedKey is the key of the marker that says the image was resumed.
func (l *Location) UsedKey() string { return l.Key + usedSuffix }

// Object names the object alone, s3://BUCKET/KEY, for messages.
func (l *Location) Object() string {
	return "s3://" + l.Bucket + "/" + escape(l.Key, keepInKey)
}

// String gives the canonical spec: ParseURL(l.String()) returns l again.
// It never holds a secret, since a Location holds none.
func (l *Location) String() string {
	var b strings.Builder
	b.WriteString(l.Object())
	b.WriteString("?endpoint=")
	b.WriteString(escape(l.Endpoint, keepInQuery))
	b.WriteString("&region=")
	b.WriteString(escape(l.Region, keepInQuery))
	b.WriteString("&creds=")
	b.WriteString(escape(l.Creds, keepInQuery))
	if l.TLS {
		b.WriteString("&tls=1")
	} else {
		b.WriteString("&tls=0")
	}
	if l.CA != "" {
		b.WriteString("&ca=")
		b.WriteString(escape(l.CA, keepInQuery))
	}
	return b.String()
}

// The parameters a spec may have, in canonical order.
var knownParams = []string{"endpoint", "region", "creds", "tls", "ca"}

// secretParams are parameter names that would carry a credential. A spec
// is often logged, shown by ps or stored in a config file readable by all,
// so a secret in it is refused rather than used.
var secretParams = map[string]bool{
	"access_key": true, "secret_key": true, "accesskey": true, "secretkey": true,
	"access_key_id": true, "secret_access_key": true, "aws_access_key_id": true,
	"aws_secret_access_key": true, "session_token": true, "aws_session_token": true,
	"token": true, "secret": true, "password": true, "x-amz-credential": true,
	"x-amz-signature": true, "x-amz-security-token": true,
}

const (
	specForm    = "s3://BUCKET/KEY?endpoint=HOST:PORT&creds=FILE"
	secretsHint = "credentials do not belong in the spec: put access_key and secret_key in a file only root can read (chmod 600) and name it with creds=FILE"
)

// specError is a refusal of a spec: one line that says what to do.
func specError(format string, args ...any) error {
	return fmt.Errorf("s3 spec: "+format, args...)
}

// ParseURL parses a spec such as
// s3://BUCKET/KEY?endpoint=HOST:PORT&region=REGION&creds=FILE&tls=0.
//
// endpoint (HOST:PORT) and creds (an absolute path, or "none" for
// anonymous access) are required; region defaults to us-east-1 and tls to
// 1 (https; tls=0 is plain http). ca=FILE names PEM CA certificates to
// trust for https. A spec that carries a credential itself, as userinfo
// or a query parameter, is refused. Errors are one line and never repeat
// the spec, which could hold a secret.
func ParseURL(spec string) (*Location, error) {
	for i := 0; i < len(spec); i++ {
		if c := spec[i]; c <= ' ' || c == 0x7f {
			return nil, specError("a space or control character at byte %d; percent-encode it (a space is %%20)", i)
		}
	}
	scheme, rest, ok := strings.Cut(spec, "://")
	if !ok {
		return nil, specError("want %s", specForm)
	}
	if !strings.EqualFold(scheme, "s3") {
		if len(scheme) > 16 {
			scheme = scheme[:16] + "..."
		}
		return nil, specError("scheme %q, want s3 (%s)", scheme, specForm)
	}
	// Look for secrets before anything else, so that a spec that has one
	// is refused for it even when it has other faults too.
	authority, _, _ := strings.Cut(rest, "/")
	authority, _, _ = strings.Cut(authority, "?")
	if strings.Contains(authority, "@") {
		return nil, specError("%s", secretsHint)
	}
	rest, query, hasQuery := strings.Cut(rest, "?")
	params, err := parseQuery(query)
	if err != nil {
		return nil, err
	}
	if strings.Contains(rest, "#") || strings.Contains(query, "#") {
		return nil, specError("'#' is not allowed; percent-encode it as %%23")
	}

	bucket, rawKey, _ := strings.Cut(rest, "/")
	if err := checkBucket(bucket); err != nil {
		return nil, err
	}
	loc := &Location{Bucket: bucket, Region: DefaultRegion, TLS: true}
	if loc.Key, err = parseKey(rawKey); err != nil {
		return nil, err
	}

	if !hasQuery || len(params) == 0 {
		return nil, specError("no endpoint; add ?endpoint=HOST:PORT&creds=FILE (%s)", specForm)
	}
	ep, ok := params["endpoint"]
	if !ok {
		return nil, specError("no endpoint; add endpoint=HOST:PORT, the store's address")
	}
	if loc.Endpoint, err = parseEndpoint(ep); err != nil {
		return nil, err
	}
	if r, ok := params["region"]; ok {
		if err := checkRegion(r); err != nil {
			return nil, err
		}
		loc.Region = r
	}
	c, ok := params["creds"]
	if !ok {
		return nil, specError("no credentials file; add creds=FILE (a file with access_key and secret_key), or creds=none for anonymous access")
	}
	if c == CredsNone {
		loc.Creds = CredsNone
	} else if loc.Creds, err = parsePath("creds", c); err != nil {
		return nil, err
	}
	if t, ok := params["tls"]; ok {
		switch t {
		case "1":
			loc.TLS = true
		case "0":
			loc.TLS = false
		default:
			return nil, specError("tls=%s; write tls=1 for https or tls=0 for plain http", quoteShort(t))
		}
	}
	if ca, ok := params["ca"]; ok {
		if !loc.TLS {
			return nil, specError("ca= is for https; drop it or use tls=1")
		}
		if loc.CA, err = parsePath("ca", ca); err != nil {
			return nil, err
		}
	}
	return loc, nil
}

// parseQuery splits a query into its parameters, refusing credentials,
// unknown names, repeated names and malformed escapes.
func parseQuery(query string) (map[string]string, error) {
	params := map[string]string{}
	if query == "" {
		return params, nil
	}
	fields := strings.Split(query, "&")
	// Secrets first, as in ParseURL.
	for _, f := range fields {
		name, _, _ := strings.Cut(f, "=")
		if n, err := unescapeQuery(name); err == nil && secretParams[strings.ToLower(n)] {
			return nil, specError("%s", secretsHint)
		}
	}
	for _, f := range fields {
		if f == "" {
			return nil, specError("an empty parameter (a stray '&'); remove it")
		}
		rawName, rawValue, ok := strings.Cut(f, "=")
		name, err := unescapeQuery(rawName)
		if err != nil {
			return nil, specError("a malformed %%-escape in a parameter name; write %%XX with two hex digits")
		}
		known := false
		for _, k := range knownParams {
			known = known || k == name
		}
		if !known {
			return nil, specError("unknown parameter %s; the parameters are %s", quoteShort(name), strings.Join(knownParams, ", "))
		}
		if !ok {
			return nil, specError("parameter %s has no value; write %s=VALUE", name, name)
		}
		if _, dup := params[name]; dup {
			return nil, specError("parameter %s given twice; give it once", name)
		}
		value, err := unescapeQuery(rawValue)
		if err != nil {
			return nil, specError("a malformed %%-escape in %s=; write %%XX with two hex digits", name)
		}
		if value == "" {
			return nil, specError("parameter %s is empty; give it a value or leave it out", name)
		}
		if err := checkText(name, value, false); err != nil {
			return nil, err
		}
		params[name] = value
	}
	return params, nil
}

// unescapeQuery decodes %XX escapes. Unlike a form, a '+' stays a '+'.
func unescapeQuery(s string) (string, error) {
	if !strings.Contains(s, "%") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
			return "", errors.New("malformed escape")
		}
		b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
		i += 2
	}
	return b.String(), nil
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	default:
		return c - 'a' + 10
	}
}

// checkText refuses decoded values that are not UTF-8 or hold control
// characters, or spaces unless space.
func checkText(what, s string, space bool) error {
	if !utf8.ValidString(s) {
		return specError("%s is not valid UTF-8", what)
	}
	for _, r := range s {
		if r < ' ' || (r == ' ' && !space) || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			if space {
				return specError("%s holds a control character; choose another", what)
			}
			return specError("%s holds a space or control character; choose another", what)
		}
	}
	return nil
}

// checkBucket applies S3's rules for bucket names.
func checkBucket(b string) error {
	const rule = "3 to 63 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
	switch {
	case b == "":
		return specError("no bucket; want %s", specForm)
	case strings.Contains(b, ":"):
		return specError("a port after the bucket; the bucket is not an address: write s3://BUCKET/KEY and give the store's address as endpoint=HOST:PORT")
	case len(b) < 3 || len(b) > 63:
		return specError("bucket name of %d characters; S3 wants %s", len(b), rule)
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '.') {
			return specError("bucket %s; S3 wants %s", quoteShort(b), rule)
		}
	}
	if !isAlnum(b[0]) || !isAlnum(b[len(b)-1]) || strings.Contains(b, "..") {
		return specError("bucket %q; S3 wants %s, and no \"..\"", b, rule)
	}
	if net.ParseIP(b) != nil {
		return specError("bucket %q looks like an IP address; that is the endpoint: write endpoint=%s:PORT and name the bucket", b, b)
	}
	return nil
}

func isAlnum(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }

// parseKey decodes and checks the object key.
func parseKey(raw string) (string, error) {
	if raw == "" {
		return "", specError("no object key; want %s", specForm)
	}
	key, err := unescapeQuery(raw)
	if err != nil {
		return "", specError("a malformed %%-escape in the key; write %%XX with two hex digits")
	}
	if err := checkText("the key", key, true); err != nil {
		return "", err
	}
	if len(key) > maxKeyLen-len(usedSuffix) {
		return "", specError("a key of %d bytes; at most %d", len(key), maxKeyLen-len(usedSuffix))
	}
	if strings.HasSuffix(key, "/") {
		return "", specError("the key ends with '/'; name an object, e.g. s3://BUCKET/DIR/NAME")
	}
	for seg := range strings.SplitSeq(key, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return "", specError("the key has an empty, '.' or '..' path segment; write it without")
		}
	}
	return key, nil
}

// parseEndpoint checks HOST:PORT.
func parseEndpoint(ep string) (string, error) {
	if strings.Contains(ep, "://") {
		return "", specError("endpoint is an address, not a URL: write endpoint=HOST:PORT, and tls=0 for plain http")
	}
	if strings.ContainsAny(ep, "/?@") {
		return "", specError("endpoint %s is not HOST:PORT; drop any path", quoteShort(ep))
	}
	host, port, err := net.SplitHostPort(ep)
	if err != nil {
		return "", specError("endpoint %s is not HOST:PORT; give the port too, e.g. endpoint=%s:9000", quoteShort(ep), strings.Trim(ep, "[]"))
	}
	if host == "" {
		return "", specError("endpoint %s has no host; write endpoint=HOST:PORT", quoteShort(ep))
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 || strconv.FormatUint(p, 10) != port {
		return "", specError("endpoint port %s; want a number from 1 to 65535", quoteShort(port))
	}
	if strings.Contains(host, ":") {
		ip := net.ParseIP(host)
		if ip == nil || strings.Contains(host, "%") {
			return "", specError("endpoint host %s is not an IPv6 address; write endpoint=[ADDR]:PORT", quoteShort(host))
		}
	} else {
		for i := 0; i < len(host); i++ {
			c := host[i]
			if !(isAlnum(c) || 'A' <= c && c <= 'Z' || c == '-' || c == '.' || c == '_') {
				return "", specError("endpoint host %s; want a host name or IP address", quoteShort(host))
			}
		}
	}
	return net.JoinHostPort(host, port), nil
}

func checkRegion(r string) error {
	if len(r) > 64 {
		return specError("a region of %d characters; at most 64", len(r))
	}
	for i := 0; i < len(r); i++ {
		c := r[i]
		if !(isAlnum(c) || 'A' <= c && c <= 'Z' || c == '-' || c == '_' || c == '.') {
			return specError("region %s; want letters, digits, '-', '_' and '.', e.g. region=us-east-1", quoteShort(r))
		}
	}
	return nil
}

// parsePath checks the absolute path of a file given as name=.
func parsePath(name, p string) (string, error) {
	if !strings.HasPrefix(p, "/") {
		return "", specError("%s=%s is not an absolute path; write %s=/PATH/TO/FILE", name, quoteShort(p), name)
	}
	if len(p) > 4096 {
		return "", specError("%s= path of %d bytes; at most 4096", name, len(p))
	}
	c := path.Clean(p)
	if c == "/" {
		return "", specError("%s=/ is a directory; name a file", name)
	}
	return c, nil
}

// quoteShort quotes s for a message, cut to a readable length.
func quoteShort(s string) string {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return strconv.Quote(s)
}

// The bytes escape leaves alone; everything else is written %XX.
const (
	keepInKey   = "-._~/!$'()*,;:@"
	keepInQuery = "-._~/:[]"
)

func escape(s, keep string) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte(keep, c) >= 0 {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&15])
	}
	return b.String()
}

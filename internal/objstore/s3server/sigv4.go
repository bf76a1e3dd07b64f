package s3server

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Names and limits of AWS Signature Version 4 as S3 uses it.
const (
	algorithm       = "AWS4-HMAC-SHA256"
	amzDateFormat   = "20060102T150405Z"
	unsignedPayload = "UNSIGNED-PAYLOAD"
	streamingSigned = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
	maxSkew         = 15 * time.Minute
	// maxBody bounds a body that is read whole to check its hash: S3's
	// limit on a single PUT.
	maxBody = 5 << 30
)

var emptySHA256 = hex.EncodeToString(sha256.New().Sum(nil))

// authError is a refusal, answered as an S3 error.
type authError struct {
	status int
	code   string
	msg    string
}

func (e *authError) Error() string { return e.code + ": " + e.msg }

func denied(status int, code, format string, args ...any) *authError {
	return &authError{status, code, fmt.Sprintf(format, args...)}
}

// verifier checks requests against one pair of credentials.
type verifier struct {
	accessKey string
	secretKey string
	now       func() time.Time
}

// authHeader is a parsed Authorization header.
type authHeader struct {
	accessKey string
	date      string // YYYYMMDD of the scope
	region    string
	service   string
	signed    []string
	signature string
}

// verify checks r's signature, and the payload's hash or chunk signatures
// where the client gave them. On success r's body may have been replaced
// by a checked copy (a streaming body by its decoded payload).
func (v *verifier) verify(r *http.Request) *authError {
	q := r.URL.Query()
	if q.Has("X-Amz-Signature") || q.Has("X-Amz-Algorithm") || q.Has("Signature") {
		return denied(http.StatusForbidden, "AccessDenied", "presigned URLs are not accepted here; sign requests with an Authorization header")
	}
	auth := r.Header.Get("Authorization")
	switch {
	case auth == "":
		return denied(http.StatusForbidden, "AccessDenied", "anonymous requests are refused; sign requests with the server's credentials")
	case strings.HasPrefix(auth, "AWS "):
		return denied(http.StatusBadRequest, "InvalidRequest", "signature version 2 is not accepted; use AWS4-HMAC-SHA256")
	}
	ah, aerr := parseAuthorization(auth)
	if aerr != nil {
		return aerr
	}
	if subtle.ConstantTimeCompare([]byte(ah.accessKey), []byte(v.accessKey)) != 1 {
		return denied(http.StatusForbidden, "InvalidAccessKeyId", "the access key ID you provided does not exist in our records")
	}
	if r.Header.Get("X-Amz-Security-Token") != "" {
		return denied(http.StatusForbidden, "InvalidToken", "this server issues no session tokens")
	}
	amzDate := r.Header.Get("X-Amz-Date")
	t, err := time.Parse(amzDateFormat, amzDate)
	if err != nil {
		return denied(http.StatusForbidden, "AccessDenied", "no valid X-Amz-Date header (want YYYYMMDDTHHMMSSZ)")
	}
	if d := v.now().Sub(t); d > maxSkew || d < -maxSkew {
		return denied(http.StatusForbidden, "RequestTimeTooSkewed", "the difference between the request time and the server's time is too large (%s)", d.Round(time.Second))
	}
	if ah.date != amzDate[:8] {
		return denied(http.StatusForbidden, "SignatureDoesNotMatch", "the credential scope's date %s is not the request's %s", ah.date, amzDate[:8])
	}
	if ah.service != "s3" {
		return denied(http.StatusBadRequest, "AuthorizationHeaderMalformed", "the credential scope names service %q, want s3", ah.service)
	}
	for _, must := range []string{"host", "x-amz-content-sha256", "x-amz-date"} {
		if !slices.Contains(ah.signed, must) {
			return denied(http.StatusForbidden, "AccessDenied", "header %s must be signed", must)
		}
	}
	for name := range r.Header {
		if l := strings.ToLower(name); strings.HasPrefix(l, "x-amz-") && !slices.Contains(ah.signed, l) {
			return denied(http.StatusForbidden, "AccessDenied", "header %s is present but not signed", l)
		}
	}
	payload := r.Header.Get("X-Amz-Content-Sha256")
	switch {
	case payload == unsignedPayload, payload == streamingSigned:
	case len(payload) == 64 && isLowerHex(payload):
	default:
		return denied(http.StatusNotImplemented, "NotImplemented", "x-amz-content-sha256 %q is not supported here; send the payload's SHA-256, %s or %s", short(payload), unsignedPayload, streamingSigned)
	}

	scope := ah.date + "/" + ah.region + "/s3/aws4_request"
	key := signingKey(v.secretKey, ah.date, ah.region)
	creq := canonicalRequest(r, ah.signed, payload)
	sts := algorithm + "\n" + amzDate + "\n" + scope + "\n" + hexSHA256([]byte(creq))
	want := hex.EncodeToString(hmacSHA256(key, []byte(sts)))
	if subtle.ConstantTimeCompare([]byte(want), []byte(ah.signature)) != 1 {
		return denied(http.StatusForbidden, "SignatureDoesNotMatch", "the request signature we calculated does not match the signature you provided; check your key and signing method")
	}

	switch payload {
	case unsignedPayload:
		return nil
	case streamingSigned:
		return decodeStreaming(r, key, amzDate, scope, ah.signature)
	}
	if r.Body == nil || r.Body == http.NoBody {
		if payload != emptySHA256 {
			return denied(http.StatusBadRequest, "XAmzContentSHA256Mismatch", "the provided x-amz-content-sha256 does not match the empty body")
		}
		return nil
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return denied(http.StatusBadRequest, "IncompleteBody", "reading the body: %v", err)
	}
	if len(body) > maxBody {
		return denied(http.StatusBadRequest, "EntityTooLarge", "a body of over %d bytes", int64(maxBody))
	}
	if hexSHA256(body) != payload {
		return denied(http.StatusBadRequest, "XAmzContentSHA256Mismatch", "the provided x-amz-content-sha256 does not match what was received")
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	return nil
}

// parseAuthorization parses
// AWS4-HMAC-SHA256 Credential=AK/DATE/REGION/SERVICE/aws4_request, SignedHeaders=a;b, Signature=HEX.
func parseAuthorization(h string) (*authHeader, *authError) {
	malformed := func(what string) *authError {
		return denied(http.StatusBadRequest, "AuthorizationHeaderMalformed", "the authorization header is malformed: %s", what)
	}
	rest, ok := strings.CutPrefix(h, algorithm+" ")
	if !ok {
		return nil, malformed("want the " + algorithm + " algorithm")
	}
	fields := map[string]string{}
	for f := range strings.SplitSeq(rest, ",") {
		name, value, ok := strings.Cut(strings.TrimSpace(f), "=")
		if !ok {
			return nil, malformed("a field without '='")
		}
		if _, dup := fields[name]; dup {
			return nil, malformed("field " + name + " given twice")
		}
		fields[name] = value
	}
	cred, sh, sig := fields["Credential"], fields["SignedHeaders"], fields["Signature"]
	if cred == "" || sh == "" || sig == "" || len(fields) != 3 {
		return nil, malformed("want Credential, SignedHeaders and Signature")
	}
	parts := strings.Split(cred, "/")
	if len(parts) != 5 || parts[0] == "" || parts[4] != "aws4_request" || len(parts[1]) != 8 || parts[2] == "" {
		return nil, malformed("want Credential=KEY/YYYYMMDD/REGION/s3/aws4_request")
	}
	signed := strings.Split(sh, ";")
	for i, s := range signed {
		if s == "" || s != strings.ToLower(s) || (i > 0 && signed[i-1] >= s) {
			return nil, malformed("SignedHeaders must be lowercase names, sorted, each once")
		}
	}
	if len(sig) != 64 || !isLowerHex(sig) {
		return nil, malformed("Signature must be 64 lowercase hex digits")
	}
	return &authHeader{
		accessKey: parts[0], date: parts[1], region: parts[2], service: parts[3],
		signed: signed, signature: sig,
	}, nil
}

// canonicalRequest builds SigV4's canonical request for r.
func canonicalRequest(r *http.Request, signed []string, payload string) string {
	var b strings.Builder
	b.WriteString(r.Method)
	b.WriteByte('\n')
	p := r.URL.Path
	if p == "" {
		p = "/"
	}
	b.WriteString(uriEncode(p, true))
	b.WriteByte('\n')
	b.WriteString(canonicalQuery(r.URL.RawQuery))
	b.WriteByte('\n')
	for _, name := range signed {
		b.WriteString(name)
		b.WriteByte(':')
		b.WriteString(headerValue(r, name))
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	b.WriteString(strings.Join(signed, ";"))
	b.WriteByte('\n')
	b.WriteString(payload)
	return b.String()
}

// headerValue is a signed header's canonical value: its values trimmed,
// inner runs of spaces folded, joined by commas.
func headerValue(r *http.Request, name string) string {
	var vals []string
	switch name {
	case "host":
		vals = []string{r.Host}
	case "content-length":
		vals = r.Header.Values(name)
		if len(vals) == 0 && r.ContentLength >= 0 {
			vals = []string{strconv.FormatInt(r.ContentLength, 10)}
		}
	case "transfer-encoding":
		vals = r.TransferEncoding
	default:
		vals = r.Header.Values(name)
	}
	out := make([]string, len(vals))
	for i, v := range vals {
		out[i] = strings.Join(strings.Fields(v), " ")
	}
	return strings.Join(out, ",")
}

// canonicalQuery decodes the query and encodes it again the SigV4 way,
// sorted by name and then value.
func canonicalQuery(raw string) string {
	if raw == "" {
		return ""
	}
	type pair struct{ k, v string }
	var ps []pair
	for f := range strings.SplitSeq(raw, "&") {
		if f == "" {
			continue
		}
		k, v, _ := strings.Cut(f, "=")
		ps = append(ps, pair{uriEncode(unescape(k), false), uriEncode(unescape(v), false)})
	}
	slices.SortFunc(ps, func(a, b pair) int {
		if c := strings.Compare(a.k, b.k); c != 0 {
			return c
		}
		return strings.Compare(a.v, b.v)
	})
	var b strings.Builder
	for i, p := range ps {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(p.k)
		b.WriteByte('=')
		b.WriteString(p.v)
	}
	return b.String()
}

// unescape decodes %XX; a malformed escape stays as it is (and the
// signature will not match). A '+' stays a '+'.
func unescape(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(v))
				i += 2
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// uriEncode escapes every byte but the unreserved ones (and '/' in a path).
func uriEncode(s string, path bool) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' ||
			c == '-' || c == '_' || c == '.' || c == '~' || (path && c == '/') {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&15])
	}
	return b.String()
}

func signingKey(secret, date, region string) []byte {
	k := hmacSHA256([]byte("AWS4"+secret), []byte(date))
	k = hmacSHA256(k, []byte(region))
	k = hmacSHA256(k, []byte("s3"))
	return hmacSHA256(k, []byte("aws4_request"))
}

func hmacSHA256(key, data []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(data)
	return m.Sum(nil)
}

func hexSHA256(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func short(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// decodeStreaming checks an aws-chunked body chunk by chunk, each chunk's
// signature chained to the previous one from the seed signature, and
// replaces the body by the payload, with the headers of a plain upload.
func decodeStreaming(r *http.Request, key []byte, amzDate, scope, seed string) *authError {
	decoded, err := strconv.ParseInt(r.Header.Get("X-Amz-Decoded-Content-Length"), 10, 64)
	if err != nil || decoded < 0 || decoded > maxBody {
		return denied(http.StatusBadRequest, "MissingContentLength", "a streaming upload needs a valid x-amz-decoded-content-length")
	}
	br := bufio.NewReader(io.LimitReader(r.Body, maxBody+1<<20))
	payload := make([]byte, 0, decoded)
	prev := seed
	for {
		line, err := br.ReadString('\n')
		if err != nil || !strings.HasSuffix(line, "\r\n") {
			return denied(http.StatusBadRequest, "IncompleteBody", "a chunk header is cut short")
		}
		sizeHex, sig, ok := strings.Cut(strings.TrimSuffix(line, "\r\n"), ";chunk-signature=")
		size, perr := strconv.ParseInt(sizeHex, 16, 64)
		if !ok || perr != nil || size < 0 || int64(len(payload))+size > decoded {
			return denied(http.StatusBadRequest, "IncompleteBody", "a malformed chunk header")
		}
		chunk := make([]byte, size)
		if _, err := io.ReadFull(br, chunk); err != nil {
			return denied(http.StatusBadRequest, "IncompleteBody", "a chunk is cut short")
		}
		crlf := make([]byte, 2)
		if _, err := io.ReadFull(br, crlf); err != nil || string(crlf) != "\r\n" {
			return denied(http.StatusBadRequest, "IncompleteBody", "a chunk without its CRLF")
		}
		sts := "AWS4-HMAC-SHA256-PAYLOAD\n" + amzDate + "\n" + scope + "\n" + prev + "\n" + emptySHA256 + "\n" + hexSHA256(chunk)
		want := hex.EncodeToString(hmacSHA256(key, []byte(sts)))
		if subtle.ConstantTimeCompare([]byte(want), []byte(sig)) != 1 {
			return denied(http.StatusForbidden, "SignatureDoesNotMatch", "the signature of a chunk does not match")
		}
		prev = sig
		if size == 0 {
			break
		}
		payload = append(payload, chunk...)
	}
	if int64(len(payload)) != decoded {
		return denied(http.StatusBadRequest, "IncompleteBody", "%d bytes of payload, x-amz-decoded-content-length says %d", len(payload), decoded)
	}
	r.Body = io.NopCloser(bytes.NewReader(payload))
	r.ContentLength = decoded
	r.Header.Set("Content-Length", strconv.FormatInt(decoded, 10))
	r.Header.Set("X-Amz-Content-Sha256", hexSHA256(payload))
	r.Header.Del("X-Amz-Decoded-Content-Length")
	if enc := r.Header.Get("Content-Encoding"); enc != "" {
		var keep []string
		for e := range strings.SplitSeq(enc, ",") {
			if e = strings.TrimSpace(e); e != "" && e != "aws-chunked" {
				keep = append(keep, e)
			}
		}
		if len(keep) == 0 {
			r.Header.Del("Content-Encoding")
		} else {
			r.Header.Set("Content-Encoding", strings.Join(keep, ","))
		}
	}
	return nil
}

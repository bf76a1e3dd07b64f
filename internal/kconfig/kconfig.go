// Package kconfig implements a parser for the format of Linux's .config file.
package kconfig

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Bounds on what Parse accepts. A real x86_64 distribution config is about
// 300 KiB with lines well under 1 KiB, so these leave ample room while keeping
// a hostile or corrupt input (a gzip bomb, a file with no newlines) from
// eating memory.
const (
	MaxSize = 16 << 20 // bytes of (decompressed) text
	MaxLine = 64 << 10 // bytes in one line
)

// ErrNoConfig is returned by Load and LoadFrom when none of the places a
// kernel's configuration is usually published exists.
var ErrNoConfig = errors.New("no kernel config found")

// Config maps option names, with their CONFIG_ prefix, to their values as
// written in the file: "y", "m", "\"a string\"", "0x1000", "64". An option
// declared with "# CONFIG_X is not set" has the value "n"; an option the file
// does not mention at all is absent from the map.
type Config map[string]string

const prefix = "CONFIG_"

var gzipMagic = []byte{0x1f, 0x8b}

// Parse reads a kernel configuration of size bytes from r. The text may be
// gzip-compressed, as /proc/config.gz is; Parse tells the two apart by the
// gzip magic number. Errors name the offending line.
func Parse(r io.ReaderAt, size int64) (Config, error) {
	if size < 0 {
		return nil, fmt.Errorf("kconfig: negative size %d", size)
	}
	var magic [2]byte
	n, err := r.ReadAt(magic[:], 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("kconfig: reading header: %w", err)
	}
	var text io.Reader = io.NewSectionReader(r, 0, size)
	if int64(n) == 2 && size >= 2 && bytes.Equal(magic[:], gzipMagic) {
		zr, err := gzip.NewReader(text)
		if err != nil {
			return nil, fmt.Errorf("kconfig: gzip header: %w", err)
		}
		defer zr.Close()
		text = zr
	} else if size > MaxSize {
		return nil, fmt.Errorf("kconfig: %d bytes is more than the %d a config may have", size, MaxSize)
	}
	return parseText(text)
}

// parseText parses uncompressed config text, reading at most MaxSize bytes.
func parseText(r io.Reader) (Config, error) {
	// One byte past the limit lets us tell "exactly MaxSize" from "more".
	lr := &io.LimitedReader{R: r, N: MaxSize + 1}
	sc := bufio.NewScanner(lr)
	sc.Buffer(make([]byte, 0, 4096), MaxLine)
	c := Config{}
	line := 0
	for sc.Scan() {
		line++
		if err := c.parseLine(sc.Text()); err != nil {
			return nil, fmt.Errorf("kconfig: line %d: %w", line, err)
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("kconfig: line %d: longer than %d bytes", line+1, MaxLine)
		}
		return nil, fmt.Errorf("kconfig: line %d: %w", line+1, err)
	}
	if lr.N <= 0 {
		return nil, fmt.Errorf("kconfig: text is longer than %d bytes", MaxSize)
	}
	return c, nil
}

// parseLine records one line of config text in c.
func (c Config) parseLine(s string) error {
	s = strings.TrimSuffix(s, "\r")
	t := strings.TrimSpace(s)
	if t == "" {
		return nil
	}
	if t[0] == '#' {
		// Comments are free text except for the one form that carries
		// meaning: "# CONFIG_FOO is not set" records an explicit "n",
		// which matters because it differs from "never offered".
		rest, ok := strings.CutPrefix(t, "# ")
		if !ok {
			return nil
		}
		name, ok := strings.CutSuffix(rest, " is not set")
		if ok && validName(name) {
			c[name] = "n"
		}
		return nil
	}
	name, value, ok := strings.Cut(s, "=")
	if !ok {
		return fmt.Errorf("expected CONFIG_NAME=value or a # comment, got %q", clip(s))
	}
	if !validName(name) {
		return fmt.Errorf("bad option name %q", clip(name))
	}
	if value == "" {
		return fmt.Errorf("%s has an empty value", name)
	}
	if value[0] == '"' && (len(value) < 2 || value[len(value)-1] != '"') {
		return fmt.Errorf("%s has an unterminated string value", name)
	}
	c[name] = value
	return nil
}

// validName reports whether s is CONFIG_ followed by one or more characters
// from the set Kconfig symbols are made of.
func validName(s string) bool {
	sym, ok := strings.CutPrefix(s, prefix)
	if !ok || sym == "" {
		return false
	}
	for i := 0; i < len(sym); i++ {
		b := sym[i]
		if !('A' <= b && b <= 'Z' || 'a' <= b && b <= 'z' || '0' <= b && b <= '9' || b == '_') {
			return false
		}
	}
	return true
}

// clip shortens s for an error message.
func clip(s string) string {
	const n = 60
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// key adds the CONFIG_ prefix if name lacks it, so that callers may write
// either "KEXEC_JUMP" or "CONFIG_KEXEC_JUMP".
func key(name string) string {
	if strings.HasPrefix(name, prefix) {
		return name
	}
	return prefix + name
}

// Get returns the value of option name ("CONFIG_KEXEC_JUMP"; the prefix may
// be left off) and whether the config mentions it at all. An option marked
// "is not set" yields ("n", true).
func (c Config) Get(name string) (value string, ok bool) {
	value, ok = c[key(name)]
	return value, ok
}

// Enabled reports whether option name is built in ("y") or a module ("m").
func (c Config) Enabled(name string) bool {
	v := c[key(name)]
	return v == "y" || v == "m"
}

// Load reads the running kernel's configuration, trying /proc/config.gz
// (present when the kernel has CONFIG_IKCONFIG_PROC) and then
// /boot/config-$(uname -r), as distributions install it. It returns the path
// it read.
func Load() (Config, string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return nil, "", fmt.Errorf("kconfig: uname: %w", err)
	}
	return LoadFrom("/", unix.ByteSliceToString(u.Release[:]))
}

// Candidates returns the paths, relative to the filesystem root, where
// LoadFrom looks for the configuration of kernel release, in the order it
// tries them. An empty release omits the /boot file.
func Candidates(release string) []string {
	c := []string{"/proc/config.gz"}
	if release != "" && !strings.ContainsAny(release, "/\x00") {
		c = append(c, "/boot/config-"+release)
	}
	return c
}

// LoadFrom is Load for a filesystem rooted at root (a test's temporary
// directory, say) and a given kernel release. The returned source is the path
// as seen from root, such as "/proc/config.gz". A candidate that exists but
// cannot be read or parsed is passed over for the next one; if every
// candidate is missing the error wraps ErrNoConfig, otherwise it describes
// each failure.
func LoadFrom(root, release string) (Config, string, error) {
	// Only failures other than absence are worth reporting: a missing
	// /boot file says nothing once /proc/config.gz turned out corrupt.
	var errs []error
	for _, p := range Candidates(release) {
		c, err := loadFile(filepath.Join(root, p))
		if err == nil {
			return c, p, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("%s: %w", p, err))
		}
	}
	switch len(errs) {
	case 0:
		return nil, "", fmt.Errorf("kconfig: tried %s: %w", strings.Join(Candidates(release), ", "), ErrNoConfig)
	case 1:
		return nil, "", errs[0]
	default:
		// One line, unlike errors.Join, because callers print it in a
		// one-line verdict.
		return nil, "", fmt.Errorf("%w; %w", errs[0], errors.Join(errs[1:]...))
	}
}

// loadFile parses the config file at path.
func loadFile(path string) (Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	if size == 0 {
		// Files under /proc report size 0 although they have content;
		// read them whole, up to a compressed-size bound, and parse that.
		b, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
		if err != nil {
			return nil, err
		}
		if len(b) > MaxSize {
			return nil, fmt.Errorf("more than %d bytes", MaxSize)
		}
		return Parse(bytes.NewReader(b), int64(len(b)))
	}
	return Parse(f, size)
}

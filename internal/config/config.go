// Package config reads and writes /etc/khib.conf, khib's configuration
// file on an installed system, and resolves the device specs it names.
//
// The format is one "key = value" per line. Blank lines and lines whose
// first non-blank character is '#' are ignored; a value runs to the end of
// its line (surrounding blanks trimmed) and cannot contain '#' comments.
// Unknown keys are errors, so that a typo never silently falls back to a
// default.
package config

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/khib/khib/internal/target"
)

// Path is where the configuration lives on an installed system, and where
// the initramfs hook copies it from (into the same path in the initramfs).
const Path = "/etc/khib.conf"

// DefaultHelperKernel is where the package installs the helper kernel.
const DefaultHelperKernel = "/usr/lib/khib/bzImage"

// Codecs are the values codec may take; they are the image codecs of
// internal/image.
var Codecs = []string{"s2", "zstd", "none"}

// MaxSize bounds the file; a configuration of a few keys never comes close,
// and a larger file is something else.
const MaxSize = 64 << 10

// Config is the content of khib.conf. Empty fields take the defaults.
type Config struct {
	// Target is the device spec the image goes to: UUID=, PARTUUID=,
	// LABEL=, PARTLABEL= or a /dev path (see Resolve).
	Target string
	// HelperKernel is the helper kernel's bzImage (B and C).
	HelperKernel string
	// Codec is the image compression: s2, zstd or none.
	Codec string
	// Encrypt is how images are encrypted: "no" (or empty),
	// "passphrase" (khib hibernate asks for one on the terminal, as
	// --encrypt does; stage 1 asks on the console) or "tpm" (the key
	// sealed to this machine's TPM, as --tpm does; stage 1 asks nobody).
	Encrypt string
	// Resume is where stage 1 finds a target that Target names by a
	// path it cannot look up without mounting this system's filesystem
	// (file:DEV@OFFSET, swap:DEV@OFFSET); khib configure writes it.
	Resume string
	// Net is the network stage 1 brings up for an s3 target when the
	// kernel command line has no ip=: the kernel's ip= form
	// (internal/netconf), which khib configure writes.
	Net string
}

// Encrypts are the values encrypt may take.
var Encrypts = []string{"no", "passphrase", "tpm"}

// Default returns the configuration that applies when no file exists.
func Default() *Config {
	return &Config{HelperKernel: DefaultHelperKernel, Codec: "s2"}
}

// Error is a parse error at a line of a file.
type Error struct {
	File string
	Line int
	Msg  string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
}

// ErrNoFile is wrapped by Load's error when the file does not exist.
var ErrNoFile = errors.New("no configuration file")

// Load reads the configuration at path. A missing file yields the error
// ErrNoFile (and fs.ErrNotExist) so callers can tell it from a bad one.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w %s (write one with khib configure --target SPEC): %w", ErrNoFile, path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("reading the configuration: %w", err)
	}
	defer f.Close()
	return Parse(f, path)
}

// Parse reads a configuration from r; name appears in errors.
func Parse(r io.Reader, name string) (*Config, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	if len(b) > MaxSize {
		return nil, &Error{name, 0, fmt.Sprintf("larger than %d KiB; this is not a khib configuration", MaxSize>>10)}
	}
	c := Default()
	seen := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), MaxSize+1)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		bad := func(format string, a ...any) error {
			return &Error{name, n, fmt.Sprintf(format, a...)}
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, bad("%q is not \"key = value\"", clip(line))
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if prev, dup := seen[k]; dup {
			return nil, bad("%s is set twice (first on line %d)", k, prev)
		}
		seen[k] = n
		if strings.ContainsFunc(v, func(r rune) bool { return r < ' ' || r == 0x7f }) {
			return nil, bad("the value of %s contains a control character", k)
		}
		switch k {
		case "target":
			if v == "" {
				return nil, bad("target is empty; give UUID=..., PARTUUID=..., LABEL=..., PARTLABEL=... or a /dev path")
			}
			if err := checkTarget(v); err != nil {
				return nil, bad("target: %v", err)
			}
			c.Target = v
		case "resume":
			sp, err := target.ParseSpec(v)
			if err != nil {
				return nil, bad("resume: %v", err)
			}
			if !sp.Located {
				return nil, bad("resume %q names a path; stage 1 needs DEV@OFFSET (khib configure writes it)", clip(v))
			}
			c.Resume = v
		case "net":
			if strings.ContainsAny(v, " \t") || v == "" {
				return nil, bad("net %q: the kernel's ip= form, CLIENT::GATEWAY:NETMASK::DEVICE:off", clip(v))
			}
			c.Net = v
		case "helper_kernel":
			if !filepath.IsAbs(v) {
				return nil, bad("helper_kernel %q is not an absolute path", clip(v))
			}
			c.HelperKernel = filepath.Clean(v)
		case "codec":
			if !validCodec(v) {
				return nil, bad("codec %q is none of %s", clip(v), strings.Join(Codecs, ", "))
			}
			c.Codec = v
		case "encrypt":
			if !slices.Contains(Encrypts, v) {
				return nil, bad("encrypt %q is none of %s", clip(v), strings.Join(Encrypts, ", "))
			}
			c.Encrypt = v
		case "":
			return nil, bad("a line starts with '=' and names no key")
		default:
			return nil, bad("unknown key %q (known: target, resume, net, helper_kernel, codec, encrypt)", clip(k))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	return c, nil
}

// checkTarget checks a target spec's form: a device spec, or swap:,
// file:, dir: or s3:// (internal/target).
func checkTarget(v string) error {
	sp, err := target.ParseSpec(v)
	if err != nil {
		return err
	}
	if sp.Kind == target.SpecDevice {
		_, _, err = ParseSpec(v)
	}
	return err
}

func validCodec(s string) bool {
	for _, c := range Codecs {
		if s == c {
			return true
		}
	}
	return false
}

// Marshal formats c as a configuration file, with a header that says who
// wrote it and how to change it.
func (c *Config) Marshal() []byte {
	var b bytes.Buffer
	b.WriteString("# khib's configuration, written by khib configure.\n" +
		"# Change it with khib configure --target SPEC (which also updates the\n" +
		"# initramfs, where stage 1 of a resume reads it), or edit it and run\n" +
		"# update-initramfs -u. It is removed with the package (dpkg -r khib).\n")
	if c.Target != "" {
		fmt.Fprintf(&b, "target = %s\n", c.Target)
	}
	if c.Resume != "" {
		fmt.Fprintf(&b, "resume = %s\n", c.Resume)
	}
	if c.Net != "" {
		fmt.Fprintf(&b, "net = %s\n", c.Net)
	}
	if c.HelperKernel != "" {
		fmt.Fprintf(&b, "helper_kernel = %s\n", c.HelperKernel)
	}
	if c.Codec != "" {
		fmt.Fprintf(&b, "codec = %s\n", c.Codec)
	}
	if c.Encrypt != "" {
		fmt.Fprintf(&b, "encrypt = %s\n", c.Encrypt)
	}
	return b.Bytes()
}

// Write writes c to path atomically: a reader (or a crash) sees the old
// file or the new one, never half of either.
func (c *Config) Write(path string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".khib.conf.*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(c.Marshal()); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

func clip(s string) string {
	const n = 60
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

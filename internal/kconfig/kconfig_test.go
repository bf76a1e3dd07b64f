package kconfig

import (
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// debianSample is an excerpt in the shape of a Debian 12 amd64 config.
const debianSample = `#
# Automatically generated file; DO NOT EDIT.
# Linux/x86 6.1.0-18-amd64 Kernel Configuration
#
CONFIG_CC_VERSION_TEXT="gcc-12 (Debian 12.2.0-14) 12.2.0"
CONFIG_CC_IS_GCC=y
CONFIG_GCC_VERSION=120200

#
# Kexec and crash features
#
CONFIG_CRASH_CORE=y
CONFIG_KEXEC_CORE=y
CONFIG_KEXEC=y
CONFIG_KEXEC_FILE=y
CONFIG_KEXEC_SIG=y
# CONFIG_KEXEC_SIG_FORCE is not set
CONFIG_KEXEC_BZIMAGE_VERIFY_SIG=y
# CONFIG_KEXEC_JUMP is not set
CONFIG_CRASH_DUMP=y
CONFIG_PHYSICAL_START=0x1000000
CONFIG_IKCONFIG=m
CONFIG_LOG_BUF_SHIFT=18
`

func gz(t testing.TB, s string) []byte {
	t.Helper()
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	if _, err := w.Write([]byte(s)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func parseBytes(b []byte) (Config, error) {
	return Parse(bytes.NewReader(b), int64(len(b)))
}

func TestParseValues(t *testing.T) {
	for _, form := range []struct {
		name string
		data []byte
	}{
		{"plain", []byte(debianSample)},
		{"gzip", gz(t, debianSample)},
		{"crlf", []byte(strings.ReplaceAll(debianSample, "\n", "\r\n"))},
	} {
		t.Run(form.name, func(t *testing.T) {
			c, err := parseBytes(form.data)
			if err != nil {
				t.Fatal(err)
			}
			tests := []struct {
				name    string
				value   string
				ok      bool
				enabled bool
			}{
				{"CONFIG_KEXEC", "y", true, true},
				{"KEXEC", "y", true, true}, // prefix optional
				{"CONFIG_KEXEC_JUMP", "n", true, false},
				{"CONFIG_KEXEC_SIG_FORCE", "n", true, false},
				{"CONFIG_IKCONFIG", "m", true, true},
				{"CONFIG_PHYSICAL_START", "0x1000000", true, false},
				{"CONFIG_LOG_BUF_SHIFT", "18", true, false},
				{"CONFIG_CC_VERSION_TEXT", `"gcc-12 (Debian 12.2.0-14) 12.2.0"`, true, false},
				{"CONFIG_PROC_VMCORE", "", false, false},
				{"CONFIG_", "", false, false},
			}
			for _, tt := range tests {
				v, ok := c.Get(tt.name)
				if v != tt.value || ok != tt.ok {
					t.Errorf("Get(%q) = %q, %v; want %q, %v", tt.name, v, ok, tt.value, tt.ok)
				}
				if got := c.Enabled(tt.name); got != tt.enabled {
					t.Errorf("Enabled(%q) = %v, want %v", tt.name, got, tt.enabled)
				}
			}
			if len(c) != 15 {
				t.Errorf("parsed %d options, want 15: %v", len(c), c)
			}
		})
	}
}

func TestParseLines(t *testing.T) {
	tests := []struct {
		name    string
		text    string
		want    map[string]string
		wantErr string
	}{
		{name: "empty", text: "", want: map[string]string{}},
		{name: "no trailing newline", text: "CONFIG_A=y", want: map[string]string{"CONFIG_A": "y"}},
		{name: "later wins", text: "CONFIG_A=y\n# CONFIG_A is not set\n", want: map[string]string{"CONFIG_A": "n"}},
		{name: "free comment", text: "# CONFIG_A is set to something\n#CONFIG_B is not set\n", want: map[string]string{}},
		{name: "blank lines", text: "\n   \n\t\nCONFIG_A=m\n", want: map[string]string{"CONFIG_A": "m"}},
		{name: "value with equals", text: `CONFIG_CMDLINE="a=b c=d"`, want: map[string]string{"CONFIG_CMDLINE": `"a=b c=d"`}},
		{name: "empty string", text: `CONFIG_S=""`, want: map[string]string{"CONFIG_S": `""`}},
		{name: "garbage line", text: "CONFIG_A=y\nhello\n", wantErr: "line 2"},
		{name: "no prefix", text: "KEXEC=y\n", wantErr: "bad option name"},
		{name: "bad char", text: "CONFIG_A-B=y\n", wantErr: "bad option name"},
		{name: "empty value", text: "CONFIG_A=\n", wantErr: "empty value"},
		{name: "unterminated", text: "CONFIG_A=\"abc\n", wantErr: "unterminated"},
		{name: "lone quote", text: "CONFIG_A=\"\n", wantErr: "unterminated"},
		{name: "long line", text: "CONFIG_A=\"" + strings.Repeat("x", MaxLine) + "\"\n", wantErr: "longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseBytes([]byte(tt.text))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(c) != len(tt.want) {
				t.Fatalf("got %v, want %v", c, tt.want)
			}
			for k, v := range tt.want {
				if c[k] != v {
					t.Errorf("%s = %q, want %q", k, c[k], v)
				}
			}
		})
	}
}

func TestParseBounds(t *testing.T) {
	// Many short lines: exactly at the limit is fine, one byte over is not.
	line := "CONFIG_A=y\n"
	exact := strings.Repeat(line, MaxSize/len(line))
	exact += strings.Repeat("\n", MaxSize-len(exact))
	if _, err := parseBytes([]byte(exact)); err != nil {
		t.Fatalf("text of exactly MaxSize: %v", err)
	}
	if _, err := parseBytes([]byte(exact + "\n")); err == nil {
		t.Fatal("plain text over MaxSize accepted")
	}
	// A small gzip that inflates past the bound must be refused, not
	// decompressed whole.
	if _, err := parseBytes(gz(t, exact+"\n")); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Fatalf("gzip bomb: err = %v", err)
	}
	if _, err := Parse(bytes.NewReader(nil), -1); err == nil {
		t.Fatal("negative size accepted")
	}
}

func TestParseBadGzip(t *testing.T) {
	good := gz(t, debianSample)
	tests := map[string][]byte{
		"magic only": {0x1f, 0x8b},
		"truncated":  good[:len(good)/2],
		"bad crc":    append(append([]byte{}, good[:len(good)-8]...), 0, 0, 0, 0, 0, 0, 0, 0),
	}
	for name, b := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := parseBytes(b); err == nil {
				t.Fatal("no error")
			}
		})
	}
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLoadFrom(t *testing.T) {
	const rel = "6.1.0-18-amd64"
	tests := []struct {
		name       string
		files      map[string][]byte
		release    string
		wantSource string
		wantJump   string
		wantNoCfg  bool
		wantErr    bool
	}{
		{
			name: "proc first",
			files: map[string][]byte{
				"proc/config.gz":     gz(t, "CONFIG_KEXEC_JUMP=y\n"),
				"boot/config-" + rel: []byte(debianSample),
			},
			release: rel, wantSource: "/proc/config.gz", wantJump: "y",
		},
		{
			name:    "boot fallback",
			files:   map[string][]byte{"boot/config-" + rel: []byte(debianSample)},
			release: rel, wantSource: "/boot/config-" + rel, wantJump: "n",
		},
		{
			name: "corrupt proc falls back",
			files: map[string][]byte{
				"proc/config.gz":     {0x1f, 0x8b, 1, 2, 3},
				"boot/config-" + rel: []byte(debianSample),
			},
			release: rel, wantSource: "/boot/config-" + rel, wantJump: "n",
		},
		{
			name:    "other release only",
			files:   map[string][]byte{"boot/config-5.10.0-1-amd64": []byte(debianSample)},
			release: rel, wantNoCfg: true,
		},
		{name: "nothing", release: rel, wantNoCfg: true},
		{name: "no release", files: map[string][]byte{"boot/config-": []byte(debianSample)}, wantNoCfg: true},
		{name: "release with slash", files: map[string][]byte{"boot/config-" + rel: []byte(debianSample)}, release: "../boot/config-" + rel, wantNoCfg: true},
		{
			name:    "corrupt only",
			files:   map[string][]byte{"proc/config.gz": []byte("not a config")},
			release: rel, wantErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			for p, b := range tt.files {
				writeFile(t, filepath.Join(root, p), b)
			}
			c, src, err := LoadFrom(root, tt.release)
			switch {
			case tt.wantNoCfg:
				if !errors.Is(err, ErrNoConfig) {
					t.Fatalf("err = %v, want ErrNoConfig", err)
				}
				return
			case tt.wantErr:
				if err == nil || errors.Is(err, ErrNoConfig) {
					t.Fatalf("err = %v, want a parse error", err)
				}
				return
			case err != nil:
				t.Fatal(err)
			}
			if src != tt.wantSource {
				t.Errorf("source = %q, want %q", src, tt.wantSource)
			}
			if v, _ := c.Get("CONFIG_KEXEC_JUMP"); v != tt.wantJump {
				t.Errorf("KEXEC_JUMP = %q, want %q", v, tt.wantJump)
			}
		})
	}
}

// TestLoadHere reads this machine's config, if it publishes one.
func TestLoadHere(t *testing.T) {
	c, src, err := Load()
	if errors.Is(err, ErrNoConfig) {
		t.Skip("this machine publishes no kernel config")
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d options from %s", len(c), src)
	if len(c) < 100 {
		t.Errorf("only %d options from %s", len(c), src)
	}
	if _, ok := c.Get("CONFIG_64BIT"); !ok && strings.Contains(src, "x86") {
		t.Errorf("CONFIG_64BIT missing")
	}
}

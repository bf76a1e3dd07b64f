package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     Config
		err      string // substring of the error; "" for none
	}{
		{name: "empty", in: "", want: *Default()},
		{name: "comments only", in: "# nothing\n\n   # indented\n", want: *Default()},
		{name: "all keys", in: "target = PARTUUID=1234abcd-03\nhelper_kernel = /boot/khib//bzImage\ncodec = zstd\n",
			want: Config{Target: "PARTUUID=1234abcd-03", HelperKernel: "/boot/khib/bzImage", Codec: "zstd"}},
		{name: "no spaces", in: "target=UUID=0b8e2b52-1f7a-4b7e-9c59-2e4d3c0a9f11", want: Config{Target: "UUID=0b8e2b52-1f7a-4b7e-9c59-2e4d3c0a9f11", HelperKernel: DefaultHelperKernel, Codec: "s2"}},
		{name: "path target", in: "\ttarget =  /dev/disk/by-id/virtio-khib  \r\n", want: Config{Target: "/dev/disk/by-id/virtio-khib", HelperKernel: DefaultHelperKernel, Codec: "s2"}},
		{name: "lower-case kind", in: "target = partuuid=1234abcd-03", want: Config{Target: "partuuid=1234abcd-03", HelperKernel: DefaultHelperKernel, Codec: "s2"}},
		{name: "no equals", in: "# c\ntarget /dev/vdb\n", err: "khib.conf:2: \"target /dev/vdb\" is not \"key = value\""},
		{name: "unknown key", in: "\n\ntraget = /dev/vdb\n", err: "khib.conf:3: unknown key \"traget\""},
		{name: "twice", in: "codec = s2\ncodec = zstd\n", err: "khib.conf:2: codec is set twice (first on line 1)"},
		{name: "bad codec", in: "codec = lz4\n", err: "khib.conf:1: codec \"lz4\" is none of s2, zstd, none"},
		{name: "encrypt", in: "encrypt = passphrase\n", want: Config{HelperKernel: DefaultHelperKernel, Codec: "s2", Encrypt: "passphrase"}},
		{name: "encrypt no", in: "encrypt = no\n", want: Config{HelperKernel: DefaultHelperKernel, Codec: "s2", Encrypt: "no"}},
		{name: "bad encrypt", in: "encrypt = yes\n", err: "khib.conf:1: encrypt \"yes\" is none of no, passphrase, tpm"},
		{name: "encrypt tpm", in: "encrypt = tpm\n", want: Config{HelperKernel: DefaultHelperKernel, Codec: "s2", Encrypt: "tpm"}},
		{name: "relative kernel", in: "helper_kernel = bzImage\n", err: "khib.conf:1: helper_kernel \"bzImage\" is not an absolute path"},
		{name: "empty target", in: "target =\n", err: "khib.conf:1: target is empty"},
		{name: "bad spec", in: "target = vdb\n", err: "khib.conf:1: target: \"vdb\" is neither"},
		{name: "bad kind", in: "target = ID=3\n", err: "unknown kind ID="},
		{name: "no key", in: " = 3\n", err: "names no key"},
		{name: "control char", in: "target = /dev/vdb\x00\n", err: "control character"},
		{name: "too large", in: strings.Repeat("#\n", MaxSize), err: "larger than 64 KiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse(strings.NewReader(tc.in), "khib.conf")
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				var pe *Error
				if !errors.As(err, &pe) {
					t.Errorf("error %T is not a *config.Error", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if *c != tc.want {
				t.Errorf("got %+v, want %+v", *c, tc.want)
			}
		})
	}
}

func TestWriteLoad(t *testing.T) {
	p := filepath.Join(t.TempDir(), "khib.conf")
	if _, err := Load(p); !errors.Is(err, ErrNoFile) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Load of a missing file: %v, want ErrNoFile and ErrNotExist", err)
	}
	c := &Config{Target: "PARTUUID=1234abcd-03", HelperKernel: "/usr/lib/khib/bzImage", Codec: "zstd"}
	if err := c.Write(p); err != nil {
		t.Fatal(err)
	}
	back, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if *back != *c {
		t.Errorf("round trip: %+v, want %+v", *back, *c)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644", st.Mode().Perm())
	}
	ents, _ := os.ReadDir(filepath.Dir(p))
	if len(ents) != 1 {
		t.Errorf("Write left %d files, want 1", len(ents))
	}
}

func TestParseSpec(t *testing.T) {
	for _, tc := range []struct{ in, kind, val, err string }{
		{"/dev/vdb", KindPath, "/dev/vdb", ""},
		{"/dev//disk/by-id/x/", KindPath, "/dev/disk/by-id/x", ""},
		{"UUID=abc", KindUUID, "abc", ""},
		{"uuid=abc", KindUUID, "abc", ""},
		{"PARTUUID=1234abcd-03", KindPartUUID, "1234abcd-03", ""},
		{"LABEL=my disk", KindLabel, "my disk", ""},
		{"PARTLABEL=khib", KindPartLabel, "khib", ""},
		{"UUID=", "", "", "names no UUID"},
		{"LABEL=a/b", "", "", "cannot contain"},
		{"dev/vdb", "", "", "neither"},
		{"FOO=bar", "", "", "unknown kind"},
	} {
		k, v, err := ParseSpec(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseSpec(%q): %v, want an error with %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || k != tc.kind || v != tc.val {
			t.Errorf("ParseSpec(%q) = %q, %q, %v; want %q, %q", tc.in, k, v, err, tc.kind, tc.val)
		}
	}
}

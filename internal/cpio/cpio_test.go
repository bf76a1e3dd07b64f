package cpio

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"testing"
)

type entry struct {
	name   string
	mode   uint32
	data   string
	rmajor uint32
	rminor uint32
}

// sample builds a small archive with every entry kind the Writer offers.
func sample(t *testing.T) ([]byte, []entry) {
	t.Helper()
	var buf bytes.Buffer
	w := NewWriter(&buf)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(w.Dir("/bin", 0o755))
	must(w.File("bin/hello", 0o755, []byte("#!/bin/sh\necho hi\n")))
	must(w.FileFrom("etc-x", 0o644, strings.NewReader("abcde"), 5))
	must(w.File("empty", 0o600, nil))
	must(w.Symlink("bin/sh", "busybox"))
	must(w.Dir("dev", 0o755))
	must(w.CharDev("dev/console", 0o600, 5, 1))
	must(w.Close())
	want := []entry{
		{"bin", TypeDir | 0o755, "", 0, 0},
		{"bin/hello", TypeReg | 0o755, "#!/bin/sh\necho hi\n", 0, 0},
		{"etc-x", TypeReg | 0o644, "abcde", 0, 0},
		{"empty", TypeReg | 0o600, "", 0, 0},
		{"bin/sh", TypeSymlink | 0o777, "busybox", 0, 0},
		{"dev", TypeDir | 0o755, "", 0, 0},
		{"dev/console", TypeChar | 0o600, "", 5, 1},
	}
	return buf.Bytes(), want
}

func TestRoundTrip(t *testing.T) {
	arch, want := sample(t)
	if len(arch)%512 != 0 {
		t.Errorf("archive is %d bytes, not a multiple of 512", len(arch))
	}
	r := NewReader(bytes.NewReader(arch))
	var lastIno uint32
	for i, e := range want {
		h, err := r.Next()
		if err != nil {
			t.Fatalf("entry %d (%s): %v", i, e.name, err)
		}
		data, err := io.ReadAll(r)
		if err != nil {
			t.Fatalf("entry %d data: %v", i, err)
		}
		if h.Name != e.name || h.Mode != e.mode || string(data) != e.data || h.RdevMajor != e.rmajor || h.RdevMinor != e.rminor {
			t.Errorf("entry %d = %q mode %o data %q rdev %d:%d, want %q mode %o data %q rdev %d:%d",
				i, h.Name, h.Mode, data, h.RdevMajor, h.RdevMinor, e.name, e.mode, e.data, e.rmajor, e.rminor)
		}
		if h.Ino <= lastIno {
			t.Errorf("entry %d: inode %d does not increase past %d", i, h.Ino, lastIno)
		}
		lastIno = h.Ino
		wantLinks := uint32(1)
		if h.IsDir() {
			wantLinks = 2
		}
		if h.Nlink != wantLinks || h.Mtime != 0 || h.UID != 0 || h.GID != 0 {
			t.Errorf("entry %d: nlink %d mtime %d uid %d gid %d", i, h.Nlink, h.Mtime, h.UID, h.GID)
		}
		if h.Offset%4 != 0 {
			t.Errorf("entry %d at unaligned offset %d", i, h.Offset)
		}
	}
	if h, err := r.Next(); err != io.EOF {
		t.Fatalf("after last entry: %v, %v; want io.EOF", h, err)
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("Next after EOF: %v", err)
	}
}

func TestReproducible(t *testing.T) {
	a, _ := sample(t)
	b, _ := sample(t)
	if !bytes.Equal(a, b) {
		t.Error("two archives of the same entries differ")
	}
}

// TestSkipUnreadData checks that Next skips data the caller did not read.
func TestSkipUnreadData(t *testing.T) {
	arch, want := sample(t)
	r := NewReader(bytes.NewReader(arch))
	for _, e := range want {
		h, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if h.Name != e.name {
			t.Fatalf("got %q, want %q", h.Name, e.name)
		}
	}
}

func TestHostCpio(t *testing.T) {
	bin, err := exec.LookPath("cpio")
	if err != nil {
		t.Skip("host has no cpio(1) to compare with: ", err)
	}
	arch, want := sample(t)
	cmd := exec.Command(bin, "-it", "--quiet")
	cmd.Stdin = bytes.NewReader(arch)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio -it: %v: %s", err, stderr.String())
	}
	var names []string
	for _, e := range want {
		names = append(names, e.name)
	}
	got := strings.Fields(string(out))
	if strings.Join(got, " ") != strings.Join(names, " ") {
		t.Errorf("cpio -it lists %q, want %q (stderr %q)", got, names, stderr.String())
	}
	// A verbose listing shows type, mode and device numbers as cpio saw them.
	cmd = exec.Command(bin, "-itv", "--quiet")
	cmd.Stdin = bytes.NewReader(arch)
	out, err = cmd.Output()
	if err != nil {
		t.Fatalf("cpio -itv: %v", err)
	}
	for _, frag := range []string{"crw-------", "5,", "lrwxrwxrwx", "bin/sh -> busybox", "drwxr-xr-x", "-rwxr-xr-x"} {
		if !strings.Contains(string(out), frag) {
			t.Errorf("cpio -itv output lacks %q:\n%s", frag, out)
		}
	}
}

func TestWriterErrors(t *testing.T) {
	w := NewWriter(io.Discard)
	if err := w.File("", 0o644, nil); err == nil {
		t.Error("empty name accepted")
	}
	if err := w.File("a\x00b", 0o644, nil); err == nil {
		t.Error("name with NUL accepted")
	}
	if err := w.FileFrom("short", 0o644, strings.NewReader("abc"), 10); err == nil {
		t.Error("short FileFrom source accepted")
	}
	w = NewWriter(io.Discard)
	if err := w.FileFrom("neg", 0o644, strings.NewReader(""), -1); err == nil {
		t.Error("negative size accepted")
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Dir("late", 0o755); err == nil {
		t.Error("write after Close accepted")
	}
}

type failWriter struct{ after int }

func (f *failWriter) Write(p []byte) (int, error) {
	if f.after <= 0 {
		return 0, errors.New("disk full")
	}
	f.after--
	return len(p), nil
}

func TestWriterSticky(t *testing.T) {
	w := NewWriter(&failWriter{after: 1})
	_ = w.Dir("a", 0o755) // header fits
	if err := w.File("b", 0o644, []byte("x")); err == nil {
		t.Fatal("write error not reported")
	}
	if err := w.Close(); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("Close after failure: %v", err)
	}
}

func header(fields [13]uint32) string {
	var b strings.Builder
	b.WriteString(magicNewc)
	for _, f := range fields {
		fmt.Fprintf(&b, "%08x", f)
	}
	return b.String()
}

func TestReaderMalformed(t *testing.T) {
	valid, _ := sample(t)
	tests := []struct {
		name string
		in   string
		want string
	}{
		{"empty", "", "without a trailer"},
		{"bad magic", "070707" + strings.Repeat("0", 104), "bad magic"},
		{"short header", "0707010000", "reading header"},
		{"non-hex field", magicNewc + "zzzzzzzz" + strings.Repeat("0", 96), "not hex"},
		{"huge name", header([13]uint32{1, TypeReg, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xffffffff, 0}), "name size"},
		{"zero name", header([13]uint32{1, TypeReg, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0}), "name size"},
		{"huge file", header([13]uint32{1, TypeReg, 0, 0, 1, 0, 0xfffffff0, 0, 0, 0, 0, 2, 0}) + "a\x00", "announces"},
		{"unterminated name", header([13]uint32{1, TypeReg, 0, 0, 1, 0, 0, 0, 0, 0, 0, 2, 0}) + "ab", "NUL-terminated"},
		{"truncated name", header([13]uint32{1, TypeReg, 0, 0, 1, 0, 0, 0, 0, 0, 0, 20, 0}) + "ab", "reading name"},
		{"truncated data", header([13]uint32{1, TypeReg, 0, 0, 1, 0, 100, 0, 0, 0, 0, 2, 0}) + "a\x00" + "xyz", "skipping"},
		{"no trailer", string(valid[:len(valid)-512]), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewReader(strings.NewReader(tt.in))
			var err error
			for i := 0; i < 100 && err == nil; i++ {
				_, err = r.Next()
			}
			if err == nil || err == io.EOF && tt.want != "" {
				t.Fatalf("got %v, want error containing %q", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want error containing %q", err, tt.want)
			}
		})
	}
}

func TestReaderShortData(t *testing.T) {
	in := header([13]uint32{1, TypeReg, 0, 0, 1, 0, 100, 0, 0, 0, 0, 2, 0}) + "a\x00" + "xyz"
	r := NewReader(strings.NewReader(in))
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(r); !errors.Is(err, ErrFormat) {
		t.Fatalf("reading truncated data: %v, want ErrFormat", err)
	}
}

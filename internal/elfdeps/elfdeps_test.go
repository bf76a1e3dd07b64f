package elfdeps

import (
	"encoding/binary"
	"errors"
	"os"
	"path"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
)

// hostProgram is a dynamically linked program every Debian machine has.
const hostProgram = "/usr/bin/ls"

func hostBytes(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Skipf("this test reads the host's %s: %v", p, err)
	}
	return b
}

// staticELF is the smallest valid ELF64 x86-64 executable header: no
// program headers, so no interpreter.
func staticELF() []byte {
	b := make([]byte, 64)
	copy(b, "\x7fELF\x02\x01\x01")
	le := binary.LittleEndian
	le.PutUint16(b[16:], 2)  // ET_EXEC
	le.PutUint16(b[18:], 62) // EM_X86_64
	le.PutUint32(b[20:], 1)  // EV_CURRENT
	le.PutUint16(b[52:], 64) // e_ehsize
	le.PutUint16(b[54:], 56) // e_phentsize
	le.PutUint16(b[58:], 64) // e_shentsize
	return b
}

func TestClosureHost(t *testing.T) {
	hostBytes(t, hostProgram)
	got, err := Closure(os.DirFS("/"), hostProgram)
	if err != nil {
		t.Fatal(err)
	}
	if got[0] != hostProgram {
		t.Errorf("first file %s, want the program", got[0])
	}
	if !strings.Contains(path.Base(got[1]), "ld-linux") {
		t.Errorf("second file %s, want the loader", got[1])
	}
	if !slices.ContainsFunc(got, func(p string) bool { return path.Base(p) == "libc.so.6" }) {
		t.Errorf("no libc.so.6 in %v", got)
	}
	seen := map[string]bool{}
	for _, p := range got {
		if seen[p] {
			t.Errorf("%s listed twice", p)
		}
		seen[p] = true
		if _, err := os.Stat(p); err != nil {
			t.Error(err)
		}
	}
	t.Log(got)
}

// TestClosureTree resolves the host program inside a made-up tree, which
// shows that libraries are looked up in fsys and in the default
// directories' order, and that a missing one is an error naming it.
func TestClosureTree(t *testing.T) {
	hostBytes(t, hostProgram)
	real, err := Closure(os.DirFS("/"), hostProgram)
	if err != nil {
		t.Fatal(err)
	}
	full := fstest.MapFS{"opt/prog": {Data: hostBytes(t, hostProgram)}}
	for _, p := range real[1:] {
		// Every library in /usr/lib only, the last default directory.
		dst := p
		if p != real[1] {
			dst = "/usr/lib/" + path.Base(p)
		}
		full[strings.TrimPrefix(dst, "/")] = &fstest.MapFile{Data: hostBytes(t, p)}
	}
	noLibc := fstest.MapFS{}
	for k, v := range full {
		if path.Base(k) != "libc.so.6" {
			noLibc[k] = v
		}
	}
	for _, tc := range []struct {
		name string
		fsys fstest.MapFS
		prog string
		want []string // paths, or nil for an error
		err  string
	}{
		{"all in /usr/lib", full, "/opt/prog", nil, ""},
		{"no libc", noLibc, "/opt/prog", nil, "library libc.so.6 not found"},
		{"missing program", full, "/opt/nothing", nil, "file does not exist"},
		{"not ELF", fstest.MapFS{"bin/sh": {Data: []byte("#!/bin/true\n")}}, "/bin/sh", nil, "not an ELF file"},
		{"static", fstest.MapFS{"bin/s": {Data: staticELF()}}, "bin/s", []string{"/bin/s"}, "statically linked"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Closure(tc.fsys, tc.prog)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Closure = %v, %v; want an error about %q", got, err, tc.err)
				}
				if tc.want != nil && !slices.Equal(got, tc.want) {
					t.Fatalf("Closure = %v, want %v", got, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(real) || got[0] != "/opt/prog" || got[1] != real[1] {
				t.Fatalf("Closure = %v, want the program, %s and %d libraries", got, real[1], len(real)-2)
			}
			for _, p := range got[2:] {
				if path.Dir(p) != "/usr/lib" {
					t.Errorf("%s: want it found in /usr/lib", p)
				}
			}
		})
	}
	if _, err := Closure(fstest.MapFS{"bin/s": {Data: staticELF()}}, "/bin/s"); !errors.Is(err, ErrStatic) {
		t.Errorf("static program: %v, want ErrStatic", err)
	}
}

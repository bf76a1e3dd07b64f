// Package elfdeps finds the files a dynamically linked ELF program needs
// at run time: the program, its interpreter (the dynamic loader) and every
// shared library it loads, transitively. The rig uses it to put a
// host program into a guest's root filesystem, and khib uses it to carry a
// program of A's into the helper's initramfs.
//
// It resolves DT_NEEDED names the way glibc's loader does on a system
// without an ld.so.cache: in the default directories only. DT_RPATH,
// DT_RUNPATH and LD_LIBRARY_PATH are not looked at, which is enough for
// programs from a distribution's packages.
package elfdeps

import (
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
)

// DefaultDirs are the directories searched for a needed library, in
// order: Debian's multiarch directories first, then the classic ones.
var DefaultDirs = []string{
	"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu",
	"/lib64", "/usr/lib64", "/lib", "/usr/lib",
}

// maxFiles bounds the closure, so that a library loop or a hostile tree
// cannot make Closure run away.
const maxFiles = 256

// ErrStatic is returned for a program that needs no loader: it runs as it
// is, and the closure is the program alone.
var ErrStatic = errors.New("statically linked")

// Closure returns the absolute paths of prog, its interpreter and the
// shared libraries it needs, each once, prog first. fsys is the root
// filesystem the paths are relative to (os.DirFS("/") for the running
// system). A statically linked prog gives just prog, and an error wrapping
// ErrStatic.
func Closure(fsys fs.FS, prog string) ([]string, error) {
	prog = path.Clean("/" + prog)
	f, err := open(fsys, prog)
	if err != nil {
		return nil, err
	}
	interp, err := interpreter(f)
	needed, nerr := f.ImportedLibraries()
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", prog, err)
	}
	if nerr != nil {
		return nil, fmt.Errorf("%s: reading its dynamic section: %w", prog, nerr)
	}
	if interp == "" {
		return []string{prog}, fmt.Errorf("%s: %w", prog, ErrStatic)
	}
	out := []string{prog, interp}
	seen := map[string]bool{prog: true, interp: true}
	queue := append([]string(nil), needed...)
	// Libraries ask for the loader by its name too (libc does); the one
	// already loaded as the interpreter answers them.
	byName := map[string]bool{path.Base(interp): true}
	for len(queue) > 0 {
		name := queue[0]
		queue = queue[1:]
		if byName[name] {
			continue
		}
		byName[name] = true
		p, lf, err := find(fsys, name)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", prog, err)
		}
		more, err := lf.ImportedLibraries()
		lf.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: reading its dynamic section: %w", p, err)
		}
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
		if len(out) > maxFiles {
			return nil, fmt.Errorf("%s: needs more than %d files", prog, maxFiles)
		}
		queue = append(queue, more...)
	}
	return out, nil
}

// elfFile is a parsed ELF file that closes what it was read from.
type elfFile struct {
	*elf.File
	c io.Closer
}

func (f *elfFile) Close() error { return f.c.Close() }

// open parses the ELF file at the absolute path p in fsys.
func open(fsys fs.FS, p string) (*elfFile, error) {
	r, err := fsys.Open(strings.TrimPrefix(p, "/"))
	if err != nil {
		return nil, err
	}
	ra, ok := r.(interface {
		io.ReaderAt
	})
	if !ok {
		r.Close()
		return nil, fmt.Errorf("%s: cannot read at offsets", p)
	}
	f, err := elf.NewFile(ra)
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("%s: not an ELF file: %w", p, err)
	}
	return &elfFile{File: f, c: r}, nil
}

// find looks name up in DefaultDirs, skipping files of another machine
// or class (a 32-bit libc in /lib, say).
func find(fsys fs.FS, name string) (string, *elfFile, error) {
	if strings.Contains(name, "/") {
		return "", nil, fmt.Errorf("library %q: paths in DT_NEEDED are not supported", name)
	}
	for _, d := range DefaultDirs {
		p := path.Join(d, name)
		f, err := open(fsys, p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", nil, err
		}
		if f.Machine != elf.EM_X86_64 || f.Class != elf.ELFCLASS64 {
			f.Close()
			continue
		}
		return p, f, nil
	}
	return "", nil, fmt.Errorf("library %s not found in %s", name, strings.Join(DefaultDirs, ", "))
}

// interpreter returns the PT_INTERP path, or "" for a static program.
func interpreter(f *elfFile) (string, error) {
	for _, p := range f.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		if p.Filesz == 0 || p.Filesz > 4096 {
			return "", fmt.Errorf("interpreter path of %d bytes", p.Filesz)
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			return "", fmt.Errorf("reading the interpreter path: %w", err)
		}
		s := strings.TrimRight(string(b), "\x00")
		if !strings.HasPrefix(s, "/") {
			return "", fmt.Errorf("interpreter %q is not an absolute path", s)
		}
		return path.Clean(s), nil
	}
	return "", nil
}

package vm

import (
	"bufio"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/khib/khib/internal/cpio"
	"github.com/khib/khib/internal/elfdeps"
)

// DefaultBusybox is the static busybox the host provides (busybox-static).
const DefaultBusybox = "/bin/busybox"

// Rootfs collects the files of a guest's initramfs and writes them as an
// uncompressed newc cpio archive. Later additions replace earlier ones at
// the same path; parent directories are created as needed.
type Rootfs struct {
	entries map[string]rootEntry
}

type rootEntry struct {
	kind   byte // 'd', 'f' (data), 'h' (host file), 'l', 'c'
	mode   uint32
	data   []byte
	host   string
	target string
	major  uint32
	minor  uint32
}

// NewRootfs returns a rootfs holding the directories every guest expects
// (/proc /sys /dev /tmp /run /mnt /boot /etc /bin /sbin) and /dev/console,
// which the kernel opens for init's stdio before devtmpfs is mounted.
func NewRootfs() *Rootfs {
	r := &Rootfs{entries: map[string]rootEntry{}}
	for _, d := range []string{"proc", "sys", "dev", "run", "mnt", "boot", "etc", "bin", "sbin", "root"} {
		r.AddDir(d, 0o755)
	}
	r.AddDir("tmp", 0o1777)
	r.entries["dev/console"] = rootEntry{kind: 'c', mode: 0o600, major: 5, minor: 1}
	return r
}

func clean(p string) string {
	return strings.TrimPrefix(path.Clean("/"+p), "/")
}

func (r *Rootfs) parents(p string) {
	for d := path.Dir(p); d != "." && d != "/" && d != ""; d = path.Dir(d) {
		if _, ok := r.entries[d]; !ok {
			r.entries[d] = rootEntry{kind: 'd', mode: 0o755}
		}
	}
}

func (r *Rootfs) put(p string, e rootEntry) {
	p = clean(p)
	if p == "" {
		return
	}
	r.parents(p)
	r.entries[p] = e
}

// AddDir adds a directory.
func (r *Rootfs) AddDir(guestPath string, mode uint32) {
	r.put(guestPath, rootEntry{kind: 'd', mode: mode})
}

// AddFile adds a file with the given content.
func (r *Rootfs) AddFile(guestPath string, mode uint32, data []byte) {
	r.put(guestPath, rootEntry{kind: 'f', mode: mode, data: data})
}

// AddSymlink adds a symbolic link.
func (r *Rootfs) AddSymlink(guestPath, target string) {
	r.put(guestPath, rootEntry{kind: 'l', target: target})
}

// AddCharDev adds a character device node.
func (r *Rootfs) AddCharDev(guestPath string, mode, major, minor uint32) {
	r.put(guestPath, rootEntry{kind: 'c', mode: mode, major: major, minor: minor})
}

// SetInit installs script as /init, the program the kernel runs first.
func (r *Rootfs) SetInit(script string) {
	r.AddFile("init", 0o755, []byte(script))
}

// AddHostFile copies the host file hostPath to guestPath, keeping its
// permission bits. The file is read when the archive is written.
func (r *Rootfs) AddHostFile(guestPath, hostPath string) error {
	fi, err := os.Stat(hostPath)
	if err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("rootfs: %s is not a regular file", hostPath)
	}
	r.put(guestPath, rootEntry{kind: 'h', mode: uint32(fi.Mode().Perm()), host: hostPath})
	return nil
}

// AddHostBinary is AddHostFile for executables, and refuses dynamically
// linked ones: the guest has no shared libraries, and such a binary would
// fail there with a baffling "not found".
func (r *Rootfs) AddHostBinary(guestPath, hostPath string) error {
	if err := CheckStatic(hostPath); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	if err := r.AddHostFile(guestPath, hostPath); err != nil {
		return err
	}
	e := r.entries[clean(guestPath)]
	e.mode |= 0o111
	r.entries[clean(guestPath)] = e
	return nil
}

// AddHostProgram copies the host program at hostPath into the guest at
// the same path, with its loader and shared libraries at theirs, so that
// a dynamically linked program runs in the guest as on the host.
func (r *Rootfs) AddHostProgram(hostPath string) error {
	files, err := elfdeps.Closure(os.DirFS("/"), hostPath)
	if err != nil && !errors.Is(err, elfdeps.ErrStatic) {
		return fmt.Errorf("rootfs: %w", err)
	}
	for _, p := range files {
		if err := r.AddHostFile(p, p); err != nil {
			return err
		}
	}
	return nil
}

// CheckStatic fails unless p is an ELF executable without a program
// interpreter, i.e. statically linked.
func CheckStatic(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; the guest has no shared libraries", p)
		}
	}
	return nil
}

// AddBusybox adds the static busybox at /bin/busybox and a symlink in /bin
// for each applet it lists. hostPath "" means DefaultBusybox. Files already
// present at an applet's path are kept.
func (r *Rootfs) AddBusybox(hostPath string) error {
	if hostPath == "" {
		hostPath = DefaultBusybox
	}
	if err := r.AddHostBinary("bin/busybox", hostPath); err != nil {
		return err
	}
	out, err := exec.Command(hostPath, "--list").Output()
	if err != nil {
		return fmt.Errorf("rootfs: %s --list: %w", hostPath, err)
	}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	n := 0
	for sc.Scan() {
		name := strings.TrimSpace(sc.Text())
		if name == "" || strings.Contains(name, "/") || name == "busybox" {
			continue
		}
		p := "bin/" + name
		if _, ok := r.entries[p]; ok {
			continue
		}
		r.entries[p] = rootEntry{kind: 'l', target: "busybox"}
		n++
	}
	if n == 0 {
		return fmt.Errorf("rootfs: %s --list named no applets", hostPath)
	}
	return nil
}

// Has reports whether guestPath is in the rootfs.
func (r *Rootfs) Has(guestPath string) bool {
	_, ok := r.entries[clean(guestPath)]
	return ok
}

// WriteTo writes the archive to w. Entries come sorted by path, so every
// directory precedes its contents and the same rootfs always gives the same
// bytes.
func (r *Rootfs) WriteTo(w io.Writer) (int64, error) {
	if _, ok := r.entries["init"]; !ok {
		return 0, errors.New("rootfs: no /init; the kernel would have nothing to run")
	}
	cw := &countingWriter{w: w}
	cp := cpio.NewWriter(cw)
	names := make([]string, 0, len(r.entries))
	for p := range r.entries {
		names = append(names, p)
	}
	sort.Strings(names)
	for _, p := range names {
		e := r.entries[p]
		var err error
		switch e.kind {
		case 'd':
			err = cp.Dir(p, e.mode)
		case 'f':
			err = cp.File(p, e.mode, e.data)
		case 'l':
			err = cp.Symlink(p, e.target)
		case 'c':
			err = cp.CharDev(p, e.mode, e.major, e.minor)
		case 'h':
			err = writeHost(cp, p, e)
		}
		if err != nil {
			return cw.n, fmt.Errorf("rootfs: /%s: %w", p, err)
		}
	}
	if err := cp.Close(); err != nil {
		return cw.n, fmt.Errorf("rootfs: %w", err)
	}
	return cw.n, nil
}

func writeHost(cp *cpio.Writer, p string, e rootEntry) error {
	f, err := os.Open(e.host)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	return cp.FileFrom(p, e.mode, f, fi.Size())
}

// WriteFile writes the archive to the file p (created or truncated).
func (r *Rootfs) WriteFile(p string) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	f, err := os.Create(p)
	if err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	_, err = r.WriteTo(bw)
	if err == nil {
		err = bw.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(p)
		return fmt.Errorf("writing %s: %w", p, err)
	}
	return nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

package store

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/khib/khib/internal/config"
	"github.com/khib/khib/internal/target"
)

// DirFSTypes are the filesystems a dir: target may be on: those the
// helper kernel has (kernel/config-fragment), and FUSE.
var DirFSTypes = []string{"vfat", "ext4"}

// vfatMaxFile is FAT's largest file.
const vfatMaxFile = 1<<32 - 1

// dirStore is an image as a plain file on a filesystem that this kernel
// mounts itself (a helper, or stage 1): a USB stick, a second disk, or a
// FUSE program's filesystem.
type dirStore struct {
	*os.File
	spec       target.Spec
	mnt        string
	size       int64
	fuse       *exec.Cmd // the FUSE program, if this kernel runs one
	fuseExited chan error
	name       string
	fstyp      string
	closed     bool
}

func (d *dirStore) Size() int64      { return d.size }
func (d *dirStore) Name() string     { return d.name }
func (d *dirStore) Device() *os.File { return nil }
func (d *dirStore) Spent() error     { return nil }
func (d *dirStore) Kind() string     { return "dir" }
func (d *dirStore) Sync() error      { return d.File.Sync() }

// Close closes the file and unmounts the filesystem; a FUSE program
// exits once its filesystem is unmounted. A second Close does nothing.
func (d *dirStore) Close() error {
	if d.closed {
		return nil
	}
	d.closed = true
	err := d.File.Close()
	unix.Sync()
	if uerr := unmount(d.mnt); uerr != nil && err == nil {
		err = uerr
	}
	if d.fuse != nil {
		select {
		case <-d.fuseExited:
		case <-time.After(5 * time.Second):
			d.fuse.Process.Kill()
			<-d.fuseExited
		}
	}
	return err
}

func unmount(mnt string) error {
	var err error
	for i := 0; i < 20; i++ {
		if err = unix.Unmount(mnt, 0); err == nil || errors.Is(err, unix.EINVAL) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("unmounting %s: %w", mnt, err)
}

// OpenDir mounts the filesystem of a dir: target at mnt (read-only unless
// create or writable) and opens its file. With create the file is made
// (and its directories) or truncated, and Size is how much the image may
// take: the free space, and on vfat at most 4 GiB - 1.
func OpenDir(sp target.Spec, mnt string, writable, create bool) (Store, error) {
	if err := os.MkdirAll(mnt, 0o700); err != nil {
		return nil, fmt.Errorf("dir target: %w", err)
	}
	d := &dirStore{spec: sp, mnt: mnt}
	if prog, args, ok := sp.FUSE(); ok {
		if err := d.startFUSE(prog, args); err != nil {
			return nil, err
		}
		d.fstyp = "fuse"
		d.name = fmt.Sprintf("%s in the FUSE filesystem of %s", sp.Path, filepath.Base(prog))
	} else {
		dev, err := config.Resolve("/", sp.Value)
		if err != nil {
			return nil, fmt.Errorf("dir target %s: %w", sp.Value, err)
		}
		f, err := os.Open(dev)
		if err != nil {
			return nil, fmt.Errorf("dir target: %w", err)
		}
		fs, err := config.ProbeFS(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("dir target %s (%s): no filesystem khib knows: %w", sp.Value, dev, err)
		}
		if !contains(DirFSTypes, fs.Type) {
			return nil, fmt.Errorf("dir target %s (%s) holds %s; the helper kernel mounts %s", sp.Value, dev, fs.Type, strings.Join(DirFSTypes, " and "))
		}
		flags := uintptr(unix.MS_NOATIME)
		opts := ""
		if !writable && !create {
			flags |= unix.MS_RDONLY
			if fs.Type == "ext4" {
				opts = "noload" // no journal replay: a read-only look writes nothing
			}
		}
		if err := unix.Mount(dev, mnt, fs.Type, flags, opts); err != nil {
			return nil, fmt.Errorf("dir target: mounting %s (%s) on %s: %w", dev, fs.Type, mnt, err)
		}
		d.fstyp = fs.Type
		d.name = fmt.Sprintf("%s on %s (%s)", sp.Path, dev, fs.Type)
	}
	if err := d.openFile(writable, create); err != nil {
		d.abort()
		return nil, err
	}
	return d, nil
}

func (d *dirStore) abort() {
	unmount(d.mnt)
	if d.fuse != nil {
		d.fuse.Process.Kill()
		<-d.fuseExited
	}
}

func (d *dirStore) openFile(writable, create bool) error {
	p := filepath.Join(d.mnt, d.spec.Path)
	var err error
	switch {
	case create:
		if err = os.MkdirAll(filepath.Dir(p), 0o700); err == nil {
			d.File, err = os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
		}
	case writable:
		d.File, err = os.OpenFile(p, os.O_RDWR, 0)
	default:
		d.File, err = os.Open(p)
	}
	if err != nil {
		return fmt.Errorf("dir target %s: %w", d.name, err)
	}
	st, err := d.File.Stat()
	if err != nil {
		d.File.Close()
		return fmt.Errorf("dir target %s: %w", d.name, err)
	}
	d.size = st.Size()
	if create {
		var sfs unix.Statfs_t
		if err := unix.Fstatfs(int(d.File.Fd()), &sfs); err != nil {
			d.File.Close()
			return fmt.Errorf("dir target %s: %w", d.name, err)
		}
		d.size = int64(sfs.Bavail) * int64(sfs.Bsize)
		if d.fstyp == "vfat" {
			d.size = min(d.size, vfatMaxFile&^(4096-1))
		}
	}
	return nil
}

// startFUSE runs prog [args...] mnt and waits until a FUSE filesystem is
// mounted at mnt. The program may stay in the foreground or daemonize.
func (d *dirStore) startFUSE(prog string, args []string) error {
	cmd := exec.Command(prog, append(append([]string(nil), args...), d.mnt)...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("dir target: starting the FUSE program %s: %w", prog, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if fuseMounted(d.mnt) {
			d.fuse, d.fuseExited = cmd, exited
			return nil
		}
		select {
		case err := <-exited:
			if fuseMounted(d.mnt) {
				return nil // it daemonized after mounting
			}
			return fmt.Errorf("dir target: the FUSE program %s exited before mounting on %s: %v", prog, d.mnt, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	cmd.Process.Kill()
	return fmt.Errorf("dir target: the FUSE program %s did not mount a filesystem on %s within 20 s", prog, d.mnt)
}

// fuseMounted reports whether /proc/self/mountinfo lists a fuse
// filesystem at mnt.
func fuseMounted(mnt string) bool {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fl := strings.Fields(s.Text())
		for i, x := range fl {
			if x == "-" && i+1 < len(fl) && len(fl) > 4 && fl[4] == mnt && strings.HasPrefix(fl[i+1], "fuse") {
				return true
			}
		}
	}
	return false
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

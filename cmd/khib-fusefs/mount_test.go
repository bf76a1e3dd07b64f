package main

import (
	"bufio"
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The test binary doubles as khib-fusefs for the mount tests, which run
// it as a separate process the way the helper kernel runs the program.
const mainEnv = "KHIB_FUSEFS_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(mainEnv) == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// canMount skips the test unless this process can mount FUSE itself.
func canMount(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("mount tests are skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("mount tests need root (khib-fusefs mounts with mount(2), as in the helper kernel)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("mount tests need /dev/fuse: %v", err)
	}
}

// server is a running khib-fusefs --store.
type server struct {
	t      *testing.T
	cmd    *exec.Cmd
	mnt    string
	log    *bytes.Buffer
	exited chan error
}

func startServer(t *testing.T, dev, mnt string) *server {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, mnt: mnt, log: &bytes.Buffer{}, exited: make(chan error, 1)}
	s.cmd = exec.Command(exe, "--store", dev, mnt)
	s.cmd.Env = append(os.Environ(), mainEnv+"=1")
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.exited <- s.cmd.Wait() }()
	t.Cleanup(func() {
		select {
		case <-s.exited:
		default:
			unix.Unmount(mnt, unix.MNT_DETACH)
			s.cmd.Process.Kill()
			<-s.exited
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for !fuseMountedAt(mnt) {
		select {
		case err := <-s.exited:
			s.exited <- err
			if strings.Contains(s.log.String(), "operation not permitted") {
				t.Skipf("this host does not let the test mount FUSE: %s", s.log)
			}
			t.Fatalf("khib-fusefs exited before mounting: %v\n%s", err, s.log)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no FUSE mount at %s after 20 s\n%s", mnt, s.log)
		}
	}
	return s
}

// fuseMountedAt is the helper kernel's test: a fuse* filesystem at mnt in
// /proc/self/mountinfo.
func fuseMountedAt(mnt string) bool {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		for i, x := range fl {
			if x == "-" && i+1 < len(fl) && len(fl) > 4 && fl[4] == mnt && strings.HasPrefix(fl[i+1], "fuse") {
				return true
			}
		}
	}
	return false
}

// stop unmounts the filesystem as the helper does and checks that the
// server exits with status 0 within 5 s.
func (s *server) stop() {
	s.t.Helper()
	if err := unix.Unmount(s.mnt, 0); err != nil {
		s.t.Fatalf("umount %s: %v\n%s", s.mnt, err, s.log)
	}
	s.wait()
}

func (s *server) wait() {
	s.t.Helper()
	select {
	case err := <-s.exited:
		s.exited <- err
		if err != nil {
			s.t.Fatalf("khib-fusefs: %v\n%s", err, s.log)
		}
	case <-time.After(5 * time.Second):
		s.t.Fatalf("khib-fusefs did not exit within 5 s of the unmount\n%s", s.log)
	}
	if fuseMountedAt(s.mnt) {
		s.t.Fatalf("%s is still mounted", s.mnt)
	}
}

func formatImage(t *testing.T, size int64) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "dev.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if code := run([]string{"--format", img}, &out, &out); code != 0 {
		t.Fatalf("--format: %d\n%s", code, &out)
	}
	return img
}

func pwriteAll(t *testing.T, fd int, p []byte, off int64) {
	t.Helper()
	for len(p) > 0 {
		n, err := unix.Pwrite(fd, p, off)
		if err != nil {
			t.Fatalf("pwrite at %d: %v", off, err)
		}
		p, off = p[n:], off+int64(n)
	}
}

// TestMountLikeHelper does what khib's helper kernels do with a dir:fuse:
// target: one boot creates and writes the image and unmounts, the next
// mounts again, reads it at random offsets, rewrites its first page and
// unmounts. The device must then hold exactly that.
func TestMountLikeHelper(t *testing.T) {
	canMount(t)
	const devSize = 96 * mib
	img := formatImage(t, devSize)
	mnt := t.TempDir()
	path := filepath.Join(mnt, "khib.img")

	// Boot 1: save.
	s := startServer(t, img, mnt)
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		t.Fatal(err)
	}
	avail := int64(sfs.Bavail) * int64(sfs.Bsize)
	if want := int64(devSize - dataStart); avail != want {
		t.Fatalf("statfs says %d bytes available, want %d", avail, want)
	}
	want := randBytes(11, 70*mib+777)
	chunks := []int{mib, 4096, 300 * 1024, 2 * mib, 12345}
	for off, i := 0, 0; off < len(want); i++ {
		n := min(chunks[i%len(chunks)], len(want)-off)
		pwriteAll(t, fd, want[off:off+n], int64(off))
		off += n
	}
	page := randBytes(12, 4096)
	pwriteAll(t, fd, page, 0)
	copy(want, page)
	if err := unix.Fsync(fd); err != nil {
		t.Fatal(err)
	}
	if err := unix.Close(fd); err != nil {
		t.Fatal(err)
	}
	s.stop()

	// Boot 2: resume.
	s = startServer(t, img, mnt)
	fd, err = unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != int64(len(want)) {
		t.Fatalf("size %d after the reboot, want %d", st.Size, len(want))
	}
	r := rand.New(rand.NewPCG(5, 5))
	buf := make([]byte, 3*mib)
	for range 300 {
		off := r.Int64N(int64(len(want)) + 100)
		b := buf[:r.IntN(len(buf))+1]
		n, err := unix.Pread(fd, b, off)
		wantN := max(min(int64(len(b)), int64(len(want))-off), 0)
		if err != nil || int64(n) != wantN || !bytes.Equal(b[:n], want[min(off, int64(len(want))):min(off, int64(len(want)))+int64(n)]) {
			t.Fatalf("pread(%d bytes at %d) = %d, %v; want %d bytes of the image", len(b), off, n, err, wantN)
		}
	}
	page = randBytes(13, 4096)
	pwriteAll(t, fd, page, 0)
	copy(want, page)
	if err := unix.Fsync(fd); err != nil {
		t.Fatal(err)
	}
	if err := unix.Close(fd); err != nil {
		t.Fatal(err)
	}
	s.stop()

	// The device, read without FUSE.
	dev, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	store, err := openStore(dev, devSize)
	if err != nil {
		t.Fatal(err)
	}
	f := store.lookup("khib.img")
	if f == nil {
		t.Fatal("no khib.img on the device")
	}
	got := make([]byte, len(want)+1)
	if n, _ := store.readAt(f, got, 0); n != len(want) || !bytes.Equal(got[:n], want) {
		t.Fatalf("the device holds %d bytes that differ from what was written", n)
	}
}

// TestMountOperations checks the other file operations through the kernel,
// and SIGTERM.
func TestMountOperations(t *testing.T) {
	canMount(t)
	const devSize = 4 * mib
	img := formatImage(t, devSize)
	mnt := t.TempDir()
	s := startServer(t, img, mnt)
	p := func(name string) string { return filepath.Join(mnt, name) }

	if err := os.Mkdir(p("dir"), 0o755); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("mkdir: %v, want EPERM", err)
	}
	if err := os.Symlink("a", p("link")); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("symlink: %v, want EPERM", err)
	}
	if err := os.WriteFile(p(strings.Repeat("n", maxNameLen+1)), nil, 0o600); !errors.Is(err, syscall.ENAMETOOLONG) {
		t.Fatalf("a long name: %v, want ENAMETOOLONG", err)
	}

	// Fill a file to its region's end; one byte more is ENOSPC.
	f, err := os.OpenFile(p("big"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	capacity := int64(devSize - dataStart)
	data := randBytes(21, int(capacity))
	if n, err := f.WriteAt(data, 0); err != nil || n != len(data) {
		t.Fatalf("filling the device: %d, %v", n, err)
	}
	if _, err := f.WriteAt([]byte{1}, capacity); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write past the device: %v, want ENOSPC", err)
	}
	if _, err := os.Create(p("other")); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("create on a full device: %v, want ENOSPC", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	// Reads past the end.
	f, err = os.Open(p("big"))
	if err != nil {
		t.Fatal(err)
	}
	if n, err := f.ReadAt(make([]byte, 10), capacity); n != 0 || err == nil {
		t.Fatalf("read at the end: %d, %v; want EOF", n, err)
	}
	f.Close()

	// O_TRUNC, then regrow; stat; another file splits the free space.
	if err := os.WriteFile(p("big"), []byte("small now"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p("second"), []byte("two"), 0o640); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p("second"))
	if err != nil || fi.Size() != 3 || fi.Mode().Perm() != 0o640 || !fi.Mode().IsRegular() {
		t.Fatalf("stat second: %v, %v", fi, err)
	}
	// statfs on a file: how much that file can still hold; on the
	// directory: the most any file can.
	var onFile, onDir unix.Statfs_t
	if err := unix.Statfs(p("second"), &onFile); err != nil {
		t.Fatal(err)
	}
	if err := unix.Statfs(mnt, &onDir); err != nil {
		t.Fatal(err)
	}
	if onFile.Bavail == 0 || onFile.Bavail >= onDir.Bavail || onDir.Bavail > onDir.Bfree || onDir.Blocks != (devSize-dataStart)/blockSize {
		t.Fatalf("statfs: file avail %d, directory avail %d free %d blocks %d", onFile.Bavail, onDir.Bavail, onDir.Bfree, onDir.Blocks)
	}
	if err := os.Rename(p("second"), p("third")); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(mnt)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != "big third" {
		t.Fatalf("directory holds %v", names)
	}
	if err := os.Remove(p("big")); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p("third"), 10000); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(p("third")); err != nil || !bytes.Equal(b, append([]byte("two"), make([]byte, 10000-3)...)) {
		t.Fatalf("third after truncate: %d bytes, %v", len(b), err)
	}

	// SIGTERM unmounts, and the state reaches the device.
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	s.wait()
	var out bytes.Buffer
	if code := run([]string{"--list", img}, &out, &out); code != 0 || !strings.HasPrefix(out.String(), "third\t10000\t") || strings.Count(out.String(), "\n") != 1 {
		t.Fatalf("--list after SIGTERM: %d\n%s", code, &out)
	}
}

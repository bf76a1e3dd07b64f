package vm

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/khib/khib/internal/cpio"
)

func readArchive(t *testing.T, b []byte) (map[string]*cpio.Header, map[string]string, []string) {
	t.Helper()
	hdrs := map[string]*cpio.Header{}
	data := map[string]string{}
	var order []string
	r := cpio.NewReader(bytes.NewReader(b))
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		d, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		hdrs[h.Name] = h
		data[h.Name] = string(d)
		order = append(order, h.Name)
	}
	return hdrs, data, order
}

func TestRootfs(t *testing.T) {
	if _, err := os.Stat(DefaultBusybox); err != nil {
		t.Skip("no static busybox on this host: ", err)
	}
	dir := t.TempDir()
	host := filepath.Join(dir, "tool")
	if err := os.WriteFile(host, []byte("data"), 0o640); err != nil {
		t.Fatal(err)
	}
	r := NewRootfs()
	r.AddFile("bin/sh", 0o755, []byte("mine")) // explicit files win over applets
	if err := r.AddBusybox(""); err != nil {
		t.Fatal(err)
	}
	if err := r.AddHostFile("/usr/share/khib/tool", host); err != nil {
		t.Fatal(err)
	}
	r.AddFile("/etc/hostname", 0o644, []byte("guest\n"))
	r.SetInit("#!/bin/sh\necho hi\n")
	var buf bytes.Buffer
	n, err := r.WriteTo(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(buf.Len()) {
		t.Errorf("WriteTo says %d bytes, wrote %d", n, buf.Len())
	}
	hdrs, data, order := readArchive(t, buf.Bytes())
	for _, d := range []string{"proc", "sys", "dev", "tmp", "run", "mnt", "boot", "etc", "bin", "usr", "usr/share", "usr/share/khib"} {
		if h := hdrs[d]; h == nil || !h.IsDir() {
			t.Errorf("no directory /%s", d)
		}
	}
	if h := hdrs["dev/console"]; h == nil || !h.IsCharDev() || h.RdevMajor != 5 || h.RdevMinor != 1 {
		t.Errorf("/dev/console: %+v", h)
	}
	if h := hdrs["bin/mount"]; h == nil || !h.IsSymlink() || data["bin/mount"] != "busybox" {
		t.Errorf("/bin/mount: %+v %q", h, data["bin/mount"])
	}
	if data["bin/sh"] != "mine" {
		t.Errorf("/bin/sh replaced by an applet link")
	}
	if h := hdrs["bin/busybox"]; h == nil || h.Mode&0o111 == 0 || h.Size < 100000 {
		t.Errorf("/bin/busybox: %+v", h)
	}
	if h := hdrs["usr/share/khib/tool"]; h == nil || h.Mode&0o777 != 0o640 || data["usr/share/khib/tool"] != "data" {
		t.Errorf("host file: %+v %q", h, data["usr/share/khib/tool"])
	}
	if h := hdrs["init"]; h == nil || h.Mode&0o111 == 0 {
		t.Errorf("/init: %+v", h)
	}
	seen := map[string]bool{}
	for _, p := range order {
		if d := filepath.Dir(p); d != "." && !seen[d] {
			t.Errorf("%s comes before its directory %s", p, d)
		}
		seen[p] = true
	}
	var again bytes.Buffer
	if _, err := r.WriteTo(&again); err != nil || !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Errorf("second write differs (%v)", err)
	}
}

func TestRootfsErrors(t *testing.T) {
	r := NewRootfs()
	if _, err := r.WriteTo(io.Discard); err == nil || !strings.Contains(err.Error(), "/init") {
		t.Errorf("rootfs without /init: %v", err)
	}
	if err := r.AddHostFile("x", "/nonexistent"); err == nil {
		t.Error("missing host file accepted")
	}
	dir := t.TempDir()
	if err := r.AddHostFile("x", dir); err == nil {
		t.Error("directory accepted as a host file")
	}
	// A dynamically linked binary would fail in the guest.
	if _, err := os.Stat("/bin/ls"); err == nil {
		if err := CheckStatic("/bin/ls"); err == nil {
			t.Error("/bin/ls passed as static")
		}
	}
	if err := CheckStatic("/etc/hostname"); err == nil {
		t.Error("a text file passed as a static binary")
	}
	if _, err := os.Stat(DefaultBusybox); err == nil {
		if err := CheckStatic(DefaultBusybox); err != nil {
			t.Error(err)
		}
	}
}

func TestRootfsWriteFile(t *testing.T) {
	r := NewRootfs()
	r.SetInit("#!/bin/sh\n")
	p := filepath.Join(t.TempDir(), "a", "initrd.cpio")
	if err := r.WriteFile(p); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(b)%512 != 0 {
		t.Errorf("archive of %d bytes", len(b))
	}
	if _, data, _ := readArchive(t, b); data["init"] != "#!/bin/sh\n" {
		t.Errorf("init %q", data["init"])
	}
}

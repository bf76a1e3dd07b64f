package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/khib/khib/internal/config"
)

func TestStage1Spec(t *testing.T) {
	cfg := &config.Config{Target: "PARTUUID=1234abcd-03"}
	for _, tc := range []struct {
		name    string
		cmdline string
		cfg     *config.Config
		spec    string
		skip    string
	}{
		{"config", "root=/dev/sda1 quiet", cfg, "PARTUUID=1234abcd-03", ""},
		{"cmdline wins", "khib.resume=/dev/vdb", cfg, "/dev/vdb", ""},
		{"cmdline spec", "khib.resume=PARTUUID=aa-01", nil, "PARTUUID=aa-01", ""},
		{"off", "khib.resume=off", cfg, "", "khib.resume=off"},
		{"noresume", "noresume khib.resume=/dev/vdb", cfg, "", "noresume"},
		{"empty value falls back", "khib.resume=", cfg, "PARTUUID=1234abcd-03", ""},
		{"nothing", "quiet", nil, "", "no target"},
		{"config without target", "", &config.Config{}, "", "no target"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			params := map[string]string{}
			for _, w := range strings.Fields(tc.cmdline) {
				k, v, _ := strings.Cut(w, "=")
				params[k] = v
			}
			spec, skip := stage1Spec(params, tc.cfg, "/etc/khib.conf")
			if spec != tc.spec || !strings.Contains(skip, tc.skip) || (tc.skip == "") != (skip == "") {
				t.Errorf("stage1Spec = %q, %q; want %q, %q", spec, skip, tc.spec, tc.skip)
			}
		})
	}
}

func TestRootFSType(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ mountinfo, want string }{
		{"1 1 0:2 / / rw - rootfs rootfs rw\n18 1 0:17 / /sys rw,nosuid shared:7 - sysfs sysfs rw\n", "rootfs"},
		{"1 1 0:2 / / rw - rootfs rootfs rw\n25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n", "ext4"},
		{"25 1 8:1 / /mnt rw - ext4 /dev/sda1 rw\n", ""},
	} {
		p := filepath.Join(dir, "mountinfo")
		os.WriteFile(p, []byte(tc.mountinfo), 0o644)
		got, err := rootFSType(p)
		if got != tc.want || (tc.want == "") != (err != nil) {
			t.Errorf("rootFSType(%q) = %q, %v; want %q", tc.mountinfo, got, err, tc.want)
		}
	}
	root := t.TempDir() + "/"
	if !initramfsRoot("rootfs", root) || initramfsRoot("ext4", root) || initramfsRoot("tmpfs", root) {
		t.Error("initramfsRoot: rootfs must pass, ext4 and a tmpfs without /scripts/local must not")
	}
	os.MkdirAll(root+"scripts/local", 0o755)
	if !initramfsRoot("tmpfs", root) {
		t.Error("initramfsRoot: a tmpfs with initramfs-tools' /scripts/local must pass")
	}
}

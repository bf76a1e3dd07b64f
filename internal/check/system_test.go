package check

import (
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/khib/khib/internal/cpio"
)

// newc returns a newc archive of the named files.
func newc(t *testing.T, names ...string) []byte {
	t.Helper()
	var b bytes.Buffer
	w := cpio.NewWriter(&b)
	for _, n := range names {
		if err := w.File(n, 0o644, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func gzipped(t *testing.T, b []byte) []byte {
	var out bytes.Buffer
	w := gzip.NewWriter(&out)
	w.Write(b)
	w.Close()
	return out.Bytes()
}

func zstded(t *testing.T, b []byte) []byte {
	w, _ := zstd.NewWriter(nil)
	return w.EncodeAll(b, nil)
}

// initrd is an early-microcode archive, NUL padding, then the main one.
func initrd(t *testing.T, compress func(*testing.T, []byte) []byte, names ...string) []byte {
	early := newc(t, "kernel/x86/microcode/GenuineIntel.bin")
	early = append(early, make([]byte, 512-len(early)%512)...)
	return append(early, compress(t, newc(t, names...))...)
}

func TestListInitramfs(t *testing.T) {
	dir := t.TempDir()
	for name, img := range map[string][]byte{
		"gzip": initrd(t, gzipped, "usr/sbin/khib", "etc/khib.conf"),
		"zstd": initrd(t, zstded, "usr/sbin/khib", "etc/khib.conf"),
		"none": newc(t, "usr/sbin/khib", "etc/khib.conf"),
	} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, img, 0o644)
		got, err := ListInitramfs(p)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !strings.Contains(strings.Join(got, " "), "usr/sbin/khib etc/khib.conf") {
			t.Errorf("%s: names %v", name, got)
		}
	}
	p := filepath.Join(dir, "xz")
	os.WriteFile(p, []byte("\xfd7zXZ\x00rest"), 0o644)
	if _, err := ListInitramfs(p); err == nil || !strings.Contains(err.Error(), "unsupported") {
		t.Errorf("xz: %v, want ErrCompression", err)
	}
	p = filepath.Join(dir, "truncated")
	img := initrd(t, gzipped, "usr/sbin/khib")
	os.WriteFile(p, img[:len(img)-12], 0o644)
	if _, err := ListInitramfs(p); err == nil {
		t.Error("a truncated initramfs lists without error")
	}
}

// sysMachine is a fake installed system: file path -> content; a content
// starting with "->" makes a symlink.
type sysMachine map[string]string

func (m sysMachine) build(t *testing.T) string {
	root := t.TempDir()
	for p, c := range m {
		full := filepath.Join(root, p)
		os.MkdirAll(filepath.Dir(full), 0o755)
		if target, ok := strings.CutPrefix(c, "->"); ok {
			os.Symlink(target, full)
			continue
		}
		os.WriteFile(full, []byte(c), 0o644)
	}
	return root
}

func goodSystem(t *testing.T) sysMachine {
	return sysMachine{
		"var/lib/dpkg/info/khib.list":                                  "/usr/sbin/khib\n",
		"usr/lib/khib/bzImage":                                         "kernel",
		"usr/share/initramfs-tools/hook-functions":                     "",
		"usr/share/initramfs-tools/hooks/khib":                         "",
		"boot/initrd.img-6.12.118-khib":                                string(initrd(t, zstded, "usr/sbin/khib", "usr/lib/khib/bzImage", "etc/khib.conf")),
		"etc/default/grub":                                             "",
		"etc/default/grub.d/khib.cfg":                                  "",
		"boot/grub/grub.cfg":                                           "menuentry 'Debian' {\n\tlinux\t/boot/vmlinuz-6.12.118-khib root=UUID=x ro quiet crashkernel=256M\n}\n",
		"run/systemd/system/.keep":                                     "",
		"etc/systemd/system/multi-user.target.wants/khib-arm.service":  "->/usr/lib/systemd/system/khib-arm.service",
		"usr/lib/systemd/system/khib-arm.service":                      "",
		"usr/lib/systemd/system/systemd-hibernate.service.d/khib.conf": "[Service]\nExecStart=\nExecStart=/usr/sbin/khib hibernate --systemd\n",
		"sys/power/state":                                              "freeze mem disk\n",
		"sys/power/disk":                                               "[platform] shutdown reboot suspend test_resume\n",
		"etc/khib.conf":                                                "target = /dev/disk/by-partuuid/1234abcd-03\n",
		"dev/sda3":                                                     "",
		"dev/disk/by-partuuid/1234abcd-03":                             "->../../sda3",
	}
}

func TestSystem(t *testing.T) {
	for _, tc := range []struct {
		name    string
		change  sysMachine // "" deletes a path
		fail    string     // the one failing check, with its fix containing fixHas
		fixHas  string
		skipped string // checks expected to be skipped, comma-separated
	}{
		{name: "good"},
		{name: "grub not applied", change: sysMachine{"boot/grub/grub.cfg": "linux /vmlinuz ro quiet\n"}, fail: NameGrub, fixHas: "update-grub"},
		{name: "grub set elsewhere", change: sysMachine{"etc/default/grub.d/khib.cfg": ""}},
		{name: "no grub", change: sysMachine{"etc/default/grub": "", "boot/grub/grub.cfg": "", "etc/default/grub.d/khib.cfg": ""}, skipped: NameGrub},
		{name: "initramfs without khib", change: sysMachine{"boot/initrd.img-6.12.118-khib": string(initrd(t, gzipped, "usr/bin/sh"))}, fail: NameInitramfs, fixHas: "update-initramfs -u -k 6.12.118-khib"},
		{name: "no initramfs", change: sysMachine{"boot/initrd.img-6.12.118-khib": ""}, fail: NameInitramfs, fixHas: "update-initramfs -c"},
		{name: "no initramfs-tools", change: sysMachine{"usr/share/initramfs-tools/hook-functions": ""}, skipped: NameInitramfs},
		{name: "arm disabled", change: sysMachine{"etc/systemd/system/multi-user.target.wants/khib-arm.service": ""}, fail: NameArm, fixHas: "systemctl enable --now"},
		{name: "sleep unit plain", change: sysMachine{"usr/lib/systemd/system/systemd-hibernate.service.d/khib.conf": ""}, fail: NameSleepUnit, fixHas: "daemon-reload"},
		{name: "nohibernate", change: sysMachine{"sys/power/state": "freeze mem\n"}, fail: NameLogind, fixHas: "nohibernate"},
		{name: "no systemd", change: sysMachine{"run/systemd/system/.keep": ""}, skipped: NameArm + "," + NameSleepUnit + "," + NameLogind},
		{name: "no config", change: sysMachine{"etc/khib.conf": ""}, fail: NameConfig, fixHas: "khib configure --target"},
		{name: "bad config", change: sysMachine{"etc/khib.conf": "target = /dev/sda3\ncodec = lz4\n"}, fail: NameConfig, fixHas: "fix that line"},
		{name: "uuid target", change: sysMachine{"etc/khib.conf": "target = UUID=0b8e2b52-1f7a-4b7e-9c59-2e4d3c0a9f11\n"}, fail: NameConfig, fixHas: "PARTUUID"},
		{name: "missing target", change: sysMachine{"etc/khib.conf": "target = /dev/sdq\n"}, fail: NameConfig, fixHas: "exists"},
		{name: "no helper kernel", change: sysMachine{"usr/lib/khib/bzImage": "", "etc/khib.conf": "target = /dev/sda3\nhelper_kernel = /boot/nothing\n"}, fail: NameConfig + "," + NameInitramfs, fixHas: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := goodSystem(t)
			for p, c := range tc.change {
				if c == "" {
					delete(m, p)
				} else {
					m[p] = c
				}
			}
			got := System(SysEnv{Root: m.build(t), Release: "6.12.118-khib"})
			if len(got) != 6 {
				t.Fatalf("%d verdicts, want 6: %+v", len(got), got)
			}
			skip := map[string]bool{}
			for _, n := range strings.Split(tc.skipped, ",") {
				skip[n] = n != ""
			}
			for _, v := range got {
				if v.Detail == "" {
					t.Errorf("%s has no detail", v.Name)
				}
				if v.Skipped != skip[v.Name] || (v.Skipped && !v.OK) {
					t.Errorf("%s: skipped=%v ok=%v (%s), want skipped=%v", v.Name, v.Skipped, v.OK, v.Detail, skip[v.Name])
				}
				wantOK := !strings.Contains(","+tc.fail+",", ","+v.Name+",")
				if v.OK != wantOK || v.Unknown {
					t.Errorf("%s: ok=%v unknown=%v (%s; fix: %s), want ok=%v", v.Name, v.OK, v.Unknown, v.Detail, v.Fix, wantOK)
				}
				if !v.OK && !strings.Contains(v.Fix, tc.fixHas) {
					t.Errorf("%s: fix %q, want it to contain %q", v.Name, v.Fix, tc.fixHas)
				}
			}
		})
	}
}

func TestSystemNotInstalled(t *testing.T) {
	got := System(SysEnv{Root: t.TempDir()})
	if len(got) != 1 || got[0].Name != NamePackage || !got[0].Skipped || !got[0].OK {
		t.Fatalf("without the package: %+v, want one skipped %q verdict", got, NamePackage)
	}
	rep := Report{OK: true}
	rep.Add(got...)
	rep.Add(Verdict{Name: "x", Unknown: true, OK: true})
	if rep.OK || rep.Checks[1].OK {
		t.Errorf("an unknown verdict must make the report not OK: %+v", rep)
	}
	var b strings.Builder
	rep.WriteText(&b)
	if !strings.Contains(b.String(), "  --    package") {
		t.Errorf("a skipped check prints as %q", b.String())
	}
}

func TestSystemWithSystemctl(t *testing.T) {
	m := goodSystem(t)
	m["proc/42/environ"] = "LANG=C\x00"
	root := m.build(t)
	answers := map[string]string{
		"is-active khib-arm.service":                     "active\n",
		"show -p ExecStart systemd-hibernate.service":    "ExecStart={ path=/lib/systemd/systemd-sleep ; argv[]=/lib/systemd/systemd-sleep hibernate ; }\n",
		"show -p Environment systemd-logind.service":     "Environment=SYSTEMD_BYPASS_HIBERNATION_MEMORY_CHECK=1\n",
		"show -p MainPID --value systemd-logind.service": "42\n",
	}
	env := SysEnv{Root: root, Release: "6.12.118-khib",
		Systemctl:    func(args ...string) (string, error) { return answers[strings.Join(args, " ")], nil },
		HelperParked: func() (bool, error) { return false, nil },
	}
	fails := map[string]string{}
	for _, v := range System(env) {
		if !v.OK {
			fails[v.Name] = v.Fix
		}
	}
	if len(fails) != 3 || !strings.Contains(fails[NameArm], "restart khib-arm") ||
		!strings.Contains(fails[NameSleepUnit], "daemon-reload") || !strings.Contains(fails[NameLogind], "reboot") {
		t.Errorf("failing checks %v; want arm (not parked), sleep_unit (systemd-sleep), logind (stale environment)", fails)
	}
}

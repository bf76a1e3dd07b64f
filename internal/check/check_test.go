package check

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	release     = "6.1.0-18-amd64"
	kconfigGood = `# Linux/x86 6.12.0 Kernel Configuration
CONFIG_KEXEC_CORE=y
CONFIG_KEXEC=y
CONFIG_KEXEC_JUMP=y
CONFIG_CRASH_DUMP=y
CONFIG_PROC_VMCORE=y
CONFIG_VMCORE_INFO=y
`
	// The kexec section of Debian 12's /boot/config-6.1.0-18-amd64.
	kconfigDebian = `CONFIG_CRASH_CORE=y
CONFIG_KEXEC_CORE=y
CONFIG_KEXEC=y
CONFIG_KEXEC_FILE=y
CONFIG_KEXEC_SIG=y
# CONFIG_KEXEC_SIG_FORCE is not set
CONFIG_KEXEC_BZIMAGE_VERIFY_SIG=y
# CONFIG_KEXEC_JUMP is not set
CONFIG_CRASH_DUMP=y
CONFIG_PROC_VMCORE=y
# CONFIG_PROC_VMCORE_DEVICE_DUMP is not set
`
	iomemHead = `00000000-00000fff : Reserved
00001000-0009fbff : System RAM
0009fc00-0009ffff : Reserved
000f0000-000fffff : Reserved
  000f0000-000fffff : System ROM
00100000-7ffdffff : System RAM
  1a000000-2a1fffff : Kernel code
  2a200000-2aa8afff : Kernel rodata
  2ac00000-2ad0ba3f : Kernel data
  2b0a2000-2b3fffff : Kernel bss
`
	iomemTail = `7ffe0000-7fffffff : Reserved
fec00000-fec003ff : IOAPIC 0
100000000-17fffffff : System RAM
`
	crash512 = "  50000000-6fffffff : Crash kernel\n"
	crash128 = "  50000000-57ffffff : Crash kernel\n"
)

// machine describes a fake root: path (relative to the root) -> contents.
type machine map[string]string

func gz(t *testing.T, s string) string {
	t.Helper()
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	w.Write([]byte(s))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// good is a machine ready for khib.
func good(t *testing.T) machine {
	return machine{
		"proc/config.gz":                          gz(t, kconfigGood),
		"proc/iomem":                              iomemHead + crash512 + iomemTail,
		"proc/sys/kernel/kexec_load_disabled":     "0\n",
		"sys/kernel/kexec_loaded":                 "0\n",
		"sys/kernel/kexec_crash_size":             "536870912\n",
		"sys/kernel/vmcoreinfo":                   "0x000000007fb2b000 1024\n",
		"sys/kernel/security/lockdown":            "[none] integrity confidentiality\n",
		"proc/sys/kernel/kexec_load_limit_reboot": "-1\n",
	}
}

// with returns a copy of m with changes applied; an empty value removes the
// file.
func (m machine) with(changes machine) machine {
	n := machine{}
	for k, v := range m {
		n[k] = v
	}
	for k, v := range changes {
		if v == "" {
			delete(n, k)
		} else {
			n[k] = v
		}
	}
	return n
}

func (m machine) build(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for p, s := range m {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func hideAddrs(s string) string {
	var b strings.Builder
	for _, line := range strings.SplitAfter(s, "\n") {
		body := strings.TrimLeft(line, " ")
		if _, name, ok := strings.Cut(body, " : "); ok {
			line = line[:len(line)-len(body)] + "00000000-00000000 : " + name
		}
		b.WriteString(line)
	}
	return b.String()
}

// want is the expected state of one check: "ok", "NO" or "??", and
// substrings that its detail and fix must contain.
type want struct {
	state  string
	detail string
	fix    string
}

func TestRun(t *testing.T) {
	const minRegion = 300 << 20
	g := good(t)
	noCfg := machine{"proc/config.gz": ""}
	tests := []struct {
		name string
		m    machine
		euid int
		min  uint64
		want map[string]want // checks not listed must be ok
	}{
		{name: "all good", m: g},
		{
			name: "stock debian",
			m: g.with(machine{
				"proc/config.gz":              "",
				"boot/config-" + release:      kconfigDebian,
				"proc/iomem":                  iomemHead + iomemTail,
				"sys/kernel/kexec_crash_size": "0\n",
			}),
			want: map[string]want{
				NameKexecJump: {"NO", "CONFIG_KEXEC_JUMP is not set (from /boot/config-" + release + ")", "Debian's stock kernels do not set it"},
				NameRegion:    {"NO", "no crashkernel region reserved", "crashkernel=320M"},
			},
		},
		{
			name: "region too small",
			m:    g.with(machine{"proc/iomem": iomemHead + crash128 + iomemTail}),
			want: map[string]want{
				NameRegion: {"NO", "0x50000000-0x57ffffff is 128 MiB; the helper needs 300 MiB", "raise the reservation to crashkernel=320M"},
			},
		},
		{
			name: "region too small for a big helper",
			m:    g,
			min:  600 << 20,
			want: map[string]want{
				NameRegion: {"NO", "is 512 MiB; the helper needs 600 MiB", "crashkernel=640M"},
			},
		},
		{
			name: "region exactly enough",
			m:    g,
			min:  512 << 20,
			want: map[string]want{},
		},
		{
			name: "hidden iomem",
			m:    g.with(machine{"proc/iomem": hideAddrs(iomemHead + crash512 + iomemTail)}),
			euid: 1000,
			want: map[string]want{
				NameRoot:   {"NO", "euid 1000", "run khib as root"},
				NameRegion: {"??", "(512 MiB, per /sys/kernel/kexec_crash_size), but /proc/iomem hides its address", "run khib check as root"},
			},
		},
		{
			name: "hidden iomem, no crash_size",
			m: g.with(machine{
				"proc/iomem":                  hideAddrs(iomemHead + crash512 + iomemTail),
				"sys/kernel/kexec_crash_size": "",
			}),
			euid: 1000,
			want: map[string]want{
				NameRoot:   {"NO", "", ""},
				NameRegion: {"??", "a crashkernel region is reserved, but", "as root"},
			},
		},
		{
			name: "hidden iomem, region too small by crash_size",
			m: g.with(machine{
				"proc/iomem":                  hideAddrs(iomemHead + crash128 + iomemTail),
				"sys/kernel/kexec_crash_size": "134217728\n",
			}),
			euid: 1000,
			want: map[string]want{
				NameRoot:   {"NO", "", ""},
				NameRegion: {"NO", "128 MiB (from /sys/kernel/kexec_crash_size)", "crashkernel=320M"},
			},
		},
		{
			name: "hidden iomem, no region at all",
			m:    g.with(machine{"proc/iomem": hideAddrs(iomemHead + iomemTail)}),
			euid: 1000,
			want: map[string]want{
				NameRoot:   {"NO", "", ""},
				NameRegion: {"NO", "no crashkernel region reserved", "add crashkernel=320M"},
			},
		},
		{
			name: "no config at all",
			m:    g.with(noCfg),
			want: map[string]want{
				NameKexecJump:  {"??", "no kernel config to read", "enable CONFIG_IKCONFIG_PROC or install /boot/config-" + release},
				NameCrashDump:  {"??", "/sys shows that kexec is built in (CONFIG_KEXEC_CORE) and vmcoreinfo is published", "CONFIG_IKCONFIG_PROC"},
				NameProcVmcore: {"??", "CONFIG_PROC_VMCORE itself cannot be probed", "CONFIG_IKCONFIG_PROC"},
			},
		},
		{
			name: "no config, no kexec",
			m: g.with(noCfg).with(machine{
				"sys/kernel/kexec_loaded":             "",
				"sys/kernel/kexec_crash_size":         "",
				"proc/sys/kernel/kexec_load_disabled": "",
			}),
			want: map[string]want{
				NameKexecJump:  {"NO", "no kexec support", "CONFIG_KEXEC_JUMP=y"},
				NameCrashDump:  {"??", "kexec is not built in", "CONFIG_IKCONFIG_PROC"},
				NameProcVmcore: {"??", "", ""},
				NameKexecLoad:  {"NO", "no /proc/sys/kernel/kexec_load_disabled", "CONFIG_KEXEC=y"},
			},
		},
		{
			name: "no config, no sysfs",
			m: g.with(noCfg).with(machine{
				"sys/kernel/kexec_loaded":      "",
				"sys/kernel/kexec_crash_size":  "",
				"sys/kernel/vmcoreinfo":        "",
				"sys/kernel/security/lockdown": "",
			}),
			want: map[string]want{
				NameKexecJump:  {"??", "", ""},
				NameCrashDump:  {"??", "", ""},
				NameProcVmcore: {"??", "", ""},
				NameVmcoreinfo: {"??", "sysfs is not mounted", "mount sysfs"},
			},
		},
		{
			name: "corrupt config",
			m:    g.with(machine{"proc/config.gz": "\x1f\x8b garbage"}),
			want: map[string]want{
				NameKexecJump:  {"??", "could not be read", "CONFIG_IKCONFIG_PROC"},
				NameCrashDump:  {"??", "", ""},
				NameProcVmcore: {"??", "", ""},
			},
		},
		{
			name: "config lacks dump options",
			m:    g.with(machine{"proc/config.gz": gz(t, "CONFIG_KEXEC=y\nCONFIG_KEXEC_JUMP=y\n# CONFIG_CRASH_DUMP is not set\n")}),
			want: map[string]want{
				NameCrashDump:  {"NO", "CONFIG_CRASH_DUMP is not set (from /proc/config.gz)", "CONFIG_CRASH_DUMP=y"},
				NameProcVmcore: {"NO", "CONFIG_PROC_VMCORE is not set", "CONFIG_PROC_VMCORE=y"},
			},
		},
		{
			name: "config without CONFIG_KEXEC",
			m:    g.with(machine{"proc/config.gz": gz(t, strings.Replace(kconfigGood, "CONFIG_KEXEC=y", "# CONFIG_KEXEC is not set", 1))}),
			want: map[string]want{
				NameKexecLoad: {"NO", "CONFIG_KEXEC is not set", "CONFIG_KEXEC=y"},
			},
		},
		{
			name: "kexec_load disabled",
			m:    g.with(machine{"proc/sys/kernel/kexec_load_disabled": "1\n"}),
			want: map[string]want{
				NameKexecLoad: {"NO", "kexec_load_disabled is 1", "only a reboot can clear it"},
			},
		},
		{
			name: "kexec load limit reached",
			m:    g.with(machine{"proc/sys/kernel/kexec_load_limit_reboot": "0\n"}),
			want: map[string]want{
				NameKexecLoad: {"NO", "kexec_load_limit_reboot is 0", "reboot"},
			},
		},
		{
			name: "lockdown",
			m:    g.with(machine{"sys/kernel/security/lockdown": "none [integrity] confidentiality\n"}),
			want: map[string]want{
				NameKexecLoad: {"NO", "lockdown is in integrity mode", "Secure Boot"},
			},
		},
		{
			name: "no vmcoreinfo",
			m:    g.with(machine{"sys/kernel/vmcoreinfo": ""}),
			want: map[string]want{
				NameVmcoreinfo: {"NO", "without CONFIG_VMCORE_INFO", "CONFIG_VMCORE_INFO=y"},
			},
		},
		{
			name: "empty vmcoreinfo",
			m:    g.with(machine{"sys/kernel/vmcoreinfo": "\n"}),
			want: map[string]want{
				NameVmcoreinfo: {"NO", "is empty", "bug"},
			},
		},
		{
			name: "garbled vmcoreinfo",
			m:    g.with(machine{"sys/kernel/vmcoreinfo": "hello\n"}),
			want: map[string]want{
				NameVmcoreinfo: {"NO", `holds "hello"`, "bug"},
			},
		},
		{
			name: "no proc",
			m: g.with(machine{
				"proc/config.gz":                          "",
				"boot/config-" + release:                  kconfigGood,
				"proc/iomem":                              "",
				"proc/sys/kernel/kexec_load_disabled":     "",
				"proc/sys/kernel/kexec_load_limit_reboot": "",
			}),
			want: map[string]want{
				NameRegion:    {"??", "cannot read /proc/iomem", "mount proc"},
				NameKexecLoad: {"??", "/proc/sys is not available", "mount proc"},
			},
		},
		{
			name: "garbled iomem",
			m:    g.with(machine{"proc/iomem": "what is this\n"}),
			want: map[string]want{
				NameRegion: {"??", "cannot parse /proc/iomem", "bug"},
			},
		},
	}
	order := []string{NameRoot, NameKexecJump, NameCrashDump, NameProcVmcore, NameRegion, NameVmcoreinfo, NameKexecLoad}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			min := tt.min
			if min == 0 {
				min = minRegion
			}
			rep := Run(Env{Root: tt.m.build(t), Euid: tt.euid, Release: release, MinRegion: min})
			if len(rep.Checks) != len(order) {
				t.Fatalf("%d checks, want %d", len(rep.Checks), len(order))
			}
			allOK := true
			for i, v := range rep.Checks {
				if v.Name != order[i] {
					t.Errorf("check %d is %q, want %q", i, v.Name, order[i])
				}
				w, listed := tt.want[v.Name]
				if !listed {
					w = want{state: "ok"}
				}
				state := "ok"
				switch {
				case v.Unknown:
					state = "??"
				case !v.OK:
					state = "NO"
				}
				if state != w.state {
					t.Errorf("%s: %s (%s; fix %q), want %s", v.Name, state, v.Detail, v.Fix, w.state)
				}
				if !strings.Contains(v.Detail, w.detail) {
					t.Errorf("%s: detail %q lacks %q", v.Name, v.Detail, w.detail)
				}
				if !strings.Contains(v.Fix, w.fix) {
					t.Errorf("%s: fix %q lacks %q", v.Name, v.Fix, w.fix)
				}
				checkShape(t, v)
				allOK = allOK && v.OK
			}
			if rep.OK != allOK {
				t.Errorf("Report.OK = %v with checks %+v", rep.OK, rep.Checks)
			}
			if t.Failed() {
				var b strings.Builder
				rep.WriteText(&b)
				t.Log("\n" + b.String())
			}
		})
	}
}

// checkShape checks the invariants every verdict must hold.
func checkShape(t *testing.T, v Verdict) {
	t.Helper()
	if v.Detail == "" || strings.Contains(v.Detail, "\n") {
		t.Errorf("%s: detail %q is not one line", v.Name, v.Detail)
	}
	if v.OK && (v.Unknown || v.Fix != "") {
		t.Errorf("%s: ok verdict with unknown=%v fix=%q", v.Name, v.Unknown, v.Fix)
	}
	if !v.OK && v.Fix == "" {
		t.Errorf("%s: failed without a fix (%s)", v.Name, v.Detail)
	}
}

func TestCrashkernelMiB(t *testing.T) {
	tests := []struct {
		min  uint64
		want uint64
	}{
		{0, 256}, {1, 256}, {200 << 20, 256}, {256 << 20, 256},
		{256<<20 + 1, 320}, {300 << 20, 320}, {320 << 20, 320}, {1000 << 20, 1024}, {4 << 30, 4096},
	}
	for _, tt := range tests {
		if got := CrashkernelMiB(tt.min); got != tt.want {
			t.Errorf("CrashkernelMiB(%d) = %d, want %d", tt.min, got, tt.want)
		}
	}
}

func TestWriteText(t *testing.T) {
	m := good(t).with(machine{
		"proc/config.gz":         "",
		"boot/config-" + release: kconfigDebian,
		"proc/iomem":             iomemHead + iomemTail,
	})
	rep := Run(Env{Root: m.build(t), Euid: 0, Release: release, MinRegion: 200 << 20})
	var b strings.Builder
	if err := rep.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	want := `  ok    root         running as root (euid 0)
  NO    kexec_jump   CONFIG_KEXEC_JUMP is not set (from /boot/config-6.1.0-18-amd64)
                     fix: boot a kernel built with CONFIG_KEXEC_JUMP=y (which needs CONFIG_HIBERNATION=y); Debian's stock kernels do not set it, but khib's kernel/build.sh builds one that does
  ok    crash_dump   CONFIG_CRASH_DUMP=y (from /boot/config-6.1.0-18-amd64)
  ok    proc_vmcore  CONFIG_PROC_VMCORE=y (from /boot/config-6.1.0-18-amd64)
  NO    region       no crashkernel region reserved (no "Crash kernel" in /proc/iomem)
                     fix: add crashkernel=256M to the kernel command line (on Debian: append it to GRUB_CMDLINE_LINUX in /etc/default/grub and run update-grub) and reboot
  ok    vmcoreinfo   vmcoreinfo note at 0x7fb2b000, 4132 bytes
  ok    kexec_load   kexec_load is allowed (kernel.kexec_load_disabled is 0)
khib cannot run here yet: 2 problems
`
	if got := b.String(); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}

	b.Reset()
	Run(Env{Root: good(t).build(t), Release: release}).WriteText(&b)
	if !strings.HasSuffix(b.String(), "\nkhib can run on this machine\n") || strings.Contains(b.String(), "fix:") {
		t.Errorf("all good:\n%s", b.String())
	}

	b.Reset()
	Run(Env{Root: good(t).with(machine{"proc/config.gz": ""}).build(t), Release: release, Euid: 1}).WriteText(&b)
	if !strings.HasSuffix(b.String(), "khib cannot run here yet: 4 problems (3 could not be checked)\n") || !strings.Contains(b.String(), "\n  ??    kexec_jump   ") {
		t.Errorf("unknowns:\n%s", b.String())
	}

	b.Reset()
	Run(Env{Root: good(t).build(t), Release: release, Euid: 1}).WriteText(&b)
	if !strings.HasSuffix(b.String(), "khib cannot run here yet: 1 problem\n") {
		t.Errorf("one problem:\n%s", b.String())
	}
}

func TestWriteJSON(t *testing.T) {
	rep := Run(Env{Root: good(t).build(t), Euid: 1000, Release: release, MinRegion: 1 << 30})
	var b bytes.Buffer
	if err := rep.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	if strings.Count(b.String(), "\n") != 1 {
		t.Errorf("not one line: %q", b.String())
	}
	var raw map[string]any
	if err := json.Unmarshal(b.Bytes(), &raw); err != nil {
		t.Fatal(err)
	}
	checks, _ := raw["checks"].([]any)
	if raw["ok"] != false || len(checks) != 7 {
		t.Fatalf("decoded %v", raw)
	}
	first, _ := checks[0].(map[string]any)
	for _, k := range []string{"name", "ok", "unknown", "detail", "fix"} {
		if _, ok := first[k]; !ok {
			t.Errorf("key %q missing from %v", k, first)
		}
	}
	var back Report
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if back.OK != rep.OK || len(back.Checks) != len(rep.Checks) || back.Checks[4] != rep.Checks[4] {
		t.Errorf("round trip: %+v vs %+v", back, rep)
	}

	b.Reset()
	if err := (Report{}).WriteJSON(&b); err != nil || b.String() != "{\"ok\":false,\"checks\":[]}\n" {
		t.Errorf("empty report: %q, %v", b.String(), err)
	}
}

func TestParseVmcoreinfo(t *testing.T) {
	tests := []struct {
		s          string
		addr, size uint64
		ok         bool
	}{
		{"0x0000000100c66000 1024", 0x100c66000, 0x1024, true},
		{"0x7fb2b000 1024", 0x7fb2b000, 0x1024, true},
		{"7fb2b000 0x1024", 0x7fb2b000, 0x1024, true},
		{"", 0, 0, false},
		{"0x1000", 0, 0, false},
		{"0x1000 10 20", 0, 0, false},
		{"0xzz 10", 0, 0, false},
	}
	for _, tt := range tests {
		a, s, ok := parseVmcoreinfo(tt.s)
		if a != tt.addr && tt.ok || s != tt.size && tt.ok || ok != tt.ok {
			t.Errorf("parseVmcoreinfo(%q) = %#x, %#x, %v", tt.s, a, s, ok)
		}
	}
}

func TestLockdownMode(t *testing.T) {
	for s, want := range map[string]string{
		"[none] integrity confidentiality": "none",
		"none [integrity] confidentiality": "integrity",
		"none integrity [confidentiality]": "confidentiality",
		"":                                 "",
		"[]":                               "",
	} {
		if got := lockdownMode(s); got != want {
			t.Errorf("lockdownMode(%q) = %q, want %q", s, got, want)
		}
	}
}

package check

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/khib/khib/internal/kconfig"
	"github.com/khib/khib/internal/memmap"
)

// TestRunHere runs every check on this machine and compares each verdict
// with what the test can read for itself, without assuming what the answer
// is.
func TestRunHere(t *testing.T) {
	if _, err := os.Stat("/proc/self"); err != nil {
		t.Skip("no /proc here")
	}
	const minRegion = 256 << 20
	env := LocalEnv(minRegion)
	rep := Run(env)
	var text strings.Builder
	rep.WriteText(&text)
	t.Logf("release %q, euid %d:\n%s", env.Release, env.Euid, text.String())

	got := map[string]Verdict{}
	allOK := true
	for _, v := range rep.Checks {
		got[v.Name] = v
		checkShape(t, v)
		allOK = allOK && v.OK
	}
	if rep.OK != allOK || len(rep.Checks) != 7 {
		t.Errorf("Report.OK = %v over %d checks", rep.OK, len(rep.Checks))
	}

	if v := got[NameRoot]; v.OK != (os.Geteuid() == 0) {
		t.Errorf("root: %+v, but euid is %d", v, os.Geteuid())
	}

	cfg, src, cfgErr := kconfig.LoadFrom("/", env.Release)
	for name, opt := range map[string]string{
		NameKexecJump:  "CONFIG_KEXEC_JUMP",
		NameCrashDump:  "CONFIG_CRASH_DUMP",
		NameProcVmcore: "CONFIG_PROC_VMCORE",
	} {
		v := got[name]
		if cfgErr != nil {
			if v.OK {
				t.Errorf("%s ok without a config (%v)", name, cfgErr)
			}
			continue
		}
		val, _ := cfg.Get(opt)
		if v.OK != (val == "y") || v.Unknown || !strings.Contains(v.Detail, src) {
			t.Errorf("%s: %+v, but %s says %s=%q", name, v, src, opt, val)
		}
	}

	v := got[NameRegion]
	if f, err := os.Open("/proc/iomem"); err == nil {
		m, err := memmap.ParseIomem(f)
		f.Close()
		ck, found := memmap.Range{}, false
		if m != nil {
			ck, found = m.CrashKernel()
		}
		switch {
		case err != nil && !errors.Is(err, memmap.ErrAddressesHidden):
			t.Errorf("parsing /proc/iomem: %v", err)
		case !found && (v.OK || v.Unknown):
			t.Errorf("region: %+v, but /proc/iomem has no Crash kernel", v)
		case !found && !strings.Contains(v.Fix, "crashkernel=256M"):
			t.Errorf("region fix %q", v.Fix)
		case errors.Is(err, memmap.ErrAddressesHidden):
			if v.OK {
				t.Errorf("region ok with hidden addresses: %+v", v)
			}
		case found && v.OK != (ck.Size() >= minRegion):
			t.Errorf("region: %+v, but Crash kernel is %v", v, ck)
		}
	}

	v = got[NameVmcoreinfo]
	if b, err := os.ReadFile("/sys/kernel/vmcoreinfo"); err != nil && v.OK {
		t.Errorf("vmcoreinfo ok but unreadable: %v", err)
	} else if err == nil && len(strings.TrimSpace(string(b))) == 0 && v.OK {
		t.Errorf("vmcoreinfo ok but empty")
	}

	v = got[NameKexecLoad]
	b, err := os.ReadFile("/proc/sys/kernel/kexec_load_disabled")
	switch {
	case err != nil && v.OK:
		t.Errorf("kexec_load ok, but %v", err)
	case err == nil && strings.TrimSpace(string(b)) != "0" && v.OK:
		t.Errorf("kexec_load ok, but kexec_load_disabled is %q", b)
	case cfgErr == nil && !cfg.Enabled("CONFIG_KEXEC") && v.OK:
		t.Errorf("kexec_load ok, but CONFIG_KEXEC is off")
	}
}

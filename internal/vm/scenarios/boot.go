package scenarios

import (
	"context"
	"regexp"
	"strings"
	"time"

	"github.com/khib/khib/internal/vm/scenario"
)

func init() {
	scenario.Register(scenario.Scenario{
		Name:        "boot",
		Description: "boot the kernel into a busybox initramfs and power off; measures boot time",
		Timeout:     5 * time.Minute,
		Run:         runBoot,
	})
}

// bootInit mounts the pseudo filesystems, reports the guest's own idea of
// its uptime and powers off at once (-f: no init system to ask).
const bootInit = `#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
read up idle < /proc/uptime
echo "KHIBVM:booted uptime=$up"
poweroff -f
`

var (
	bootedRE = regexp.MustCompile(`KHIBVM:booted`)
	linuxRE  = regexp.MustCompile(`Linux version (\S+)`)
)

func runBoot(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
	rfs, err := env.NewRootfs()
	if err != nil {
		return nil, err
	}
	rfs.SetInit(bootInit)
	initrd, err := env.WriteRootfs("boot.cpio", rfs)
	if err != nil {
		return nil, err
	}
	cfg := env.Config()
	cfg.Initrd = initrd
	m, err := env.Start(ctx, "boot", cfg)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	res := scenario.Result{"accel": m.Accel()}
	booted, err := m.WaitFor(ctx, bootedRE, env.Remaining())
	if err != nil {
		return res, err
	}
	env.Logf("boot: marker after %.2f s", booted.At.Seconds())
	exit, err := m.WaitPowerOff(env.Remaining())
	res["powered_off"] = exit.PoweredOff
	if err != nil {
		return res, err
	}
	env.Logf("boot: %s", exit)
	res.Merge(scenario.Figures(m))
	delete(res, "booted")
	if up, ok := res["uptime"]; ok {
		delete(res, "uptime")
		res["guest_uptime_s"] = up
	}
	res["boot_s"] = scenario.Round3(booted.At.Seconds())
	res["exit_s"] = scenario.Round3(exit.At.Seconds())
	for _, l := range m.Lines() {
		if mm := linuxRE.FindStringSubmatch(l.Text); mm != nil {
			res["kernel"] = strings.TrimSpace(mm[1])
			break
		}
	}
	return res, nil
}

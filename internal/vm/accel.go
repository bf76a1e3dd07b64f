package vm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// AccelEnv names the environment variable that picks the accelerator when
// Config.Accel is empty: "tcg", "kvm" or "auto".
const AccelEnv = "KHIB_VM_ACCEL"

// ProbeTimeout bounds the KVM probe boot. A working KVM boots the tiny probe
// in a second or two; a broken one hangs, which is why the probe exists.
const ProbeTimeout = 20 * time.Second

// ResolveAccel turns cfg's accelerator choice into "tcg" or "kvm". For
// "auto" it uses KVM only when /dev/kvm answers and a probe boot of
// cfg.Kernel under KVM reached its marker and powered off. The probe's
// verdict is cached per host kernel release and QEMU version in
// $HOME/.cache/khib/kvm-probe-<hash>, so it runs once per machine; delete
// that file to probe again.
func ResolveAccel(ctx context.Context, cfg Config) (string, error) {
	choice := cfg.Accel
	if choice == "" {
		choice = os.Getenv(AccelEnv)
	}
	if choice == "" {
		choice = "auto"
	}
	switch choice {
	case "tcg", "kvm":
		return choice, nil
	case "auto":
	default:
		return "", fmt.Errorf("vm: unknown accelerator %q (want tcg, kvm or auto)", choice)
	}
	logf := cfg.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	probeMu.Lock()
	defer probeMu.Unlock()
	cfg = withDefaults(cfg)
	cache, cacheErr := probeCachePath(cfg.QEMU)
	if cacheErr == nil {
		if b, err := os.ReadFile(cache); err == nil {
			verdict, reason, _ := strings.Cut(strings.TrimSpace(string(b)), " ")
			if verdict == "kvm" || verdict == "tcg" {
				logf("vm: accel auto -> %s (cached probe verdict in %s: %s)", verdict, cache, reason)
				return verdict, nil
			}
		}
	}
	verdict, reason := probeKVM(ctx, cfg)
	if ctx.Err() != nil {
		// An interrupted probe proves nothing; do not cache it.
		return "tcg", nil
	}
	logf("vm: accel auto -> %s (%s)", verdict, reason)
	if cacheErr == nil {
		if err := writeAtomic(cache, []byte(verdict+" "+reason+"\n")); err != nil {
			logf("vm: cannot cache the KVM probe verdict: %v", err)
		}
	}
	return verdict, nil
}

var probeMu sync.Mutex

// probeCachePath names the verdict file after what decides whether KVM
// works: the host kernel and the QEMU build.
func probeCachePath(qemu string) (string, error) {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return "", fmt.Errorf("uname: %w", err)
	}
	out, err := exec.Command(qemu, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", qemu, err)
	}
	h := sha256.New()
	h.Write(bytes.TrimRight(uts.Release[:], "\x00"))
	h.Write([]byte{0})
	h.Write(out)
	home, err := os.UserHomeDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(home, ".cache", "khib", "kvm-probe-"+hex.EncodeToString(h.Sum(nil))[:16]), nil
}

func writeAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	_, err = tmp.Write(data)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// kvmUsable opens /dev/kvm and asks for its API version, which every
// working KVM answers with 12.
func kvmUsable() error {
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening /dev/kvm: %w", err)
	}
	defer unix.Close(fd)
	const kvmGetAPIVersion = 0xAE00
	v, err := unix.IoctlRetInt(fd, kvmGetAPIVersion)
	if err != nil {
		return fmt.Errorf("KVM_GET_API_VERSION: %w", err)
	}
	if v != 12 {
		return fmt.Errorf("KVM API version %d, want 12", v)
	}
	return nil
}

const probeMarker = "KHIB-KVM-PROBE-OK"

// probeKVM returns "kvm" or "tcg" and the reason.
func probeKVM(ctx context.Context, cfg Config) (verdict, reason string) {
	if err := kvmUsable(); err != nil {
		return "tcg", err.Error()
	}
	if cfg.Kernel == "" {
		return "tcg", "no kernel to probe KVM with"
	}
	dir, err := os.MkdirTemp("", "khib-kvm-probe-")
	if err != nil {
		return "tcg", "probe: " + err.Error()
	}
	defer os.RemoveAll(dir)
	rfs := NewRootfs()
	if err := rfs.AddBusybox(""); err != nil {
		return "tcg", "probe: " + err.Error()
	}
	rfs.SetInit("#!/bin/sh\necho " + probeMarker + "\npoweroff -f\n")
	initrd := filepath.Join(dir, "probe.cpio")
	if err := rfs.WriteFile(initrd); err != nil {
		return "tcg", "probe: " + err.Error()
	}
	pcfg := Config{
		Kernel: cfg.Kernel, Initrd: initrd, Append: DefaultAppend,
		MemMiB: 256, SMP: 1, QEMU: cfg.QEMU,
		ConsoleLog: filepath.Join(dir, "console.log"),
	}
	m, err := start(ctx, withDefaults(pcfg), "kvm", func(string, ...any) {})
	if err != nil {
		return "tcg", "probe: " + err.Error()
	}
	defer m.Close()
	t0 := time.Now()
	if _, err := m.WaitFor(ctx, regexp.MustCompile(probeMarker), ProbeTimeout); err != nil {
		return "tcg", "KVM probe boot failed: " + shortError(err)
	}
	if _, err := m.WaitPowerOff(ProbeTimeout - time.Since(t0)); err != nil {
		return "tcg", "KVM probe boot did not power off: " + shortError(err)
	}
	return "kvm", fmt.Sprintf("KVM probe boot powered off in %.1f s", time.Since(t0).Seconds())
}

// shortError drops the console tail that a ConsoleError carries.
func shortError(err error) string {
	var ce *ConsoleError
	if errors.As(err, &ce) {
		return ce.Msg
	}
	return err.Error()
}

package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/khib/khib/internal/kexec"
)

// runInit is khib as PID 1: in a helper kernel it runs the helper role
// named by khib.role=; in the system itself it mounts the basics and hands
// over to the real init (khib.init=, default /sbin/init).
func runInit() {
	mountBasics()
	os.Setenv("PATH", "/bin:/sbin:/usr/bin:/usr/sbin")
	params := kernelParams()
	switch role := params["khib.role"]; role {
	case "helper":
		runHelper(params)
	case "restore":
		runRestore(params)
	case "":
		if params["khib.resume"] != "" {
			// khib.resume=off and noresume skip the resume, as in the
			// initramfs (stage1Spec), so that one boot of the same disks
			// can be a normal one.
			if spec, skip := stage1Spec(params, nil, ""); skip != "" {
				console("khib: not resuming: %s.", skip)
			} else {
				resumeStage1(spec)
			}
		}
		next := params["khib.init"]
		if next == "" {
			next = "/sbin/init"
		}
		err := syscall.Exec(next, []string{next}, os.Environ())
		console("khib: cannot start %s: %v", next, err)
	default:
		console("khib: unknown role khib.role=%s", role)
	}
	// PID 1 must not exit: the kernel would panic and the message scroll away.
	console("khib: nothing left to run; powering off in 5 s")
	time.Sleep(5 * time.Second)
	unix.Sync()
	_ = kexec.PowerOff()
	select {}
}

func mountBasics() {
	for _, m := range []struct{ src, dst, fs string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
		{"tmpfs", "/run", "tmpfs"},
		{"tmpfs", "/tmp", "tmpfs"},
	} {
		_ = os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.fs, 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			console("khib: mounting %s: %v", m.dst, err)
		}
	}
}

// kernelParams returns the key=value words of /proc/cmdline.
func kernelParams() map[string]string {
	b, _ := os.ReadFile("/proc/cmdline")
	m := map[string]string{}
	for _, w := range strings.Fields(string(b)) {
		k, v, _ := strings.Cut(w, "=")
		m[k] = v
	}
	return m
}

// console prints one line for people on the console.
func console(format string, a ...any) {
	fmt.Fprintf(os.Stdout, format+"\n", a...)
}

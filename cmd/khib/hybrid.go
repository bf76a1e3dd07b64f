package main

import (
	"fmt"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/khib/khib/internal/sleep"
	"github.com/khib/khib/internal/store"
)

// Hybrid sleep (khib hibernate --then suspend, systemctl hybrid-sleep):
// the image is saved, then the machine sleeps in RAM. If it wakes, the
// image is marked used and A goes on; if the power goes while it sleeps,
// the next boot resumes from the image.
//
// The helper, not A, suspends the machine. A resume after a power loss
// must find A's file systems exactly as the image recorded them
// (filesystems.go), so A must not run between the save and the sleep:
// every write it made there would be lost by the resume and refused by
// stage 1. Freezing A's file systems (FIFREEZE) until the wake does not
// work on Linux 6.12: a task that writes to a frozen file system waits
// in sb_start_write (percpu_rwsem_wait, TASK_UNINTERRUPTIBLE without
// TASK_FREEZABLE), the freezer cannot freeze it (kernel/freezer.c:
// __set_task_frozen), and both the kexec jump and the suspend give up
// after 20 s with EBUSY, on any system where something writes. In the
// helper nothing of A runs: it saves the image, suspends to RAM, and on
// waking marks the image used before it jumps back, so that from the
// image's complete mark to its used mark A's disks hold exactly what the
// image expects.

// thenSuspend is --then suspend.
var thenSuspend bool

// sleepAction is what the system-sleep hooks are told (systemd-sleep's
// verb): hibernate, or hybrid-sleep.
var sleepAction = "hibernate"

// boottime is CLOCK_BOOTTIME, which goes on while the machine sleeps.
func boottime() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// canSuspend is the helper's check before it saves for a hybrid sleep,
// so that a kernel that cannot sleep fails the request before the image
// is written rather than after.
func canSuspend() (string, error) {
	mode, err := sleep.MemSleep()
	if err != nil {
		return "", fmt.Errorf("hybrid sleep, in the helper kernel: %w", err)
	}
	return mode, nil
}

// suspendAfterSave is the helper's part of a hybrid sleep, once the image
// on dev is complete: sleep in RAM, and once awake, or if the kernel
// would not sleep, mark the image used. The figures say how it went; an
// error means the image could not be marked used, and then the helper
// powers off instead of jumping back (the next boot resumes the image,
// which is still exactly right: A has not run since).
func suspendAfterSave(dev store.Store, path, mode string, figs map[string]any) error {
	console("khib-helper: image complete; suspending to RAM (%s)", mode)
	t0 := boottime()
	err := sleep.Suspend()
	slept := boottime() - t0
	figs["sleep_mode"], figs["slept_s"] = mode, slept.Seconds()
	if err != nil {
		figs["suspend_error"] = err.Error()
		console("khib-helper: %v", err)
	} else {
		console("khib-helper: woke after %.1f s asleep; marking the image on %s used", slept.Seconds(), path)
	}
	if err := markUsed(dev); err != nil {
		return fmt.Errorf("woke, but %w", err)
	}
	return nil
}

// woke reads the helper's account of a hybrid sleep that came back (not
// a resume from the image) into res.
func woke(res *hibernateResult) error {
	if e, ok := res.Figures["suspend_error"].(string); ok {
		return fmt.Errorf("the image was saved, but the helper could not suspend (%s); it marked the image used, and this system goes on", e)
	}
	res.Mode += ", suspended and woke"
	return nil
}

// wokeFromSuspend reports whether a hybrid sleep ended in a wake-up.
func (r *hibernateResult) wokeFromSuspend() bool {
	return strings.Contains(r.Mode, "suspended and woke")
}

package helper

import (
	"os"
	"strconv"
	"strings"
)

// HelperLoglevelParam, on A's kernel command line, sets the console
// loglevel of the helper kernels: khib.helper_loglevel=8 shows all their
// kernel messages, for debugging a helper. It reaches the restore helper
// too, through the command line of the boot that resumes (stage 1 builds
// C's command line from its own).
const HelperLoglevelParam = "khib.helper_loglevel"

// DefaultHelperLoglevel is the helpers' console loglevel when A's command
// line does not set one: that of the kernel's own "quiet", errors and
// worse, whatever A's loglevel is. The rest stays in the helper's log
// buffer. Every byte a helper prints on a serial console costs boot time
// (under QEMU TCG a trapped port write per byte and a status poll before
// it): at A's loglevel=8 the rig's helpers printed about 250 lines per
// boot.
const DefaultHelperLoglevel = 4

// carried are the parameters of A's command line a helper takes over, by
// prefix: where A's console is and how it prints. A's loglevel= and
// quiet are not among them: the helper's loglevel is its own.
// ignore_loglevel is, as the explicit request for every message, and so are
// the debugging aids khib.profile= (cmd/khib: the helpers print a CPU
// profile of their work) and initcall_debug (the kernel times its boot).
var carried = []string{"console=", "earlyprintk=", "panic=", "ignore_loglevel", "printk.time=", "no_console_suspend", "khib.profile=", "initcall_debug"}

// helperCmdline is the save helper's command line.
func helperCmdline(extra string) string {
	return HelperCmdline("helper", extra)
}

// HelperCmdline is the command line of a helper kernel with the given
// khib role, built from the running kernel's (see cmdlineFor).
func HelperCmdline(role, extra string) string {
	b, _ := os.ReadFile("/proc/cmdline")
	return cmdlineFor(string(b), role, extra)
}

// cmdlineFor builds a helper's command line from A's command line a: the
// console settings of a, the helper's loglevel (khib.helper_loglevel=N of
// a, else DefaultHelperLoglevel), nokaslr, no_timer_check, the role and
// extra.
func cmdlineFor(a, role, extra string) string {
	level := DefaultHelperLoglevel
	var keep []string
	for _, w := range strings.Fields(a) {
		if v, ok := strings.CutPrefix(w, HelperLoglevelParam+"="); ok {
			// The kernel's loglevel= takes 0-15; anything else it would
			// reject and print everything at its default.
			if n, err := strconv.Atoi(v); err == nil && n >= 0 && n <= 15 {
				level = n
			}
			continue
		}
		for _, p := range carried {
			if strings.HasPrefix(w, p) {
				keep = append(keep, w)
				break
			}
		}
	}
	keep = append(keep, "loglevel="+strconv.Itoa(level))
	// nokaslr: with KASLR the decompressor may pick a spot outside the
	// region the loader chose for it.
	keep = append(keep, "nokaslr")
	// no_timer_check: the kernel's check of the timer interrupt's routing
	// (arch/x86/kernel/apic/io_apic.c: timer_irq_works) waits for 4 ticks
	// of IRQ 0, 16 ms at HZ=250, and when a busy host starves a virtual
	// CPU it wrongly finds the routing broken: the rig saw helpers fall
	// back to the 8259 and virtual wire (0.1-0.2 s) and once panic with
	// "IO-APIC + timer doesn't work!". The helper runs on the machine A
	// (or the resuming boot) has just run on; without the check the
	// first routing stays, and once calibrated the local APIC timer
	// drives the ticks. KVM, Hyper-V and VMware guests skip it the same
	// way.
	keep = append(keep, "no_timer_check", "khib.role="+role)
	if extra != "" {
		keep = append(keep, extra)
	}
	return strings.Join(keep, " ")
}

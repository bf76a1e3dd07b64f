package vm

import (
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// THPEnv names the environment variable that keeps transparent huge pages
// for the guests' RAM: KHIB_VM_THP=host leaves QEMU to the host's policy.
const THPEnv = "KHIB_VM_THP"

var thpOnce struct {
	sync.Once
	note string
}

// guestTHP turns transparent huge pages off for this process and so for
// the QEMU processes it starts (the setting is inherited across fork and
// exec), unless THPEnv says otherwise, and says what it did.
//
// QEMU asks for huge pages for guest RAM (MADV_HUGEPAGE). On a host that
// is itself a virtual machine, a huge page's first touch then costs the
// host several times what 512 small pages cost: measured on this rig's
// host, 2.0-3.4 s per GiB against 0.4-0.6 s. A guest pays it on the
// first write to its RAM: in C, writing untouched memory of A through
// /dev/mem cost 0.8-5.1 s per GiB the first time with huge pages, 1.1-1.2
// with small ones, and 0.6 the second time (docs/figures.md). A restore
// writes all of A into a fresh QEMU process; real RAM has no such cost.
// Both khib and swsusp restore into fresh RAM, so the setting applies to
// every guest alike.
func guestTHP() string {
	thpOnce.Do(func() {
		if os.Getenv(THPEnv) == "host" {
			thpOnce.note = "guest RAM in huge pages as the host decides (" + THPEnv + "=host)"
			return
		}
		if err := unix.Prctl(unix.PR_SET_THP_DISABLE, 1, 0, 0, 0); err != nil {
			thpOnce.note = fmt.Sprintf("guest RAM in huge pages as the host decides: PR_SET_THP_DISABLE: %v", err)
			return
		}
		thpOnce.note = "guest RAM in small pages (transparent huge pages off for QEMU; " + THPEnv + "=host keeps them)"
	})
	return thpOnce.note
}

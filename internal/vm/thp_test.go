package vm

import (
	"os"
	"strings"
	"testing"
)

// TestGuestTHP checks that guestTHP turns transparent huge pages off for
// this process, which QEMU inherits, as the kernel reports in
// /proc/self/status.
func TestGuestTHP(t *testing.T) {
	if os.Getenv(THPEnv) == "host" {
		t.Skipf("%s=host: the host's setting is kept", THPEnv)
	}
	note := guestTHP()
	if !strings.Contains(note, "small pages") {
		t.Fatalf("guestTHP: %s", note)
	}
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skipf("no /proc/self/status: %v", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "THP_enabled:"); ok {
			if strings.TrimSpace(v) != "0" {
				t.Fatalf("THP_enabled %q after guestTHP, want 0", strings.TrimSpace(v))
			}
			return
		}
	}
	t.Skip("this kernel's /proc/self/status has no THP_enabled line")
}

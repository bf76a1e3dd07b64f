package check

import (
	"strings"
	"testing"
)

// FuzzSysfsValues feeds arbitrary text to the parsers of the small sysfs
// files Run reads.
func FuzzSysfsValues(f *testing.F) {
	f.Add("0x0000000100c66000 1024")
	f.Add("none [integrity] confidentiality")
	f.Add("[")
	f.Add("0x 0x")
	f.Fuzz(func(t *testing.T, s string) {
		if _, _, ok := parseVmcoreinfo(s); ok && len(strings.Fields(s)) != 2 {
			t.Fatalf("accepted %q", s)
		}
		if m := lockdownMode(s); m != "" && !strings.Contains(s, "["+m+"]") {
			t.Fatalf("lockdownMode(%q) = %q", s, m)
		}
	})
}

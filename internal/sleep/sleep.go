// Package sleep suspends the machine to RAM through /sys/power/state.
package sleep

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Root is where /sys is read; tests point it at a fake tree.
var Root = "/"

// MemSleep says how the kernel suspends to RAM: "deep" (ACPI S3) or
// "s2idle", as /sys/power/mem_sleep marks the current one, or an error
// saying why it cannot.
func MemSleep() (string, error) {
	b, err := os.ReadFile(filepath.Join(Root, "sys/power/state"))
	if err != nil {
		return "", fmt.Errorf("this kernel cannot suspend (CONFIG_SUSPEND): %w", err)
	}
	if !hasWord(string(b), "mem") {
		return "", fmt.Errorf("this kernel cannot suspend to RAM: /sys/power/state offers %q, not mem", strings.TrimSpace(string(b)))
	}
	b, err = os.ReadFile(filepath.Join(Root, "sys/power/mem_sleep"))
	if err != nil {
		return "deep", nil // kernels before 4.10 know only S3
	}
	for _, w := range strings.Fields(string(b)) {
		if strings.HasPrefix(w, "[") && strings.HasSuffix(w, "]") {
			return strings.Trim(w, "[]"), nil
		}
	}
	return "", fmt.Errorf("/sys/power/mem_sleep marks no current mode: %q", strings.TrimSpace(string(b)))
}

func hasWord(s, w string) bool {
	for _, f := range strings.Fields(s) {
		if f == w {
			return true
		}
	}
	return false
}

// Suspend suspends the machine to RAM and returns when it has woken (or
// when the kernel gave up suspending, with its reason): a write of "mem"
// to /sys/power/state returns only then (kernel/power/main.c: state_store).
func Suspend() error {
	f, err := os.OpenFile(filepath.Join(Root, "sys/power/state"), os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("suspending: %w", err)
	}
	defer f.Close()
	if _, err := f.WriteString("mem"); err != nil {
		return fmt.Errorf("suspending to RAM: %w", err)
	}
	return nil
}

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/khib/khib/internal/sleep"
)

func TestWoke(t *testing.T) {
	for _, tc := range []struct {
		name string
		figs map[string]any
		mode string
		err  string
	}{
		{"woke", map[string]any{"slept_s": 3.2, "sleep_mode": "deep"}, "fresh, suspended and woke", ""},
		{"no suspend", map[string]any{"suspend_error": "suspending to RAM: device or resource busy"}, "fresh", "could not suspend (suspending to RAM: device or resource busy); it marked the image used"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := &hibernateResult{Mode: "fresh", Figures: tc.figs}
			err := woke(res)
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("woke: %v, want %q", err, tc.err)
			}
			if res.Mode != tc.mode || res.wokeFromSuspend() != (tc.err == "") {
				t.Fatalf("mode %q, woke %v", res.Mode, res.wokeFromSuspend())
			}
		})
	}
	if (&hibernateResult{Mode: "fresh, resumed from disk"}).wokeFromSuspend() {
		t.Fatal("a resume counts as a wake")
	}
}

func TestCanSuspend(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "sys/power"), 0o755)
	old := sleep.Root
	sleep.Root = root
	defer func() { sleep.Root = old }()
	if _, err := canSuspend(); err == nil || !strings.Contains(err.Error(), "in the helper kernel") {
		t.Fatalf("canSuspend without /sys/power/state: %v", err)
	}
	os.WriteFile(filepath.Join(root, "sys/power/state"), []byte("freeze mem disk\n"), 0o644)
	os.WriteFile(filepath.Join(root, "sys/power/mem_sleep"), []byte("s2idle [deep]\n"), 0o644)
	if mode, err := canSuspend(); err != nil || mode != "deep" {
		t.Fatalf("canSuspend = %q, %v", mode, err)
	}
}

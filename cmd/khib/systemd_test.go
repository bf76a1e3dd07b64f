package main

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestSleepHooks(t *testing.T) {
	dir := t.TempDir()
	etc, usr := filepath.Join(dir, "etc"), filepath.Join(dir, "usr")
	os.MkdirAll(etc, 0o755)
	os.MkdirAll(usr, 0o755)
	log := filepath.Join(dir, "log")
	script := func(p, tag string) {
		os.WriteFile(p, []byte("#!/bin/sh\necho \""+tag+" $1 $2 $SYSTEMD_SLEEP_ACTION\" >>"+log+"\n"), 0o755)
	}
	script(filepath.Join(usr, "10-a"), "usr-a")
	script(filepath.Join(usr, "20-b"), "usr-b")
	script(filepath.Join(etc, "20-b"), "etc-b") // overrides usr's 20-b
	script(filepath.Join(usr, "30-masked"), "masked")
	os.Symlink("/dev/null", filepath.Join(etc, "30-masked"))
	os.WriteFile(filepath.Join(usr, "40-not-executable"), []byte("#!/bin/sh\nexit 1\n"), 0o644)
	os.WriteFile(filepath.Join(usr, "50-fails"), []byte("#!/bin/sh\nexit 3\n"), 0o755)
	os.Symlink(usr, filepath.Join(dir, "lib")) // like /lib -> usr/lib

	hooks := sleepHooks([]string{etc, usr, filepath.Join(dir, "lib"), filepath.Join(dir, "missing")})
	want := []string{filepath.Join(usr, "10-a"), filepath.Join(etc, "20-b"), filepath.Join(usr, "50-fails")}
	if strings.Join(hooks, " ") != strings.Join(want, " ") {
		t.Fatalf("hooks %v, want %v", hooks, want)
	}
	var out strings.Builder
	runSleepHooks(hooks, "pre", 10*time.Second, &syncWriter{b: &out})
	b, _ := os.ReadFile(log)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	sort.Strings(lines)
	if strings.Join(lines, "|") != "etc-b pre hibernate hibernate|usr-a pre hibernate hibernate" {
		t.Errorf("hooks ran as %q", lines)
	}
	if !strings.Contains(out.String(), "50-fails pre hibernate failed: exit status 3 (ignored") {
		t.Errorf("a failing hook is not reported: %q", out.String())
	}
}

func TestSleepHookTimeout(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "slow")
	os.WriteFile(p, []byte("#!/bin/sh\nexec sleep 30\n"), 0o755)
	var out strings.Builder
	t0 := time.Now()
	runSleepHooks([]string{p}, "post", 300*time.Millisecond, &syncWriter{b: &out})
	if time.Since(t0) > 10*time.Second || !strings.Contains(out.String(), "killed after") {
		t.Errorf("a hung hook: %v, %q", time.Since(t0), out.String())
	}
}

// syncWriter is written by several hooks' output copiers at once.
type syncWriter struct {
	mu sync.Mutex
	b  *strings.Builder
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

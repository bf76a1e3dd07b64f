package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func runCLI(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

func TestList(t *testing.T) {
	code, out, _ := runCLI("list")
	if code != 0 || !strings.Contains(out, "boot ") {
		t.Errorf("list: %d %q", code, out)
	}
}

func TestHelp(t *testing.T) {
	code, out, _ := runCLI("--help")
	if code != 0 || !strings.Contains(out, "-scenario") || !strings.Contains(out, "KHIB_VM_ACCEL") {
		t.Errorf("help: %d %q", code, out)
	}
	if code, _, _ := runCLI(); code != 2 {
		t.Errorf("no arguments: status %d", code)
	}
}

// TestRunErrorsStillReport checks that even a run that cannot start ends
// with exactly one JSON line.
func TestRunErrorsStillReport(t *testing.T) {
	for _, args := range [][]string{
		{"run"},
		{"run", "--scenario", "no-such"},
		{"run", "--scenario", "boot", "--kernel", "/nonexistent/bzImage"},
		{"run", "--scenario", "boot", "extra"},
	} {
		code, out, errOut := runCLI(args...)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		var rep map[string]any
		if code == 0 || len(lines) != 1 || json.Unmarshal([]byte(lines[0]), &rep) != nil || rep["ok"] != false || rep["error"] == "" {
			t.Errorf("%q: status %d, stdout %q, stderr %q", args, code, out, errOut)
		}
	}
}

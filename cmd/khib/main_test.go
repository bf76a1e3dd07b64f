package main

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/khib/khib/internal/check"
)

// buildKhib builds the real binary once per test run.
func buildKhib(t *testing.T) string {
	t.Helper()
	// Not t.TempDir: its parent is private, and one test runs khib as nobody.
	dir, err := os.MkdirTemp("", "khib-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "khib")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func run(t *testing.T, cred *syscall.Credential, bin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("running %s: %v", bin, err)
	}
	return code, o.String(), e.String()
}

// TestCheckOnThisHost runs khib check on the machine the tests run on. Its
// verdict must agree with its own exit status and, for the region, with
// /proc/iomem: a host without crashkernel= must get a no.
func TestCheckOnThisHost(t *testing.T) {
	bin := buildKhib(t)
	code, out, _ := run(t, nil, bin, "check", "--json")
	var rep check.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("khib check --json printed %q: %v", out, err)
	}
	if (code == 0) != rep.OK {
		t.Fatalf("exit %d but ok=%v", code, rep.OK)
	}
	allOK := true
	for _, c := range rep.Checks {
		allOK = allOK && c.OK
		if !c.OK && c.Fix == "" {
			t.Errorf("check %s failed without saying what to do", c.Name)
		}
	}
	if allOK != rep.OK {
		t.Fatalf("ok=%v but the checks say %v", rep.OK, allOK)
	}
	iomem, err := os.ReadFile("/proc/iomem")
	if err == nil && os.Geteuid() == 0 && !strings.Contains(string(iomem), "Crash kernel") && rep.OK {
		t.Fatal("khib check says yes on a host without a reserved region")
	}
	// The text form carries the same verdict.
	code2, text, _ := run(t, nil, bin, "check")
	if code2 != code || !strings.Contains(text, "khib") {
		t.Fatalf("text form exit %d (json %d):\n%s", code2, code, text)
	}
}

// TestJumpRefusesBadInput checks refusals that happen before anything is
// loaded, so they are safe on any host.
func TestJumpRefusesBadInput(t *testing.T) {
	bin := buildKhib(t)
	notKernel := filepath.Join(filepath.Dir(bin), "vmlinuz")
	os.WriteFile(notKernel, []byte(strings.Repeat("not a kernel\n", 200)), 0o644)
	tests := []struct {
		name string
		cred *syscall.Credential
		args []string
		want string
	}{
		{"not a bzImage", nil, []string{"check", "--jump", "--kernel", notKernel}, "not a bzImage"},
		{"missing kernel", nil, []string{"check", "--jump", "--kernel", "/nonexistent/bzImage"}, "no such file"},
		{"not root", &syscall.Credential{Uid: 65534, Gid: 65534}, []string{"check", "--jump", "--kernel", notKernel}, "must run as root"},
		{"unknown command", nil, []string{"frobnicate"}, "unknown command"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.cred != nil && os.Geteuid() != 0 {
				t.Skip("needs root to switch to another user")
			}
			if tc.cred == nil && os.Geteuid() != 0 && tc.want != "unknown command" {
				tc.want = "must run as root"
			}
			code, _, stderr := run(t, tc.cred, bin, tc.args...)
			if code == 0 || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want failure mentioning %q", code, stderr, tc.want)
			}
			if tc.want != "unknown command" && strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
				t.Fatalf("want a one-line reason, got %q", stderr)
			}
		})
	}
}

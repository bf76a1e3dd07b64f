package kexec

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestPurgatoryBinaryUpToDate reassembles purgatory.S and compares, so the
// committed blob cannot drift from its source.
func TestPurgatoryBinaryUpToDate(t *testing.T) {
	for _, tool := range []string{"as", "ld", "objcopy"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (binutils): cannot reassemble the purgatory", tool)
		}
	}
	dir := t.TempDir()
	for _, f := range []string{"purgatory.S", "build.sh"} {
		b, err := os.ReadFile(filepath.Join("purgatory", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command(filepath.Join(dir, "build.sh")).CombinedOutput(); err != nil {
		t.Fatalf("assembling: %v\n%s", err, out)
	}
	got, err := os.ReadFile(filepath.Join(dir, "purgatory.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, purgatoryBin) {
		t.Fatal("purgatory.bin is stale: run go generate ./internal/kexec")
	}
}

func TestPurgatoryBuild(t *testing.T) {
	if _, err := (Purgatory{Copies: make([]Copy, 5)}).Build(); err == nil {
		t.Fatal("five copies accepted")
	}
	b, err := Purgatory{Entry: 0x1000200, BootParams: 0x2000000}.Build()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(b, purgatoryBin) {
		t.Fatal("parameters were not patched in")
	}
	if !bytes.Equal(purgatoryBin[:8], b[:8]) {
		t.Fatal("code changed")
	}
}

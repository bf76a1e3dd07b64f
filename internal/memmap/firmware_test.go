package memmap

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeEntries(t *testing.T, dir string, entries map[string][3]string) {
	t.Helper()
	for n, e := range entries {
		d := filepath.Join(dir, n)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, f := range []string{"start", "end", "type"} {
			if e[i] == "-" {
				continue // leave the file out
			}
			if err := os.WriteFile(filepath.Join(d, f), []byte(e[i]+"\n"), 0o444); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestReadFirmwareMemmap(t *testing.T) {
	// A QEMU E820 table; sysfs numbers entries in table order, and
	// ReadDir returns "10" before "2", so sorting matters.
	dir := t.TempDir()
	writeEntries(t, dir, map[string][3]string{
		"0":  {"0x0", "0x9fbff", "System RAM"},
		"1":  {"0x9fc00", "0x9ffff", "Reserved"},
		"2":  {"0xf0000", "0xfffff", "Reserved"},
		"3":  {"0x100000", "0x7ffdffff", "System RAM"},
		"4":  {"0x7ffe0000", "0x7fffffff", "Reserved"},
		"5":  {"0xb0000000", "0xbfffffff", "Reserved"},
		"6":  {"0xfed1c000", "0xfed1ffff", "Reserved"},
		"7":  {"0xfeffc000", "0xfeffffff", "Reserved"},
		"8":  {"0xfffc0000", "0xffffffff", "Reserved"},
		"9":  {"0x100000000", "0x17fffffff", "System RAM"},
		"10": {"0x7ffdf000", "0x7ffdffff", "ACPI Tables"},
	})
	if err := os.WriteFile(filepath.Join(dir, "uevent"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	es, err := ReadFirmwareMemmap(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 11 {
		t.Fatalf("%d entries, want 11", len(es))
	}
	for i := 1; i < len(es); i++ {
		if es[i].Start < es[i-1].Start {
			t.Errorf("not sorted at %d: %v after %v", i, es[i], es[i-1])
		}
	}
	want := []Entry{
		{Range{0, 0x9fc00}, "System RAM"},
		{Range{0x9fc00, 0xa0000}, "Reserved"},
	}
	for i, w := range want {
		if es[i] != w {
			t.Errorf("entry %d = %+v, want %+v", i, es[i], w)
		}
	}
	if es[4] != (Entry{Range{0x7ffdf000, 0x7ffe0000}, "ACPI Tables"}) {
		t.Errorf("entry 4 = %+v", es[4])
	}
	if es[10].Range != (Range{0x100000000, 0x180000000}) {
		t.Errorf("last = %v", es[10])
	}
}

func TestReadFirmwareMemmapErrors(t *testing.T) {
	tests := []struct {
		name    string
		entry   [3]string
		wantErr string
	}{
		{"missing type", [3]string{"0x0", "0xfff", "-"}, "type"},
		{"missing end", [3]string{"0x0", "-", "Reserved"}, "end"},
		{"bad start", [3]string{"zero", "0xfff", "Reserved"}, "start"},
		{"inverted", [3]string{"0x2000", "0xfff", "Reserved"}, "before start"},
		{"overflow", [3]string{"0x10000000000000000", "0xfff", "Reserved"}, "start"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeEntries(t, dir, map[string][3]string{"0": tt.entry})
			_, err := ReadFirmwareMemmap(dir)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
	if _, err := ReadFirmwareMemmap(filepath.Join(t.TempDir(), "absent")); err == nil {
		t.Fatal("missing dir accepted")
	}
}

// TestReadFirmwareMemmapHere reads this machine's map and checks it against
// /proc/iomem where both are visible.
func TestReadFirmwareMemmapHere(t *testing.T) {
	const dir = "/sys/firmware/memmap"
	if _, err := os.Stat(dir); err != nil {
		t.Skip(err)
	}
	es, err := ReadFirmwareMemmap(dir)
	if err != nil {
		t.Fatal(err)
	}
	var ram uint64
	for _, e := range es {
		if e.Type == "System RAM" {
			ram += e.Size()
		}
	}
	t.Logf("%d entries, %d MiB System RAM", len(es), ram>>20)
	if len(es) == 0 || ram == 0 {
		t.Error("empty firmware map")
	}
	f, err := os.Open("/proc/iomem")
	if err != nil {
		return
	}
	defer f.Close()
	m, err := ParseIomem(f)
	if err != nil {
		return // hidden addresses, most likely
	}
	// The kernel builds its System RAM resources from this very table, so
	// each of them lies within a firmware "System RAM" entry.
	for _, r := range m.SystemRAM() {
		covered := false
		for _, e := range es {
			if e.Type == "System RAM" && e.ContainsRange(r) {
				covered = true
			}
		}
		if !covered {
			t.Errorf("iomem System RAM %v is in no firmware System RAM entry", r)
		}
	}
}

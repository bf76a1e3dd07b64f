package memmap

import (
	"errors"
	"os"
	"strings"
	"testing"
)

// debianIomem is the shape of /proc/iomem on a QEMU q35 guest booted with
// crashkernel=256M.
const debianIomem = `00000000-00000fff : Reserved
00001000-0009fbff : System RAM
0009fc00-0009ffff : Reserved
000a0000-000bffff : PCI Bus 0000:00
000c0000-000c99ff : Video ROM
000ca000-000cadff : Adapter ROM
000f0000-000fffff : Reserved
  000f0000-000fffff : System ROM
00100000-7ffdffff : System RAM
  1a000000-2a1fffff : Kernel code
  2a200000-2aa8afff : Kernel rodata
  2ac00000-2ad0ba3f : Kernel data
  2b0a2000-2b3fffff : Kernel bss
  6f000000-7effffff : Crash kernel
7ffe0000-7fffffff : Reserved
80000000-afffffff : PCI Bus 0000:00
b0000000-bfffffff : PCI ECAM 0000 [bus 00-ff]
  b0000000-bfffffff : Reserved
c0000000-febfffff : PCI Bus 0000:00
  fd000000-fdffffff : 0000:00:01.0
    fd000000-fdffffff : bochs-drm
  feb80000-febbffff : 0000:00:02.0
fec00000-fec003ff : IOAPIC 0
fed00000-fed003ff : HPET 0
  fed00000-fed003ff : PNP0103:00
fee00000-fee00fff : Local APIC
feffc000-feffffff : Reserved
fffc0000-ffffffff : Reserved
100000000-17fffffff : System RAM
380000000000-3807ffffffff : PCI Bus 0000:00
`

// hide turns s into what a non-root reader sees.
func hide(s string) string {
	var b strings.Builder
	for _, line := range strings.SplitAfter(s, "\n") {
		body := strings.TrimLeft(line, " ")
		_, name, ok := strings.Cut(body, " : ")
		if !ok {
			b.WriteString(line)
			continue
		}
		b.WriteString(line[:len(line)-len(body)] + "00000000-00000000 : " + name)
	}
	return b.String()
}

func TestParseIomem(t *testing.T) {
	m, err := ParseIomem(strings.NewReader(debianIomem))
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Resources) != 19 {
		t.Errorf("%d top-level resources, want 19", len(m.Resources))
	}
	ram := m.SystemRAM()
	wantRAM := []Range{{0x1000, 0x9fc00}, {0x100000, 0x7ffe0000}, {0x100000000, 0x180000000}}
	if len(ram) != len(wantRAM) {
		t.Fatalf("SystemRAM = %v", ram)
	}
	for i := range ram {
		if ram[i] != wantRAM[i] {
			t.Errorf("SystemRAM[%d] = %v, want %v", i, ram[i], wantRAM[i])
		}
	}
	ck, ok := m.CrashKernel()
	if !ok || ck != (Range{0x6f000000, 0x7f000000}) || ck.MiB() != 256 {
		t.Errorf("CrashKernel = %v, %v", ck, ok)
	}
	if !ram[1].ContainsRange(ck) {
		t.Errorf("crash kernel %v outside System RAM %v", ck, ram[1])
	}
	drm := m.Find("bochs-drm")
	if len(drm) != 1 || drm[0].Range != (Range{0xfd000000, 0xfe000000}) {
		t.Errorf("Find(bochs-drm) = %v", drm)
	}
	if got := len(m.Find("Reserved")); got != 7 {
		t.Errorf("Find(Reserved) found %d, want 7", got)
	}
	pci := m.Find("PCI Bus 0000:00")
	if len(pci) != 4 || len(pci[2].Children) != 2 || len(pci[2].Children[0].Children) != 1 {
		t.Errorf("PCI tree wrong: %+v", pci)
	}
	if got := m.Resources[len(m.Resources)-1].Range; got != (Range{0x380000000000, 0x380800000000}) {
		t.Errorf("last = %v", got)
	}
}

func TestParseIomemHidden(t *testing.T) {
	m, err := ParseIomem(strings.NewReader(hide(debianIomem)))
	if !errors.Is(err, ErrAddressesHidden) {
		t.Fatalf("err = %v, want ErrAddressesHidden", err)
	}
	if m == nil || len(m.Find("Crash kernel")) != 1 {
		t.Fatalf("names lost when hidden: %+v", m)
	}
	// An all-zero first line alone is not enough: a real map starts with
	// 00000000-00000fff.
	if _, err := ParseIomem(strings.NewReader("00000000-00000000 : Reserved\n00001000-0009fbff : System RAM\n")); err != nil {
		t.Fatalf("partly zero: %v", err)
	}
}

func TestParseIomemCases(t *testing.T) {
	tests := []struct {
		name    string
		text    string
		top     int
		wantErr string
	}{
		{name: "empty", text: "", top: 0},
		{name: "blank lines", text: "\n00000000-00000fff : Reserved\n\n", top: 1},
		{name: "no newline", text: "00000000-00000fff : Reserved", top: 1},
		{name: "empty name", text: "00000000-00000fff : \n00001000-00001fff :\n", top: 2},
		{name: "name with colon", text: "00000000-00000fff : a : b\n", top: 1},
		{name: "zero-size", text: "00001000-00000fff : empty\n", top: 1},
		{name: "top of space", text: "ffffffff00000000-ffffffffffffffff : top\n", top: 1},
		{name: "child first", text: "  00000000-00000fff : Reserved\n", wantErr: "indented 1 levels"},
		{name: "skip a level", text: "00000000-0fffffff : a\n    00000000-00000fff : b\n", wantErr: "line 2"},
		{name: "odd indent", text: "00000000-0fffffff : a\n   00000000-00000fff : b\n", wantErr: "odd indentation"},
		{name: "tab", text: "\t00000000-00000fff : a\n", wantErr: "bad address"},
		{name: "no dash", text: "00000000 : a\n", wantErr: "start-end"},
		{name: "no colon", text: "00000000-00000fff Reserved\n", wantErr: "expected"},
		{name: "0x prefix", text: "0x0-0xfff : a\n", wantErr: "bad address"},
		{name: "sign", text: "+0-fff : a\n", wantErr: "bad address"},
		{name: "too long", text: "10000000000000000-10000000000000001 : a\n", wantErr: "bad address"},
		{name: "inverted", text: "00002000-00000fff : a\n", wantErr: "before start"},
		{name: "long line", text: "0-1 : " + strings.Repeat("x", maxIomemLine), wantErr: "longer than"},
		{name: "deep", text: deep(maxDepth + 1), wantErr: "nested more than"},
		{name: "deep ok", text: deep(maxDepth), top: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ParseIomem(strings.NewReader(tt.text))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(m.Resources) != tt.top {
				t.Errorf("%d top-level resources, want %d", len(m.Resources), tt.top)
			}
		})
	}
}

// deep returns n lines, each nested under the one before.
func deep(n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		b.WriteString(strings.Repeat("  ", i) + "00001000-00001fff : x\n")
	}
	return b.String()
}

func TestParseIomemSizeBound(t *testing.T) {
	line := "00001000-00001fff : x\n"
	big := strings.Repeat(line, MaxIomemSize/len(line)+1)
	if _, err := ParseIomem(strings.NewReader(big)); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("err = %v", err)
	}
}

func TestCrashKernelHighLow(t *testing.T) {
	// crashkernel=1G,high leaves a large region above 4 GiB and a small
	// one below for swiotlb and DMA.
	const text = `00100000-bffdffff : System RAM
  b0000000-bfffffff : Crash kernel
100000000-23fffffff : System RAM
  200000000-23fffffff : Crash kernel
`
	m, err := ParseIomem(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	ck, ok := m.CrashKernel()
	if !ok || ck != (Range{0x200000000, 0x240000000}) {
		t.Errorf("CrashKernel = %v, %v", ck, ok)
	}
	if got := len(m.Find("Crash kernel")); got != 2 {
		t.Errorf("Find found %d", got)
	}
	none, _ := ParseIomem(strings.NewReader(debianIomem[:strings.Index(debianIomem, "  6f0")]))
	if _, ok := none.CrashKernel(); ok {
		t.Error("CrashKernel found in a map without one")
	}
}

// TestParseIomemHere parses this machine's /proc/iomem.
func TestParseIomemHere(t *testing.T) {
	f, err := os.Open("/proc/iomem")
	if err != nil {
		t.Skip(err)
	}
	defer f.Close()
	m, err := ParseIomem(f)
	if errors.Is(err, ErrAddressesHidden) {
		t.Logf("addresses hidden (not root); %d top-level resources", len(m.Resources))
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	var total uint64
	for _, r := range m.SystemRAM() {
		total += r.Size()
	}
	ck, ok := m.CrashKernel()
	t.Logf("System RAM %d MiB in %d ranges; crash kernel %v (%v)", total>>20, len(m.SystemRAM()), ck, ok)
	if total == 0 {
		t.Error("no System RAM")
	}
}

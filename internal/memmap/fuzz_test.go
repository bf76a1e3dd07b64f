package memmap

import (
	"bytes"
	"errors"
	"testing"
)

func FuzzParseIomem(f *testing.F) {
	f.Add([]byte(debianIomem))
	f.Add([]byte(hide(debianIomem)))
	f.Add([]byte("00001000-00000fff : empty\n  00001000-00001000 : x\n    0-ffffffffffffffff : :\n"))
	f.Add([]byte("0-0 : a\n  0-0 : b\n0-0 :\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseIomem(bytes.NewReader(b))
		if err != nil && !errors.Is(err, ErrAddressesHidden) {
			return
		}
		// Every resource the tree holds is reachable through Find, and
		// the helpers agree with each other.
		n := 0
		var walk func([]Resource)
		walk = func(rs []Resource) {
			for _, r := range rs {
				n++
				if len(m.Find(r.Name)) == 0 {
					t.Fatalf("Find(%q) misses a resource", r.Name)
				}
				if r.Range.End < r.Range.Start {
					t.Fatalf("inverted range %v", r.Range)
				}
				walk(r.Children)
			}
		}
		walk(m.Resources)
		if n > len(b) {
			t.Fatalf("%d resources from %d bytes", n, len(b))
		}
		ck, ok := m.CrashKernel()
		if ok != (len(m.Find("Crash kernel")) > 0) || (!ok && ck != Range{}) {
			t.Fatalf("CrashKernel = %v, %v", ck, ok)
		}
		_ = m.SystemRAM()
	})
}

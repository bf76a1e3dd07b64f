package cpio

import (
	"bytes"
	"io"
	"testing"
)

func FuzzReader(f *testing.F) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	_ = w.Dir("d", 0o755)
	_ = w.File("d/f", 0o644, []byte("hello"))
	_ = w.Symlink("l", "d/f")
	_ = w.CharDev("c", 0o600, 5, 1)
	_ = w.Close()
	f.Add(buf.Bytes())
	f.Add([]byte{})
	f.Add([]byte(header([13]uint32{1, TypeReg, 0, 0, 1, 0, 0xffffffff, 0, 0, 0, 0, 0xffffffff, 0})))
	f.Add(buf.Bytes()[:120])
	f.Fuzz(func(t *testing.T, in []byte) {
		r := NewReader(bytes.NewReader(in))
		total := 0
		// Every entry consumes at least a header, so an archive of n bytes
		// cannot hold more than n/110 entries: more would mean a loop.
		for n := 0; ; n++ {
			if n > len(in)/headerLen+1 {
				t.Fatalf("%d entries from %d bytes", n, len(in))
			}
			h, err := r.Next()
			if err != nil {
				return
			}
			if len(h.Name) >= MaxNameSize {
				t.Fatalf("name of %d bytes accepted", len(h.Name))
			}
			m, err := io.Copy(io.Discard, r)
			total += int(m)
			if m > h.Size || total > len(in) {
				t.Fatalf("read %d bytes of an entry of %d (total %d of %d)", m, h.Size, total, len(in))
			}
			if err != nil {
				return
			}
		}
	})
}

package blockmap

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
)

// memDev is a device in memory.
type memDev struct{ b []byte }

func (d *memDev) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(d.b)) {
		return 0, io.EOF
	}
	n := copy(p, d.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (d *memDev) WriteAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > int64(len(d.b)) {
		return 0, io.ErrShortWrite
	}
	return copy(d.b[off:], p), nil
}

func pages(n int64) int64 { return n * PageSize }

// fragmented returns every other run of 1..4 pages of a device of n pages,
// from page 1 on (page 0 is the anchor).
func fragmented(r *rand.Rand, n int64) []Extent {
	var out []Extent
	for p := int64(1); p < n; {
		k := min(int64(1+r.IntN(4)), n-p)
		out = append(out, Extent{pages(p), pages(k)})
		p += k + int64(1+r.IntN(3))
	}
	return out
}

func TestRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	tests := []struct {
		name    string
		kind    Kind
		devPage int64
		extents []Extent
	}{
		{"one extent (a file)", KindFile, 64, []Extent{{pages(1), pages(63)}}},
		{"two extents", KindFile, 64, []Extent{{pages(1), pages(10)}, {pages(40), pages(20)}}},
		{"swap, fragmented over several map pages", KindSwap, 4000, fragmented(r, 4000)},
		{"map pages end one extent exactly", KindSwap, 16, []Extent{{pages(1), pages(1)}, {pages(5), pages(3)}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dev := &memDev{make([]byte, pages(tt.devPage))}
			copy(dev.b[SwapMagicOff:], SwapMagic)
			copy(dev.b[AnchorSize:], "swap header fields")
			nonce := [16]byte{1, 2, 3}
			m, err := Plan(tt.kind, nonce, 0, tt.extents)
			if err != nil {
				t.Fatal(err)
			}
			var want int64
			for _, e := range tt.extents {
				want += e.Len
			}
			if got := m.Size + int64(len(m.MapAt))*PageSize; got != want {
				t.Fatalf("map pages and view take %d bytes of %d", got, want)
			}
			if err := m.Write(dev, tt.kind == KindSwap); err != nil {
				t.Fatal(err)
			}
			got, err := Read(dev, 0, int64(len(dev.b)))
			if err != nil {
				t.Fatal(err)
			}
			if got.Kind != tt.kind || got.Nonce != nonce || got.Size != m.Size || len(got.List) != len(m.List) {
				t.Fatalf("read back %+v, wrote %+v", got.Anchor, m.Anchor)
			}
			if got.HeldSwap != (tt.kind == KindSwap) {
				t.Fatalf("HeldSwap %v", got.HeldSwap)
			}
			// Whatever goes through one view reads back through the
			// other, and lands only inside the extents.
			data := make([]byte, m.Size)
			for i := range data {
				data[i] = byte(i*7 + 1)
			}
			if _, err := m.View(dev).WriteAt(data, 0); err != nil {
				t.Fatal(err)
			}
			back := make([]byte, m.Size)
			if _, err := got.View(dev).ReadAt(back, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(back, data) {
				t.Fatal("view read back differs")
			}
			if again, err := Read(dev, 0, int64(len(dev.b))); err != nil || again.Size != m.Size {
				t.Fatalf("the view's writes damaged the map: %v", err)
			}
			if !bytes.Equal(dev.b[AnchorSize:AnchorSize+18], []byte("swap header fields")) {
				t.Fatal("the anchor overwrote the swap header's fields")
			}
			if tt.kind == KindSwap {
				changed, err := RestoreSwap(dev, 0)
				if err != nil || !changed {
					t.Fatalf("RestoreSwap: %v %v", changed, err)
				}
				if string(dev.b[SwapMagicOff:PageSize]) != SwapMagic {
					t.Fatal("swap signature not restored")
				}
				if _, err := Read(dev, 0, int64(len(dev.b))); !errors.Is(err, ErrNoAnchor) {
					t.Fatalf("after RestoreSwap: %v, want ErrNoAnchor", err)
				}
				if changed, _ := RestoreSwap(dev, 0); changed {
					t.Fatal("a second RestoreSwap changed something")
				}
			}
		})
	}
}

func TestViewBounds(t *testing.T) {
	dev := &memDev{make([]byte, pages(8))}
	v := NewView(dev, []Extent{{pages(2), pages(1)}, {pages(5), pages(2)}})
	if v.Size() != pages(3) {
		t.Fatalf("size %d", v.Size())
	}
	buf := make([]byte, 100)
	if n, err := v.ReadAt(buf, pages(3)-50); n != 50 || err != io.EOF {
		t.Fatalf("read across the end: %d %v", n, err)
	}
	if n, err := v.WriteAt(buf, pages(3)-50); n != 50 || !errors.Is(err, io.ErrShortWrite) {
		t.Fatalf("write across the end: %d %v", n, err)
	}
	// A write across the extents' seam lands in both.
	if _, err := v.WriteAt([]byte{9, 9}, pages(1)-1); err != nil {
		t.Fatal(err)
	}
	if dev.b[pages(3)-1] != 9 || dev.b[pages(5)] != 9 {
		t.Fatal("write across a seam misplaced")
	}
}

func TestReadRefuses(t *testing.T) {
	good := func() *memDev {
		dev := &memDev{make([]byte, pages(64))}
		m, err := Plan(KindFile, [16]byte{7}, pages(1), []Extent{{pages(2), pages(10)}, {pages(20), pages(20)}})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Write(dev, false); err != nil {
			t.Fatal(err)
		}
		return dev
	}
	tests := []struct {
		name   string
		off    int64
		mut    func(b []byte)
		want   error
		saying string
	}{
		{"nothing there", pages(3), nil, ErrNoAnchor, "no khib anchor"},
		{"flipped anchor byte", pages(1), func(b []byte) { b[pages(1)+40] ^= 1 }, ErrCorrupt, "checksum"},
		{"flipped map extent", pages(1), func(b []byte) { b[pages(2)+40] ^= 1 }, ErrCorrupt, "not on the"},
		{"flipped map padding", pages(1), func(b []byte) { b[pages(2)+4000] ^= 1 }, ErrCorrupt, "hash"},
		{"anchor copied elsewhere", pages(30), func(b []byte) { copy(b[pages(30):], b[pages(1):pages(2)]) }, ErrCorrupt, "copy of another anchor"},
		{"offset not a page", 100, nil, ErrNoAnchor, "not a page"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dev := good()
			if tt.mut != nil {
				tt.mut(dev.b)
			}
			_, err := Read(dev, tt.off, int64(len(dev.b)))
			if !errors.Is(err, tt.want) || !bytes.Contains([]byte(err.Error()), []byte(tt.saying)) {
				t.Fatalf("got %v, want %v saying %q", err, tt.want, tt.saying)
			}
		})
	}
	// The device shrank under the map.
	dev := good()
	if _, err := Read(dev, pages(1), pages(30)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("extents past the device: %v", err)
	}
}

func TestPlanRefuses(t *testing.T) {
	if _, err := Plan(KindFile, [16]byte{}, 0, []Extent{{1, PageSize}}); err == nil {
		t.Fatal("unaligned extent accepted")
	}
	if _, err := Plan(KindFile, [16]byte{}, 0, []Extent{{PageSize, PageSize}}); err == nil {
		t.Fatal("one page accepted: no room for an image after the map")
	}
}

func TestCoalesce(t *testing.T) {
	got := Coalesce([]Extent{{pages(5), pages(1)}, {pages(1), pages(2)}, {pages(3), pages(1)}, {pages(6), pages(1)}})
	want := []Extent{{pages(1), pages(3)}, {pages(5), pages(2)}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestList(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	ext := fragmented(r, 3000) // several pages
	at := make([]uint64, ListPages(len(ext)))
	for i := range at {
		at[i] = uint64(0x100000 + 0x3000*i) // scattered "physical" pages
	}
	lp, l, err := EncodeList(ext, at)
	if err != nil {
		t.Fatal(err)
	}
	mem := map[uint64][]byte{}
	for i, p := range lp {
		mem[at[i]] = p
	}
	read := func(a uint64) ([]byte, error) {
		p, ok := mem[a]
		if !ok {
			return nil, errors.New("no page there")
		}
		return p, nil
	}
	got, err := DecodeList(l, read, pages(3000))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(ext) {
		t.Fatalf("%d extents back, %d sent", len(got), len(ext))
	}
	for i := range got {
		if got[i] != ext[i] {
			t.Fatalf("extent %d: %v, sent %v", i, got[i], ext[i])
		}
	}
	// A page that moved (another page's bytes at its address) is caught.
	mem[at[1]] = append([]byte(nil), mem[at[0]]...)
	if _, err := DecodeList(l, read, pages(3000)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("moved page: %v", err)
	}
	mem[at[1]] = lp[1]
	lp[1][4090] ^= 1
	if _, err := DecodeList(l, read, pages(3000)); !errors.Is(err, ErrCorrupt) || !bytes.Contains([]byte(err.Error()), []byte("hash")) {
		t.Fatalf("flipped padding: %v", err)
	}
}

package blockmap

import (
	"testing"
)

// FuzzRead: any bytes at the anchor and in the map give a map or an
// error, never a panic or an allocation beyond the device.
func FuzzRead(f *testing.F) {
	dev := &memDev{make([]byte, pages(24))}
	m, err := Plan(KindSwap, [16]byte{1}, 0, []Extent{{pages(1), pages(3)}, {pages(8), pages(10)}})
	if err != nil {
		f.Fatal(err)
	}
	if err := m.Write(dev, true); err != nil {
		f.Fatal(err)
	}
	f.Add(dev.b[:pages(2)])
	f.Fuzz(func(t *testing.T, head []byte) {
		d := &memDev{make([]byte, pages(24))}
		copy(d.b, head)
		got, err := Read(d, 0, int64(len(d.b)))
		if err != nil {
			return
		}
		if got.View(d).Size() > int64(len(d.b)) {
			t.Fatalf("a view larger than the device: %d", got.Size)
		}
		buf := make([]byte, 8192)
		got.View(d).ReadAt(buf, 0)
		got.View(d).WriteAt(buf, got.Size-100)
	})
}

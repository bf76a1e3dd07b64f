package store

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/khib/khib/internal/blockmap"
	"github.com/khib/khib/internal/image"
	"github.com/khib/khib/internal/target"
)

func TestWhere(t *testing.T) {
	dir, err := target.ParseSpec("dir:LABEL=USB:/khib/image")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []Where{
		{},
		{Mapped: true, Anchor: 0},
		{Mapped: true, Anchor: 1 << 30},
		{Dir: &dir},
		{S3: "s3://b/k?endpoint=10.0.2.2:9000&tls=0&creds=/etc/khib/s3.creds"},
	} {
		got, err := ParseWhere(w.String())
		if err != nil {
			t.Fatalf("%q: %v", w.String(), err)
		}
		if got.String() != w.String() {
			t.Fatalf("%q parses back as %q", w.String(), got.String())
		}
	}
	for _, bad := range []string{"map@", "map@12", "map@-4096", "elsewhere", "dir:nothing"} {
		if _, err := ParseWhere(bad); err == nil {
			t.Errorf("ParseWhere(%q) accepted", bad)
		}
	}
}

// TestMappedImage writes an image through a block map on a disk file and
// reads it back through Open, as the helpers and stage 1 do.
func TestMappedImage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(path, make([]byte, 2<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	const pg = blockmap.PageSize
	// Every other 16-page run, from page 8 on.
	var ext []blockmap.Extent
	for p := int64(8); p+16 <= 512; p += 32 {
		ext = append(ext, blockmap.Extent{Off: p * pg, Len: 16 * pg})
	}
	nonce := [16]byte{9}
	m, err := blockmap.Plan(blockmap.KindSwap, nonce, 0, ext)
	if err != nil {
		t.Fatal(err)
	}
	if err := image.WriteReservation(m.View(f), nonce, m.Size); err != nil {
		t.Fatal(err)
	}
	if err := m.Write(f, true); err != nil {
		t.Fatal(err)
	}
	f.Close()

	s, err := Open(path, Where{Mapped: true, Anchor: 0}, true)
	if err != nil {
		t.Fatal(err)
	}
	if s.Kind() != "swap" || s.Size() != m.Size || !strings.Contains(s.Name(), "anchor at 0") {
		t.Fatalf("store %s %q size %d", s.Kind(), s.Name(), s.Size())
	}
	if _, err := image.FindReservation(s, nonce); err != nil {
		t.Fatalf("the reservation written through the map: %v", err)
	}
	// Spent gives the swap area back: no anchor, Linux's signature.
	if err := s.Spent(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	b, _ := os.ReadFile(path)
	if string(b[blockmap.SwapMagicOff:pg]) != blockmap.SwapMagic {
		t.Fatal("swap signature not back")
	}
	if _, err := Open(path, Where{Mapped: true}, false); err == nil {
		t.Fatal("the anchor outlived Spent")
	}
	// A whole-device store over the same file reads from offset 0.
	d, err := Open(path, Where{}, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Kind() != "device" || d.Size() != 2<<20 {
		t.Fatalf("device store %s size %d", d.Kind(), d.Size())
	}
}

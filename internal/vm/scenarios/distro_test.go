package scenarios

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
)

func TestDiskLabel(t *testing.T) {
	mbr := make([]byte, 512)
	le := binary.LittleEndian
	le.PutUint32(mbr[440:], 0x6b686962)
	for i, p := range [][2]uint32{{2048, 100}, {4096, 200}, {8192, 300}} {
		e := mbr[446+16*i:]
		e[4] = 0x83
		le.PutUint32(e[8:], p[0])
		le.PutUint32(e[12:], p[1])
	}
	mbr[510], mbr[511] = 0x55, 0xaa
	dir := t.TempDir()
	good := filepath.Join(dir, "good.raw")
	os.WriteFile(good, mbr, 0o644)
	bad := filepath.Join(dir, "bad.raw")
	os.WriteFile(bad, make([]byte, 512), 0o644)
	short := filepath.Join(dir, "short.raw")
	os.WriteFile(short, mbr[:100], 0o644)

	sig, parts, err := diskLabel(good)
	if err != nil {
		t.Fatal(err)
	}
	g := &distroGuest{sig: sig, parts: parts}
	if spec := g.imageSpec(); spec != "PARTUUID=6b686962-03" {
		t.Errorf("imageSpec = %q", spec)
	}
	if parts[2] != (partition{8192 * 512, 300 * 512}) || parts[3] != (partition{}) {
		t.Errorf("partitions = %v", parts)
	}
	for _, p := range []string{bad, short, filepath.Join(dir, "none")} {
		if _, _, err := diskLabel(p); err == nil {
			t.Errorf("diskLabel(%s) succeeded", filepath.Base(p))
		}
	}
}

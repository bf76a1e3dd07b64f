package helper

import (
	"bytes"
	"io"
	"testing"

	"github.com/khib/khib/internal/cpio"
)

// The key goes into a second archive behind C's initramfs, which the
// kernel unpacks after the first (init/initramfs.c: unpack_to_rootfs takes
// archives one after another, each starting on a 4-byte boundary, with
// zeros between them).
func TestAppendKey(t *testing.T) {
	var first bytes.Buffer
	w := cpio.NewWriter(&first)
	w.Dir("dev", 0o755)
	w.File("init", 0o755, []byte("#!/bin/khib"))
	w.Close()
	key := bytes.Repeat([]byte{0x3c}, 32)
	out, err := appendKey(first.Bytes(), key)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(out, first.Bytes()) || len(first.Bytes())%4 != 0 {
		t.Fatal("the first archive changed or ends unaligned")
	}
	var names []string
	r := cpio.NewReader(bytes.NewReader(out[first.Len():]))
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if h.Name == RestoreKeyPath[1:] {
			b, _ := io.ReadAll(r)
			if !bytes.Equal(b, key) || h.Mode&0o777 != 0o400 || !h.IsRegular() {
				t.Fatalf("key file %q mode %o", b, h.Mode)
			}
		}
	}
	if len(names) != 1 || names[0] != "khib.key" {
		t.Fatalf("second archive holds %q", names)
	}
}

package kexec

import (
	"bytes"
	"testing"
)

func FuzzParseBzImage(f *testing.F) {
	f.Add(fakeBzImage(4096))
	f.Add(fakeBzImage(0))
	f.Add([]byte("MZ"))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := ParseBzImage(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		if len(k.Setup)+len(k.Kernel) != len(b) {
			t.Fatalf("setup %d + kernel %d != file %d", len(k.Setup), len(k.Kernel), len(b))
		}
		_ = k.setupHeader()
		_ = k.Release()
	})
}

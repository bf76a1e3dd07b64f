package kexec

import (
	"bytes"
	"testing"
)

func TestClearNonZero(t *testing.T) {
	tests := []struct {
		name  string
		pages int
		tail  int   // bytes after the whole pages
		dirty []int // byte offsets set to 0xff
	}{
		{"all zero", 3, 0, nil},
		{"first and last byte", 2, 0, []int{0, 2*PageSize - 1}},
		{"middle page", 3, 0, []int{PageSize + 100}},
		{"partial tail", 1, 100, []int{PageSize + 99}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := make([]byte, tc.pages*PageSize+tc.tail)
			for _, o := range tc.dirty {
				b[o] = 0xff
			}
			clearNonZero(b)
			if !bytes.Equal(b, make([]byte, len(b))) {
				t.Fatal("not all zero")
			}
		})
	}
}

package image

import (
	"bytes"
	"math/rand"
	"testing"
)

func TestIncompressible(t *testing.T) {
	random := func(pages int) []byte {
		b := make([]byte, pages*PageSize)
		rand.New(rand.NewSource(int64(pages))).Read(b)
		return b
	}
	text := bytes.Repeat([]byte("khib hibernates through kexec. "), 64*PageSize/31+1)[:64*PageSize]
	halfRandom := append(random(32), make([]byte, 32*PageSize)...)
	for _, tc := range []struct {
		name string
		raw  []byte
		want bool
	}{
		{"random", random(64), true},
		{"zero", make([]byte, 64*PageSize), false},
		{"text", text, false},
		{"random first half, zero second", halfRandom, false},
		{"random but for the last quarter", append(random(48), make([]byte, 16*PageSize)...), false},
		{"too small to guess", random(2), false},
	} {
		if got := incompressible(tc.raw); got != tc.want {
			t.Errorf("%s: incompressible = %v, want %v", tc.name, got, tc.want)
		}
	}
}

package workload

import (
	"bytes"
	"testing"
)

func TestFillDeterministicAndDistinct(t *testing.T) {
	a := make([]byte, PageSize)
	b := make([]byte, PageSize)
	counts := map[Kind]int{}
	for i := uint64(0); i < 4096; i++ {
		Fill(a, 7, i, true)
		Fill(b, 7, i, true)
		if !bytes.Equal(a, b) {
			t.Fatalf("page %d differs between two fills", i)
		}
		if !Check(a, 7, i, true, b) {
			t.Fatalf("Check rejects page %d", i)
		}
		counts[KindOf(7, i, true)]++
	}
	for k := Random; k < numKinds; k++ {
		if counts[k] < 800 {
			t.Errorf("kind %v: %d pages of 4096, want about a quarter", k, counts[k])
		}
	}
}

func TestCheckDetectsChanges(t *testing.T) {
	tests := []struct {
		name  string
		seed  uint64
		index uint64
		mixed bool
	}{
		{"random", 1, 0, false},
		{"mixed page 5", 1, 5, true},
		{"other seed", 99, 3, true},
	}
	scratch := make([]byte, PageSize)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := make([]byte, PageSize)
			Fill(p, tc.seed, tc.index, tc.mixed)
			if KindOf(tc.seed, tc.index, tc.mixed) == Zero {
				p[100] = 1
			} else {
				p[100] ^= 0xff
			}
			if Check(p, tc.seed, tc.index, tc.mixed, scratch) {
				t.Fatal("a changed page passed the check")
			}
		})
	}
}

package main

import (
	"reflect"
	"testing"

	"github.com/khib/khib/internal/pages"
)

func TestAllocated(t *testing.T) {
	type fr = pages.FreeRange
	r := func(start, count uint64) fr { return fr{Start: start, Count: count} }
	tests := []struct {
		name     string
		lo, hi   uint64
		free     []fr
		want     []fr
		leftFree []fr
	}{
		{"no free", 0, 10, nil, []fr{r(0, 10)}, nil},
		{"all free", 0, 10, []fr{r(0, 10)}, nil, []fr{}},
		{"hole in the middle", 0, 10, []fr{r(3, 2)}, []fr{r(0, 3), r(5, 5)}, []fr{}},
		{"free block runs past hi is kept", 0, 10, []fr{r(8, 8)}, []fr{r(0, 8)}, []fr{r(8, 8)}},
		{"block before lo is dropped", 20, 30, []fr{r(0, 5), r(25, 1)}, []fr{r(20, 5), r(26, 4)}, []fr{}},
		{"block after hi stays", 0, 10, []fr{r(12, 4)}, []fr{r(0, 10)}, []fr{r(12, 4)}},
		{"continuing block from before", 8, 20, []fr{r(4, 8)}, []fr{r(12, 8)}, []fr{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			free := append([]fr(nil), tc.free...)
			got := allocated(tc.lo, tc.hi, &free)
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("allocated = %v, want %v", got, tc.want)
			}
			if len(free) != len(tc.leftFree) || (len(free) > 0 && !reflect.DeepEqual(free, tc.leftFree)) {
				t.Fatalf("free left %v, want %v", free, tc.leftFree)
			}
		})
	}
}

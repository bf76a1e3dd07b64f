package main

import (
	"fmt"
	"reflect"
	"slices"
	"testing"

	"github.com/khib/khib/internal/image"
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

func TestToolLog(t *testing.T) {
	for _, tc := range []struct {
		name   string
		writes []string
		lines  []string
		last   string
	}{
		{"lines", []string{"one\ntwo\n"}, []string{"one", "two"}, "one / two"},
		{"progress dropped", []string{"Copying : [ 1.0 %] |\rCopying : [ 50.0 %] /\r", "done.\n"}, []string{"done."}, "done."},
		{"split writes", []string{"hal", "f\nrest"}, []string{"half", "rest"}, "half / rest"},
		{"last three", []string{"a\nb\nc\nd\n"}, []string{"a", "b", "c", "d"}, "b / c / d"},
		{"nothing", nil, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var l toolLog
			for _, w := range tc.writes {
				l.Write([]byte(w))
			}
			if got := l.Lines(); !slices.Equal(got, tc.lines) {
				t.Errorf("Lines = %q, want %q", got, tc.lines)
			}
			if got := l.String(); got != tc.last {
				t.Errorf("String = %q, want %q", got, tc.last)
			}
		})
	}
	var l toolLog
	for i := range 100 {
		fmt.Fprintf(&l, "line %d\n", i)
	}
	if got := l.Lines(); len(got) != 64 || got[0] != "line 36" || got[63] != "line 99" {
		t.Errorf("kept %d lines, %q to %q; want the last 64", len(got), got[0], got[len(got)-1])
	}
}

// TestSaveWriterShape: B's image writer stays within its memory budget on
// any number of CPUs, uses every CPU it can, and takes 1 MiB chunks on the
// small machines where they were measured to help.
func TestSaveWriterShape(t *testing.T) {
	tests := []struct {
		cpus, wantChunk, wantWorkers int
	}{
		{1, 256, 1},
		{2, 256, 2},
		{4, 256, 4},
		{5, 256, 5},
		{6, image.DefaultChunkPages, 6},
		{16, image.DefaultChunkPages, 16},
		{25, image.DefaultChunkPages, 25},
		{64, image.DefaultChunkPages, 25},
		{512, image.DefaultChunkPages, 25},
	}
	for _, tt := range tests {
		cp, w := saveWriterShape(tt.cpus)
		if cp != tt.wantChunk || w != tt.wantWorkers {
			t.Errorf("%d CPUs: %d-page chunks, %d workers; want %d, %d", tt.cpus, cp, w, tt.wantChunk, tt.wantWorkers)
		}
		if b := (image.WriterOptions{ChunkPages: cp, Workers: w}).BufferBytes(); b > saveBufferBudget {
			t.Errorf("%d CPUs: the writer takes %d MiB, over the budget of %d", tt.cpus, b>>20, saveBufferBudget>>20)
		}
	}
}

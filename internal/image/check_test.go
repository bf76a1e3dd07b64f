package image

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// checkImageBytes writes segs with meta changed by edit and returns the image.
func checkImageBytes(t testing.TB, edit func(*Meta)) []byte {
	t.Helper()
	segs := testSegs(7, 40)
	m := testMeta(segs)
	if edit != nil {
		edit(&m)
	}
	img, _ := write(t, WriterOptions{ChunkPages: 4, Workers: 2, Meta: m}, segs)
	return img
}

func TestCheck(t *testing.T) {
	good := checkImageBytes(t, nil)
	flipped := bytes.Clone(good)
	flipped[SuperblockSize+100] ^= 1 // in chunk 0's payload: only Verify sees it
	errBefore := errors.New("not this machine")
	for _, tc := range []struct {
		name   string
		img    []byte
		before error
		want   error  // nil: Check passes
		msg    string // in the error
		// whether Before ran, and whether Verify did (progress calls)
		ranBefore, verified bool
	}{
		{name: "good", img: good, ranBefore: true, verified: true},
		{name: "machine refuses", img: good, before: errBefore, want: errBefore, ranBefore: true},
		{name: "flipped payload", img: flipped, want: ErrCorrupt, msg: "chunk 0", ranBefore: true},
		{name: "no jump-back", img: checkImageBytes(t, func(m *Meta) { m.JumpBack = 0 }), want: ErrCorrupt, msg: "no jump-back entry"},
		{name: "no region", img: checkImageBytes(t, func(m *Meta) { m.Region = Range{} }), want: ErrCorrupt, msg: "no region R"},
		{name: "truncated", img: good[:len(good)-1], want: ErrCorrupt, msg: "truncated"},
		{name: "empty", img: nil, want: ErrNotImage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ranBefore, progress := false, 0
			rd, err := Check(bytes.NewReader(tc.img), int64(len(tc.img)), CheckOptions{
				Before: func(rd *Reader) error {
					ranBefore = true
					if rd.Stats().Chunks == 0 {
						t.Error("Before got a reader without chunks")
					}
					return tc.before
				},
				Progress: func(done, total int) { progress = done },
			})
			if tc.want == nil {
				if err != nil || rd == nil {
					t.Fatalf("Check = %v, %v", rd, err)
				}
				if err := rd.Restore(func(uint64, []byte, bool) error { return nil }); err != nil {
					t.Errorf("Restore after Check: %v", err)
				}
				rd.Close()
			} else {
				if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) || rd != nil {
					t.Fatalf("Check = %v, %v; want %v about %q", rd, err, tc.want, tc.msg)
				}
			}
			if ranBefore != tc.ranBefore {
				t.Errorf("Before ran: %v, want %v", ranBefore, tc.ranBefore)
			}
			if verified := progress > 0; verified != tc.verified {
				t.Errorf("verified all chunks: %v (progress %d), want %v", verified, progress, tc.verified)
			}
		})
	}
}

// FuzzCheck feeds arbitrary bytes to what stage 1 runs before it writes a
// page. Whatever the bytes, Check must not panic, its errors must be
// classified, and an image it passes must restore in full.
func FuzzCheck(f *testing.F) {
	f.Add(checkImageBytes(f, nil))
	f.Add(checkImageBytes(f, func(m *Meta) { m.JumpBack = 0 }))
	for _, b := range seedImages(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rd, err := Check(bytes.NewReader(data), int64(len(data)), CheckOptions{})
		if err != nil {
			if rd != nil {
				t.Fatalf("Check failed (%v) and returned a reader", err)
			}
			for _, e := range []error{ErrCorrupt, ErrNotImage, ErrVersion, ErrIncomplete, ErrInvalidated} {
				if errors.Is(err, e) {
					return
				}
			}
			t.Fatalf("Check: unclassified error %v", err)
		}
		defer rd.Close()
		if rd.Superblock().Pages > 1<<22 {
			return // legitimate, but too slow to restore in a fuzzer (see checkImage)
		}
		var pages uint64
		if err := rd.Restore(func(_ uint64, p []byte, _ bool) error {
			pages += uint64(len(p) / PageSize)
			return nil
		}); err != nil {
			t.Fatalf("Check passed, Restore failed: %v", err)
		}
		if pages != rd.Superblock().Pages {
			t.Fatalf("Restore handed %d pages of %d", pages, rd.Superblock().Pages)
		}
	})
}

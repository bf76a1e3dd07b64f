package fsstate

import (
	"bytes"
	"strings"
	"testing"
)

// FuzzReadState feeds ReadState arbitrary devices, seeded with synthetic
// file systems of each shape it follows. It must return, not panic or
// allocate on the input's say-so.
func FuzzReadState(f *testing.F) {
	for _, mod := range []func(*synth){
		func(*synth) {},
		func(s *synth) { s.depth = 1 },
		func(s *synth) { s.depth = 2 },
		func(s *synth) { s.blockMap = true },
		func(s *synth) { s.bit64 = true },
		func(s *synth) { s.noJ = true },
	} {
		s := defaultSynth()
		mod(&s)
		f.Add(s.image())
	}
	f.Fuzz(func(t *testing.T, img []byte) {
		sb, err := ReadState(bytes.NewReader(img), int64(len(img)))
		if err == nil && sb == nil {
			t.Fatal("no superblock and no error")
		}
		if err == nil {
			_ = Diff(sb.Counters, Counters{})
		}
	})
}

// FuzzParseMountinfo: mountinfo comes from the kernel, but its paths come
// from whoever named the directories.
func FuzzParseMountinfo(f *testing.F) {
	f.Add(debianMountinfo)
	f.Add("1 2 3:4 / /a\\040b rw - ext4 /dev/x rw\n")
	f.Fuzz(func(t *testing.T, s string) {
		ms, err := ParseMountinfo(strings.NewReader(s))
		if err != nil {
			return
		}
		if len(BlockMounts(ms)) > len(ms) {
			t.Fatal("more block mounts than mounts")
		}
	})
}

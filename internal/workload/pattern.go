// Package workload generates and verifies the deterministic memory
// pattern of khib's test workload, so that a guest can check its memory
// after a round trip and the host can check pages found in an image.
package workload

import "encoding/binary"

// PageSize is the unit of the pattern: every page is a pure function of
// the seed and its index.
const PageSize = 4096

// Kind is what a page of the pattern looks like, chosen to exercise a
// compressor the way real memory does.
type Kind int

const (
	Random Kind = iota // incompressible
	Text               // words and spaces, compresses about 3:1
	Zero               // all zero: an image stores none of it
	Sparse             // a few fields in a mostly zero struct
	numKinds
)

func (k Kind) String() string {
	switch k {
	case Random:
		return "random"
	case Text:
		return "text"
	case Zero:
		return "zero"
	case Sparse:
		return "sparse"
	}
	return "unknown"
}

// splitmix64 is a small, good mixing function; the pattern needs speed
// under emulation, not cryptographic strength.
func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// KindOf returns the kind of page index under seed. With mixed false,
// every page is random.
func KindOf(seed, index uint64, mixed bool) Kind {
	if !mixed {
		return Random
	}
	return Kind(splitmix64(seed^(index*0x100000001b3)) % uint64(numKinds))
}

var words = []string{"the ", "kernel ", "page ", "of ", "memory ", "jump ", "back ", "and ", "image ", "a ",
	"hibernate ", "resume ", "to ", "helper ", "region ", "write "}

// Fill writes page index of the pattern into p, which must be PageSize long.
func Fill(p []byte, seed, index uint64, mixed bool) {
	s := splitmix64(seed ^ index<<1 ^ 0x6b686962)
	switch KindOf(seed, index, mixed) {
	case Random:
		for i := 0; i < PageSize; i += 8 {
			s ^= s << 13
			s ^= s >> 7
			s ^= s << 17
			binary.LittleEndian.PutUint64(p[i:], s)
		}
	case Text:
		for i := 0; i < PageSize; {
			s ^= s << 13
			s ^= s >> 7
			s ^= s << 17
			i += copy(p[i:], words[s%uint64(len(words))])
		}
	case Zero:
		clear(p)
	case Sparse:
		clear(p)
		for i := 0; i < PageSize; i += 256 {
			binary.LittleEndian.PutUint64(p[i:], index)
			binary.LittleEndian.PutUint64(p[i+8:], s+uint64(i))
		}
	}
}

// Check reports whether p holds page index of the pattern.
func Check(p []byte, seed, index uint64, mixed bool, scratch []byte) bool {
	Fill(scratch, seed, index, mixed)
	return string(p) == string(scratch)
}

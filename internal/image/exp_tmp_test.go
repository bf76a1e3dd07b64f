package image

import (
	"bytes"
	"testing"

	"github.com/cespare/xxhash/v2"
	"github.com/klauspost/compress/s2"
)

func BenchmarkExpIsZeroScalar(b *testing.B) {
	z := make([]byte, PageSize)
	b.SetBytes(PageSize)
	for b.Loop() {
		isZero(z)
	}
}
func BenchmarkExpIsZeroEqual(b *testing.B) {
	z, o := make([]byte, PageSize), make([]byte, PageSize)
	b.SetBytes(PageSize)
	for b.Loop() {
		bytes.Equal(z, o)
	}
}
func BenchmarkExpCopyPage(b *testing.B) {
	src, dst := benchPages()[:256<<10], make([]byte, 256<<10)
	b.SetBytes(256 << 10)
	for b.Loop() {
		for i := 0; i < len(src); i += PageSize {
			copy(dst[i:i+PageSize], src[i:i+PageSize])
		}
	}
}
func BenchmarkExpXXHash(b *testing.B) {
	src := benchPages()[:256<<10]
	b.SetBytes(256 << 10)
	for b.Loop() {
		xxhash.Sum64(src)
	}
}
func BenchmarkExpS2(b *testing.B) {
	src := benchPages()[:16<<20]
	dst := make([]byte, s2.MaxEncodedLen(256<<10))
	b.SetBytes(int64(len(src)))
	for b.Loop() {
		for i := 0; i < len(src); i += 256 << 10 {
			s2.Encode(dst, src[i:i+256<<10])
		}
	}
}

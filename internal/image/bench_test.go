package image

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
)

// nullDev discards what is written, so that the benchmarks measure the
// writer, not a disk.
type nullDev struct{}

func (nullDev) WriteAt(p []byte, off int64) (int, error) { return len(p), nil }

// benchPages is 64 MiB of the page mix design/measurements.md used: a
// quarter each random, text-like, zero and sparse structs.
var benchPages = sync.OnceValue(func() []byte { return mixedPages(16384, 99) })

// BenchmarkWrite reports MB/s of pages into the writer (SetBytes), the
// stored ratio, and the share of zero pages.
func BenchmarkWrite(b *testing.B) {
	data := benchPages()
	for _, codec := range []string{"s2", "zstd", "none", "s2+aes", "none+aes"} {
		codec, aes := strings.CutSuffix(codec, "+aes")
		for _, workers := range []int{1, 2} {
			name := fmt.Sprintf("%s/workers=%d", codec, workers)
			var enc *Encryption
			if aes {
				name = fmt.Sprintf("%s+aes-256-gcm/workers=%d", codec, workers)
				enc = testEncryption(b)
			}
			b.Run(name, func(b *testing.B) {
				b.SetBytes(int64(len(data)))
				var st Stats
				for b.Loop() {
					w, err := NewWriter(nullDev{}, 1<<40, WriterOptions{Codec: codec, Workers: workers, Encryption: enc})
					if err != nil {
						b.Fatal(err)
					}
					for off := 0; off < len(data); off += 1 << 20 {
						if err := w.AddPages(uint64(off/PageSize), data[off:off+1<<20]); err != nil {
							b.Fatal(err)
						}
					}
					if err := w.Close(); err != nil {
						b.Fatal(err)
					}
					st = w.Stats()
				}
				b.ReportMetric(float64(st.StoredBytes)/float64(st.Pages*PageSize), "stored/input")
			})
		}
	}
}

// BenchmarkRestore reports MB/s of pages out of Restore, chunks checked.
func BenchmarkRestore(b *testing.B) {
	data := benchPages()
	for _, codec := range []string{"s2", "zstd", "s2+aes"} {
		codec, aes := strings.CutSuffix(codec, "+aes")
		opts := WriterOptions{Codec: codec}
		name := codec
		var key []byte
		if aes {
			opts.Encryption, key, name = testEncryption(b), testKey, codec+"+aes-256-gcm"
		}
		img, _ := write(b, opts, []seg{{0, data}})
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				rd, err := OpenWith(bytes.NewReader(img), int64(len(img)), OpenOptions{Key: key})
				if err != nil {
					b.Fatal(err)
				}
				if err := rd.Restore(func(uint64, []byte, bool) error { return nil }); err != nil {
					b.Fatal(err)
				}
				rd.Close()
			}
		})
	}
}

func BenchmarkIsZero(b *testing.B) {
	zero := make([]byte, PageSize)
	b.Run("zero page", func(b *testing.B) {
		b.SetBytes(PageSize)
		for b.Loop() {
			if !isZero(zero) {
				b.Fatal("not zero")
			}
		}
	})
	b.Run("bytes.Equal", func(b *testing.B) {
		other := make([]byte, PageSize)
		b.SetBytes(PageSize)
		for b.Loop() {
			if !bytes.Equal(zero, other) {
				b.Fatal("not zero")
			}
		}
	})
}

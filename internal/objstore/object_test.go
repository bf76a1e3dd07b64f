package objstore

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// countGets counts the ranged GETs the store answers.
func countGets(n *atomic.Int64) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && r.Header.Get("Range") != "" {
				n.Add(1)
			}
			next.ServeHTTP(w, r)
		})
	}
}

func randomBytes(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func TestObjectReadAt(t *testing.T) {
	var gets atomic.Int64
	s := newTestStore(t, countGets(&gets))
	const window = 64 << 10
	want := randomBytes(10*window+123, 1)
	s.put(s.loc.Key, want)
	obj, err := OpenWith(testCtx(t), s.loc, s.creds, OpenOptions{Window: window, Windows: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer obj.Close()

	tests := []struct {
		off     int64
		n       int
		wantN   int
		wantEOF bool
	}{
		{0, 4096, 4096, false},
		{window - 10, 20, 20, false}, // across two windows
		{int64(len(want)) - 100, 100, 100, false},
		{int64(len(want)) - 100, 200, 100, true},
		{int64(len(want)), 1, 0, true},
		{int64(len(want)) + 5, 1, 0, true},
		{int64(len(want)), 0, 0, false},
		{3, 3 * window, 3 * window, false}, // large: straight through
		{0, len(want) + 1, len(want), true},
	}
	for _, tt := range tests {
		buf := make([]byte, tt.n)
		n, err := obj.ReadAt(buf, tt.off)
		if n != tt.wantN || (err == io.EOF) != tt.wantEOF || (err != nil && err != io.EOF) {
			t.Errorf("ReadAt(%d at %d) = %d, %v; want %d, EOF %v", tt.n, tt.off, n, err, tt.wantN, tt.wantEOF)
			continue
		}
		if n > 0 && !bytes.Equal(buf[:n], want[tt.off:tt.off+int64(n)]) {
			t.Errorf("ReadAt(%d at %d) read the wrong bytes", tt.n, tt.off)
		}
	}
	if _, err := obj.ReadAt(make([]byte, 1), -1); err == nil {
		t.Error("a read at -1 succeeded")
	}

	// Reading in order in small reads takes about one GET per window.
	obj2, err := OpenWith(testCtx(t), s.loc, s.creds, OpenOptions{Window: window})
	if err != nil {
		t.Fatal(err)
	}
	defer obj2.Close()
	before := gets.Load()
	got := make([]byte, len(want))
	for off := 0; off < len(got); off += 4096 {
		if _, err := obj2.ReadAt(got[off:min(off+4096, len(got))], int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatal("in-order reads differ")
	}
	if n := gets.Load() - before; n < 11 || n > 12 {
		t.Errorf("%d GETs for 11 windows read in order", n)
	}

	// Many readers at once (go test -race).
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 3))
			for range 40 {
				off := rng.IntN(len(want))
				buf := make([]byte, min(1+rng.IntN(3*window), len(want)-off))
				if _, err := obj2.ReadAt(buf, int64(off)); err != nil {
					t.Error(err)
					return
				}
				if !bytes.Equal(buf, want[off:off+len(buf)]) {
					t.Errorf("a concurrent read at %d differs", off)
					return
				}
			}
		})
	}
	wg.Wait()

	obj2.Close()
	if _, err := obj2.ReadAt(make([]byte, 1), 0); err == nil {
		t.Error("ReadAt after Close succeeded")
	}
}

func TestObjectReplacedWhileRead(t *testing.T) {
	s := newTestStore(t, nil)
	const window = 64 << 10
	s.put(s.loc.Key, randomBytes(4*window, 1))
	obj, err := OpenWith(testCtx(t), s.loc, s.creds, OpenOptions{Window: window, Windows: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer obj.Close()
	if _, err := obj.ReadAt(make([]byte, 10), 0); err != nil {
		t.Fatal(err)
	}
	s.put(s.loc.Key, randomBytes(4*window, 2))
	_, err = obj.ReadAt(make([]byte, 10), 3*window)
	if err == nil || !strings.Contains(err.Error(), "changed while it was read") {
		t.Fatalf("a read after the object was replaced: %v", err)
	}
	oneLineErr(t, err)
}

func TestOpenMissing(t *testing.T) {
	s := newTestStore(t, nil)
	_, err := Open(testCtx(t), s.loc, s.creds)
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("Open of a missing object: %v", err)
	}
	oneLineErr(t, err)
	if _, err := OpenWith(testCtx(t), s.loc, s.creds, OpenOptions{Window: 10}); err == nil {
		t.Error("a window of 10 bytes was taken")
	}
	if _, err := OpenWith(testCtx(t), s.loc, s.creds, OpenOptions{Windows: 1}); err == nil {
		t.Error("one window was taken")
	}
}

func TestCheckRange(t *testing.T) {
	tests := []struct {
		cr           string
		off, n, size int64
		ok           bool
	}{
		{"bytes 0-9/100", 0, 10, 100, true},
		{"bytes 10-19/100", 10, 10, 100, true},
		{"bytes 0-99/100", 10, 10, 100, false},
		{"bytes 10-19/200", 10, 10, 100, false},
		{"", 0, 100, 100, true},
		{"", 0, 10, 100, false},
		{"junk", 0, 10, 100, false},
	}
	for _, tt := range tests {
		if err := checkRange(tt.cr, tt.off, tt.n, tt.size); (err == nil) != tt.ok {
			t.Errorf("checkRange(%q, %d, %d, %d) = %v", tt.cr, tt.off, tt.n, tt.size, err)
		}
	}
}

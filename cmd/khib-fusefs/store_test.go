package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// countingDev counts the device calls, to check that a large write is one
// device write.
type countingDev struct {
	*os.File
	reads, writes, syncs atomic.Int64
}

func (d *countingDev) ReadAt(p []byte, off int64) (int, error) {
	d.reads.Add(1)
	return d.File.ReadAt(p, off)
}

func (d *countingDev) WriteAt(p []byte, off int64) (int, error) {
	d.writes.Add(1)
	return d.File.WriteAt(p, off)
}

func (d *countingDev) Sync() error {
	d.syncs.Add(1)
	return d.File.Sync()
}

// env is one test's device: a formatted temp file and a store on it.
type env struct {
	t    *testing.T
	path string
	size int64
	dev  *countingDev
	st   *store
}

func newEnv(t *testing.T, size int64) *env {
	t.Helper()
	path := filepath.Join(t.TempDir(), "dev.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	// Stale bytes where files will go, to catch reads of unwritten data.
	junk := bytes.Repeat([]byte{0xa5}, int(size-dataStart))
	if _, err := f.WriteAt(junk, dataStart); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, path: path, size: size, dev: &countingDev{File: f}}
	if err := formatDevice(e.dev, size); err != nil {
		t.Fatal(err)
	}
	e.reopen()
	return e
}

// reopen drops the store without closing it (as a crash would, after
// whatever was committed) and reads a new one from the device.
func (e *env) reopen() {
	e.t.Helper()
	st, err := openStore(e.dev, e.size)
	if err != nil {
		e.t.Fatalf("openStore: %v", err)
	}
	e.st = st
}

func (e *env) create(name string) *file {
	e.t.Helper()
	f, err := e.st.create(name, 0o600, false)
	if err != nil {
		e.t.Fatalf("create %q: %v", name, err)
	}
	return f
}

func (e *env) lookup(name string) *file {
	e.t.Helper()
	f := e.st.lookup(name)
	if f == nil {
		e.t.Fatalf("no file %q; have %v", name, e.st.list())
	}
	return f
}

func (e *env) write(f *file, p []byte, off int64) {
	e.t.Helper()
	n, err := e.st.writeAt(f, p, off)
	if err != nil || n != len(p) {
		e.t.Fatalf("writeAt(%q, %d bytes, %d) = %d, %v", f.name, len(p), off, n, err)
	}
}

func (e *env) fsync() {
	e.t.Helper()
	if err := e.st.fsync(); err != nil {
		e.t.Fatal(err)
	}
}

// contents reads all of f.
func (e *env) contents(f *file) []byte {
	e.t.Helper()
	fi := e.st.stat(f)
	b := make([]byte, fi.size+100)
	n, err := e.st.readAt(f, b, 0)
	if err != nil && !(err == io.EOF && n == 0) {
		e.t.Fatalf("readAt(%q): %v", f.name, err)
	}
	if int64(n) != fi.size {
		e.t.Fatalf("read %d bytes of %q, its size is %d", n, f.name, fi.size)
	}
	return b[:n]
}

func (e *env) expect(name string, want []byte) {
	e.t.Helper()
	got := e.contents(e.lookup(name))
	if !bytes.Equal(got, want) {
		i := 0
		for i < min(len(got), len(want)) && got[i] == want[i] {
			i++
		}
		e.t.Fatalf("%q: %d bytes, want %d; first difference at byte %d", name, len(got), len(want), i)
	}
}

func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 42))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func wantErrno(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: error %v, want %v", what, err, want)
	}
}

const mib = 1 << 20

func TestStore(t *testing.T) {
	tests := []struct {
		name string
		size int64
		run  func(t *testing.T, e *env)
	}{
		{"fresh device has the whole space", 64 * mib, func(t *testing.T, e *env) {
			si := e.st.space(nil)
			if want := int64(64*mib - dataStart); si.total != want || si.free != want || si.avail != want || si.files != 0 {
				t.Fatalf("space = %+v, want total=free=avail=%d", si, want)
			}
			if len(e.st.list()) != 0 {
				t.Fatal("files on a fresh device")
			}
		}},
		{"increasing writes, page 0 rewritten, read back after reopen", 64 * mib, func(t *testing.T, e *env) {
			f := e.create("khib.img")
			if fi := e.st.stat(f); fi.start != dataStart || fi.capacity != 64*mib-dataStart {
				t.Fatalf("first file's region %d+%d, want all of the device", fi.start, fi.capacity)
			}
			want := randBytes(1, 40*mib+12345)
			chunks := []int{mib, 4096, 300 * 1024, mib, 1, 8191, 2 * mib}
			off := 0
			for i := 0; off < len(want); i++ {
				n := min(chunks[i%len(chunks)], len(want)-off)
				before := e.dev.writes.Load()
				e.write(f, want[off:off+n], int64(off))
				if w := e.dev.writes.Load() - before; w != 1 {
					t.Fatalf("a write of %d bytes took %d device writes, want 1", n, w)
				}
				off += n
			}
			page := randBytes(2, 4096)
			e.write(f, page, 0)
			copy(want, page)
			e.fsync()
			e.reopen()
			e.expect("khib.img", want)
			// Random reads.
			f = e.lookup("khib.img")
			r := rand.New(rand.NewPCG(3, 3))
			for range 200 {
				off := r.Int64N(int64(len(want)))
				b := make([]byte, r.IntN(3*mib))
				n, err := e.st.readAt(f, b, off)
				wantN := min(int64(len(b)), int64(len(want))-off)
				if err != nil || int64(n) != wantN || !bytes.Equal(b[:n], want[off:off+int64(n)]) {
					t.Fatalf("readAt(%d bytes at %d) = %d, %v; want %d matching bytes", len(b), off, n, err, wantN)
				}
			}
		}},
		{"without fsync the size is not on the device", 8 * mib, func(t *testing.T, e *env) {
			f := e.create("a")
			e.write(f, randBytes(1, mib), 0)
			e.reopen() // no commit: as after a crash
			if fi := e.st.stat(e.lookup("a")); fi.size != 0 {
				t.Fatalf("size %d after a crash before any commit, want 0", fi.size)
			}
		}},
		{"reads past the end", 8 * mib, func(t *testing.T, e *env) {
			f := e.create("a")
			e.write(f, []byte("hello"), 0)
			b := make([]byte, 10)
			if n, err := e.st.readAt(f, b, 5); n != 0 || err != io.EOF {
				t.Fatalf("read at the end = %d, %v; want 0, EOF", n, err)
			}
			if n, err := e.st.readAt(f, b, 1000); n != 0 || err != io.EOF {
				t.Fatalf("read past the end = %d, %v; want 0, EOF", n, err)
			}
			if n, err := e.st.readAt(f, b, 3); n != 2 || err != nil || string(b[:2]) != "lo" {
				t.Fatalf("read across the end = %d %q, %v; want 2 \"lo\"", n, b[:n], err)
			}
		}},
		{"truncate to 0 and regrow", 16 * mib, func(t *testing.T, e *env) {
			f := e.create("img")
			e.write(f, randBytes(1, 3*mib), 0)
			e.fsync()
			if err := e.st.truncate(f, 0); err != nil {
				t.Fatal(err)
			}
			e.reopen() // a shrink is committed at once
			f = e.lookup("img")
			if fi := e.st.stat(f); fi.size != 0 || fi.capacity != 16*mib-dataStart {
				t.Fatalf("after truncate: size %d capacity %d; want 0, the region kept", fi.size, fi.capacity)
			}
			want := randBytes(2, mib)
			e.write(f, want, 0)
			e.fsync()
			e.reopen()
			e.expect("img", want)
			f = e.lookup("img")
			// Growing by truncate zeroes, though old data was there.
			if err := e.st.truncate(f, 2*mib); err != nil {
				t.Fatal(err)
			}
			want = append(want, make([]byte, mib)...)
			e.expect("img", want)
			// A write past the end zeroes the hole.
			e.write(f, []byte("tail"), 3*mib)
			want = append(append(want, make([]byte, mib)...), "tail"...)
			e.expect("img", want)
			// Shrink to an odd size, and grow again.
			if err := e.st.truncate(f, 1000); err != nil {
				t.Fatal(err)
			}
			if err := e.st.truncate(f, 5000); err != nil {
				t.Fatal(err)
			}
			want = append(want[:1000:1000], make([]byte, 4000)...)
			e.fsync()
			e.reopen()
			e.expect("img", want)
		}},
		{"ENOSPC past the region", dataStart + 64*4096, func(t *testing.T, e *env) {
			f := e.create("a")
			capacity := e.st.stat(f).capacity
			if capacity != 64*4096 {
				t.Fatalf("capacity %d, want %d", capacity, 64*4096)
			}
			if si := e.st.space(f); si.avail != capacity {
				t.Fatalf("avail for the empty file %d, want %d", si.avail, capacity)
			}
			want := randBytes(1, int(capacity)-10)
			e.write(f, want, 0)
			if si := e.st.space(f); si.avail != 10 {
				t.Fatalf("avail %d, want 10", si.avail)
			}
			n, err := e.st.writeAt(f, make([]byte, 11), capacity-10)
			wantErrno(t, "write past the region", err, syscall.ENOSPC)
			if n != 0 {
				t.Fatalf("wrote %d bytes before ENOSPC", n)
			}
			wantErrno(t, "write far past the region", func() error { _, err := e.st.writeAt(f, []byte{1}, 1<<40); return err }(), syscall.ENOSPC)
			wantErrno(t, "truncate past the region", e.st.truncate(f, capacity+1), syscall.ENOSPC)
			e.write(f, []byte("0123456789"), capacity-10) // exactly full
			want = append(want, "0123456789"...)
			_, err = e.st.create("b", 0o600, false)
			wantErrno(t, "create on a full device", err, syscall.ENOSPC)
			e.fsync()
			e.reopen()
			e.expect("a", want)
		}},
		{"unlink", 8 * mib, func(t *testing.T, e *env) {
			f := e.create("a")
			e.write(f, randBytes(1, mib), 0)
			if err := e.st.unlink("a"); err != nil {
				t.Fatal(err)
			}
			wantErrno(t, "unlink again", e.st.unlink("a"), syscall.ENOENT)
			if e.st.lookup("a") != nil {
				t.Fatal("a is still there")
			}
			e.reopen()
			if e.st.lookup("a") != nil || len(e.st.list()) != 0 {
				t.Fatalf("after reopen: %v", e.st.list())
			}
			// The region is free again: a new file gets all of it.
			if fi := e.st.stat(e.create("b")); fi.start != dataStart || fi.capacity != 8*mib-dataStart {
				t.Fatalf("new file's region %d+%d, want the whole device", fi.start, fi.capacity)
			}
		}},
		{"an unlinked open file keeps its region", 8 * mib, func(t *testing.T, e *env) {
			f, err := e.st.create("a", 0o600, true)
			if err != nil {
				t.Fatal(err)
			}
			data := randBytes(1, mib)
			e.write(f, data, 0)
			if err := e.st.unlink("a"); err != nil {
				t.Fatal(err)
			}
			_, err = e.st.create("b", 0o600, false)
			wantErrno(t, "create while the unlinked file is open", err, syscall.ENOSPC)
			e.write(f, []byte("more"), mib)
			if got := e.contents(f); !bytes.Equal(got, append(data, "more"...)) {
				t.Fatal("the unlinked file's data changed")
			}
			if err := e.st.release(f); err != nil {
				t.Fatal(err)
			}
			e.create("b")
			e.reopen()
			if names := e.st.list(); len(names) != 1 || names[0].name != "b" {
				t.Fatalf("files %v, want b alone", names)
			}
		}},
		{"several files", 64 * mib, func(t *testing.T, e *env) {
			names := []string{"a", "bb", strings.Repeat("n", maxNameLen), "image.khib", "x y"}
			want := map[string][]byte{}
			for i, name := range names {
				f := e.create(name)
				want[name] = randBytes(uint64(i), (i+1)*300*1024+i)
				e.write(f, want[name], 0)
			}
			e.fsync()
			e.reopen()
			for _, name := range names {
				e.expect(name, want[name])
			}
			checkRegions(t, e.st)
			// A file whose region was split keeps its data and can still
			// fill what is left of its region.
			f := e.lookup("a")
			fi := e.st.stat(f)
			rest := randBytes(9, int(fi.capacity-fi.size))
			e.write(f, rest, fi.size)
			want["a"] = append(want["a"], rest...)
			_, err := e.st.writeAt(f, []byte{1}, fi.capacity)
			wantErrno(t, "write past a split region", err, syscall.ENOSPC)
			e.fsync()
			e.reopen()
			for _, name := range names {
				e.expect(name, want[name])
			}
			// Names.
			_, err = e.st.create("a", 0o600, false)
			wantErrno(t, "create an existing name", err, syscall.EEXIST)
			_, err = e.st.create(strings.Repeat("n", maxNameLen+1), 0o600, false)
			wantErrno(t, "create a long name", err, syscall.ENAMETOOLONG)
			for _, bad := range []string{"", ".", "..", "a/b", "a\x00b"} {
				_, err = e.st.create(bad, 0o600, false)
				wantErrno(t, fmt.Sprintf("create %q", bad), err, syscall.EINVAL)
			}
		}},
		{"the table holds 31 files", 64 * mib, func(t *testing.T, e *env) {
			for i := range maxFiles {
				e.write(e.create(fmt.Sprint("f", i)), []byte{byte(i)}, 0)
			}
			_, err := e.st.create("one too many", 0o600, false)
			wantErrno(t, "create the 32nd file", err, syscall.ENOSPC)
			e.fsync()
			e.reopen()
			if n := len(e.st.list()); n != maxFiles {
				t.Fatalf("%d files after reopen", n)
			}
			for i := range maxFiles {
				e.expect(fmt.Sprint("f", i), []byte{byte(i)})
			}
			checkRegions(t, e.st)
		}},
		{"a file grows into the space a neighbour freed", 16 * mib, func(t *testing.T, e *env) {
			a := e.create("a")
			e.create("b") // takes the upper half of a's region
			capA := e.st.stat(a).capacity
			if capA >= 16*mib-dataStart {
				t.Fatalf("a still has the whole device (%d)", capA)
			}
			_, err := e.st.writeAt(a, make([]byte, capA+1), 0)
			wantErrno(t, "write past a's region", err, syscall.ENOSPC)
			if err := e.st.unlink("b"); err != nil {
				t.Fatal(err)
			}
			if si := e.st.space(a); si.avail != 16*mib-dataStart {
				t.Fatalf("avail for a %d, want the whole device", si.avail)
			}
			want := randBytes(1, int(capA)+mib)
			e.write(a, want, 0)
			e.fsync()
			e.reopen()
			e.expect("a", want)
			if fi := e.st.stat(e.lookup("a")); fi.capacity != 16*mib-dataStart {
				t.Fatalf("a's capacity %d, want the whole device", fi.capacity)
			}
		}},
		{"rename", 8 * mib, func(t *testing.T, e *env) {
			e.write(e.create("a"), []byte("A"), 0)
			e.write(e.create("b"), []byte("B"), 0)
			e.write(e.create("c"), []byte("C"), 0)
			wantErrno(t, "rename to an existing name with noreplace", e.st.rename("a", "b", true, false), syscall.EEXIST)
			wantErrno(t, "rename a missing file", e.st.rename("zz", "q", false, false), syscall.ENOENT)
			if err := e.st.rename("a", "b", false, false); err != nil { // replaces b
				t.Fatal(err)
			}
			if err := e.st.rename("b", "c", false, true); err != nil { // exchange
				t.Fatal(err)
			}
			e.fsync()
			e.reopen()
			if e.st.lookup("a") != nil {
				t.Fatal("a still exists")
			}
			e.expect("b", []byte("C"))
			e.expect("c", []byte("A"))
		}},
		{"mode and mtime persist", 8 * mib, func(t *testing.T, e *env) {
			f := e.create("a")
			mode := uint32(0o640)
			mt := time.Date(2025, 3, 4, 5, 6, 7, 8, time.UTC)
			if err := e.st.setattr(f, &mode, &mt); err != nil {
				t.Fatal(err)
			}
			if err := e.st.commit(); err != nil {
				t.Fatal(err)
			}
			e.reopen()
			fi := e.st.stat(e.lookup("a"))
			if fi.mode != 0o640 || !fi.mtime.Equal(mt) {
				t.Fatalf("mode %#o mtime %v, want 0640 %v", fi.mode, fi.mtime, mt)
			}
		}},
		{"commit writes nothing when nothing changed", 8 * mib, func(t *testing.T, e *env) {
			f := e.create("a")
			e.write(f, []byte("x"), 0)
			if err := e.st.commit(); err != nil {
				t.Fatal(err)
			}
			w, s := e.dev.writes.Load(), e.dev.syncs.Load()
			if err := e.st.commit(); err != nil {
				t.Fatal(err)
			}
			if e.dev.writes.Load() != w || e.dev.syncs.Load() != s {
				t.Fatal("a commit without changes wrote or synced")
			}
			e.fsync() // fsync always syncs
			if e.dev.syncs.Load() == s {
				t.Fatal("fsync did not sync the device")
			}
		}},
		{"closed store refuses", 8 * mib, func(t *testing.T, e *env) {
			f := e.create("a")
			e.write(f, []byte("x"), 0)
			if err := e.st.close(); err != nil {
				t.Fatal(err)
			}
			_, err := e.st.writeAt(f, []byte("y"), 1)
			wantErrno(t, "write after close", err, syscall.EIO)
			e.reopen()
			e.expect("a", []byte("x"))
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(t, newEnv(t, tc.size))
		})
	}
}

// checkRegions checks that the files' regions are aligned, within the
// device and disjoint.
func checkRegions(t *testing.T, st *store) {
	t.Helper()
	fs := st.list()
	for i, a := range fs {
		if a.start%regionAlign != 0 || a.capacity%regionAlign != 0 || a.start < dataStart || a.start+a.capacity > st.end || a.size > a.capacity {
			t.Fatalf("%q: bad region %d+%d (size %d)", a.name, a.start, a.capacity, a.size)
		}
		for _, b := range fs[i+1:] {
			if a.start < b.start+b.capacity && b.start < a.start+a.capacity {
				t.Fatalf("%q (%d+%d) and %q (%d+%d) overlap", a.name, a.start, a.capacity, b.name, b.start, b.capacity)
			}
		}
	}
}

func TestOpenStoreErrors(t *testing.T) {
	// A device with two commits after the format: "x" is in generation 3
	// (copy B), "x" and "y" in generation 4 (copy A).
	setup := func(t *testing.T) *env {
		e := newEnv(t, 8*mib)
		e.create("x")
		e.create("y")
		if e.st.gen != 4 || e.st.slot != 0 {
			t.Fatalf("generation %d in copy %d, want 4 in copy 0", e.st.gen, e.st.slot)
		}
		return e
	}
	poke := func(t *testing.T, e *env, off int64, b []byte) {
		if _, err := e.dev.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name    string
		damage  func(t *testing.T, e *env)
		size    int64  // device size given to openStore, if not the real one
		wantErr string // "" means it opens
		want    []string
	}{
		{name: "intact", want: []string{"x", "y"}},
		{name: "copy A torn: copy B is used", damage: func(t *testing.T, e *env) {
			poke(t, e, entryOffset+entrySize+3, []byte{0xff}) // y's name
		}, want: []string{"x"}},
		{name: "copy B damaged: copy A is used", damage: func(t *testing.T, e *env) {
			poke(t, e, pageSize+100, []byte{0xff})
		}, want: []string{"x", "y"}},
		{name: "both copies damaged", damage: func(t *testing.T, e *env) {
			poke(t, e, 100, []byte{0xff})
			poke(t, e, pageSize+8, []byte{9})
		}, wantErr: "corrupt khib-fusefs header: copy A (offset 0): header checksum mismatch"},
		{name: "no magic", damage: func(t *testing.T, e *env) {
			poke(t, e, 0, []byte("NOTKHIB!"))
		}, wantErr: errNoMagic.Error()},
		{name: "zeroed", damage: func(t *testing.T, e *env) {
			poke(t, e, 0, make([]byte, 2*pageSize))
		}, wantErr: errNoMagic.Error()},
		{name: "device smaller than formatted", size: 4 * mib, wantErr: "header is for a device of 8388608 bytes but this one has 4194304"},
		{name: "device smaller than the headers", size: 100, wantErr: errNoMagic.Error()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := setup(t)
			if tc.damage != nil {
				tc.damage(t, e)
			}
			size := e.size
			if tc.size != 0 {
				size = tc.size
			}
			st, err := openStore(e.dev, size)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("openStore: %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, fi := range st.list() {
				got = append(got, fi.name)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("files %v, want %v", got, tc.want)
			}
			// The next commit goes to the copy not in use and wins.
			st.create("z", 0, false)
			st2, err := openStore(e.dev, size)
			if err != nil {
				t.Fatal(err)
			}
			if st2.lookup("z") == nil {
				t.Fatal("the commit after a fallback was lost")
			}
		})
	}
}

func TestConcurrentFiles(t *testing.T) {
	e := newEnv(t, 32*mib)
	const n = 6
	files := make([]*file, n)
	for i := range files {
		files[i] = e.create(fmt.Sprint("f", i))
	}
	var wg sync.WaitGroup
	for i, f := range files {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := randBytes(uint64(i), 256*1024)
			for off := 0; off < len(data); off += 16 * 1024 {
				if _, err := e.st.writeAt(f, data[off:off+16*1024], int64(off)); err != nil {
					t.Error(err)
					return
				}
				e.st.space(nil)
				e.st.list()
				if off%(64*1024) == 0 {
					if err := e.st.fsync(); err != nil {
						t.Error(err)
					}
				}
			}
			got := make([]byte, len(data))
			if n, err := e.st.readAt(f, got, 0); err != nil || n != len(got) || !bytes.Equal(got, data) {
				t.Errorf("f%d: read back %d bytes, %v; equal %v", i, n, err, bytes.Equal(got, data))
			}
		}()
	}
	wg.Wait()
	e.fsync()
	e.reopen()
	for i := range files {
		e.expect(fmt.Sprint("f", i), randBytes(uint64(i), 256*1024))
	}
	checkRegions(t, e.st)
}

func TestScanDevices(t *testing.T) {
	setup := func(t *testing.T, devs map[string]string) (string, string) {
		sys, dev := t.TempDir(), t.TempDir()
		for name, content := range devs {
			if err := os.Mkdir(filepath.Join(sys, name), 0o755); err != nil {
				t.Fatal(err)
			}
			if content == "missing" {
				continue
			}
			if err := os.WriteFile(filepath.Join(dev, name), []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return sys, dev
	}
	tests := []struct {
		name    string
		devs    map[string]string
		want    string
		wantErr string
	}{
		{"one match", map[string]string{"sda": "something else", "sdb": magic + "rest", "sdb1": "", "vda": "missing"}, "sdb", ""},
		{"no match", map[string]string{"sda": "KHIBFUS", "loop0": ""}, "", "no block device in"},
		{"two matches", map[string]string{"sda": magic, "vdb": magic}, "", "several block devices"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sys, dev := setup(t, tc.devs)
			got, err := scanDevices(sys, dev, 5*time.Second)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("scan = %q, %v; want an error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != filepath.Join(dev, tc.want) {
				t.Fatalf("scan = %q, %v; want %s", got, err, filepath.Join(dev, tc.want))
			}
		})
	}
}

// failingDev fails every write and sync while fail is set.
type failingDev struct {
	device
	fail atomic.Bool
}

var errDevice = errors.New("device on fire")

func (d *failingDev) WriteAt(p []byte, off int64) (int, error) {
	if d.fail.Load() {
		return 0, errDevice
	}
	return d.device.WriteAt(p, off)
}

func (d *failingDev) Sync() error {
	if d.fail.Load() {
		return errDevice
	}
	return d.device.Sync()
}

func TestDeviceErrors(t *testing.T) {
	e := newEnv(t, 8*mib)
	dev := &failingDev{device: e.dev}
	st, err := openStore(dev, e.size)
	if err != nil {
		t.Fatal(err)
	}
	a, err := st.create("a", 0o600, false)
	if err != nil {
		t.Fatal(err)
	}
	dev.fail.Store(true)
	var errno syscall.Errno
	if _, err := st.create("b", 0o600, false); !errors.Is(err, errDevice) || errors.As(err, &errno) {
		t.Fatalf("create on a failing device: %v, want the device's error", err)
	}
	if _, err := st.writeAt(a, []byte("x"), 0); !errors.Is(err, errDevice) {
		t.Fatalf("write on a failing device: %v", err)
	}
	if err := st.fsync(); !errors.Is(err, errDevice) {
		t.Fatalf("fsync on a failing device: %v", err)
	}
	dev.fail.Store(false)
	if st.lookup("b") != nil {
		t.Fatal("a failed create left its file")
	}
	if _, err := st.create("b", 0o600, false); err != nil {
		t.Fatalf("create after the device recovered: %v", err)
	}
	e.reopen()
	if len(e.st.list()) != 2 {
		t.Fatalf("files %v, want a and b", e.st.list())
	}
	// The FUSE layer answers EIO for device errors, and the errno itself
	// for the rest.
	r := newRoot(st, nil)
	if got := r.errno("x", fmt.Errorf("wrapped: %w", errDevice)); got != syscall.EIO {
		t.Fatalf("errno of a device error = %v", got)
	}
	if got := r.errno("x", syscall.ENOSPC); got != syscall.ENOSPC {
		t.Fatalf("errno of ENOSPC = %v", got)
	}
}

package main

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func sampleHeader() *header {
	return &header{devSize: 64 * mib, files: []entry{
		{name: "khib.img", size: 5000, start: dataStart, capacity: 32 * mib, mtime: 1700000000123456789, mode: 0o600},
		{name: strings.Repeat("z", maxNameLen), size: 0, start: dataStart + 40*mib, capacity: 4096, mtime: -5, mode: 0o7777},
	}}
}

// reseal recomputes a page's checksum after a test changed it.
func reseal(b []byte) []byte {
	binary.LittleEndian.PutUint32(b[crcOffset:], crc32.Checksum(b[:crcOffset], castagnoli))
	return b
}

func TestHeaderRoundTrip(t *testing.T) {
	h := sampleHeader()
	b := h.encode(77)
	got, err := decodeHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.gen != 77 || got.devSize != h.devSize || len(got.files) != 2 {
		t.Fatalf("decoded %+v", got)
	}
	for i := range h.files {
		if got.files[i] != h.files[i] {
			t.Fatalf("file %d: %+v, want %+v", i, got.files[i], h.files[i])
		}
	}
	if !bytes.Equal(got.encode(77), b) {
		t.Fatal("re-encoding differs")
	}
	// Trailing bytes past the page are not looked at.
	if _, err := decodeHeader(append(b, 1, 2, 3)); err != nil {
		t.Fatal(err)
	}
}

func TestDecodeHeaderRefuses(t *testing.T) {
	le := binary.LittleEndian
	ent := func(i int) int { return entryOffset + i*entrySize }
	tests := []struct {
		name    string
		mutate  func(b []byte) []byte // the result is resealed unless noSeal
		noSeal  bool
		wantErr string
	}{
		{"short", func(b []byte) []byte { return b[:pageSize-1] }, true, "header page is 4095 bytes"},
		{"magic", func(b []byte) []byte { b[0] = 'k'; return b }, false, "no khib-fusefs header"},
		{"checksum", func(b []byte) []byte { b[ent(0)+64]++; return b }, true, "checksum mismatch"},
		{"version", func(b []byte) []byte { le.PutUint32(b[8:], 2); return b }, false, "format version 2"},
		{"page size", func(b []byte) []byte { le.PutUint32(b[12:], 512); return b }, false, "header page size 512"},
		{"data start", func(b []byte) []byte { le.PutUint64(b[32:], 4096); return b }, false, "data start 4096"},
		{"alignment", func(b []byte) []byte { le.PutUint32(b[40:], 512); return b }, false, "region alignment 512"},
		{"device too small", func(b []byte) []byte { le.PutUint64(b[24:], 100); return b }, false, "device size 100 out of range"},
		{"device too large", func(b []byte) []byte { le.PutUint64(b[24:], 1<<63); return b }, false, "out of range"},
		{"too many files", func(b []byte) []byte { le.PutUint32(b[44:], 32); return b }, false, "32 files in the table"},
		{"count below the entries", func(b []byte) []byte { le.PutUint32(b[44:], 1); return b }, false, "unused table entry 1 is not zero"},
		{"count above the entries", func(b []byte) []byte { le.PutUint32(b[44:], 3); return b }, false, "file 2: empty name"},
		{"reserved header bytes", func(b []byte) []byte { b[50] = 1; return b }, false, "reserved header bytes"},
		{"reserved tail bytes", func(b []byte) []byte { b[crcOffset-1] = 1; return b }, false, "reserved header bytes"},
		{"reserved entry bytes", func(b []byte) []byte { b[ent(0)+120] = 1; return b }, false, "reserved bytes are not zero"},
		{"name with a slash", func(b []byte) []byte { b[ent(0)+1] = '/'; return b }, false, "contains / or NUL"},
		{"name is dot", func(b []byte) []byte { copy(b[ent(0):ent(0)+64], ".\x00\x00\x00\x00\x00\x00\x00"); return b }, false, "reserved"},
		{"bytes after the padding", func(b []byte) []byte { b[ent(0)+20] = 'x'; return b }, false, "after its NUL padding"},
		{"duplicate names", func(b []byte) []byte { copy(b[ent(1):ent(1)+64], b[ent(0):ent(0)+64]); return b }, false, "appears twice"},
		{"unaligned start", func(b []byte) []byte { le.PutUint64(b[ent(0)+72:], dataStart+512); return b }, false, "region start"},
		{"start in the headers", func(b []byte) []byte { le.PutUint64(b[ent(0)+72:], 4096); return b }, false, "region start"},
		{"negative start", func(b []byte) []byte { le.PutUint64(b[ent(0)+72:], 1<<63); return b }, false, "region start"},
		{"region past the device", func(b []byte) []byte { le.PutUint64(b[ent(0)+80:], 64*mib); return b }, false, "does not fit"},
		{"huge region", func(b []byte) []byte { le.PutUint64(b[ent(0)+80:], 1<<63); return b }, false, "does not fit"},
		{"empty region", func(b []byte) []byte { le.PutUint64(b[ent(1)+80:], 0); return b }, false, "does not fit"},
		{"size past the region", func(b []byte) []byte { le.PutUint64(b[ent(0)+64:], 32*mib+1); return b }, false, "exceeds its region"},
		{"negative size", func(b []byte) []byte { le.PutUint64(b[ent(0)+64:], 1<<63); return b }, false, "exceeds its region"},
		{"mode", func(b []byte) []byte { le.PutUint32(b[ent(0)+96:], 0o10000); return b }, false, "mode"},
		{"overlap", func(b []byte) []byte { le.PutUint64(b[ent(1)+72:], dataStart+32*mib-4096); return b }, false, "overlap"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.mutate(sampleHeader().encode(5))
			if !tc.noSeal {
				reseal(b)
			}
			h, err := decodeHeader(b)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("decodeHeader = %+v, %v; want an error containing %q", h, err, tc.wantErr)
			}
		})
	}
}

// FuzzHeader feeds the header parser untrusted bytes. It must not panic,
// must allocate only its bounded table, and what it accepts must be
// exactly what encode writes. With fix set the checksum is made right
// first, so the fuzzer gets past it to the table. Most mutations find new
// branches, so give the fuzzer a short minimization budget, e.g.
//
//	go test -run XXX -fuzz FuzzHeader -fuzztime 60s -fuzzminimizetime 50x ./cmd/khib-fusefs
func FuzzHeader(f *testing.F) {
	f.Add(sampleHeader().encode(1), true)
	f.Add((&header{devSize: minDevSize}).encode(2), false)
	f.Add([]byte(magic), true)
	f.Add(make([]byte, pageSize), true)
	full := &header{devSize: 1 << 40}
	for i := range maxFiles {
		full.files = append(full.files, entry{name: strings.Repeat("f", i+1), size: int64(i), start: dataStart + int64(i)*mib, capacity: mib})
	}
	f.Add(full.encode(3), true)
	f.Fuzz(func(t *testing.T, b []byte, fix bool) {
		if fix && len(b) >= pageSize {
			b = reseal(bytes.Clone(b[:pageSize]))
		}
		h, err := decodeHeader(b)
		if err != nil {
			if h != nil {
				t.Fatal("a header and an error")
			}
			return
		}
		if len(h.files) > maxFiles {
			t.Fatalf("%d files", len(h.files))
		}
		if re := h.encode(h.gen); !bytes.Equal(re, b[:pageSize]) {
			t.Fatal("accepted bytes that encode does not write")
		}
		// What the parser accepts, a store can use.
		for _, e := range h.files {
			if e.start < dataStart || e.capacity <= 0 || e.start+e.capacity > h.devSize || e.size > e.capacity || checkName(e.name) != nil {
				t.Fatalf("accepted a bad entry %+v", e)
			}
		}
	})
}

func TestDecodeHeaderAllocations(t *testing.T) {
	b := sampleHeader().encode(1)
	big := append(b, make([]byte, 64*mib)...)
	allocs := testing.AllocsPerRun(20, func() {
		if _, err := decodeHeader(big); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 10 {
		t.Fatalf("%v allocations to decode a header", allocs)
	}
}

func TestCommandLine(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "dev.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 8*mib); err != nil {
		t.Fatal(err)
	}
	small := filepath.Join(dir, "small.img")
	if err := os.WriteFile(small, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args     []string
		code     int
		stdout   string
		stderr   string
		noStderr bool
	}{
		{args: []string{"--help"}, code: 0, stdout: "SYNOPSIS", noStderr: true},
		{args: []string{"-h"}, code: 0, stdout: "khib-fusefs --store DEV"},
		{args: []string{}, code: 2, stderr: "give one of"},
		{args: []string{"--bogus"}, code: 2, stderr: "flag provided but not defined"},
		{args: []string{"--store", img}, code: 2, stderr: "takes one MOUNTPOINT"},
		{args: []string{"--store", img, "--format", img}, code: 2, stderr: "give one of"},
		{args: []string{"--format", "scan"}, code: 2, stderr: "not scan"},
		{args: []string{"--force", "--list", img}, code: 2, stderr: "--force goes with --format"},
		{args: []string{"--list", img}, code: 1, stderr: "no khib-fusefs header"},
		{args: []string{"--format", small}, code: 1, stderr: "needs at least"},
		{args: []string{"--format", dir}, code: 1, stderr: "neither a block device nor a regular file"},
		{args: []string{"--format", img}, code: 0, stdout: "formatted"},
		{args: []string{"--format", img}, code: 1, stderr: "already holds a khib-fusefs filesystem with 0 files; give --force"},
		{args: []string{"--format", img, "--force"}, code: 0, stdout: "formatted"},
		{args: []string{"--list", img}, code: 0, noStderr: true},
		{args: []string{"--store", img, filepath.Join(dir, "nonexistent")}, code: 1, stderr: "mount point"},
		{args: []string{"--store", img, img}, code: 1, stderr: "not a directory"},
	}
	for _, tc := range tests {
		var stdout, stderr bytes.Buffer
		code := run(tc.args, &stdout, &stderr)
		if code != tc.code || !strings.Contains(stdout.String(), tc.stdout) || !strings.Contains(stderr.String(), tc.stderr) || (tc.noStderr && stderr.Len() > 0) {
			t.Errorf("run %q = %d\nstdout: %s\nstderr: %s\nwant %d, stdout with %q, stderr with %q", tc.args, code, stdout.String(), stderr.String(), tc.code, tc.stdout, tc.stderr)
		}
	}
}

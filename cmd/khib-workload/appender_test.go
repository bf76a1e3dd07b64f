package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestAppendCheck(t *testing.T) {
	rec := func(ns ...int) string {
		var b strings.Builder
		for _, n := range ns {
			b.Write(ackRecord(n))
		}
		return b.String()
	}
	for _, tc := range []struct {
		name, body string
		want       int
		bad        bool
	}{
		{"plain lines", "1\n2\n3\n", 3, false},
		{"records", rec(1, 2, 3, 4), 4, false},
		{"torn last record", rec(1, 2) + "3 abc", 2, false},
		{"empty", "", 0, false},
		{"gap", rec(1, 2, 4), 0, true},
		{"repeat", "1\n2\n2\n", 0, true},
		{"zeros after a crash", rec(1) + "\x00\x00\x00\n", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "log")
			if err := os.WriteFile(p, []byte(tc.body), 0o644); err != nil {
				t.Fatal(err)
			}
			n, err := appendCheck(p)
			if tc.bad {
				if err == nil {
					t.Fatalf("appendCheck accepted %q as 1..%d", tc.body, n)
				}
				return
			}
			if err != nil || n != tc.want {
				t.Fatalf("appendCheck = %d, %v; want %d", n, err, tc.want)
			}
		})
	}
}

func TestAckRecord(t *testing.T) {
	for _, n := range []int{1, 99, 123456} {
		r := ackRecord(n)
		if len(r) != ackRecordBytes || r[len(r)-1] != '\n' || strings.Count(string(r), "\n") != 1 {
			t.Errorf("record %d: %d bytes, ends %q", n, len(r), r[len(r)-1])
		}
	}
}

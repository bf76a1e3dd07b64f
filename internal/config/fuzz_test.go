package config

import (
	"bytes"
	"strings"
	"testing"
)

func FuzzParse(f *testing.F) {
	f.Add("target = PARTUUID=1234abcd-03\nhelper_kernel = /usr/lib/khib/bzImage\ncodec = zstd\n")
	f.Add("# comment\n\ntarget=/dev/vdb\r\n")
	f.Add("codec = s2\ncodec = s2\n")
	f.Add("=\n")
	f.Add("encrypt = passphrase\ncodec = none\n")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Parse(strings.NewReader(s), "fuzz")
		if err != nil {
			return
		}
		// What parses must survive its own formatting.
		back, err := Parse(bytes.NewReader(c.Marshal()), "marshalled")
		if err != nil {
			t.Fatalf("Marshal of %+v does not parse: %v", *c, err)
		}
		if *back != *c {
			t.Fatalf("round trip %+v -> %+v", *c, *back)
		}
	})
}

func FuzzParseSpec(f *testing.F) {
	for _, s := range []string{"UUID=x", "/dev/vdb", "PARTUUID=1234abcd-03", "label=", "=", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, v, err := ParseSpec(s)
		if err == nil && (k == "" || v == "") {
			t.Fatalf("ParseSpec(%q) = %q, %q without error", s, k, v)
		}
	})
}

func FuzzProbe(f *testing.F) {
	f.Add(ext4Image(testUUID, "root"), 512, 1)
	f.Add(fat32Image(1, "EFI"), 512, 1)
	f.Add(mbrDisk(7), 512, 5)
	f.Add(gptDisk(512, [][]byte{testUUID}, []string{"khib"}), 512, 1)
	f.Add(gptDisk(4096, [][]byte{testUUID}, []string{"khib"}), 4096, 1)
	f.Fuzz(func(t *testing.T, b []byte, sector, n int) {
		r := bytes.NewReader(b)
		ProbeFS(r)
		if sector < 512 || sector > 65536 || sector&(sector-1) != 0 {
			sector = 512
		}
		ProbePartition(r, sector, n)
	})
}

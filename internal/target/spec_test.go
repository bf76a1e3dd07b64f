package target

import (
	"strings"
	"testing"
)

func TestParseSpec(t *testing.T) {
	tests := []struct {
		in      string
		want    Spec
		wantErr string
	}{
		{in: "/dev/vda", want: Spec{Kind: SpecDevice, Value: "/dev/vda", Located: true}},
		{in: "PARTUUID=6b686962-03", want: Spec{Kind: SpecDevice, Value: "PARTUUID=6b686962-03", Located: true}},
		{in: "swap:/dev/vdc", want: Spec{Kind: SpecSwap, Value: "/dev/vdc", Located: true}},
		{in: "swap:UUID=1-2", want: Spec{Kind: SpecSwap, Value: "UUID=1-2", Located: true}},
		{in: "swap:/swapfile", want: Spec{Kind: SpecSwap, Value: "/swapfile"}},
		{in: "swap:UUID=1-2@8192", want: Spec{Kind: SpecSwap, Value: "UUID=1-2", Anchor: 8192, Located: true}},
		{in: "file:/var/lib/khib/image", want: Spec{Kind: SpecFile, Value: "/var/lib/khib/image"}},
		{in: "file:UUID=ab-cd@1048576", want: Spec{Kind: SpecFile, Value: "UUID=ab-cd", Anchor: 1048576, Located: true}},
		{in: "file:/dev/vdb@0", want: Spec{Kind: SpecFile, Value: "/dev/vdb", Located: true}},
		{in: "dir:LABEL=KHIBUSB:/khib/image", want: Spec{Kind: SpecDir, Value: "LABEL=KHIBUSB", Path: "/khib/image", Located: true}},
		{in: "dir:/dev/disk/by-path/pci-0000:00:04.0:/img", want: Spec{Kind: SpecDir, Value: "/dev/disk/by-path/pci-0000:00:04.0", Path: "/img", Located: true}},
		{in: "dir:fuse:/usr/lib/khib/fs,--store,scan:/image", want: Spec{Kind: SpecDir, Value: "fuse:/usr/lib/khib/fs,--store,scan", Path: "/image", Located: true}},
		{in: "dir:/dev/vdd", wantErr: "dir:DEV:/PATH"},
		{in: "dir:vdd:/x", wantErr: "before the path comes the device"},
		{in: "dir:/dev/vdd:/a/../b", wantErr: "not a plain file path"},
		{in: "dir:/dev/vdd:/a/", wantErr: "not a plain file path"},
		{in: "dir:fuse:prog:/x", wantErr: "absolute path"},
		{in: "dir:fuse:/p,,x:/x", wantErr: "separated by commas"},
		{in: "", wantErr: "empty"},
		{in: "file:", wantErr: "names nothing"},
		{in: "file:relative/path", wantErr: "absolute path"},
		{in: "file:UUID=ab", wantErr: "DEV@OFFSET"},
		{in: "file:/dev/vdb@12", wantErr: "multiple of 4096"},
		{in: "file:/dev/vdb@x", wantErr: "multiple of 4096"},
		{in: "swap:@4096", wantErr: "multiple of 4096"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSpec(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseSpec(%q) = %+v, %v; want an error saying %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseSpec(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
			again, err := ParseSpec(got.String())
			if err != nil || again != got {
				t.Fatalf("String() %q parses to %+v, %v", got.String(), again, err)
			}
		})
	}
}

func FuzzParseSpec(f *testing.F) {
	for _, s := range []string{"/dev/vda", "swap:/dev/vdc", "file:UUID=a@4096", "file:/x", "swap:/f@0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sp, err := ParseSpec(s)
		if err != nil {
			return
		}
		if sp.Anchor < 0 || sp.Anchor%PageSize != 0 {
			t.Fatalf("%q: anchor %d", s, sp.Anchor)
		}
		if again, err := ParseSpec(sp.String()); err != nil || again != sp {
			t.Fatalf("%q: String() %q parses to %+v, %v", s, sp.String(), again, err)
		}
	})
}

func TestBadExtent(t *testing.T) {
	for flags, want := range map[uint32]string{
		0:                             "",
		ExtentLast:                    "",
		ExtentShared:                  "shares its blocks",
		ExtentUnwritten | ExtentLast:  "unwritten",
		ExtentDelalloc:                "no blocks",
		ExtentDataEncrypted:           "encrypted",
		ExtentDataInline | ExtentLast: "inline",
	} {
		if got := badExtent(flags); !strings.Contains(got, want) || (want == "" && got != "") {
			t.Errorf("badExtent(%#x) = %q, want %q", flags, got, want)
		}
	}
}

func TestFSRefusal(t *testing.T) {
	for magic, want := range map[int64]string{
		magicExt: "", magicXFS: "", magicBtrfs: "copy on write", magicTmpfs: "RAM", magicMSDOS: "immutable", 0x1234: "ext2/3/4 and xfs",
	} {
		_, why := fsRefusal(magic)
		if !strings.Contains(why, want) || (want == "" && why != "") {
			t.Errorf("fsRefusal(%#x) = %q, want %q", magic, why, want)
		}
	}
}

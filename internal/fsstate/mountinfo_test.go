package fsstate

import (
	"strings"
	"testing"
)

const debianMountinfo = `22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
23 28 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
24 28 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw,size=483288k,nr_inodes=120822,mode=755
28 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
29 24 0:26 / /dev/shm rw,nosuid,nodev shared:4 - tmpfs tmpfs rw
40 28 254:2 / /boot/efi rw,relatime shared:21 - vfat /dev/vda2 rw,fmask=0077
41 28 0:35 / /home rw,relatime shared:22 - btrfs /dev/vdc rw,space_cache=v2,subvolid=256,subvol=/home
42 28 0:35 / /srv rw,relatime shared:23 - btrfs /dev/vdc rw,space_cache=v2,subvolid=257,subvol=/srv
43 28 254:1 /var/lib/x /mnt/bind rw,relatime shared:1 - ext4 /dev/vda1 rw
44 28 254:16 /sub /mnt/data\040disk rw,relatime shared:24 - ext4 /dev/vdb rw
45 28 254:16 / /mnt/data2 rw,relatime shared:25 - ext4 /dev/vdb rw
46 28 0:40 / /net rw - nfs4 server:/export rw
`

func TestParseMountinfo(t *testing.T) {
	ms, err := ParseMountinfo(strings.NewReader(debianMountinfo))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 12 {
		t.Fatalf("%d mounts, want 12", len(ms))
	}
	if m := ms[3]; m.Major != 254 || m.Minor != 1 || m.Dir != "/" || m.Type != "ext4" || m.Source != "/dev/vda1" || m.Root != "/" {
		t.Fatalf("root mount %+v", m)
	}
	if ms[9].Dir != "/mnt/data disk" {
		t.Fatalf("escaped mount point read as %q", ms[9].Dir)
	}
	var got []string
	for _, m := range BlockMounts(ms) {
		got = append(got, m.Type+" "+m.Dir+" "+m.Source)
	}
	want := []string{"ext4 / /dev/vda1", "vfat /boot/efi /dev/vda2", "btrfs /home /dev/vdc", "ext4 /mnt/data2 /dev/vdb"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("BlockMounts = %q, want %q", got, want)
	}
}

func TestParseMountinfoErrors(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"no separator", "22 28 0:21 / /sys rw sysfs sysfs rw\n", "line 1"},
		{"short", "22 28 0:21 / - sysfs sysfs rw\n", "line 1"},
		{"bad device", "22 28 x:21 / /sys rw - sysfs sysfs rw\n", "bad device number"},
		{"no minor", "22 28 21 / /sys rw - sysfs sysfs rw\n", "bad device number"},
		{"no source", "22 28 0:21 / /sys rw - sysfs\n", "line 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseMountinfo(strings.NewReader(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		`/a\040b`:   "/a b",
		`/a\011b`:   "/a\tb",
		`/a\134b`:   `/a\b`,
		`/a\04`:     `/a\04`,
		`/a\999`:    `/a\999`,
		`\040\040`:  "  ",
		`/plain`:    "/plain",
		`/end\`:     `/end\`,
		`/x\012\12`: "/x\n\\12",
	} {
		if got := unescape(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

package fsstate

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestReadStateSynthetic(t *testing.T) {
	le := binary.LittleEndian
	tests := []struct {
		name   string
		s      func(*synth)
		mutate func(img []byte)
		want   string // error substring; "" means success
		isNot  bool   // the error wraps ErrNotExt
		jnl    *Journal
	}{
		{name: "extents, depth 0", jnl: &Journal{7, 0}},
		{name: "extents, depth 1", s: func(s *synth) { s.depth = 1 }, jnl: &Journal{7, 0}},
		{name: "extents, depth 2, 4 KiB blocks", s: func(s *synth) { s.depth = 2; s.bs = 4096 }, jnl: &Journal{7, 0}},
		{name: "block map (ext3)", s: func(s *synth) { s.blockMap = true; s.start = 5 }, jnl: &Journal{7, 5}},
		{name: "64-bit descriptors", s: func(s *synth) { s.bit64 = true; s.seq = 0xdeadbeef }, jnl: &Journal{0xdeadbeef, 0}},
		{name: "128-byte inodes", s: func(s *synth) { s.inodeSz = 128 }, jnl: &Journal{7, 0}},
		{name: "no journal (ext2)", s: func(s *synth) { s.noJ = true }},
		{name: "external journal", mutate: func(img []byte) { le.PutUint32(img[1024+0xE4:], 0x0811) }},
		{name: "not ext", mutate: func(img []byte) { img[1024+0x38] = 0 }, want: "no ext2/3/4", isNot: true},
		{name: "too small", mutate: nil, s: func(s *synth) { s.blocks = 1 }, want: "too small", isNot: true},
		{name: "block size", mutate: func(img []byte) { le.PutUint32(img[1024+0x18:], 7) }, want: "block size"},
		{name: "inode size", mutate: func(img []byte) { le.PutUint16(img[1024+0x58:], 200) }, want: "inode size"},
		{name: "descriptor size", s: func(s *synth) { s.bit64 = true }, mutate: func(img []byte) { le.PutUint16(img[1024+0xFE:], 32) }, want: "descriptor size"},
		{name: "journal device itself", mutate: func(img []byte) { img[1024+0x60] |= incompatJournal }, want: "external journal device"},
		{name: "journal inode out of group 0", mutate: func(img []byte) { le.PutUint32(img[1024+0xE0:], 65) }, want: "not in block group 0"},
		{name: "no inodes per group", mutate: func(img []byte) { le.PutUint32(img[1024+0x28:], 0) }, want: "not in block group 0"},
		{name: "inode table past the end", mutate: func(img []byte) { le.PutUint32(img[2*1024+8:], 4000) }, want: "past the file system's"},
		{name: "inode table high bits", s: func(s *synth) { s.bit64 = true }, mutate: func(img []byte) { le.PutUint32(img[2*1024+0x28:], 1) }, want: "past the file system's"},
		{name: "extent magic", mutate: func(img []byte) { inodeAt(img)[0x28] = 0 }, want: "extent header magic"},
		{name: "journal block high bits", s: func(s *synth) { s.jblk = 1<<32 | 10 }, want: "past the file system's"},
		{name: "hole at block 0 (extent)", mutate: func(img []byte) { le.PutUint32(inodeAt(img)[0x28+12:], 1) }, want: "hole"},
		{name: "empty extent root", mutate: func(img []byte) { le.PutUint16(inodeAt(img)[0x28+2:], 0) }, want: "hole"},
		{name: "unwritten extent", mutate: func(img []byte) { le.PutUint16(inodeAt(img)[0x28+12+4:], 32769) }, want: "unwritten"},
		{name: "too many entries", mutate: func(img []byte) { le.PutUint16(inodeAt(img)[0x28+4:], 5) }, want: "room for 4"},
		{name: "depth too deep", mutate: func(img []byte) { le.PutUint16(inodeAt(img)[0x28+6:], 6) }, want: "depth"},
		{name: "depth loop", s: func(s *synth) { s.depth = 1 }, mutate: func(img []byte) { le.PutUint16(img[6*1024+6:], 1) }, want: "depth"},
		{name: "hole at block 0 (block map)", s: func(s *synth) { s.blockMap = true }, mutate: func(img []byte) { le.PutUint32(inodeAt(img)[0x28:], 0) }, want: "hole"},
		{name: "journal magic", mutate: func(img []byte) { img[10*1024] = 0 }, want: "journal superblock magic"},
		{name: "journal block type", mutate: func(img []byte) { img[10*1024+7] = 1 }, want: "not a superblock"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := defaultSynth()
			if tc.s != nil {
				tc.s(&s)
			}
			var img []byte
			if s.blocks < 2 {
				img = make([]byte, 1024)
			} else if s.jblk >= uint64(s.blocks) {
				// Too big to build: build it small and point the extent
				// at the far block afterwards.
				far := s.jblk
				s.jblk = 10
				img = s.image()
				e := inodeAt(img)[0x28+12:]
				le.PutUint16(e[6:], uint16(far>>32))
				le.PutUint32(e[8:], uint32(far))
			} else {
				img = s.image()
			}
			if tc.mutate != nil {
				tc.mutate(img)
			}
			sb, err := read(img)
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err = %v, want one saying %q", err, tc.want)
				}
				if errors.Is(err, ErrNotExt) != tc.isNot {
					t.Fatalf("errors.Is(%v, ErrNotExt) = %v", err, !tc.isNot)
				}
				var fe *FormatError
				if !tc.isNot && !errors.As(err, &fe) {
					t.Fatalf("err %v is no FormatError", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := sb.UUID.String(); got != "e782cdc2-31a0-4950-9755-fc67fa783a2c" {
				t.Errorf("UUID %s", got)
			}
			if sb.Label != "khibdata" {
				t.Errorf("label %q", sb.Label)
			}
			c := sb.Counters
			if c.MountCount != s.mnt || c.MountTime != s.mtime || c.KBytesWritten != s.kbytes || c.WriteTime != 0x6000_1234 || c.State != stateValid {
				t.Errorf("counters %+v", c)
			}
			switch {
			case tc.jnl == nil && c.Journal != nil:
				t.Errorf("journal %+v, want none", *c.Journal)
			case tc.jnl != nil && (c.Journal == nil || *c.Journal != *tc.jnl):
				t.Errorf("journal %+v, want %+v", c.Journal, *tc.jnl)
			}
		})
	}
}

// inodeAt returns the bytes of inode 8 in a default synthetic image.
func inodeAt(img []byte) []byte {
	s := defaultSynth()
	return img[int64(s.table)*s.bs+7*int64(s.inodeSz):]
}

func TestUUID(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"e782cdc2-31a0-4950-9755-fc67fa783a2c", true},
		{"E782CDC2-31A0-4950-9755-FC67FA783A2C", true},
		{"e782cdc2-31a0-4950-9755-fc67fa783a2", false},
		{"e782cdc2x31a0-4950-9755-fc67fa783a2c", false},
		{"g782cdc2-31a0-4950-9755-fc67fa783a2c", false},
		{"", false},
	} {
		u, err := ParseUUID(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("ParseUUID(%q): %v", tc.in, err)
		}
		if tc.ok && u.String() != strings.ToLower(tc.in) {
			t.Errorf("ParseUUID(%q).String() = %s", tc.in, u)
		}
	}
}

// mkfs makes a file system with the host's mke2fs, or skips.
func mkfs(t *testing.T, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("mke2fs"); err != nil {
		t.Skip("mke2fs not installed (apt-get install e2fsprogs)")
	}
	p := filepath.Join(t.TempDir(), "fs.img")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, 64<<20); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("mke2fs", append(append([]string{"-q", "-F"}, args...), p)...)
	cmd.Env = append(os.Environ(), "E2FSPROGS_FAKE_TIME=1700000000")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("mke2fs %v: %v\n%s", args, err, out)
	}
	return p
}

func readFile(t *testing.T, p string) *Superblock {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	sb, err := ReadState(f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	return sb
}

// dumpe2fs returns the fields of dumpe2fs -h.
func dumpe2fs(t *testing.T, p string) map[string]string {
	t.Helper()
	out, err := exec.Command("dumpe2fs", "-h", p).Output()
	if err != nil {
		t.Fatalf("dumpe2fs -h %s: %v", p, err)
	}
	m := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if ok {
			m[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return m
}

// debugfs runs debugfs's commands on p with the clock at now (libext2fs
// writes s_wtime on every close).
func debugfs(t *testing.T, p string, now int64, cmds ...string) string {
	t.Helper()
	script := filepath.Join(t.TempDir(), "cmds")
	os.WriteFile(script, []byte(strings.Join(cmds, "\n")+"\n"), 0o644)
	cmd := exec.Command("debugfs", "-w", "-f", script, p)
	cmd.Env = append(os.Environ(), "E2FSPROGS_FAKE_TIME="+strconv.FormatInt(now, 10))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs %v: %v\n%s", cmds, err, out)
	}
	return string(out)
}

// TestMke2fs reads file systems as mke2fs makes them and checks every
// value against dumpe2fs, and the journal's first block against
// debugfs's own mapping of the journal inode.
func TestMke2fs(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		journal bool
	}{
		{"ext4 1k", []string{"-t", "ext4"}, true},
		{"ext4 4k", []string{"-t", "ext4", "-b", "4096"}, true},
		{"ext4 no 64bit 128-byte inodes", []string{"-t", "ext4", "-O", "^64bit", "-I", "128"}, true},
		{"ext4 meta_bg", []string{"-t", "ext4", "-O", "meta_bg,^resize_inode"}, true},
		{"ext3", []string{"-t", "ext3"}, true},
		{"ext2", []string{"-t", "ext2"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := mkfs(t, tc.args...)
			sb := readFile(t, p)
			d := dumpe2fs(t, p)
			if sb.UUID.String() != d["Filesystem UUID"] {
				t.Errorf("UUID %s, dumpe2fs %s", sb.UUID, d["Filesystem UUID"])
			}
			if strconv.Itoa(int(sb.Counters.MountCount)) != d["Mount count"] {
				t.Errorf("mount count %d, dumpe2fs %s", sb.Counters.MountCount, d["Mount count"])
			}
			if strconv.Itoa(int(sb.BlockSize)) != d["Block size"] {
				t.Errorf("block size %d, dumpe2fs %s", sb.BlockSize, d["Block size"])
			}
			if !tc.journal {
				if sb.Counters.Journal != nil {
					t.Fatalf("journal %+v on %s", *sb.Counters.Journal, tc.name)
				}
				return
			}
			j := sb.Counters.Journal
			if j == nil {
				t.Fatal("no journal read")
			}
			if seq, _ := strconv.ParseUint(strings.TrimPrefix(d["Journal sequence"], "0x"), 16, 32); uint32(seq) != j.Sequence {
				t.Errorf("journal sequence %d, dumpe2fs %s", j.Sequence, d["Journal sequence"])
			}
			if d["Journal start"] != strconv.Itoa(int(j.Start)) {
				t.Errorf("journal start %d, dumpe2fs %s", j.Start, d["Journal start"])
			}
		})
	}
}

// TestMke2fsChanges makes the changes another system's mount would make,
// with debugfs, and checks that each shows in the counters, and that
// nothing else does.
func TestMke2fsChanges(t *testing.T) {
	base := mkfs(t, "-t", "ext4")
	orig, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	was := readFile(t, base).Counters
	for _, tc := range []struct {
		name  string
		cmds  []string
		field string
	}{
		{"mount count", []string{"ssv mnt_count 9"}, "s_mnt_count"},
		{"mount time", []string{"ssv mtime 20250102030405"}, "s_mtime"},
		{"write time", []string{"dirty"}, "s_wtime"},
		{"kbytes written", []string{"ssv kbytes_written 123456"}, "s_kbytes_written"},
		{"state", []string{"ssv state 0"}, "s_state"},
		{"journal transaction", []string{"jo", "jw -b 300 /dev/null", "jc"}, "journal s_start"},
		{"journal replayed", []string{"jo", "jw -b 300 /dev/null", "jc", "jr"}, "journal s_sequence"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "fs.img")
			if err := os.WriteFile(p, orig, 0o644); err != nil {
				t.Fatal(err)
			}
			// Every write by debugfs sets s_wtime to its clock: keep that
			// where it was, unless it is the field under test.
			clock := was.WriteTime
			if tc.field == "s_wtime" {
				clock += 100
			}
			debugfs(t, p, clock, tc.cmds...)
			now := readFile(t, p).Counters
			ch := Diff(was, now)
			found := false
			for _, c := range ch {
				if c.Field == tc.field {
					found = true
				}
			}
			if !found {
				t.Fatalf("changes %v, want one in %s", ch, tc.field)
			}
			t.Logf("%s: %v", tc.name, ch)
		})
	}
	// Reading alone changes nothing, and a copy compares equal.
	if ch := Diff(was, readFile(t, base).Counters); len(ch) != 0 {
		t.Fatalf("changes %v after reading only", ch)
	}
}

func TestDiff(t *testing.T) {
	j := func(seq, start uint32) *Journal { return &Journal{seq, start} }
	base := Counters{MountTime: 1700000000, WriteTime: 1700000100, MountCount: 4, KBytesWritten: 900, State: 0, FeatureIncompat: 0x2c6, Journal: j(10, 3)}
	for _, tc := range []struct {
		name string
		now  func(c *Counters)
		want []string
	}{
		{"same", func(c *Counters) {}, nil},
		{"mount", func(c *Counters) { c.MountCount = 5; c.MountTime = 1700000500 },
			[]string{"s_mtime 2023-11-14T22:13:20Z → 2023-11-14T22:21:40Z", "s_mnt_count 4 → 5"}},
		{"clean unmount", func(c *Counters) { c.State = 1; c.FeatureIncompat = 0x2c2; c.Journal = j(12, 0) },
			[]string{"s_state 0x0 (not clean) → 0x1 (clean)", "s_feature_incompat 0x2c6 (journal needs recovery) → 0x2c2",
				"journal s_sequence 10 → 12", "journal s_start 3 → 0"}},
		{"journal gone", func(c *Counters) { c.Journal = nil }, []string{"journal sequence 10, start 3 → none"}},
		{"written", func(c *Counters) { c.KBytesWritten = 1000; c.WriteTime = 0 },
			[]string{"s_wtime 2023-11-14T22:15:00Z → never", "s_kbytes_written 900 → 1000"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := base
			now.Journal = j(10, 3)
			tc.now(&now)
			var got []string
			for _, c := range Diff(base, now) {
				got = append(got, c.String())
			}
			if strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Fatalf("Diff = %q, want %q", got, tc.want)
			}
			r := Record{Mount: Mount{Type: "ext4", Dir: "/data", Source: "/dev/vdb", UUID: "e782cdc2-31a0-4950-9755-fc67fa783a2c"}, State: &base}
			err := r.Compare("/dev/vdc", now)
			if (err == nil) != (tc.want == nil) {
				t.Fatalf("Compare: %v", err)
			}
			if err != nil {
				if !errors.Is(err, ErrChanged) {
					t.Fatalf("%v is not ErrChanged", err)
				}
				for _, w := range append(tc.want, "e782cdc2-31a0-4950-9755-fc67fa783a2c", "/data", "/dev/vdb", "/dev/vdc") {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not say %q", err, w)
					}
				}
			}
		})
	}
	if err := (Record{}).Compare("/dev/x", base); err != nil {
		t.Fatalf("a record without counters: %v", err)
	}
}

func TestReadAtErrors(t *testing.T) {
	img := defaultSynth().image()
	// A device that fails past the superblock: the error says what it was reading.
	r := &failAfter{r: bytes.NewReader(img), n: 2048}
	_, err := ReadState(r, int64(len(img)))
	if err == nil || !strings.Contains(err.Error(), "group descriptor 0") {
		t.Fatalf("err = %v", err)
	}
}

type failAfter struct {
	r *bytes.Reader
	n int64
}

func (f *failAfter) ReadAt(b []byte, off int64) (int, error) {
	if off+int64(len(b)) > f.n {
		return 0, errors.New("I/O error")
	}
	return f.r.ReadAt(b, off)
}

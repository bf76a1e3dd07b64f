package fsstate

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// MountInfo is one line of /proc/PID/mountinfo (proc(5)).
type MountInfo struct {
	Major, Minor uint32 // st_dev of the mounted file system
	Root         string // the directory of the file system mounted here
	Dir          string // where it is mounted
	Type         string
	Source       string
}

// ParseMountinfo reads /proc/PID/mountinfo. Lines it cannot make sense of
// are an error: a mount khib cannot see is a mount it cannot check.
func ParseMountinfo(r io.Reader) ([]MountInfo, error) {
	var out []MountInfo
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 0, 4096), 1<<20)
	for n := 1; s.Scan(); n++ {
		line := s.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 6 || len(g) < 2 {
			return nil, fmt.Errorf("mountinfo line %d: %q: not the format of proc(5)", n, line)
		}
		ma, mi, ok := strings.Cut(f[2], ":")
		major, err1 := strconv.ParseUint(ma, 10, 32)
		minor, err2 := strconv.ParseUint(mi, 10, 32)
		if !ok || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("mountinfo line %d: bad device number %q", n, f[2])
		}
		out = append(out, MountInfo{Major: uint32(major), Minor: uint32(minor),
			Root: unescape(f[3]), Dir: unescape(f[4]), Type: g[0], Source: unescape(g[1])})
	}
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("reading mountinfo: %w", err)
	}
	return out, nil
}

// unescape undoes the kernel's octal escapes of space, tab, newline and
// backslash in mountinfo paths (fs/proc_namespace.c: mangle).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			v := (s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0')
			b.WriteByte(v)
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return '0' <= c && c <= '7' }

// BlockMounts picks the mounts of block file systems, one per file
// system: those with a block device behind their st_dev, and those
// (btrfs, whose st_dev is anonymous) whose source is a /dev path. A file
// system mounted in several places (bind mounts) is named by the first
// mount of its root, else its first mount.
func BlockMounts(ms []MountInfo) []MountInfo {
	var out []MountInfo
	index := map[string]int{}
	for _, m := range ms {
		key := fmt.Sprintf("%d:%d", m.Major, m.Minor)
		switch {
		case m.Major != 0:
		case strings.HasPrefix(m.Source, "/dev/") && m.Type != "devtmpfs" && m.Type != "tmpfs":
			key = "source " + m.Source
		default:
			continue
		}
		if i, seen := index[key]; seen {
			if out[i].Root != "/" && m.Root == "/" {
				out[i] = m
			}
			continue
		}
		index[key] = len(out)
		out = append(out, m)
	}
	return out
}

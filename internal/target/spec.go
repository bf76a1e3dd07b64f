package target

import (
	"fmt"
	"strconv"
	"strings"
)

// Spec kinds: what holds the image.
const (
	SpecDevice = "device" // a whole partition or disk A does not use
	SpecSwap   = "swap"   // free slots of A's active swap area
	SpecFile   = "file"   // a preallocated file on A's ext4 or xfs
	SpecDir    = "dir"    // a plain file on a filesystem the helpers mount
	SpecS3     = "s3"     // an object in an S3-compatible store
)

// Spec is a target as the user gives it (--target, khib.conf's target)
// or as stage 1 needs it (khib.resume=, khib.conf's resume):
//
//	DEV                   a device: /dev path, UUID=, PARTUUID=, LABEL=, PARTLABEL=
//	swap:PATH             A's active swap partition or swap file
//	file:PATH             a file on A's filesystem (khib prepare makes it)
//	swap:DEV  swap:DEV@N  located: the swap area's header at byte N of DEV (0 for a partition)
//	file:DEV@N            located: the file's first block at byte N of DEV
//	dir:DEV:/PATH         the file PATH on the filesystem on DEV (vfat, ext4, xfs),
//	                      which the helpers mount and A must not have mounted
//	dir:fuse:PROG[,ARG...]:/PATH
//	                      the file PATH in the FUSE filesystem that PROG serves
//	                      when run as PROG [ARG...] MOUNTPOINT
//	s3://BUCKET/KEY?endpoint=HOST:PORT&creds=FILE[&tls=0]
//	                      an object in an S3-compatible store (internal/objstore)
//
// The located forms are what A records for stage 1, which cannot look up
// a path without mounting A's filesystem.
type Spec struct {
	Kind   string
	Value  string // the device spec or the path
	Anchor int64  // with Located: the anchor's byte offset on the device
	// Located: Value is a device spec and Anchor an offset on it.
	Located bool
	// Path is a dir: target's file inside its filesystem.
	Path string
}

// FUSE reports whether a dir: target is a FUSE program's filesystem, and
// returns the program and its arguments.
func (s Spec) FUSE() (prog string, args []string, ok bool) {
	v, ok := strings.CutPrefix(s.Value, "fuse:")
	if s.Kind != SpecDir || !ok {
		return "", nil, false
	}
	parts := strings.Split(v, ",")
	return parts[0], parts[1:], true
}

// ParseSpec reads a target spec. It checks the form only; whether the
// device, file or swap area exists is for the caller to find out.
func ParseSpec(s string) (Spec, error) {
	if strings.HasPrefix(s, "s3://") {
		// Checked in full by internal/objstore.ParseURL.
		return Spec{Kind: SpecS3, Value: s, Located: true}, nil
	}
	kind, v, ok := strings.Cut(s, ":")
	if ok && kind == SpecDir {
		return parseDir(s, v)
	}
	if !ok || (kind != SpecSwap && kind != SpecFile) {
		if s == "" {
			return Spec{}, fmt.Errorf("empty target")
		}
		return Spec{Kind: SpecDevice, Value: s, Located: true}, nil
	}
	if v == "" {
		return Spec{}, fmt.Errorf("target %q names nothing after %s:", s, kind)
	}
	sp := Spec{Kind: kind, Value: v}
	if dev, off, ok := strings.Cut(v, "@"); ok {
		n, err := strconv.ParseInt(off, 10, 64)
		if err != nil || n < 0 || n%PageSize != 0 || dev == "" {
			return Spec{}, fmt.Errorf("target %q: after @ comes the byte offset of the %s's first block, a multiple of 4096", s, kind)
		}
		sp.Value, sp.Anchor, sp.Located = dev, n, true
		return sp, nil
	}
	if !strings.HasPrefix(v, "/") && !strings.Contains(v, "=") {
		return Spec{}, fmt.Errorf("target %q: give an absolute path after %s:", s, kind)
	}
	if kind == SpecFile && strings.Contains(v, "=") {
		return Spec{}, fmt.Errorf("target %q: a file target is a path (file:/var/lib/khib/image) or, for stage 1, DEV@OFFSET", s)
	}
	// swap:/dev/X or swap:UUID=...: a partition, whose header is at 0.
	// (Whether a path is a swap file is known only on A.)
	if kind == SpecSwap && (strings.HasPrefix(v, "/dev/") || strings.Contains(v, "=")) {
		sp.Located = true
	}
	return sp, nil
}

// parseDir reads the part of a dir: spec after "dir:".
func parseDir(s, v string) (Spec, error) {
	i := strings.LastIndex(v, ":/")
	if i <= 0 {
		return Spec{}, fmt.Errorf("target %q: a dir: target is dir:DEV:/PATH or dir:fuse:PROGRAM[,ARG...]:/PATH", s)
	}
	sp := Spec{Kind: SpecDir, Value: v[:i], Path: v[i+1:], Located: true}
	if strings.Contains(sp.Path, "/../") || strings.HasSuffix(sp.Path, "/..") || strings.HasSuffix(sp.Path, "/") || strings.ContainsAny(sp.Path, "\x00 ") {
		return Spec{}, fmt.Errorf("target %q: %q is not a plain file path (no .., no trailing /, no blanks)", s, sp.Path)
	}
	if prog, args, ok := sp.FUSE(); ok {
		if !strings.HasPrefix(prog, "/") {
			return Spec{}, fmt.Errorf("target %q: the FUSE program must be an absolute path", s)
		}
		for _, a := range args {
			if a == "" || strings.ContainsAny(a, " \x00") {
				return Spec{}, fmt.Errorf("target %q: FUSE arguments are separated by commas and cannot be empty or contain blanks", s)
			}
		}
		return sp, nil
	}
	if !strings.HasPrefix(sp.Value, "/") && !strings.Contains(sp.Value, "=") {
		return Spec{}, fmt.Errorf("target %q: before the path comes the device: a /dev path, UUID=, LABEL=, PARTUUID= or PARTLABEL=", s)
	}
	return sp, nil
}

// String gives the spec back in ParseSpec's form.
func (s Spec) String() string {
	switch {
	case s.Kind == SpecS3:
		return s.Value
	case s.Kind == SpecDir:
		return "dir:" + s.Value + ":" + s.Path
	case s.Kind == SpecDevice:
		return s.Value
	case s.Located && (s.Anchor != 0 || s.Kind == SpecFile || !(strings.HasPrefix(s.Value, "/dev/") || strings.Contains(s.Value, "="))):
		return fmt.Sprintf("%s:%s@%d", s.Kind, s.Value, s.Anchor)
	}
	return s.Kind + ":" + s.Value
}

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
)

// Spec is a target as the user gives it (--target, khib.conf's target)
// or as stage 1 needs it (khib.resume=, khib.conf's resume):
//
//	DEV                   a device: /dev path, UUID=, PARTUUID=, LABEL=, PARTLABEL=
//	swap:PATH             A's active swap partition or swap file
//	file:PATH             a file on A's filesystem (khib prepare makes it)
//	swap:DEV  swap:DEV@N  located: the swap area's header at byte N of DEV (0 for a partition)
//	file:DEV@N            located: the file's first block at byte N of DEV
//
// The located forms are what A records for stage 1, which cannot look up
// a path without mounting A's filesystem.
type Spec struct {
	Kind   string
	Value  string // the device spec or the path
	Anchor int64  // with Located: the anchor's byte offset on the device
	// Located: Value is a device spec and Anchor an offset on it.
	Located bool
}

// ParseSpec reads a target spec. It checks the form only; whether the
// device, file or swap area exists is for the caller to find out.
func ParseSpec(s string) (Spec, error) {
	kind, v, ok := strings.Cut(s, ":")
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

// String gives the spec back in ParseSpec's form.
func (s Spec) String() string {
	switch {
	case s.Kind == SpecDevice:
		return s.Value
	case s.Located && (s.Anchor != 0 || s.Kind == SpecFile || !(strings.HasPrefix(s.Value, "/dev/") || strings.Contains(s.Value, "="))):
		return fmt.Sprintf("%s:%s@%d", s.Kind, s.Value, s.Anchor)
	}
	return s.Kind + ":" + s.Value
}

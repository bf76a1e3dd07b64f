package fsstate

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Mount is a block file system that A has mounted, as A describes it to
// the helper: enough for the helper to find it among its own devices
// (by UUID and size: device names may differ there) and for a person to
// recognise it in a message.
type Mount struct {
	Type   string `json:"type"`           // ext4, vfat, btrfs...
	Dir    string `json:"dir"`            // where A has it mounted (its first mount)
	Source string `json:"source"`         // A's device, e.g. /dev/vdb
	UUID   string `json:"uuid,omitempty"` // ext2/3/4: s_uuid, as A read it
	Size   int64  `json:"size,omitempty"` // bytes of A's device
}

func (m Mount) String() string {
	s := m.Type + " file system"
	if m.UUID != "" {
		s += " " + m.UUID
	}
	return fmt.Sprintf("%s (A had it on %s, from %s)", s, m.Dir, m.Source)
}

// Supported reports whether khib can read the change counters of a file
// system of type fstype, as /proc/self/mountinfo names it.
func Supported(fstype string) bool {
	switch fstype {
	case "ext2", "ext3", "ext4":
		return true
	}
	return false
}

// Record is what an image holds about one of A's file systems: either
// its counters as the helper read them once A had stopped, or why they
// could not be read.
type Record struct {
	Mount
	Device    string    `json:"device,omitempty"`    // the helper's device it read them from
	State     *Counters `json:"state,omitempty"`     // nil: not checked
	Unchecked string    `json:"unchecked,omitempty"` // why State is nil
}

// Checked reports whether the record holds counters to compare.
func (r Record) Checked() bool { return r.State != nil }

// Change is one counter that differs between two readings.
type Change struct {
	Field string // the on-disk field's name, s_mnt_count say
	Was   string
	Now   string
}

func (c Change) String() string { return fmt.Sprintf("%s %s → %s", c.Field, c.Was, c.Now) }

// Diff lists the counters that differ between was and now, in the
// superblock's order, the journal's last.
func Diff(was, now Counters) []Change {
	var out []Change
	add := func(field string, a, b any, show func(any) string) {
		if a != b {
			out = append(out, Change{field, show(a), show(b)})
		}
	}
	num := func(v any) string { return fmt.Sprint(v) }
	stamp := func(v any) string { return formatTime(v.(int64)) }
	add("s_mtime", was.MountTime, now.MountTime, stamp)
	add("s_wtime", was.WriteTime, now.WriteTime, stamp)
	add("s_mnt_count", was.MountCount, now.MountCount, num)
	add("s_state", was.State, now.State, func(v any) string { return stateName(v.(uint16)) })
	add("s_kbytes_written", was.KBytesWritten, now.KBytesWritten, num)
	add("s_feature_incompat", was.FeatureIncompat, now.FeatureIncompat, func(v any) string { return incompatName(v.(uint32)) })
	switch wj, nj := was.Journal, now.Journal; {
	case wj == nil && nj == nil:
	case wj == nil || nj == nil:
		out = append(out, Change{"journal", journalName(wj), journalName(nj)})
	default:
		add("journal s_sequence", wj.Sequence, nj.Sequence, num)
		add("journal s_start", wj.Start, nj.Start, num)
	}
	return out
}

func formatTime(t int64) string {
	if t == 0 {
		return "never"
	}
	return time.Unix(t, 0).UTC().Format(time.RFC3339)
}

func stateName(s uint16) string {
	var w []string
	if s&stateValid != 0 {
		w = append(w, "clean")
	} else {
		w = append(w, "not clean")
	}
	if s&stateErrors != 0 {
		w = append(w, "errors")
	}
	return fmt.Sprintf("%#x (%s)", s, strings.Join(w, ", "))
}

func incompatName(f uint32) string {
	if f&incompatRecover != 0 {
		return fmt.Sprintf("%#x (journal needs recovery)", f)
	}
	return fmt.Sprintf("%#x", f)
}

func journalName(j *Journal) string {
	if j == nil {
		return "none"
	}
	return fmt.Sprintf("sequence %d, start %d", j.Sequence, j.Start)
}

// ErrChanged means a file system was changed since its image was made.
var ErrChanged = errors.New("changed since the hibernation")

// ChangedError says which file system changed, on which device it was
// found, and which counters changed from what to what.
type ChangedError struct {
	Record  Record
	Device  string
	Changes []Change
}

func (e *ChangedError) Error() string {
	var cs []string
	for _, c := range e.Changes {
		cs = append(cs, c.String())
	}
	return fmt.Sprintf("the %s, now %s, was %v: %s. Another system mounted or wrote it after this image was made, "+
		"and resuming would write A's stale view of it back over those changes",
		e.Record.Mount, e.Device, ErrChanged, strings.Join(cs, ", "))
}

func (e *ChangedError) Unwrap() error { return ErrChanged }

// Compare returns a *ChangedError if now, read from device, differs from
// the record's counters, and nil if they are the same. A record without
// counters compares equal: there is nothing to compare.
func (r Record) Compare(device string, now Counters) error {
	if r.State == nil {
		return nil
	}
	if ch := Diff(*r.State, now); len(ch) > 0 {
		return &ChangedError{Record: r, Device: device, Changes: ch}
	}
	return nil
}

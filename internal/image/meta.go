package image

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/khib/khib/internal/fsstate"
)

// Meta is the metadata blob: who A was and what was saved. It is stored as
// JSON, because it is small, read once, and a person debugging a resume
// wants to read it.
type Meta struct {
	KernelRelease string `json:"kernel_release"` // A's uname -r
	BuildID       string `json:"build_id"`       // A's kernel build ID, hex
	PageSize      int    `json:"page_size"`      // 4096
	// RAM is A's memory that was saved, physical [start, end). When it is
	// set, every page of the image lies in it; a reader refuses others.
	RAM []Range `json:"ram"`
	// Region is R, where B and C run. No page of the image lies in it: C
	// could not write such a page without overwriting itself.
	Region   Range     `json:"region"`
	JumpBack uint64    `json:"jump_back"` // A's jump-back entry, a physical address
	Created  time.Time `json:"created"`   // when the save started
	UUID     UUID      `json:"uuid"`      // same as the superblock's
	Codec    string    `json:"codec"`     // the codec the image was written with
	Hash     string    `json:"hash"`      // "xxhash64"
	// Filesystems are A's mounted block file systems with their on-disk
	// change counters, as the helper read them once A had stopped: a
	// resume compares them before it writes a page (fsstate; stage 1
	// refuses an image whose file systems were mounted or written since).
	// Absent in images made before khib recorded them.
	Filesystems []fsstate.Record `json:"filesystems,omitempty"`
	// Host and Notes are free-form figures for people: machine, save
	// speed, workload names. Nothing in khib branches on them.
	Host  map[string]string `json:"host,omitempty"`
	Notes map[string]string `json:"notes,omitempty"`
}

// clone returns a copy that shares nothing with m.
func (m *Meta) clone() Meta {
	c := *m
	c.RAM = slices.Clone(m.RAM)
	c.Host = maps.Clone(m.Host)
	c.Notes = maps.Clone(m.Notes)
	c.Filesystems = slices.Clone(m.Filesystems)
	for i, f := range c.Filesystems {
		if f.State != nil {
			st := *f.State
			if st.Journal != nil {
				j := *st.Journal
				st.Journal = &j
			}
			c.Filesystems[i].State = &st
		}
	}
	return c
}

// CheckKernel returns an error wrapping ErrForeignKernel unless the image
// was saved by the kernel described by release and buildID. Build IDs are
// compared when both sides have one: two builds of one release are not the
// same kernel.
func (m Meta) CheckKernel(release, buildID string) error {
	if m.BuildID != "" && buildID != "" {
		if m.BuildID != buildID {
			return fmt.Errorf("%w: saved by %s build %s, this is %s build %s",
				ErrForeignKernel, m.KernelRelease, m.BuildID, release, buildID)
		}
		return nil
	}
	if m.KernelRelease != release {
		return fmt.Errorf("%w: saved by %s, this is %s", ErrForeignKernel, m.KernelRelease, release)
	}
	return nil
}

// validate checks what the format promises about metadata, against the
// superblock it came with.
func (m *Meta) validate(sb *Superblock) error {
	off := sb.MetaOff
	if m.PageSize != PageSize {
		return formatErr(off, "metadata page size %d, want %d", m.PageSize, PageSize)
	}
	if m.UUID != sb.UUID {
		return formatErr(off, "metadata UUID %v differs from the superblock's %v", m.UUID, sb.UUID)
	}
	if c, err := ParseCodec(m.Codec); err != nil || m.Codec == "" || c != sb.Codec {
		return formatErr(off, "metadata codec %q differs from the superblock's %v", m.Codec, sb.Codec)
	}
	if m.Hash != HashName {
		return formatErr(off, "metadata names hash %q, want %q", m.Hash, HashName)
	}
	for i, r := range m.RAM {
		if r.End <= r.Start {
			return formatErr(off, "metadata RAM range %d is empty or inverted: %#x-%#x", i, r.Start, r.End)
		}
	}
	if m.Region.End < m.Region.Start {
		return formatErr(off, "metadata region inverted: %#x-%#x", m.Region.Start, m.Region.End)
	}
	return nil
}

// parseMeta decodes the metadata JSON.
func parseMeta(b []byte, sb *Superblock) (*Meta, error) {
	var m Meta
	d := json.NewDecoder(bytes.NewReader(b))
	if err := d.Decode(&m); err != nil {
		return nil, formatErr(sb.MetaOff, "metadata: %v", err)
	}
	if d.More() {
		return nil, formatErr(sb.MetaOff, "metadata: data after the JSON object")
	}
	if err := m.validate(sb); err != nil {
		return nil, err
	}
	return &m, nil
}

// pageSpan is a span of page frames, [start, end).
type pageSpan struct{ start, end uint64 }

// ramPages turns RAM ranges into sorted, merged page spans, a page partly in
// RAM counting as RAM (firmware maps do not always end on page boundaries).
func ramPages(ram []Range) []pageSpan {
	var s []pageSpan
	for _, r := range ram {
		a, b := r.pages()
		if a < b {
			s = append(s, pageSpan{a, b})
		}
	}
	slices.SortFunc(s, func(x, y pageSpan) int {
		switch {
		case x.start < y.start:
			return -1
		case x.start > y.start:
			return 1
		}
		return 0
	})
	out := s[:0]
	for _, p := range s {
		if n := len(out); n > 0 && p.start <= out[n-1].end {
			out[n-1].end = max(out[n-1].end, p.end)
			continue
		}
		out = append(out, p)
	}
	return out
}

// covered reports whether spans (sorted, merged) cover [start, end).
func covered(spans []pageSpan, start, end uint64) bool {
	i, _ := slices.BinarySearchFunc(spans, start, func(p pageSpan, pfn uint64) int {
		switch {
		case p.end <= pfn:
			return -1
		case p.start > pfn:
			return 1
		}
		return 0
	})
	return i < len(spans) && spans[i].start <= start && end <= spans[i].end
}

// placement checks pages against A's RAM and R.
type placement struct {
	ram          []pageSpan // nil: RAM not given, anything goes
	rStart, rEnd uint64     // R's page frames; empty if rStart == rEnd
}

func newPlacement(m *Meta) placement {
	var p placement
	if len(m.RAM) > 0 {
		p.ram = ramPages(m.RAM)
	}
	p.rStart, p.rEnd = m.Region.pages()
	return p
}

// check returns a description of what is wrong with pages [start, end), or "".
func (p *placement) check(start, end uint64) string {
	if p.ram != nil && !covered(p.ram, start, end) {
		return fmt.Sprintf("pages %#x-%#x are not all in the saved RAM", start, end-1)
	}
	if p.rStart < p.rEnd && start < p.rEnd && p.rStart < end {
		return fmt.Sprintf("pages %#x-%#x overlap the helper region (pages %#x-%#x)", start, end-1, p.rStart, p.rEnd-1)
	}
	return ""
}

// fraction returns the share of the RAM's pages below pfn, or -1 if RAM
// is unknown. It lets a writer that ran out of space extrapolate.
func (p *placement) fraction(pfn uint64) float64 {
	if len(p.ram) == 0 {
		return -1
	}
	var below, total uint64
	for _, s := range p.ram {
		total += s.end - s.start
		switch {
		case pfn >= s.end:
			below += s.end - s.start
		case pfn > s.start:
			below += pfn - s.start
		}
	}
	if total == 0 {
		return -1
	}
	return float64(below) / float64(total)
}

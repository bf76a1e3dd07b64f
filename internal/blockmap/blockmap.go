// Package blockmap implements the map that says where on a raw block
// device an image lies when it does not own the whole device: in a file
// preallocated on a filesystem of A's, or in the free slots of A's swap.
//
// The map is found from one page at a known byte offset of the device,
// the anchor: the first block of the file, or the swap area's header page.
// The anchor names the map pages, which list the image's extents on the
// device in order; the image is their concatenation, a View. Helpers and
// stage 1 read it without mounting anything, as swsusp reads its swap
// header at resume_offset.
//
// Anchor (the first 1024 bytes of the anchor page; in a swap header these
// are the boot bits, which Linux leaves alone; integers little-endian):
//
//	0    8  magic "KHIBANCH"
//	8    4  version (1)
//	12   4  kind: 1 file, 2 swap
//	16  16  nonce: the hibernation request that wrote it
//	32   8  the anchor's own device offset (a copy found elsewhere is refused)
//	40   8  device offset of the first map page
//	48   4  map pages
//	52   4  reserved
//	56   8  extents
//	64   8  the View's size in bytes (sum of the extents)
//	72   8  xxhash64 of the map pages, in chain order
//	80 936  reserved, zero
//	1016 8  xxhash64 of bytes 0-1015
//
// Map page (4096 bytes): magic "KHIBXMAP" (8), page number u32, extents
// in this page u32, the next map page's device offset u64 (0 for none),
// 8 reserved bytes, then up to 253 extents of 16 bytes (device offset u64,
// length u64, both multiples of 4096), zero padding.
//
// A swap area that holds an image carries KHIBSWAPSP in place of Linux's
// SWAPSPACE2 signature at 4086, so that no swapon uses it (and overwrites
// the image) before stage 1 has seen it; RestoreSwap puts SWAPSPACE2 back.
package blockmap

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/cespare/xxhash/v2"
)

// PageSize is the unit of every offset and length in a map.
const PageSize = 4096

// AnchorSize is the part of the anchor page that the anchor occupies.
const AnchorSize = 1024

// Kind is what holds the image.
type Kind uint32

const (
	KindFile Kind = 1 // a file on a filesystem of A's
	KindSwap Kind = 2 // free slots of A's swap
)

func (k Kind) String() string {
	switch k {
	case KindFile:
		return "file"
	case KindSwap:
		return "swap"
	}
	return fmt.Sprintf("kind(%d)", uint32(k))
}

const (
	anchorMagic = "KHIBANCH"
	mapMagic    = "KHIBXMAP"
	version     = 1
	mapHeader   = 32
	// PerMapPage is how many extents one map page holds.
	PerMapPage = (PageSize - mapHeader) / 16
	// MaxMapPages bounds a map: 4096 pages of 253 extents, a million
	// extents, far beyond a swap area's worst fragmentation that khib
	// accepts, and a bound on what a reader allocates.
	MaxMapPages = 4096

	// SwapMagic is Linux's swap signature, at SwapMagicOff of the header.
	SwapMagic = "SWAPSPACE2"
	// HeldSwapMagic replaces it while the swap area holds an image.
	HeldSwapMagic = "KHIBSWAPSP"
	SwapMagicOff  = PageSize - 10
)

// Errors a caller can branch on.
var (
	// ErrNoAnchor: no anchor at that offset (or one from another request).
	ErrNoAnchor = errors.New("no khib anchor")
	// ErrCorrupt: an anchor or map that fails its checks.
	ErrCorrupt = errors.New("corrupt block map")
)

// Extent is a byte range of the device.
type Extent struct {
	Off, Len int64
}

func (e Extent) End() int64 { return e.Off + e.Len }

// Anchor is the decoded anchor.
type Anchor struct {
	Kind      Kind
	Nonce     [16]byte
	Self      int64 // the anchor's device offset
	MapOff    int64 // first map page
	MapPages  uint32
	Extents   uint64
	Size      int64 // the View's size
	MapHash   uint64
	HeldSwap  bool // the page carries HeldSwapMagic (swap kind)
	SwapMagic bool // the page carries SwapMagic
}

// Map is an anchor with its extents: what Write writes and Read reads.
type Map struct {
	Anchor
	// MapAt are the device offsets of the map pages, in chain order.
	MapAt []int64
	// Extents are the image's extents, in image order.
	List []Extent
}

// Plan lays out a map: the map pages take the first pages of extents
// (they must hold them), and the View is what is left. kind, nonce and
// anchorOff go into the anchor.
func Plan(kind Kind, nonce [16]byte, anchorOff int64, extents []Extent) (*Map, error) {
	var total int64
	for _, e := range extents {
		if e.Off < 0 || e.Len <= 0 || e.Off%PageSize != 0 || e.Len%PageSize != 0 {
			return nil, fmt.Errorf("blockmap: extent %d+%d is not page aligned", e.Off, e.Len)
		}
		total += e.Len / PageSize
	}
	// n map pages take n pages and describe the remaining extents;
	// taking pages can split one extent, so allow one extra.
	n := int64(1)
	for n*PerMapPage < int64(len(extents))+1 {
		n++
	}
	if n > MaxMapPages {
		return nil, fmt.Errorf("blockmap: %d extents need more than %d map pages: the space is too fragmented", len(extents), MaxMapPages)
	}
	if total < n+1 {
		return nil, fmt.Errorf("blockmap: %d pages cannot hold a map of %d pages and an image", total, n)
	}
	m := &Map{Anchor: Anchor{Kind: kind, Nonce: nonce, Self: anchorOff, MapPages: uint32(n)}}
	rest := append([]Extent(nil), extents...)
	for int64(len(m.MapAt)) < n {
		e := &rest[0]
		m.MapAt = append(m.MapAt, e.Off)
		e.Off += PageSize
		e.Len -= PageSize
		if e.Len == 0 {
			rest = rest[1:]
		}
	}
	for _, e := range rest {
		m.Size += e.Len
	}
	m.List = rest
	m.Extents = uint64(len(rest))
	return m, nil
}

// Write writes the map pages and then the anchor through w. The anchor
// page's other bytes (a swap header's fields) are not touched: w gets only
// the anchor's 1024 bytes, and with held=true also HeldSwapMagic.
func (m *Map) Write(w io.WriterAt, held bool) error {
	pages := m.encodePages()
	h := xxhash.New()
	for i, p := range pages {
		h.Write(p)
		if _, err := w.WriteAt(p, m.MapAt[i]); err != nil {
			return fmt.Errorf("blockmap: writing map page %d at %d: %w", i, m.MapAt[i], err)
		}
	}
	m.MapHash = h.Sum64()
	if len(m.MapAt) > 0 {
		m.MapOff = m.MapAt[0]
	}
	if _, err := w.WriteAt(m.Anchor.encode(), m.Self); err != nil {
		return fmt.Errorf("blockmap: writing the anchor at %d: %w", m.Self, err)
	}
	if held {
		if _, err := w.WriteAt([]byte(HeldSwapMagic), m.Self+SwapMagicOff); err != nil {
			return fmt.Errorf("blockmap: marking the swap area at %d: %w", m.Self, err)
		}
	}
	return nil
}

func (m *Map) encodePages() [][]byte {
	var out [][]byte
	le := binary.LittleEndian
	for i := range m.MapAt {
		p := make([]byte, PageSize)
		copy(p, mapMagic)
		le.PutUint32(p[8:], uint32(i))
		lo := i * PerMapPage
		hi := min(lo+PerMapPage, len(m.List))
		if lo > hi {
			lo = hi
		}
		le.PutUint32(p[12:], uint32(hi-lo))
		if i+1 < len(m.MapAt) {
			le.PutUint64(p[16:], uint64(m.MapAt[i+1]))
		}
		for j, e := range m.List[lo:hi] {
			le.PutUint64(p[mapHeader+16*j:], uint64(e.Off))
			le.PutUint64(p[mapHeader+16*j+8:], uint64(e.Len))
		}
		out = append(out, p)
	}
	return out
}

func (a *Anchor) encode() []byte {
	b := make([]byte, AnchorSize)
	le := binary.LittleEndian
	copy(b, anchorMagic)
	le.PutUint32(b[8:], version)
	le.PutUint32(b[12:], uint32(a.Kind))
	copy(b[16:32], a.Nonce[:])
	le.PutUint64(b[32:], uint64(a.Self))
	le.PutUint64(b[40:], uint64(a.MapOff))
	le.PutUint32(b[48:], a.MapPages)
	le.PutUint64(b[56:], a.Extents)
	le.PutUint64(b[64:], uint64(a.Size))
	le.PutUint64(b[72:], a.MapHash)
	le.PutUint64(b[AnchorSize-8:], xxhash.Sum64(b[:AnchorSize-8]))
	return b
}

// ReadAnchor reads the anchor page at off of a device of devSize bytes.
// ErrNoAnchor means there is none; ErrCorrupt one that fails its checks.
func ReadAnchor(r io.ReaderAt, off, devSize int64) (*Anchor, error) {
	if off < 0 || off%PageSize != 0 || off+PageSize > devSize {
		return nil, fmt.Errorf("blockmap: anchor offset %d is not a page of a %d-byte device: %w", off, devSize, ErrNoAnchor)
	}
	b := make([]byte, PageSize)
	if _, err := r.ReadAt(b, off); err != nil {
		return nil, fmt.Errorf("blockmap: reading the anchor at %d: %w", off, err)
	}
	a := &Anchor{
		HeldSwap:  string(b[SwapMagicOff:]) == HeldSwapMagic,
		SwapMagic: string(b[SwapMagicOff:]) == SwapMagic,
	}
	if string(b[:8]) != anchorMagic {
		return a, fmt.Errorf("blockmap: at %d: %w", off, ErrNoAnchor)
	}
	le := binary.LittleEndian
	if got, want := xxhash.Sum64(b[:AnchorSize-8]), le.Uint64(b[AnchorSize-8:]); got != want {
		return a, fmt.Errorf("blockmap: anchor at %d: checksum %#x, computed %#x: %w", off, want, got, ErrCorrupt)
	}
	if v := le.Uint32(b[8:]); v != version {
		return a, fmt.Errorf("blockmap: anchor at %d: version %d, this khib reads %d: %w", off, v, version, ErrCorrupt)
	}
	a.Kind = Kind(le.Uint32(b[12:]))
	copy(a.Nonce[:], b[16:32])
	a.Self = int64(le.Uint64(b[32:]))
	a.MapOff = int64(le.Uint64(b[40:]))
	a.MapPages = le.Uint32(b[48:])
	a.Extents = le.Uint64(b[56:])
	a.Size = int64(le.Uint64(b[64:]))
	a.MapHash = le.Uint64(b[72:])
	bad := func(format string, v ...any) error {
		return fmt.Errorf("blockmap: anchor at %d: %s: %w", off, fmt.Sprintf(format, v...), ErrCorrupt)
	}
	switch {
	case a.Kind != KindFile && a.Kind != KindSwap:
		return a, bad("unknown kind %d", a.Kind)
	case a.Self != off:
		return a, bad("it says it lies at %d (a copy of another anchor)", a.Self)
	case a.MapPages == 0 || a.MapPages > MaxMapPages:
		return a, bad("%d map pages", a.MapPages)
	case a.Extents == 0 || a.Extents > uint64(a.MapPages)*PerMapPage:
		return a, bad("%d extents in %d map pages", a.Extents, a.MapPages)
	case a.Size <= 0 || a.Size%PageSize != 0 || a.Size > devSize:
		return a, bad("image size %d on a %d-byte device", a.Size, devSize)
	}
	return a, nil
}

// Read reads the anchor at off and the map it names, and checks that every
// extent lies on the device (devSize bytes) and that no two of the anchor,
// the map pages and the extents overlap.
func Read(r io.ReaderAt, off, devSize int64) (*Map, error) {
	a, err := ReadAnchor(r, off, devSize)
	if err != nil {
		return nil, err
	}
	m := &Map{Anchor: *a}
	bad := func(format string, v ...any) error {
		return fmt.Errorf("blockmap: map of the anchor at %d: %s: %w", off, fmt.Sprintf(format, v...), ErrCorrupt)
	}
	le := binary.LittleEndian
	h := xxhash.New()
	p := make([]byte, PageSize)
	at := a.MapOff
	var size int64
	for i := uint32(0); i < a.MapPages; i++ {
		if at <= 0 || at%PageSize != 0 || at+PageSize > devSize {
			return nil, bad("map page %d at %d is not on the device", i, at)
		}
		if _, err := r.ReadAt(p, at); err != nil {
			return nil, fmt.Errorf("blockmap: reading map page %d at %d: %w", i, at, err)
		}
		h.Write(p)
		if string(p[:8]) != mapMagic || le.Uint32(p[8:]) != i {
			return nil, bad("map page %d at %d has no map header", i, at)
		}
		n := le.Uint32(p[12:])
		if n > PerMapPage || uint64(len(m.List))+uint64(n) > a.Extents {
			return nil, bad("map page %d lists %d extents", i, n)
		}
		m.MapAt = append(m.MapAt, at)
		for j := uint32(0); j < n; j++ {
			e := Extent{int64(le.Uint64(p[mapHeader+16*j:])), int64(le.Uint64(p[mapHeader+16*j+8:]))}
			if e.Off < 0 || e.Len <= 0 || e.Off%PageSize != 0 || e.Len%PageSize != 0 || e.Off > devSize || e.Len > devSize-e.Off {
				return nil, bad("extent %d (%d+%d) is not on the %d-byte device", len(m.List), e.Off, e.Len, devSize)
			}
			size += e.Len
			m.List = append(m.List, e)
		}
		next := int64(le.Uint64(p[16:]))
		if i+1 == a.MapPages {
			if next != 0 {
				return nil, bad("the last map page links on")
			}
			break
		}
		at = next
	}
	switch {
	case h.Sum64() != a.MapHash:
		return nil, bad("map pages hash %#x, the anchor says %#x", h.Sum64(), a.MapHash)
	case uint64(len(m.List)) != a.Extents:
		return nil, bad("%d extents, the anchor says %d", len(m.List), a.Extents)
	case size != a.Size:
		return nil, bad("extents add up to %d bytes, the anchor says %d", size, a.Size)
	}
	if err := m.checkDisjoint(); err != nil {
		return nil, bad("%v", err)
	}
	return m, nil
}

// checkDisjoint refuses a map whose pieces overlap: an image written
// through it would overwrite its own map or anchor.
func (m *Map) checkDisjoint() error {
	all := make([]Extent, 0, len(m.List)+len(m.MapAt)+1)
	all = append(all, Extent{m.Self, PageSize})
	for _, at := range m.MapAt {
		all = append(all, Extent{at, PageSize})
	}
	all = append(all, m.List...)
	sortExtents(all)
	for i := 1; i < len(all); i++ {
		if all[i].Off < all[i-1].End() {
			return fmt.Errorf("pieces at %d and %d overlap", all[i-1].Off, all[i].Off)
		}
	}
	return nil
}

// RestoreSwap puts Linux's swap signature back on the swap header at off
// and clears the anchor, if the page carries khib's mark; it leaves any
// other page alone. It reports whether it changed anything.
func RestoreSwap(rw interface {
	io.ReaderAt
	io.WriterAt
}, off int64) (bool, error) {
	b := make([]byte, PageSize)
	if _, err := rw.ReadAt(b, off); err != nil {
		return false, fmt.Errorf("blockmap: reading the swap header at %d: %w", off, err)
	}
	held := string(b[SwapMagicOff:]) == HeldSwapMagic
	anchored := string(b[:8]) == anchorMagic
	if !held && !anchored {
		return false, nil
	}
	if anchored {
		if _, err := rw.WriteAt(make([]byte, AnchorSize), off); err != nil {
			return false, fmt.Errorf("blockmap: clearing the anchor at %d: %w", off, err)
		}
	}
	if held || bytes.Equal(b[SwapMagicOff:], make([]byte, 10)) {
		if _, err := rw.WriteAt([]byte(SwapMagic), off+SwapMagicOff); err != nil {
			return false, fmt.Errorf("blockmap: restoring the swap signature at %d: %w", off, err)
		}
	}
	return true, nil
}

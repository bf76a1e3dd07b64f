package blockmap

import (
	"encoding/binary"
	"fmt"

	"github.com/cespare/xxhash/v2"
)

// A list carries extents in map pages whose links are addresses of
// another space than the device: the physical addresses of pages of A's
// RAM, where A leaves the extents of its swap reservation for helper B.
// A cannot write them to the swap area itself (Linux refuses writes to
// an active swap device from user space, ETXTBSY), so B reads the list
// from A's memory and writes the map.

// List is where a list lies: its first page, how many pages and extents,
// and the hash of its pages in chain order.
type List struct {
	First   uint64 `json:"first"`
	Pages   uint32 `json:"pages"`
	Extents uint64 `json:"extents"`
	Hash    uint64 `json:"hash"`
}

// ListPages returns how many pages a list of n extents takes.
func ListPages(n int) int { return max(1, (n+PerMapPage-1)/PerMapPage) }

// EncodeList lays extents out in pages linked by at (one address per
// page, ListPages(len(extents)) of them) and returns the pages with the
// List that describes them.
func EncodeList(extents []Extent, at []uint64) ([][]byte, List, error) {
	if len(at) != ListPages(len(extents)) {
		return nil, List{}, fmt.Errorf("blockmap: %d extents take %d list pages, %d given", len(extents), ListPages(len(extents)), len(at))
	}
	m := &Map{List: extents}
	for _, a := range at {
		m.MapAt = append(m.MapAt, int64(a))
	}
	pages := m.encodePages()
	h := xxhash.New()
	for _, p := range pages {
		h.Write(p)
	}
	return pages, List{First: at[0], Pages: uint32(len(at)), Extents: uint64(len(extents)), Hash: h.Sum64()}, nil
}

// DecodeList reads a list through readPage (which returns the page at an
// address) and returns its extents, checked against the List and against
// a device of devSize bytes.
func DecodeList(l List, readPage func(addr uint64) ([]byte, error), devSize int64) ([]Extent, error) {
	bad := func(format string, v ...any) error {
		return fmt.Errorf("blockmap: extent list: %s: %w", fmt.Sprintf(format, v...), ErrCorrupt)
	}
	if l.Pages == 0 || l.Pages > MaxMapPages || l.Extents == 0 || l.Extents > uint64(l.Pages)*PerMapPage {
		return nil, bad("%d extents in %d pages", l.Extents, l.Pages)
	}
	le := binary.LittleEndian
	h := xxhash.New()
	var out []Extent
	at := l.First
	for i := uint32(0); i < l.Pages; i++ {
		p, err := readPage(at)
		if err != nil {
			return nil, fmt.Errorf("blockmap: reading list page %d at %#x: %w", i, at, err)
		}
		if len(p) != PageSize {
			return nil, bad("list page %d has %d bytes", i, len(p))
		}
		h.Write(p)
		if string(p[:8]) != mapMagic || le.Uint32(p[8:]) != i {
			return nil, bad("page %d at %#x is not list page %d", i, at, i)
		}
		n := le.Uint32(p[12:])
		if n > PerMapPage || uint64(len(out))+uint64(n) > l.Extents {
			return nil, bad("page %d lists %d extents", i, n)
		}
		for j := uint32(0); j < n; j++ {
			e := Extent{int64(le.Uint64(p[mapHeader+16*j:])), int64(le.Uint64(p[mapHeader+16*j+8:]))}
			if e.Off < 0 || e.Len <= 0 || e.Off%PageSize != 0 || e.Len%PageSize != 0 || e.Off > devSize || e.Len > devSize-e.Off {
				return nil, bad("extent %d (%d+%d) is not on the %d-byte device", len(out), e.Off, e.Len, devSize)
			}
			out = append(out, e)
		}
		at = le.Uint64(p[16:])
	}
	if h.Sum64() != l.Hash {
		return nil, bad("pages hash %#x, A said %#x (did a page move in A's RAM?)", h.Sum64(), l.Hash)
	}
	if uint64(len(out)) != l.Extents {
		return nil, bad("%d extents, A said %d", len(out), l.Extents)
	}
	return out, nil
}

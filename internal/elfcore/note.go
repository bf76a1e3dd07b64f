package elfcore

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"
)

// Note is one ELF note.
type Note struct {
	Name string // up to the first NUL
	Type uint32
	Desc []byte
	Off  int64 // of the note's header in the file, for error messages
}

// rawNote is a note as it sits in the buffer, with the name's exact bytes:
// the kernel's matches are on n_namesz and every byte of the name.
type rawNote struct {
	off    int
	namesz uint32
	typ    uint32
	name   []byte // n_namesz bytes, NUL included
	desc   []byte
}

// walkNotes calls fn for each note in b until fn returns false or b ends.
// Names and descriptors are padded to 4 bytes, as Linux writes notes for
// both ELF classes. A note that does not fit, padding included, in what is
// left is an error; so are trailing bytes too few for a header.
// base is b's offset in the file, for errors.
func walkNotes(b []byte, base int64, fn func(rawNote) bool) error {
	off := 0
	for off < len(b) {
		if len(b)-off < nhdrSize {
			return &FormatError{base + int64(off), "truncated note header", fmt.Sprintf("%d bytes left", len(b)-off)}
		}
		namesz := binary.LittleEndian.Uint32(b[off:])
		descsz := binary.LittleEndian.Uint32(b[off+4:])
		typ := binary.LittleEndian.Uint32(b[off+8:])
		// 64-bit sums of 32-bit sizes cannot wrap.
		nameEnd := uint64(off) + nhdrSize + uint64(namesz)
		descOff, _ := alignUp(nameEnd, noteAlign)
		descEnd := descOff + uint64(descsz)
		next, _ := alignUp(descEnd, noteAlign)
		// Padding included, as both vmcore.c and lib/buildid.c count it.
		if next > uint64(len(b)) {
			return &FormatError{base + int64(off), "note extends past its segment", fmt.Sprintf("n_namesz %d, n_descsz %d, %d bytes left", namesz, descsz, len(b)-off)}
		}
		n := rawNote{
			off:    off,
			namesz: namesz,
			typ:    typ,
			name:   b[off+nhdrSize : nameEnd],
			desc:   b[descOff:descEnd:descEnd],
		}
		if !fn(n) {
			return nil
		}
		off = int(next)
	}
	return nil
}

// parseNotes returns the notes in b, stopping at a header whose n_namesz
// is zero: that is how the kernel ends a note buffer (final_note), and
// where vmcore.c stops counting (update_note_header_size_elf64).
func parseNotes(b []byte, base int64) ([]Note, error) {
	var notes []Note
	err := walkNotes(b, base, func(n rawNote) bool {
		if n.namesz == 0 {
			return false
		}
		name := n.name
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		notes = append(notes, Note{Name: string(name), Type: n.typ, Desc: n.desc, Off: base + int64(n.off)})
		return true
	})
	return notes, err
}

// ParseNotes returns the notes in b, a note segment or a buffer of notes
// such as A's vmcoreinfo note, up to the first empty note header.
func ParseNotes(b []byte) ([]Note, error) { return parseNotes(b, 0) }

// ReadKernelBuildID returns the running kernel's build-id from notesPath,
// normally /sys/kernel/notes (the raw .notes section of vmlinux), in the
// form BUILD-ID takes in vmcoreinfo, so the two compare equal as strings.
func ReadKernelBuildID(notesPath string) (string, error) {
	f, err := os.Open(notesPath)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", notesPath, err)
	}
	defer f.Close()
	// A kernel's .notes holds a handful of small notes; bound the read
	// in case the path is not what it should be.
	const max = 1 << 20
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", notesPath, err)
	}
	if len(b) > max {
		return "", fmt.Errorf("reading %s: larger than %d bytes: %w", notesPath, max, ErrFormat)
	}
	id, err := BuildIDFromNotes(b)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", notesPath, err)
	}
	return id, nil
}

// BuildIDFromNotes finds the GNU build-id in a sequence of notes the way
// the kernel does for its own vmlinux_build_id (lib/buildid.c:
// parse_build_id_buf): the first note named exactly "GNU\0" of type
// NT_GNU_BUILD_ID with 1 to 20 bytes of descriptor; empty notes are passed
// over and the search ends at a note that does not fit. The result is
// lower-case hex of 20 bytes, zero-padded, as vmcoreinfo prints BUILD-ID
// ("%20phN" in VMCOREINFO_BUILD_ID).
func BuildIDFromNotes(b []byte) (string, error) {
	var id []byte
	err := walkNotes(b, 0, func(n rawNote) bool {
		if n.typ == NoteTypeGNUBuildID && n.namesz == uint32(len(NoteNameGNU)+1) &&
			string(n.name) == NoteNameGNU+"\x00" && len(n.desc) > 0 && len(n.desc) <= BuildIDSize {
			id = n.desc
			return false
		}
		return true
	})
	if id == nil {
		if err != nil {
			return "", fmt.Errorf("%w (%w)", ErrNoBuildID, err)
		}
		return "", ErrNoBuildID
	}
	var full [BuildIDSize]byte
	copy(full[:], id)
	return hex.EncodeToString(full[:]), nil
}

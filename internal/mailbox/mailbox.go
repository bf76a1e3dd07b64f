// Package mailbox defines the page through which the running system A and
// its helper kernel talk across a kexec jump: A's request before the jump,
// the helper's answer after it.
//
// The page is ordinary RAM of A. The helper, whose memory map marks A's
// RAM as reserved, reaches it through /dev/mem; A reads and writes it as a
// file page of /run/khib (tmpfs). A 128-bit token, chosen when the helper
// is loaded and put on its command line, keeps the helper from acting on a
// page that merely looks like a mailbox.
package mailbox

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/khib/khib/internal/blockmap"
	"github.com/khib/khib/internal/fsstate"
)

// Size is the mailbox's size: one page.
const Size = 4096

const (
	magic       = "KHIBMBX1"
	offToken    = 8
	offReqLen   = 24
	offRespLen  = 28
	offRequest  = 64
	offResponse = 2048
	maxRequest  = offResponse - offRequest
	maxResponse = Size - offResponse
)

// Token identifies the mailbox of one loaded helper.
type Token [16]byte

// ErrNoMailbox means the page holds no mailbox with the expected token.
var ErrNoMailbox = errors.New("no khib mailbox with this token")

// Commands a request can carry.
const (
	CmdRoundTrip = "roundtrip" // report and jump straight back
	CmdSave      = "save"      // write A's memory to the target, then power off
	CmdBenchSave = "bench-save"
)

// Request is what A asks of the helper for one jump.
type Request struct {
	Seq     int       `json:"seq"`
	Cmd     string    `json:"cmd"`
	Nonce   string    `json:"nonce,omitempty"` // hex; identifies the target device by its reservation
	Codec   string    `json:"codec,omitempty"`
	Workers int       `json:"workers,omitempty"`
	Return  bool      `json:"return,omitempty"` // jump back after saving instead of powering off
	Time    time.Time `json:"time"`             // A's clock at the jump
	Region  string    `json:"region,omitempty"`
	Bench   string    `json:"bench,omitempty"` // bench-save: the nonce of the scratch device
	// FirmwareRAM is A's firmware memory map (RAM entries), recorded in
	// the image so that a resume can tell a machine with another map.
	FirmwareRAM string `json:"firmware_ram,omitempty"`
	// NoFilter saves free pages too.
	NoFilter bool `json:"no_filter,omitempty"`
	// Suspend (with Return): once the image is complete, the helper
	// suspends the machine to RAM; on wake it marks the image used and
	// jumps back (hybrid sleep).
	Suspend bool `json:"suspend,omitempty"`
	// Filesystems are A's mounted block file systems, which the helper
	// finds among its own devices and records in the image with their
	// change counters, read now that A has stopped writing them.
	Filesystems []fsstate.Mount `json:"fs,omitempty"`
	// Where is where on the reserved device the image goes
	// (store.Where): empty for the whole device, map@OFFSET for a block
	// map (a file or swap slots) whose anchor is at OFFSET.
	Where string `json:"where,omitempty"`
	// SwapMap is set for a swap target: A reserved free slots but cannot
	// write to its active swap area (Linux refuses user-space writes to
	// it), so the helper writes the block map, the anchor and the
	// reservation from what A left in its RAM.
	SwapMap *SwapMap `json:"swap_map,omitempty"`
	// Reservation, for a dir: target, is the physical address of a page
	// of A's RAM that holds the image reservation (its superblock, with
	// the key slots of an encrypted save) that the helper writes first.
	Reservation uint64 `json:"reservation,omitempty"`
	// S3: the image goes to an object store, through the network A has.
	S3 *S3Target `json:"s3,omitempty"`
}

// S3Target is an object store target: its URL, the credentials A read
// from the file the URL names (the helper has no filesystem of A's), and
// A's network setup in the kernel's ip= form (internal/netconf).
type S3Target struct {
	URL       string `json:"url"`
	AccessKey string `json:"access_key,omitempty"`
	SecretKey string `json:"secret_key,omitempty"`
	Net       string `json:"net"`
}

// SwapMap is where in A's RAM the helper finds what to write to A's swap
// area, and how it recognises the area.
type SwapMap struct {
	// Extents are the reserved slots as device extents, in slot order:
	// a blockmap list in pages of A's RAM.
	Extents blockmap.List `json:"extents"`
	// Reservation is the physical address of a page holding the image
	// reservation (superblock) that goes at the start of the image space.
	Reservation uint64 `json:"reservation"`
	// Anchor is the device offset of the swap header (0 for a partition).
	Anchor int64 `json:"anchor"`
	// UUID is the swap area's UUID, from its header (hex, 32 digits).
	UUID string `json:"uuid"`
}

// Response is the helper's answer. A reads it when the jump returns; after
// a resume from disk it is the answer the helper wrote before powering
// off, because the mailbox page is part of the image.
type Response struct {
	Seq     int            `json:"seq"`
	OK      bool           `json:"ok"`
	Error   string         `json:"error,omitempty"`
	Figures map[string]any `json:"figures,omitempty"`
}

// Init formats an empty mailbox for token.
func Init(page []byte, tok Token) error {
	if len(page) < Size {
		return fmt.Errorf("mailbox: page of %d bytes, need %d", len(page), Size)
	}
	clear(page[:Size])
	copy(page, magic)
	copy(page[offToken:], tok[:])
	return nil
}

func check(page []byte, tok Token) error {
	if len(page) < Size || string(page[:8]) != magic || !bytes.Equal(page[offToken:offToken+16], tok[:]) {
		return ErrNoMailbox
	}
	return nil
}

// PutRequest stores r and clears any earlier response.
func PutRequest(page []byte, tok Token, r Request) error {
	if err := check(page, tok); err != nil {
		return err
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if len(b) > maxRequest {
		return fmt.Errorf("mailbox: request of %d bytes does not fit", len(b))
	}
	clear(page[offRequest:Size])
	copy(page[offRequest:], b)
	binary.LittleEndian.PutUint32(page[offReqLen:], uint32(len(b)))
	binary.LittleEndian.PutUint32(page[offRespLen:], 0)
	return nil
}

// GetRequest reads the request.
func GetRequest(page []byte, tok Token) (Request, error) {
	var r Request
	if err := check(page, tok); err != nil {
		return r, err
	}
	n := binary.LittleEndian.Uint32(page[offReqLen:])
	if n == 0 || n > maxRequest {
		return r, fmt.Errorf("mailbox: no request (length %d)", n)
	}
	if err := json.Unmarshal(page[offRequest:offRequest+int(n)], &r); err != nil {
		return r, fmt.Errorf("mailbox: request: %w", err)
	}
	return r, nil
}

// PutResponse stores the answer. A response too long for the page keeps
// its verdict and loses its figures, then as much of the error as fits.
func PutResponse(page []byte, tok Token, r Response) error {
	if err := check(page, tok); err != nil {
		return err
	}
	b, err := json.Marshal(r)
	if err == nil && len(b) > maxResponse {
		r.Figures = nil
		if len(r.Error) > maxResponse/2 {
			r.Error = r.Error[:maxResponse/2] + "…"
		}
		b, err = json.Marshal(r)
	}
	if err != nil {
		return err
	}
	copy(page[offResponse:], b)
	binary.LittleEndian.PutUint32(page[offRespLen:], uint32(len(b)))
	return nil
}

// GetResponse reads the answer; ok is false when the helper wrote none.
func GetResponse(page []byte, tok Token) (r Response, ok bool, err error) {
	if err := check(page, tok); err != nil {
		return r, false, err
	}
	n := binary.LittleEndian.Uint32(page[offRespLen:])
	if n == 0 {
		return r, false, nil
	}
	if n > maxResponse {
		return r, false, fmt.Errorf("mailbox: response length %d out of range", n)
	}
	if err := json.Unmarshal(page[offResponse:offResponse+int(n)], &r); err != nil {
		return r, false, fmt.Errorf("mailbox: response: %w", err)
	}
	return r, true, nil
}

// AddFigures adds figs to the response already in page, keeping its
// token: the restore helper uses it on the mailbox page it has just
// written back into A's memory, whose token it does not otherwise know,
// so that A finds how its resume went next to how its save went. A page
// without a mailbox, or without a response, is left alone and gives an
// error.
func AddFigures(page []byte, figs map[string]any) error {
	if len(page) < Size || string(page[:8]) != magic {
		return ErrNoMailbox
	}
	var tok Token
	copy(tok[:], page[offToken:])
	r, ok, err := GetResponse(page, tok)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("mailbox: no response to add figures to")
	}
	if r.Figures == nil {
		r.Figures = map[string]any{}
	}
	for k, v := range figs {
		r.Figures[k] = v
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if len(b) > maxResponse {
		return fmt.Errorf("mailbox: response with the added figures takes %d bytes, %d fit", len(b), maxResponse)
	}
	return PutResponse(page, tok, r)
}

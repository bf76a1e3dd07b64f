package helper

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/khib/khib/internal/kexec"
	"github.com/khib/khib/internal/mailbox"
)

// MailboxPath is the tmpfs file whose one page is the mailbox. Its page
// stays put between khib runs: tmpfs pages are not written back, and
// every jump first checks that the page is still where the helper was
// told it is.
var MailboxPath = "/run/khib/mailbox"

// ErrMailboxMoved means the mailbox page is no longer at the physical
// address the loaded helper knows; the helper must be loaded again.
var ErrMailboxMoved = errors.New("the mailbox page moved since the helper was loaded")

// box is the mailbox mapped and locked in this process.
type box struct {
	f    *os.File
	page []byte
	phys uint64
}

func openBox(create bool) (*box, error) {
	if err := os.MkdirAll(filepath.Dir(MailboxPath), 0o700); err != nil {
		return nil, fmt.Errorf("mailbox: %w", err)
	}
	flags := os.O_RDWR
	if create {
		flags |= os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(MailboxPath, flags, 0o600)
	if err != nil {
		return nil, fmt.Errorf("mailbox: %w", err)
	}
	if err := f.Truncate(mailbox.Size); err != nil {
		f.Close()
		return nil, fmt.Errorf("mailbox: %w", err)
	}
	page, err := unix.Mmap(int(f.Fd()), 0, mailbox.Size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("mailbox: mapping %s: %w", MailboxPath, err)
	}
	// Locked, so the page cannot be swapped out while a jump is under way.
	if err := unix.Mlock(page); err != nil {
		unix.Munmap(page)
		f.Close()
		return nil, fmt.Errorf("mailbox: locking: %w", err)
	}
	if create {
		page[0] = 0 // a written page, not the shared zero page
	}
	phys, err := kexec.PhysAddr(uintptr(unsafe.Pointer(&page[0])))
	if err != nil {
		unix.Munmap(page)
		f.Close()
		return nil, fmt.Errorf("mailbox: %w", err)
	}
	return &box{f: f, page: page, phys: phys}, nil
}

func (b *box) close() {
	unix.Munmap(b.page)
	b.f.Close()
}

func newToken() (mailbox.Token, string, error) {
	var t mailbox.Token
	if _, err := rand.Read(t[:]); err != nil {
		return t, "", fmt.Errorf("mailbox token: %w", err)
	}
	return t, hex.EncodeToString(t[:]), nil
}

func parseToken(s string) (mailbox.Token, error) {
	var t mailbox.Token
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(t) {
		return t, fmt.Errorf("bad mailbox token %q", s)
	}
	copy(t[:], b)
	return t, nil
}

package mailbox

import "fmt"

// The key of an encrypted save travels from A to the helper in the
// mailbox page, in bytes 32–63 (between the lengths and the request), and
// nowhere else: not in the request's JSON, which is easier to leave
// behind, not on a command line, not on a disk. A puts it there just
// before the jump and clears it when the jump returns, whatever happened;
// the helper takes it (and clears it in A's page) before it saves A's
// memory, so that the image does not hold its own key and a jump back
// finds no key in A's RAM.
const (
	offKey  = 32
	KeySize = 32
)

// PutKey stores the key of an encrypted save.
func PutKey(page []byte, tok Token, key []byte) error {
	if err := check(page, tok); err != nil {
		return err
	}
	if len(key) != KeySize {
		return fmt.Errorf("mailbox: a key of %d bytes, want %d", len(key), KeySize)
	}
	copy(page[offKey:offKey+KeySize], key)
	return nil
}

// TakeKey returns a copy of the key and clears it in the page. A page
// without a key (all zero bytes there) gives nil: a save in clear.
func TakeKey(page []byte, tok Token) ([]byte, error) {
	if err := check(page, tok); err != nil {
		return nil, err
	}
	b := page[offKey : offKey+KeySize]
	zero := true
	for _, c := range b {
		zero = zero && c == 0
	}
	if zero {
		return nil, nil
	}
	key := append([]byte(nil), b...)
	clear(b)
	return key, nil
}

// ClearKey clears the key bytes of a page, mailbox or not.
func ClearKey(page []byte) {
	if len(page) >= offKey+KeySize {
		clear(page[offKey : offKey+KeySize])
	}
}

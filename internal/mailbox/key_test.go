package mailbox

import (
	"bytes"
	"testing"
	"time"
)

func TestKey(t *testing.T) {
	tok := Token{9, 8, 7}
	key := bytes.Repeat([]byte{0xa5}, KeySize)
	for _, tc := range []struct {
		name    string
		put     []byte // nil: no key
		wantErr bool
	}{
		{"key", key, false},
		{"no key", nil, false},
		{"short key", key[:16], true},
		{"long key", append(bytes.Clone(key), 1), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			page := make([]byte, Size)
			if err := Init(page, tok); err != nil {
				t.Fatal(err)
			}
			if err := PutRequest(page, tok, Request{Seq: 1, Cmd: CmdSave, Time: time.Unix(1, 0)}); err != nil {
				t.Fatal(err)
			}
			if tc.put != nil {
				err := PutKey(page, tok, tc.put)
				if (err != nil) != tc.wantErr {
					t.Fatalf("PutKey: %v", err)
				}
				if err != nil {
					return
				}
			}
			// The request and the key do not overwrite each other.
			if r, err := GetRequest(page, tok); err != nil || r.Seq != 1 {
				t.Fatalf("GetRequest after PutKey: %+v, %v", r, err)
			}
			got, err := TakeKey(page, tok)
			if err != nil || !bytes.Equal(got, tc.put) {
				t.Fatalf("TakeKey = %x, %v; want %x", got, err, tc.put)
			}
			if bytes.Contains(page, key[:8]) {
				t.Fatal("the key is still in the page after TakeKey")
			}
			if again, err := TakeKey(page, tok); err != nil || again != nil {
				t.Fatalf("second TakeKey = %x, %v", again, err)
			}
		})
	}
	page := make([]byte, Size)
	if err := PutKey(page, tok, key); err == nil {
		t.Error("PutKey into a page that is no mailbox")
	}
	if _, err := TakeKey(page, tok); err == nil {
		t.Error("TakeKey from a page that is no mailbox")
	}
	Init(page, tok)
	PutKey(page, tok, key)
	ClearKey(page)
	if bytes.Contains(page, key[:8]) {
		t.Error("ClearKey left the key")
	}
	ClearKey(nil) // no panic
}

package mailbox

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestRoundTrip(t *testing.T) {
	page := make([]byte, Size)
	tok := Token{1, 2, 3}
	if err := Init(page, tok); err != nil {
		t.Fatal(err)
	}
	req := Request{Seq: 3, Cmd: CmdSave, Nonce: "00ff", Time: time.Unix(100, 0).UTC()}
	if err := PutRequest(page, tok, req); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := GetResponse(page, tok); ok {
		t.Fatal("response before the helper wrote one")
	}
	got, err := GetRequest(page, tok)
	if err != nil || got.Seq != 3 || got.Cmd != CmdSave || !got.Time.Equal(req.Time) {
		t.Fatalf("GetRequest = %+v, %v", got, err)
	}
	if err := PutResponse(page, tok, Response{Seq: 3, OK: false, Error: "device too small"}); err != nil {
		t.Fatal(err)
	}
	resp, ok, err := GetResponse(page, tok)
	if err != nil || !ok || resp.Error != "device too small" {
		t.Fatalf("GetResponse = %+v %v %v", resp, ok, err)
	}
	// A long response keeps its verdict.
	long := Response{Seq: 4, Error: strings.Repeat("x", 5000), Figures: map[string]any{"a": strings.Repeat("y", 3000)}}
	if err := PutResponse(page, tok, long); err != nil {
		t.Fatal(err)
	}
	if resp, ok, err := GetResponse(page, tok); err != nil || !ok || resp.Seq != 4 || resp.Figures != nil {
		t.Fatalf("long response read back as %+v %v %v", resp.Seq, ok, err)
	}
}

func TestRefusesForeignPages(t *testing.T) {
	tok := Token{9}
	tests := []struct {
		name string
		page []byte
	}{
		{"zero page", make([]byte, Size)},
		{"short page", []byte(magic)},
		{"other token", func() []byte { p := make([]byte, Size); Init(p, Token{8}); return p }()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := GetRequest(tc.page, tok); !errors.Is(err, ErrNoMailbox) {
				t.Fatalf("GetRequest: %v, want ErrNoMailbox", err)
			}
			if err := PutResponse(tc.page, tok, Response{OK: true}); !errors.Is(err, ErrNoMailbox) {
				t.Fatalf("PutResponse: %v, want ErrNoMailbox", err)
			}
		})
	}
}

func FuzzGet(f *testing.F) {
	p := make([]byte, Size)
	tok := Token{7}
	Init(p, tok)
	PutRequest(p, tok, Request{Cmd: CmdSave})
	PutResponse(p, tok, Response{OK: true})
	f.Add(p)
	f.Fuzz(func(t *testing.T, b []byte) {
		GetRequest(b, tok)
		GetResponse(b, tok)
	})
}

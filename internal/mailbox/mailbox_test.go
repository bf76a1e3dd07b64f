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

func TestAddFigures(t *testing.T) {
	tok := Token{7, 7}
	fresh := func(resp *Response) []byte {
		page := make([]byte, Size)
		if err := Init(page, tok); err != nil {
			t.Fatal(err)
		}
		if resp != nil {
			if err := PutResponse(page, tok, *resp); err != nil {
				t.Fatal(err)
			}
		}
		return page
	}
	tests := []struct {
		name    string
		page    []byte
		figs    map[string]any
		wantErr bool
		want    map[string]any // figures after, when no error
	}{
		{"added next to the save's", fresh(&Response{Seq: 5, OK: true, Figures: map[string]any{"from_image": true}}),
			map[string]any{"restore_s": 1.5}, false, map[string]any{"from_image": true, "restore_s": 1.5}},
		{"a response without figures", fresh(&Response{Seq: 5, OK: true}),
			map[string]any{"restore_s": 2.0}, false, map[string]any{"restore_s": 2.0}},
		{"no response", fresh(nil), map[string]any{"x": 1.0}, true, nil},
		{"not a mailbox", make([]byte, Size), map[string]any{"x": 1.0}, true, nil},
		{"too much", fresh(&Response{Seq: 5, OK: true}), map[string]any{"x": strings.Repeat("y", maxResponse)}, true, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := append([]byte(nil), tc.page...)
			err := AddFigures(tc.page, tc.figs)
			if tc.wantErr {
				if err == nil {
					t.Fatal("no error")
				}
				if string(before) != string(tc.page) {
					t.Fatal("a refused page was changed")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			r, ok, err := GetResponse(tc.page, tok)
			if err != nil || !ok || r.Seq != 5 || !r.OK || len(r.Figures) != len(tc.want) {
				t.Fatalf("response %+v, %v, %v", r, ok, err)
			}
			for k, v := range tc.want {
				if r.Figures[k] != v {
					t.Errorf("figure %s = %v, want %v", k, r.Figures[k], v)
				}
			}
		})
	}
}

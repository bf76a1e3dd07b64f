package vm

import (
	"encoding/json"
	"testing"
)

func TestFigures(t *testing.T) {
	lines := []Line{
		{Text: "KHIBVM:booted uptime=1.25"},
		{Text: "[    3.1] random kernel message KHIBVM:pages=100"},
		{Text: "KHIBVM:pages=200 ok=true name=abc weird=NaN inf=Inf hex=0x10"},
		{Text: "KHIBVM:from_qemu=1", QEMU: true},
		{Text: "KHIBVM: =5 x="},
		{Text: "no figures here=1"},
	}
	got := Figures(lines)
	want := map[string]any{
		"booted": true, "uptime": 1.25, "pages": int64(200), "ok": true, "name": "abc",
		"weird": "NaN", "inf": "Inf", "hex": "0x10", "x": "",
	}
	if len(got) != len(want) {
		t.Errorf("got %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %#v, want %#v", k, got[k], v)
		}
	}
	if _, err := json.Marshal(got); err != nil {
		t.Errorf("figures do not encode as JSON: %v", err)
	}
}

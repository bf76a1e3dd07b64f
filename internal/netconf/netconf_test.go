package netconf

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in   string
		want Config
		err  string
	}{
		{in: "10.0.2.15::10.0.2.2:255.255.255.0::eth0:off", want: Config{Addr: netip.MustParsePrefix("10.0.2.15/24"), Gateway: netip.MustParseAddr("10.0.2.2"), Device: "eth0"}},
		{in: "10.0.2.15::10.0.2.2:255.255.255.0::eth0:off:::52-54-00-12-34-56", want: Config{Addr: netip.MustParsePrefix("10.0.2.15/24"), Gateway: netip.MustParseAddr("10.0.2.2"), Device: "eth0", MAC: "52:54:00:12:34:56"}},
		{in: "192.168.1.9:::255.255.0.0", want: Config{Addr: netip.MustParsePrefix("192.168.1.9/16")}},
		{in: "dhcp", err: "want client"},
		{in: "fe80::1::::", err: "not IPv4"},
		{in: "10.0.0.1::10.0.0.254:255.0.255.0", err: "not contiguous"},
		{in: "10.0.0.1::x:255.0.0.0", err: "gateway"},
		{in: "10.0.0.1:::255.0.0.0::e:off:::zz", err: "MAC"},
	}
	for _, tt := range tests {
		got, err := Parse(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("Parse(%q) = %v, %v; want error %q", tt.in, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			continue
		}
		if again, err := Parse(got.String()); err != nil || again != got {
			t.Errorf("String() %q parses to %+v, %v", got.String(), again, err)
		}
	}
}

func TestHexIP(t *testing.T) {
	if got := hexIP("0202000A"); got != netip.MustParseAddr("10.0.2.2") {
		t.Fatalf("hexIP = %v", got)
	}
}

func FuzzParse(f *testing.F) {
	f.Add("10.0.2.15::10.0.2.2:255.255.255.0::eth0:off:::52-54-00-12-34-56")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Parse(s)
		if err != nil {
			return
		}
		if again, err := Parse(c.String()); err != nil || again != c {
			t.Fatalf("%q: String() %q parses to %+v, %v", s, c.String(), again, err)
		}
	})
}

package kconfig

import (
	"bytes"
	"testing"
)

func FuzzParse(f *testing.F) {
	f.Add([]byte(debianSample))
	f.Add(gz(f, debianSample))
	f.Add([]byte("# CONFIG_A is not set\nCONFIG_B=\"x\"\n"))
	f.Add([]byte{0x1f, 0x8b})
	f.Add([]byte("CONFIG_A=\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		for k, v := range c {
			if !validName(k) || v == "" {
				t.Fatalf("parsed %q=%q", k, v)
			}
			if got, ok := c.Get(k); !ok || got != v {
				t.Fatalf("Get(%q) = %q, %v", k, got, ok)
			}
		}
	})
}

package elfcore

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// Vmcoreinfo holds the KEY=VALUE lines of a VMCOREINFO note, for example
// "SYMBOL(mem_section)" → "ffff888...". The helpers parse values the way
// include/linux/vmcore_info.h prints them.
type Vmcoreinfo map[string]string

// ParseVmcoreinfo parses the text of a VMCOREINFO note. A key given twice
// keeps its last value, as the kernel appends (CRASHTIME) rather than
// rewrites. A last line without its newline is dropped: the kernel
// truncates the text at VMCOREINFO_BYTES (vmcoreinfo_append_str), and a cut
// value such as a symbol's address would be wrong, not just short.
func ParseVmcoreinfo(b []byte) (Vmcoreinfo, error) {
	if len(b) > MaxVmcoreinfoSize {
		return nil, fmt.Errorf("vmcoreinfo of %d bytes, more than %d: %w", len(b), MaxVmcoreinfoSize, ErrFormat)
	}
	// Some producers pad the descriptor with NULs; the kernel does not.
	b = bytes.TrimRight(b, "\x00")
	if i := bytes.LastIndexByte(b, '\n'); i+1 < len(b) {
		b = b[:i+1]
	}
	v := make(Vmcoreinfo)
	for n := 1; len(b) > 0; n++ {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte{'\n'})
		if len(line) == 0 {
			continue
		}
		key, val, ok := bytes.Cut(line, []byte{'='})
		switch {
		case !ok:
			return nil, fmt.Errorf("vmcoreinfo line %d %q has no '=': %w", n, clipLine(line), ErrFormat)
		case len(key) == 0:
			return nil, fmt.Errorf("vmcoreinfo line %d %q has no key: %w", n, clipLine(line), ErrFormat)
		case bytes.IndexByte(line, 0) >= 0:
			return nil, fmt.Errorf("vmcoreinfo line %d holds a NUL byte: %w", n, ErrFormat)
		}
		v[string(key)] = string(val)
	}
	return v, nil
}

func clipLine(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "..."
	}
	return string(b)
}

// Get returns the value of key, or an error naming it.
func (v Vmcoreinfo) Get(key string) (string, error) {
	s, ok := v[key]
	if !ok {
		return "", fmt.Errorf("vmcoreinfo: no %s: %w", key, ErrNoKey)
	}
	return s, nil
}

func (v Vmcoreinfo) bad(key, val, want string) error {
	return fmt.Errorf("vmcoreinfo: %s=%q is not %s: %w", key, clipLine([]byte(val)), want, ErrFormat)
}

// unsigned parses key's value as "%lu" or "%ld" print it.
func (v Vmcoreinfo) unsigned(key string) (uint64, error) {
	s, err := v.Get(key)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, v.bad(key, s, "a decimal number")
	}
	return n, nil
}

// OSRelease returns A's kernel release (OSRELEASE, utsname's release).
func (v Vmcoreinfo) OSRelease() (string, error) {
	s, err := v.Get("OSRELEASE")
	if err == nil && s == "" {
		err = v.bad("OSRELEASE", s, "a release")
	}
	return s, err
}

// BuildID returns A's kernel build-id (BUILD-ID) as lower-case hex, the
// form ReadKernelBuildID returns.
func (v Vmcoreinfo) BuildID() (string, error) {
	s, err := v.Get("BUILD-ID")
	if err != nil {
		return "", err
	}
	if b, err := hex.DecodeString(s); err != nil || len(b) == 0 {
		return "", v.bad("BUILD-ID", s, "hex")
	}
	return strings.ToLower(s), nil
}

// PageSize returns A's page size in bytes (PAGESIZE).
func (v Vmcoreinfo) PageSize() (uint64, error) {
	n, err := v.unsigned("PAGESIZE")
	if err == nil && (n == 0 || n&(n-1) != 0) {
		return 0, v.bad("PAGESIZE", v["PAGESIZE"], "a power of two")
	}
	return n, err
}

// Symbol returns the address of SYMBOL(name), which the kernel prints in
// hex without 0x. For arrays such as mem_section it is the pointer's value
// (VMCOREINFO_SYMBOL_ARRAY).
func (v Vmcoreinfo) Symbol(name string) (uint64, error) {
	key := "SYMBOL(" + name + ")"
	s, err := v.Get(key)
	if err != nil {
		return 0, err
	}
	n, err := parseHex(s)
	if err != nil {
		return 0, v.bad(key, s, "a hex address")
	}
	return n, nil
}

// Size returns SIZE(name), the size in bytes of a type, for example
// Size("page").
func (v Vmcoreinfo) Size(name string) (uint64, error) { return v.unsigned("SIZE(" + name + ")") }

// Offset returns OFFSET(name), the offset of a member within its struct,
// for example Offset("page.flags").
func (v Vmcoreinfo) Offset(name string) (uint64, error) { return v.unsigned("OFFSET(" + name + ")") }

// Length returns LENGTH(name), the number of elements of an array, for
// example Length("mem_section").
func (v Vmcoreinfo) Length(name string) (uint64, error) { return v.unsigned("LENGTH(" + name + ")") }

// Number returns NUMBER(name). The kernel prints most of these as a signed
// decimal ("%ld"), but a few in hex with 0x, such as NUMBER(VMALLOC_START),
// whose bits are returned as they are.
func (v Vmcoreinfo) Number(name string) (int64, error) {
	key := "NUMBER(" + name + ")"
	s, err := v.Get(key)
	if err != nil {
		return 0, err
	}
	if strings.HasPrefix(s, "0x") {
		u, err := strconv.ParseUint(s[2:], 16, 64)
		if err != nil {
			return 0, v.bad(key, s, "a number")
		}
		return int64(u), nil
	}
	// ParseInt takes a leading '+', which the kernel never prints.
	if strings.HasPrefix(s, "+") {
		return 0, v.bad(key, s, "a number")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, v.bad(key, s, "a number")
	}
	return n, nil
}

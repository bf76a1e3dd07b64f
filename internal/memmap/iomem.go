package memmap

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Bounds on what ParseIomem accepts. A large server's /proc/iomem is a few
// tens of KiB; these keep a corrupt or hostile input from using memory
// without limit.
const (
	MaxIomemSize = 4 << 20 // bytes of input
	maxIomemLine = 4 << 10 // bytes in one line
	maxDepth     = 64      // nesting levels; the kernel uses fewer than 10
)

// ErrAddressesHidden is returned by ParseIomem when every range reads
// 00000000-00000000, which is how the kernel shows /proc/iomem to a process
// without CAP_SYS_ADMIN. The resource names are still accurate then.
var ErrAddressesHidden = errors.New("/proc/iomem hides addresses from unprivileged readers; run as root")

// Resource is one line of /proc/iomem and the lines nested under it.
type Resource struct {
	Name     string
	Range    Range
	Children []Resource
}

// Iomem is the tree of /proc/iomem.
type Iomem struct {
	Resources []Resource // top-level lines, in file order
}

// ParseIomem parses the text of /proc/iomem: lines like
//
//	00100000-bfffffff : System RAM
//	  01000000-022090c7 : Kernel code
//
// where each level of nesting is indented by two more spaces and the
// hexadecimal end address is inclusive. If all addresses are zero, as they
// are for readers without root, it returns the tree (names only) together
// with ErrAddressesHidden.
func ParseIomem(r io.Reader) (*Iomem, error) {
	// Read everything first so that an oversized input is reported as such
	// rather than as a line cut short by the limit.
	data, err := io.ReadAll(io.LimitReader(r, MaxIomemSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading /proc/iomem: %w", err)
	}
	if len(data) > MaxIomemSize {
		return nil, fmt.Errorf("/proc/iomem: more than %d bytes", MaxIomemSize)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 1024), maxIomemLine)

	// root is a pseudo-resource whose children are the top-level lines.
	// stack[d] is the most recent resource at depth d-1 (stack[0] is root);
	// a line at depth d is appended to stack[d]'s children. Pointers into a
	// Children slice stay valid while only deeper slices grow, and are
	// replaced whenever a shallower line is appended.
	var root Resource
	stack := []*Resource{&root}
	hidden := true
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		depth, res, err := parseIomemLine(line)
		if err != nil {
			return nil, fmt.Errorf("/proc/iomem line %d: %w", n, err)
		}
		if depth >= len(stack) {
			return nil, fmt.Errorf("/proc/iomem line %d: indented %d levels, more than one deeper than the line before", n, depth)
		}
		if depth >= maxDepth {
			return nil, fmt.Errorf("/proc/iomem line %d: nested more than %d levels", n, maxDepth)
		}
		if res.Range.Start != 0 || res.Range.End != 1 {
			hidden = false
		}
		parent := stack[depth]
		parent.Children = append(parent.Children, res)
		stack = append(stack[:depth+1], &parent.Children[len(parent.Children)-1])
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, fmt.Errorf("/proc/iomem line %d: longer than %d bytes", n+1, maxIomemLine)
		}
		return nil, fmt.Errorf("reading /proc/iomem: %w", err)
	}
	m := &Iomem{Resources: root.Children}
	if hidden && len(m.Resources) > 0 {
		return m, ErrAddressesHidden
	}
	return m, nil
}

// parseIomemLine splits one line into its nesting depth and resource.
func parseIomemLine(line string) (int, Resource, error) {
	body := strings.TrimLeft(line, " ")
	indent := len(line) - len(body)
	if indent%2 != 0 {
		return 0, Resource{}, fmt.Errorf("odd indentation (%d spaces)", indent)
	}
	span, name, ok := strings.Cut(body, " : ")
	if !ok {
		// A resource with an empty name prints as "a-b : " and loses its
		// trailing space to editors and test fixtures; accept "a-b :".
		span, ok = strings.CutSuffix(body, " :")
		if !ok {
			return 0, Resource{}, fmt.Errorf("expected \"start-end : name\", got %q", clip(line))
		}
	}
	first, last, ok := strings.Cut(span, "-")
	if !ok {
		return 0, Resource{}, fmt.Errorf("expected start-end, got %q", clip(span))
	}
	start, err := parseHex(first)
	if err != nil {
		return 0, Resource{}, err
	}
	end, err := parseHex(last)
	if err != nil {
		return 0, Resource{}, err
	}
	var r Range
	switch {
	case end >= start:
		r = rangeIncl(start, end)
	case end == start-1:
		// The kernel prints an empty resource as start-(start-1).
		r = Range{start, start}
	default:
		return 0, Resource{}, fmt.Errorf("end %#x before start %#x", end, start)
	}
	return indent / 2, Resource{Name: name, Range: r}, nil
}

// parseHex parses an address as /proc/iomem prints it: bare hex digits, no
// sign or 0x prefix.
func parseHex(s string) (uint64, error) {
	if s == "" || len(s) > 16 {
		return 0, fmt.Errorf("bad address %q", clip(s))
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return 0, fmt.Errorf("bad address %q", clip(s))
		}
	}
	return strconv.ParseUint(s, 16, 64)
}

// clip shortens s for an error message.
func clip(s string) string {
	const n = 60
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// SystemRAM returns the top-level "System RAM" ranges, in file order. Nested
// entries of that name (which some platforms show under a parent bus) are
// not included.
func (m *Iomem) SystemRAM() []Range {
	var rs []Range
	for _, r := range m.Resources {
		if r.Name == "System RAM" {
			rs = append(rs, r.Range)
		}
	}
	return rs
}

// Find returns every resource called name, at any depth, in file order (a
// parent before its children).
func (m *Iomem) Find(name string) []Resource {
	var found []Resource
	var walk func([]Resource)
	walk = func(rs []Resource) {
		for _, r := range rs {
			if r.Name == name {
				found = append(found, r)
			}
			walk(r.Children)
		}
	}
	walk(m.Resources)
	return found
}

// CrashKernel returns the region reserved with crashkernel= on the kernel
// command line, shown as "Crash kernel" under "System RAM". With
// crashkernel=X,high there are two such regions, a large one above 4 GiB and
// a small one below; CrashKernel returns the largest, and Find returns all.
func (m *Iomem) CrashKernel() (Range, bool) {
	var best Range
	found := false
	for _, r := range m.Find("Crash kernel") {
		if !found || r.Range.Size() > best.Size() {
			best, found = r.Range, true
		}
	}
	return best, found
}

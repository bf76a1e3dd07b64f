package memmap

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Entry is one range of the memory map that the firmware handed to the
// kernel at boot (the E820 table on x86), as published under
// /sys/firmware/memmap. Unlike /proc/iomem it does not change when the
// kernel reserves or hot-plugs memory, which is why a kexec'd kernel is
// given this map rather than the running kernel's view.
type Entry struct {
	Range
	Type string // "System RAM", "Reserved", "ACPI Tables", "ACPI Non-volatile Storage", ...
}

// maxEntries bounds how many entries ReadFirmwareMemmap reads. E820 tables
// hold at most a few hundred entries.
const maxEntries = 1 << 16

// ReadFirmwareMemmap reads dir (normally /sys/firmware/memmap), whose numbered
// subdirectories each hold start, end (inclusive) and type files, and returns
// the entries sorted by start address. Names that are not numbers are
// ignored.
func ReadFirmwareMemmap(dir string) ([]Entry, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", dir, err)
	}
	var es []Entry
	for _, de := range des {
		if _, err := strconv.ParseUint(de.Name(), 10, 32); err != nil {
			continue
		}
		if len(es) >= maxEntries {
			return nil, fmt.Errorf("reading %s: more than %d entries", dir, maxEntries)
		}
		e, err := readEntry(filepath.Join(dir, de.Name()))
		if err != nil {
			return nil, err
		}
		es = append(es, e)
	}
	sort.SliceStable(es, func(i, j int) bool {
		if es[i].Start != es[j].Start {
			return es[i].Start < es[j].Start
		}
		return es[i].End < es[j].End
	})
	return es, nil
}

// readEntry reads one numbered directory of the firmware memmap.
func readEntry(dir string) (Entry, error) {
	start, err := readAddr(filepath.Join(dir, "start"))
	if err != nil {
		return Entry{}, err
	}
	end, err := readAddr(filepath.Join(dir, "end"))
	if err != nil {
		return Entry{}, err
	}
	p := filepath.Join(dir, "type")
	typ, err := readSmall(p)
	if err != nil {
		return Entry{}, err
	}
	if end < start {
		return Entry{}, fmt.Errorf("%s: end %#x before start %#x", dir, end, start)
	}
	return Entry{Range: rangeIncl(start, end), Type: typ}, nil
}

// readAddr reads a sysfs file holding one address such as "0x9fbff".
func readAddr(p string) (uint64, error) {
	s, err := readSmall(p)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(s, 0, 64)
	if err != nil {
		return 0, fmt.Errorf("reading %s: %w", p, err)
	}
	return v, nil
}

// readSmall reads a short sysfs attribute and trims its trailing newline.
func readSmall(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", p, err)
	}
	defer f.Close()
	// Sysfs attributes are at most a page.
	b, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", p, err)
	}
	return strings.TrimSpace(string(b)), nil
}

package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/khib/khib/internal/config"
	"github.com/khib/khib/internal/target"
)

const prepareHelp = `Usage: khib prepare --target file:PATH [--size SIZE] [--json]
       khib prepare --target swap:PATH [--json]

Make a file or swap target ready for images and say how the next boot
finds it.

file:PATH is a file on one of this system's ext2/3/4 or xfs filesystems
(on a plain partition or disk: not LVM, dm-crypt, md or loop, which the
helper kernels cannot assemble). khib creates it once with SIZE bytes
(default: this system's RAM; suffixes K, M, G), allocates and writes it
(so that no extent is left unwritten), syncs it and makes it immutable
(chattr +i), so that no defragmenter moves its blocks and nothing writes
it through the filesystem. The helpers write and read its blocks on the
raw device and never mount the filesystem. khib hibernate --target
file:PATH also makes the file the first time. To remove it: chattr -i
PATH && rm PATH. An existing file is checked, not changed: refused if its
filesystem cannot report its blocks, if it has holes, unwritten extents
or blocks shared with another file.

swap:PATH is an active swap partition or swap file, the only active swap
area: khib hibernate reserves its free slots (pages that this system has
swapped out stay where they are), writes the image into them and marks
the swap header so that nothing swaps to it before the next boot has
seen the image. That boot gives the swap area back: after a resume, or
when it does not resume.

The next boot's stage 1 cannot look up a path without mounting this
system's filesystem, so it finds the target by device and offset: the
resume spec that this command prints (file:UUID=...@OFFSET,
swap:UUID=...), for khib.resume= on the kernel command line. khib
configure records it for the initramfs.

Options:
`

type prepareResult struct {
	OK      bool   `json:"ok"`
	Error   string `json:"error,omitempty"`
	Target  string `json:"target"`
	Resume  string `json:"resume,omitempty"`
	Device  string `json:"device,omitempty"`
	Size    int64  `json:"size,omitempty"`
	Extents int    `json:"extents,omitempty"`
}

func cmdPrepare(args []string) int {
	fs := flag.NewFlagSet("prepare", flag.ContinueOnError)
	spec := fs.String("target", "", "file:PATH or swap:PATH")
	sizeArg := fs.String("size", "", "file: the file's size, e.g. 4G (default: this system's RAM)")
	asJSON := fs.Bool("json", false, "print one JSON object")
	fs.Usage = func() { fmt.Fprint(os.Stderr, prepareHelp); fs.PrintDefaults() }
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 || *spec == "" {
		fmt.Fprintln(os.Stderr, "khib prepare: give --target file:PATH or swap:PATH (see khib prepare --help)")
		return 2
	}
	sp, err := target.ParseSpec(*spec)
	if err == nil && (sp.Kind == target.SpecDevice || sp.Located) && !(sp.Kind == target.SpecSwap) {
		err = fmt.Errorf("%s: prepare takes file:PATH or swap:PATH; a device needs no preparing", *spec)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "khib prepare: %v\n", err)
		return 2
	}
	var size int64
	if *sizeArg != "" {
		if size, err = parseSize(*sizeArg); err != nil || sp.Kind != target.SpecFile {
			if err == nil {
				err = fmt.Errorf("--size goes with file: targets")
			}
			fmt.Fprintf(os.Stderr, "khib prepare: %v\n", err)
			return 2
		}
	}
	res := prepareResult{Target: *spec}
	err = prepareOnly(sp, size, &res)
	res.OK = err == nil
	if err != nil {
		res.Error = err.Error()
	}
	if *asJSON {
		json.NewEncoder(os.Stdout).Encode(res)
	}
	if err != nil {
		return fail("prepare: %v", err)
	}
	if !*asJSON {
		fmt.Printf("khib: %s is ready on %s (%d MiB", *spec, res.Device, res.Size>>20)
		if res.Extents > 0 {
			fmt.Printf(", %d extents", res.Extents)
		}
		fmt.Printf("); the next boot finds it as khib.resume=%s\n", res.Resume)
	}
	return 0
}

func prepareOnly(sp target.Spec, size int64, res *prepareResult) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("must run as root")
	}
	if sp.Kind == target.SpecSwap {
		path := sp.Value
		if strings.Contains(path, "=") {
			p, err := config.Resolve("/", path)
			if err != nil {
				return err
			}
			path = p
		}
		sw, err := target.FindSwap(path)
		if err != nil {
			return err
		}
		res.Device, res.Size = sw.Dev, sw.Size
		res.Resume = "swap:" + swapDev(sw)
		if sw.Header != 0 {
			res.Resume += fmt.Sprintf("@%d", sw.Header)
		}
		return nil
	}
	path := sp.Value
	if _, err := os.Stat(path); os.IsNotExist(err) {
		if size == 0 {
			size = defaultFileSize()
		}
		p := newProgress("khib", "preparing "+path, uint64(size))
		if err := target.PrepareFile(path, size, func(done, total int64) { p.set(uint64(done)) }); err != nil {
			return err
		}
		p.print()
	} else if size != 0 {
		return fmt.Errorf("%s exists; to change its size remove it first (chattr -i %s && rm %s)", path, path, path)
	}
	fi, err := target.InspectFile(path)
	if err != nil {
		return err
	}
	if !fi.Immutable {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		err = target.SetImmutable(f, true)
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	res.Device, res.Size, res.Extents = fi.Dev, fi.Size, len(fi.Extents)
	res.Resume = fmt.Sprintf("file:%s@%d", stage1Dev(fi.Dev), fi.Extents[0].Off)
	return nil
}

// parseSize reads 512M, 4G, 1048576, 64K.
func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "K"):
		mult, s = 1<<10, strings.TrimSuffix(s, "K")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n > (1<<50)/mult {
		return 0, fmt.Errorf("size %q: give a number of bytes with K, M or G", s)
	}
	return n * mult, nil
}

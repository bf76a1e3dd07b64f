package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/khib/khib/internal/blockmap"
	"github.com/khib/khib/internal/config"
	"github.com/khib/khib/internal/image"
	"github.com/khib/khib/internal/objstore"
	"github.com/khib/khib/internal/store"
	"github.com/khib/khib/internal/target"
)

const imageHelp = `Usage: khib image inspect [--json] [--passphrase-file FILE] WHERE
       khib image verify [--json] [--passphrase-file FILE] WHERE

WHERE is a device or a file that holds an image from its first byte (a
partition, an image copied off one, a file written by a dir: target), or
a target that holds it in a block map: file:PATH (an image file of this
system's), swap:PATH (this system's swap area), or the located forms that
stage 1 reads, file:DEV@OFFSET and swap:DEV@OFFSET (DEV may also be a
disk image file).

inspect prints an image's header: A's kernel, memory map and reserved
region, the jump-back entry, when and with which codec it was written, its
state, page counts by kind, and the stored size and compression ratio.

verify reads every chunk, checks its checksums and decompresses it. The
exit status tells the result: 0 the image is complete and intact, 1 it is
not (the message names the first bad chunk and its offset).

Of an encrypted image, inspect shows the header only (state, sizes, the
cipher and the key slots): the rest is sealed. With --passphrase-file it
shows everything. verify needs the passphrase: from --passphrase-file, or
asked on the terminal; it also checks every chunk's seal.
`

func cmdImage(args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(os.Stderr, imageHelp)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	sub := args[0]
	fs := flag.NewFlagSet("image "+sub, flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print one JSON object")
	passFile := fs.String("passphrase-file", "", "the passphrase of an encrypted image, the first line of FILE")
	fs.Usage = func() { fmt.Fprint(os.Stderr, imageHelp) }
	if code, ok := parseFlags(fs, args[1:]); !ok {
		return code
	}
	if fs.NArg() != 1 || (sub != "inspect" && sub != "verify") {
		fmt.Fprint(os.Stderr, imageHelp)
		return 2
	}
	path := fs.Arg(0)
	f, err := openImageArg(path)
	if err != nil {
		return fail("image: %v", err)
	}
	defer f.Close()
	size := f.Size()
	key, done, code := imageKey(f, path, sub, *passFile, *asJSON)
	if done {
		return code
	}
	defer clear(key)
	rd, err := image.OpenWith(f, size, image.OpenOptions{Key: key})
	if err != nil {
		if *asJSON {
			json.NewEncoder(os.Stdout).Encode(map[string]any{"ok": false, "path": path, "error": err.Error()})
		}
		return fail("image %s: %s: %v", sub, path, err)
	}
	defer rd.Close()
	if sub == "inspect" {
		return inspect(rd, path, *asJSON)
	}
	return verify(rd, path, *asJSON)
}

// openImageArg opens what khib image is given, read-only.
func openImageArg(arg string) (store.Store, error) {
	sp, err := target.ParseSpec(arg)
	if err != nil {
		return nil, err
	}
	switch sp.Kind {
	case target.SpecDevice:
		return store.Open(arg, store.Where{}, false)
	case target.SpecDir:
		return store.OpenDir(sp, "/run/khib/image-dir", false, false)
	case target.SpecS3:
		loc, err := objstore.ParseURL(sp.Value)
		if err != nil {
			return nil, err
		}
		creds, err := objstore.LoadCredentials(loc.Creds)
		if err != nil {
			return nil, err
		}
		return store.OpenS3(context.Background(), loc, creds)
	}
	dev, anchor := sp.Value, sp.Anchor
	switch {
	case sp.Located && strings.Contains(dev, "="):
		if dev, err = config.Resolve("/", dev); err != nil {
			return nil, err
		}
	case sp.Located:
	case sp.Kind == target.SpecFile:
		fi, err := target.InspectFile(dev)
		if err != nil {
			return nil, err
		}
		// Read on the device, as the helpers do: the filesystem's view
		// of the file is not what the helper wrote behind its back.
		dev, anchor = fi.Dev, fi.Extents[0].Off
	default:
		sw, err := target.FindSwap(dev)
		if err != nil {
			return nil, err
		}
		dev, anchor = sw.Dev, sw.Header
	}
	s, err := store.Open(dev, store.Where{Mapped: true, Anchor: anchor}, false)
	if errors.Is(err, blockmap.ErrNoAnchor) {
		return nil, fmt.Errorf("%s holds no image (no khib block map at offset %d of %s)", arg, anchor, dev)
	}
	return s, err
}

func fileSize(f *os.File) (int64, error) {
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if st.Mode()&os.ModeDevice != 0 {
		return target.DeviceSize(f)
	}
	return st.Size(), nil
}

func inspect(rd *image.Reader, path string, asJSON bool) int {
	sb, meta, st := rd.Superblock(), rd.Meta(), rd.Stats()
	if asJSON {
		json.NewEncoder(os.Stdout).Encode(map[string]any{
			"path": path, "state": sb.State.String(), "version": sb.Version, "meta": meta,
			"pages": st.Pages, "zero_pages": st.ZeroPages, "data_pages": st.DataPages,
			"chunks": st.Chunks, "raw_bytes": st.RawBytes, "stored_bytes": st.StoredBytes,
			"image_bytes": st.ImageBytes, "ratio": st.Ratio(), "encrypted": rd.Encrypted(),
		})
		return 0
	}
	fmt.Printf("image %s\n", path)
	fmt.Printf("  state        %s (format version %d)\n", sb.State, sb.Version)
	if sb.Encrypted() {
		fmt.Printf("  encrypted    %s, %s\n", sb.Cipher, slotSummary(sb.Slots))
	}
	fmt.Printf("  uuid         %s\n", meta.UUID)
	fmt.Printf("  created      %s\n", meta.Created.Format(time.RFC3339))
	fmt.Printf("  kernel       %s, build-id %s\n", meta.KernelRelease, meta.BuildID)
	fmt.Printf("  region R     %s\n", meta.Region)
	fmt.Printf("  jump-back    %#x\n", meta.JumpBack)
	var ram uint64
	for _, r := range meta.RAM {
		ram += r.Size()
		fmt.Printf("  RAM          %s (%d MiB)\n", r, r.Size()>>20)
	}
	fmt.Printf("  pages        %d (%d MiB): %d zero, %d stored\n", st.Pages, st.Pages*image.PageSize>>20, st.ZeroPages, st.DataPages)
	fmt.Printf("  stored       %.1f MiB in %d chunks, codec %s, ratio %.3f\n", float64(st.StoredBytes)/(1<<20), st.Chunks, meta.Codec, st.Ratio())
	fmt.Printf("  image size   %.1f MiB\n", float64(st.ImageBytes)/(1<<20))
	for _, f := range meta.Filesystems {
		fmt.Printf("  file system  %s\n", describeRecord(f))
	}
	return 0
}

func verify(rd *image.Reader, path string, asJSON bool) int {
	t0 := time.Now()
	last := time.Now()
	err := rd.Verify(func(done, total int) {
		if !asJSON && time.Since(last) > time.Second {
			last = time.Now()
			fmt.Fprintf(os.Stderr, "khib: verifying %d/%d chunks\n", done, total)
		}
	})
	if asJSON {
		out := map[string]any{"ok": err == nil, "path": path, "seconds": time.Since(t0).Seconds()}
		if err != nil {
			out["error"] = err.Error()
		}
		json.NewEncoder(os.Stdout).Encode(out)
	}
	if err != nil {
		return fail("image verify: %s: %v", path, err)
	}
	if !asJSON {
		st := rd.Stats()
		fmt.Printf("khib: %s is intact: %d chunks, %d pages verified in %.1f s\n", path, st.Chunks, st.Pages, time.Since(t0).Seconds())
	}
	return 0
}

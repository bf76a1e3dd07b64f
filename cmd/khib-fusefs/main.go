// Command khib-fusefs is a FUSE filesystem that keeps a few flat files in
// contiguous regions of a raw block device, so that a file written under one
// kernel can be read under the next boot. khib's helper kernel runs it for
// dir:fuse: targets (see format.go for the on-device format).
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

const help = `NAME
    khib-fusefs - a flat FUSE filesystem on a raw block device, for khib

SYNOPSIS
    khib-fusefs --store DEV [--debug] MOUNTPOINT
    khib-fusefs --format DEV [--force]
    khib-fusefs --list DEV
    khib-fusefs --help

DESCRIPTION
    khib-fusefs keeps files on a block device (or a regular file standing
    for one) without a kernel filesystem, so that khib's helper kernel,
    which has FUSE but no filesystem for the disk, can write a hibernation
    image there and the next boot can read it back. Use it as the program
    of a dir:fuse: target, for example
        dir:fuse:/usr/lib/khib/khib-fusefs,--store,scan:/khib.img

    The filesystem is one directory of at most 31 regular files, each with
    a name of at most 64 bytes. Each file lives in one contiguous region of
    the device, given to it when it is created: the largest unallocated
    stretch, or half of the largest unused end of another file's region,
    whichever is larger, so the first file of a fresh device gets all of
    it. A file grows within its region, and into free space right after
    it; a write past that fails with ENOSPC ("No space left on device").
    Truncating a file keeps its region. Unlinking a file frees its region
    (once it is no longer open). Directories, links, device nodes and
    ownership changes are refused with EPERM.

    Data is written straight to the device at region start + file offset.
    The file table (names, sizes, regions) is written to the device, and
    the device synced, on fsync, close, create, unlink, rename and
    shrinking truncate, and at unmount; a crash loses at most what was
    written since the last of these. statfs on a file reports as
    available how much more that file can hold; on the directory, the
    most any one file can hold.

MODES
    --store DEV MOUNTPOINT
        Serve the filesystem on DEV at MOUNTPOINT, an existing directory.
        khib-fusefs mounts it itself (mount(2), as root; without root it
        falls back to fusermount), stays in the foreground, and exits with
        status 0 once the filesystem is unmounted (umount MOUNTPOINT), after
        writing the file table and syncing DEV. SIGTERM or SIGINT unmount
        it (if it is busy, khib-fusefs says so and keeps serving). A block device is opened exclusively (O_EXCL): not while it is
        mounted or in use elsewhere.

    --format DEV
        Write an empty khib-fusefs filesystem onto DEV: two header pages at
        its start; the rest is left as it is and used for file data. DEV
        must be at least 72 KiB. A DEV that already holds a khib-fusefs
        header is refused unless --force is given. Its other contents are
        not checked: formatting destroys whatever filesystem DEV held.

    --list DEV
        Print the files on DEV, one a line: name, size, region start and
        capacity in bytes, modification time. Reads DEV only.

    DEV is a path, or the word scan: then khib-fusefs reads the first 8
    bytes of every block device listed in /sys/class/block, as /dev/NAME,
    and uses the one that starts with the khib-fusefs magic "KHIBFUSE".
    It fails if none or more than one does, naming them (a device that
    does not answer within 10 seconds is skipped). scan is not accepted
    by --format.

OPTIONS
    --force
        With --format: format DEV even if it holds a khib-fusefs filesystem,
        losing its files.

    --debug
        With --store: log every FUSE request and reply to standard error.

    -h, --help
        Print this help and exit.

EXIT STATUS
    0 on success (--store: the filesystem was unmounted and its state is on
    the device); 1 on an error; 2 on a usage error.

FILES
    /sys/class/block, /dev/NAME
        What DEV scan examines.
    /dev/fuse
        The kernel's FUSE device; the kernel needs CONFIG_FUSE_FS.

EXAMPLES
    Prepare a partition, then serve it:
        khib-fusefs --format /dev/sdb2
        mkdir -p /mnt/k && khib-fusefs --store scan /mnt/k &
        ...
        umount /mnt/k

    Try it on a file:
        truncate -s 1G /var/tmp/k.img && khib-fusefs --format /var/tmp/k.img
        khib-fusefs --store /var/tmp/k.img /mnt/k
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// scanTimeout bounds how long DEV scan waits for devices to answer.
var scanTimeout = 10 * time.Second

func run(args []string, stdout, stderr io.Writer) int {
	logger := log.New(stderr, "khib-fusefs: ", 0)
	fl := flag.NewFlagSet("khib-fusefs", flag.ContinueOnError)
	fl.SetOutput(io.Discard)
	storeDev := fl.String("store", "", "")
	formatDev := fl.String("format", "", "")
	listDev := fl.String("list", "", "")
	force := fl.Bool("force", false, "")
	debug := fl.Bool("debug", false, "")
	usage := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "khib-fusefs: "+format+"\nsee khib-fusefs --help\n", a...)
		return exitUsage
	}
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, help)
			return exitOK
		}
		return usage("%v", err)
	}
	modes := 0
	for _, v := range []string{*storeDev, *formatDev, *listDev} {
		if v != "" {
			modes++
		}
	}
	if modes != 1 {
		return usage("give one of --store DEV MOUNTPOINT, --format DEV or --list DEV")
	}
	if *force && *formatDev == "" {
		return usage("--force goes with --format")
	}
	if *debug && *storeDev == "" {
		return usage("--debug goes with --store")
	}
	switch {
	case *formatDev != "":
		if fl.NArg() != 0 {
			return usage("--format takes no other arguments, got %q", fl.Args())
		}
		if *formatDev == "scan" {
			return usage("--format needs a device path, not scan")
		}
		if err := doFormat(*formatDev, *force, stdout); err != nil {
			logger.Print(err)
			return exitError
		}
	case *listDev != "":
		if fl.NArg() != 0 {
			return usage("--list takes no other arguments, got %q", fl.Args())
		}
		if err := doList(*listDev, stdout); err != nil {
			logger.Print(err)
			return exitError
		}
	default:
		if fl.NArg() != 1 {
			return usage("--store DEV takes one MOUNTPOINT argument, got %d arguments", fl.NArg())
		}
		if err := serve(*storeDev, fl.Arg(0), *debug, logger); err != nil {
			logger.Print(err)
			return exitError
		}
	}
	return exitOK
}

// resolveDev returns the device a DEV argument names.
func resolveDev(dev string) (string, error) {
	if dev != "scan" {
		return dev, nil
	}
	return scanDevices("/sys/class/block", "/dev", scanTimeout)
}

// scanDevices returns the one device devDir/NAME, for NAME in sysDir,
// that starts with the magic.
func scanDevices(sysDir, devDir string, timeout time.Duration) (string, error) {
	ents, err := os.ReadDir(sysDir)
	if err != nil {
		return "", fmt.Errorf("scan: %w", err)
	}
	type result struct {
		path string
		ok   bool
	}
	results := make(chan result, len(ents))
	var paths []string
	for _, e := range ents {
		p := filepath.Join(devDir, e.Name())
		paths = append(paths, p)
		go func() {
			f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK, 0)
			if err != nil {
				results <- result{p, false}
				return
			}
			defer f.Close()
			ok, _ := hasMagic(f)
			results <- result{p, ok}
		}()
	}
	var found []string
	answered := map[string]bool{}
	deadline := time.After(timeout)
wait:
	for range ents {
		select {
		case r := <-results:
			answered[r.path] = true
			if r.ok {
				found = append(found, r.path)
			}
		case <-deadline:
			break wait
		}
	}
	sort.Strings(found)
	var silent []string
	for _, p := range paths {
		if !answered[p] {
			silent = append(silent, p)
		}
	}
	note := ""
	if len(silent) > 0 {
		note = fmt.Sprintf(" (%s did not answer within %v)", strings.Join(silent, ", "), timeout)
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return "", fmt.Errorf("scan: no block device in %s starts with the khib-fusefs magic; looked at %d: %s%s; format one with khib-fusefs --format DEV",
			sysDir, len(paths), strings.Join(paths, " "), note)
	default:
		return "", fmt.Errorf("scan: several block devices start with the khib-fusefs magic: %s; name one instead of scan", strings.Join(found, ", "))
	}
}

// openDev opens a device, exclusively if it is a block device, and returns
// its size.
func openDev(path string, writable bool) (*os.File, int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, 0, err
	}
	flags := os.O_RDONLY
	if writable {
		flags = os.O_RDWR
	}
	switch m := fi.Mode(); {
	case m.IsRegular():
	case m&os.ModeDevice != 0 && m&os.ModeCharDevice == 0:
		if writable {
			flags |= os.O_EXCL // a block device: fail if it is mounted or in use
		}
	default:
		return nil, 0, fmt.Errorf("%s is neither a block device nor a regular file", path)
	}
	f, err := os.OpenFile(path, flags, 0)
	if err != nil {
		if errors.Is(err, syscall.EBUSY) {
			return nil, 0, fmt.Errorf("%s is in use (mounted, or open exclusively elsewhere): %w", path, err)
		}
		return nil, 0, err
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("%s: finding its size: %w", path, err)
	}
	return f, size, nil
}

func doFormat(path string, force bool, stdout io.Writer) error {
	f, size, err := openDev(path, true)
	if err != nil {
		return err
	}
	defer f.Close()
	if size < minDevSize {
		return fmt.Errorf("%s has %d bytes; khib-fusefs needs at least %d", path, size, minDevSize)
	}
	if ok, err := hasMagic(f); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	} else if ok && !force {
		what := "a khib-fusefs header"
		if st, err := openStore(f, size); err == nil {
			what = fmt.Sprintf("a khib-fusefs filesystem with %d files", len(st.list()))
		}
		return fmt.Errorf("%s already holds %s; give --force to format it anyway", path, what)
	}
	if err := formatDevice(f, size); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	fmt.Fprintf(stdout, "khib-fusefs: formatted %s: %d bytes for files\n", path, (min(size, maxDevSize)&^(regionAlign-1))-dataStart)
	return nil
}

func doList(dev string, stdout io.Writer) error {
	path, err := resolveDev(dev)
	if err != nil {
		return err
	}
	f, size, err := openDev(path, false)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := openStore(f, size)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	for _, fi := range st.list() {
		fmt.Fprintf(stdout, "%s\t%d\t%d\t%d\t%s\n", fi.name, fi.size, fi.start, fi.capacity, fi.mtime.UTC().Format(time.RFC3339))
	}
	return nil
}

// serve mounts the store on dev at mnt and returns once it is unmounted.
func serve(dev, mnt string, debug bool, logger *log.Logger) error {
	path, err := resolveDev(dev)
	if err != nil {
		return err
	}
	fi, err := os.Stat(mnt)
	if err != nil {
		return fmt.Errorf("mount point: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("mount point %s is not a directory", mnt)
	}
	f, size, err := openDev(path, true)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := openStore(f, size)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	root := newRoot(st, logger)
	sec := time.Second
	opts := &fs.Options{
		MountOptions: fuse.MountOptions{
			FsName:        "khibfs",
			Name:          "khibfs",
			MaxWrite:      fuse.MAX_KERNEL_WRITE,
			DirectMount:   true,
			Debug:         debug,
			DisableXAttrs: true,
		},
		EntryTimeout: &sec,
		AttrTimeout:  &sec,
		UID:          uint32(os.Getuid()),
		GID:          uint32(os.Getgid()),
		Logger:       logger,
	}
	if os.Geteuid() == 0 {
		// Root mounts itself; there may be no fusermount to fall back
		// to, and its absence would hide why mount(2) failed.
		opts.DirectMountStrict = true
	}
	if debug {
		opts.MountOptions.Logger = logger
	}
	server, err := fs.Mount(mnt, root, opts)
	if err != nil {
		st.close()
		return fmt.Errorf("mounting on %s: %w", mnt, err)
	}
	logger.Printf("serving %s (%d files) on %s", path, len(st.list()), mnt)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-sigs:
				logger.Printf("%v: unmounting %s", s, mnt)
				if err := server.Unmount(); err != nil {
					logger.Printf("unmounting %s: %v (still serving)", mnt, err)
				}
			case <-done:
				return
			}
		}
	}()
	server.Wait()
	close(done)
	if err := st.close(); err != nil {
		return fmt.Errorf("%s: writing the file table at unmount: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	logger.Printf("unmounted %s; %s is in order", mnt, path)
	return nil
}

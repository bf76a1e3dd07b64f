package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	netpkg "net"
	"os"
	"os/exec"
	"time"

	"github.com/khib/khib/internal/config"
	"github.com/khib/khib/internal/helper"
	"github.com/khib/khib/internal/image"
	"github.com/khib/khib/internal/netconf"
	"github.com/khib/khib/internal/objstore"
	"github.com/khib/khib/internal/target"
)

const configureHelp = `Usage: khib configure --target SPEC [--codec s2|zstd|none] [--helper-kernel FILE] [--no-initramfs]

Write khib's configuration, /etc/khib.conf, and update the initramfs so that
stage 1 of a resume (which reads its copy there) knows it too.

SPEC names the device images go to: a /dev path (best a stable one such as
/dev/disk/by-id/... or /dev/disk/by-partuuid/...), PARTUUID=, PARTLABEL=,
UUID= or LABEL=. khib checks that it resolves to a block device it may
write: not mounted, not swap, not held by another device, at least 16 MiB.
Whatever the device holds is overwritten by the first hibernation, so a
filesystem's UUID= or LABEL= would no longer find it at the next boot:
khib writes the partition's PARTUUID= instead, and refuses such a spec for
a whole disk.

The file is one "key = value" per line, '#' starts a comment line:
  target = PARTUUID=1234abcd-03     where images go (required)
  helper_kernel = /usr/lib/khib/bzImage
                                    the helper kernel (B and C)
  codec = s2                        image compression: s2, zstd or none

It is not a dpkg conffile: dpkg -r khib removes it. Then, unless
--no-initramfs, khib runs update-initramfs -u.

Options:
`

func cmdConfigure(args []string) int {
	fs := flag.NewFlagSet("configure", flag.ContinueOnError)
	spec := fs.String("target", "", "where images go (required): a device (/dev path, PARTUUID=, PARTLABEL=, UUID=, LABEL=),\nswap:PATH, file:PATH or dir:DEV:/PATH (khib hibernate --help)")
	codec := fs.String("codec", "s2", "image compression: s2 (fast), zstd (smaller), none")
	kernel := fs.String("helper-kernel", config.DefaultHelperKernel, "the helper kernel (bzImage)")
	path := fs.String("config", config.Path, "the file to write")
	noInitramfs := fs.Bool("no-initramfs", false, "do not run update-initramfs -u")
	fs.Usage = func() { fmt.Fprint(os.Stderr, configureHelp); fs.PrintDefaults() }
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if *spec == "" || fs.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "khib configure: --target SPEC is required, and nothing else (see khib configure --help)")
		return 2
	}
	if _, err := image.ParseCodec(*codec); err != nil {
		fmt.Fprintf(os.Stderr, "khib configure: %v\n", err)
		return 2
	}
	if os.Geteuid() != 0 {
		return fail("configure: must run as root")
	}
	cfg := &config.Config{Target: *spec, HelperKernel: *kernel, Codec: *codec}
	var dev, stable string
	var err error
	if sp, perr := target.ParseSpec(*spec); perr == nil && sp.Kind != target.SpecDevice {
		dev, stable = *spec, *spec
		if cfg.Resume, cfg.Net, err = configureTarget(sp); err != nil {
			return fail("configure: %v", err)
		}
	} else if dev, stable, err = checkTargetSpec(*spec); err != nil {
		return fail("configure: %v", err)
	}
	if stable != *spec {
		fmt.Printf("khib: %s names what is on %s, which the first image overwrites; writing target = %s instead\n", *spec, dev, stable)
		cfg.Target = stable
	}
	if _, err := helper.OpenKernel(*kernel); err != nil {
		return fail("configure: %v (reinstall the khib package, or give --helper-kernel FILE)", err)
	}
	// Parse what we write, so that a spec the file cannot hold is refused
	// here and not at boot.
	if _, err := config.Parse(bytes.NewReader(cfg.Marshal()), *path); err != nil {
		return fail("configure: %v", err)
	}
	if err := cfg.Write(*path); err != nil {
		return fail("configure: %v", err)
	}
	fmt.Printf("khib: wrote %s: target %s (%s), codec %s, helper kernel %s\n", *path, cfg.Target, dev, cfg.Codec, cfg.HelperKernel)
	if *noInitramfs {
		fmt.Println("khib: not updating the initramfs; run update-initramfs -u before relying on resume")
		return 0
	}
	return updateInitramfs()
}

// configureTarget checks a swap:, file:, dir: or s3:// target the way
// khib prepare does (making a file target's file) and returns what stage
// 1 needs in the configuration's resume key, if the target itself will
// not do. Targets that the initramfs cannot reach yet are refused.
func configureTarget(sp target.Spec) (resume, net string, err error) {
	switch sp.Kind {
	case target.SpecS3:
		// As hibernate checks it, and the network stage 1 will need.
		loc, err := objstore.ParseURL(sp.Value)
		if err != nil {
			return "", "", err
		}
		creds, err := objstore.LoadCredentials(loc.Creds)
		if err != nil {
			return "", "", err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := objstore.Preflight(ctx, loc, creds); err != nil {
			return "", "", err
		}
		host, _, err := netpkg.SplitHostPort(loc.Endpoint)
		if err != nil {
			host = loc.Endpoint
		}
		nc, err := netconf.Route(host)
		if err != nil {
			return "", "", err
		}
		fmt.Printf("khib: stage 1 brings up %s for %s (unless the kernel command line has ip=)\n", nc, loc.Object())
		return "", nc.String(), nil
	case target.SpecDir:
		if prog, _, ok := sp.FUSE(); ok {
			if st, err := os.Stat(prog); err != nil || st.Mode()&0o111 == 0 {
				return "", "", fmt.Errorf("%s: the FUSE program %s is not an executable file", sp, prog)
			}
		}
		return "", "", nil
	}
	var res prepareResult
	if err := prepareOnly(sp, 0, &res); err != nil {
		return "", "", err
	}
	if res.Resume == sp.String() {
		return "", "", nil
	}
	fmt.Printf("khib: stage 1 finds %s as %s\n", sp, res.Resume)
	return res.Resume, "", nil
}

// checkTargetSpec resolves spec and applies hibernate's target checks. It
// returns the device and the spec to store: spec itself, or for a
// filesystem's UUID= or LABEL= the partition's PARTUUID=.
func checkTargetSpec(spec string) (dev, stable string, err error) {
	kind, _, err := config.ParseSpec(spec)
	if err != nil {
		return "", "", err
	}
	dev, err = config.Resolve("/", spec)
	if err != nil {
		return "", "", err
	}
	if _, err := usableTarget(dev); err != nil {
		return "", "", err
	}
	stable = spec
	if kind == config.KindUUID || kind == config.KindLabel {
		pu, err := config.PartUUID("/", dev)
		if err != nil {
			return "", "", fmt.Errorf("%s names the filesystem on %s, which the first image overwrites, and %v; name the device by a /dev/disk/by-id/ path instead", spec, dev, err)
		}
		stable = "PARTUUID=" + pu
	}
	return dev, stable, nil
}

// updateInitramfs regenerates the initramfs of every installed kernel,
// whose copy of the configuration stage 1 reads.
func updateInitramfs() int {
	if _, err := exec.LookPath("update-initramfs"); err != nil {
		fmt.Println("khib: no update-initramfs here (initramfs-tools is not installed); stage 1 runs from initramfs-tools, so resume needs it")
		return 1
	}
	fmt.Println("khib: running update-initramfs -u -k all")
	cmd := exec.Command("update-initramfs", "-u", "-k", "all")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return fail("configure: update-initramfs failed (%v); the configuration is written, run update-initramfs -u -k all once the problem is fixed", err)
		}
		return fail("configure: running update-initramfs: %v", err)
	}
	return 0
}

package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/khib/khib/internal/freecount"
	"github.com/khib/khib/internal/helper"
	"github.com/khib/khib/internal/image"
	"github.com/khib/khib/internal/mailbox"
	"github.com/khib/khib/internal/target"
	"github.com/khib/khib/internal/tpmkey"
)

const hibernateHelp = `Usage: khib hibernate [--target SPEC] [--codec s2|zstd|none] [--encrypt [--passphrase-file FILE] [--tpm [--tpm-pcrs LIST]]] [--return | --then suspend] [--json] [--kernel FILE]
       khib hibernate --systemd [--then suspend] [--target SPEC] [--codec ...] [--kernel FILE]

Hibernate this system: jump into khib's helper kernel, which saves this
system's memory as a verified image on the target and powers the machine off.

SPEC says where the image goes (docs/targets.md):

  /dev/vdb1, PARTUUID=..., PARTLABEL=...   a partition or disk this system
      does not use: khib refuses one that is mounted, used as swap, or held
      by another device. Whatever it held before is overwritten.
  swap:/dev/vda2, swap:/swapfile   this system's active swap area, in use:
      the image goes into its free slots, which khib reserves first, so
      that every page this system swapped out stays where it is.
  file:/var/lib/khib/image   a file on this system's ext2/3/4 or xfs
      filesystem, made once by khib prepare (or here, the first time),
      written on the raw device by the helper, which never mounts it.
  dir:UUID=4B48-4942:/khib/image   a file on a filesystem this system has
      not mounted (a USB stick with vfat or ext4), which the helper mounts;
      dir:fuse:PROGRAM[,ARG...]:/PATH in the FUSE filesystem PROGRAM serves.
  s3://BUCKET/KEY?endpoint=HOST:PORT&creds=FILE[&tls=0]   an object in an
      S3-compatible store, reached through this system's network; the
      credentials come from FILE (mode 0600).

Without --target, khib takes target (and codec and helper_kernel, unless
given) from /etc/khib.conf, which khib configure writes. --return and
--bench take a device only (a swap image lasts only while this system is
stopped, and the others are not done yet). --json reports in "resume"
where the next boot finds the image (khib.resume=).

--systemd is what systemd-hibernate.service runs in place of
'systemd-sleep hibernate' once khib's package is installed, so that
'systemctl hibernate' (and logind's hibernate key and idle actions) use
khib. In that mode khib also does systemd-sleep's part: it runs every
executable in /usr/lib/systemd/system-sleep/ and /etc/systemd/system-sleep/
with "pre hibernate" before and "post hibernate" after (in parallel, 90 s
each, failures ignored, SYSTEMD_SLEEP_ACTION=hibernate), logs "entering
hibernation" and "system resumed" lines to the journal, re-arms a helper
that was armed before, and exits 1 with the reason if the hibernation
failed (the system then keeps running and the unit is marked failed).

With --encrypt (or encrypt = passphrase in /etc/khib.conf) the image is
encrypted (AES-256-GCM; docs/image-format.md): khib asks for a passphrase
on the terminal, twice, or reads the first line of --passphrase-file,
derives a key from it with Argon2id and hands the image's key to the
helper through memory only. Nothing secret touches a disk; the next boot
asks for the passphrase on the console (three tries, then it boots
normally and the image stays for the next boot). khib image inspect shows
an encrypted image's header only; khib image verify needs the passphrase.

With --tpm (or encrypt = tpm) the key is also sealed to this machine's
TPM 2.0, bound to the values of the PCRs in LIST (default 0,2,4,7: the
firmware, option ROMs, boot loader and secure boot policy): the next boot
on this machine and boot chain resumes without asking. Only code that
ran with those PCR values can have sealed such a key, so the TPM slot
also vouches for the image. A passphrase is asked for only with
--passphrase-file (a second way in, for when the PCRs change); without
one, an image whose PCRs changed is refused and the boot goes on.

--then suspend is hybrid sleep: once the image is complete the helper
suspends the machine to RAM. If it wakes, the helper marks the image used
and jumps back, and this command returns 0 ("woke after ... asleep"). If
the power goes while it sleeps, the next boot resumes from the image. The
helper, not this system, sleeps, so that nothing changes this system's
file systems between the image and the sleep: the resume after a power
loss checks that they did not. With --systemd --then suspend (what
systemd-hybrid-sleep.service runs with khib's package) the sleep hooks
are told "hybrid-sleep".

A resume refuses an image when one of this system's ext2/3/4 file systems
was mounted or written since the hibernation (docs/image-format.md, "File
systems"); khib hibernate refuses to start when it cannot identify one.

If a helper is armed (khib arm), the jump resumes it and no kernel boots;
otherwise khib boots one first. If anything goes wrong in the helper (no
device, a write error, a full device, unreadable memory), the helper jumps
back: this command then exits 1 with the helper's reason and the system
keeps running as before.

To resume, boot the same kernel with khib as init and khib.resume=DEV on
its command line. khib checks the image (complete, every checksum, the same
kernel build, the same memory map) and restores this system; the restore
helper marks the image used just before it jumps back into this system, so
that it is never resumed twice and a power cut during the restore leaves it
resumable: this command then returns 0 and prints how
long the system was away. If anything is wrong, the boot goes on normally
and says why.

Options:
`

type hibernateResult struct {
	OK     bool   `json:"ok"`
	Error  string `json:"error,omitempty"`
	Target string `json:"target"`
	// Resume is the target as the next boot's stage 1 finds it
	// (khib.resume=): the same as Target for a device, located forms
	// (file:DEV@OFFSET, swap:DEV) for a file or swap.
	Resume string  `json:"resume,omitempty"`
	Mode   string  `json:"mode,omitempty"` // helper "fresh" or "armed"
	AwayS  float64 `json:"away_s,omitempty"`
	// Phases are the steps each kernel timed on its own clock (phases.go):
	// A's preparation; after a resume also B's boot, search, classification
	// and save, stage 1's boot and check, C's boot and restore.
	Phases  []phase        `json:"phases,omitempty"`
	Figures map[string]any `json:"figures,omitempty"`
}

func cmdHibernate(args []string) int {
	fs := flag.NewFlagSet("hibernate", flag.ContinueOnError)
	spec := fs.String("target", "", "where the image goes: a device (/dev path, PARTUUID=, PARTLABEL=), swap:PATH, file:PATH,\ndir:DEV:/PATH, dir:fuse:PROG:/PATH or s3://BUCKET/KEY?... (default: target in /etc/khib.conf)")
	codec := fs.String("codec", "s2", "compression: s2 (fast), zstd (smaller), none (default: codec in /etc/khib.conf, else s2)")
	systemdMode := fs.Bool("systemd", false, "run as systemd-hibernate.service: system-sleep hooks around, journal lines, no --return")
	ret := fs.Bool("return", false, "after saving, jump back instead of powering off (snapshot and go on)")
	then := fs.String("then", "", "after saving, \"suspend\": suspend to RAM instead of powering off (hybrid sleep); on wake the\nimage is marked used, after a power loss the next boot resumes from it")
	asJSON := fs.Bool("json", false, "print one JSON object")
	fs.BoolVar(&countFree, "count-free", false, "record in the figures A's own count of its free pages (/proc/kpageflags, /proc/buddyinfo)\nand its used memory just before the jump, to check the helper's count against")
	noFilter := fs.Bool("no-filter", false, "save free pages too (by default the helper skips the pages A's buddy allocator has free)")
	bench := fs.Bool("bench", false, "benchmark: save, then time a plain copy of /proc/vmcore, raw writes and, when A has it,\nmakedumpfile -d 17 to DEV (overwriting the image), and jump back")
	kernel := fs.String("kernel", defaultHelperKernel(), "the helper kernel (bzImage), when no helper is armed")
	encrypt := fs.Bool("encrypt", false, "encrypt the image with a key from a passphrase (default: encrypt in /etc/khib.conf)")
	passFile := fs.String("passphrase-file", "", "with --encrypt, read the passphrase from the first line of FILE instead of the terminal")
	argon := fs.String("argon2", "3,64,4", "with --encrypt, Argon2id's cost: TIME (passes),MEMORY (MiB),LANES")
	useTPM := fs.Bool("tpm", false, "encrypt, with the key sealed to this machine's TPM 2.0 (a passphrase slot too with --passphrase-file)")
	tpmPCRs := fs.String("tpm-pcrs", "0,2,4,7", "with --tpm, the PCRs the key is bound to")
	fs.Usage = func() { fmt.Fprint(os.Stderr, hibernateHelp); fs.PrintDefaults() }
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "khib hibernate: unexpected argument %q (the target goes after --target; see khib hibernate --help)\n", fs.Arg(0))
		return 2
	}
	if *systemdMode && (*ret || *bench || *asJSON) {
		fmt.Fprintln(os.Stderr, "khib hibernate: --systemd does not go with --return, --bench or --json")
		return 2
	}
	switch {
	case *then == "suspend" && (*ret || *bench):
		fmt.Fprintln(os.Stderr, "khib hibernate: --then suspend does not go with --return or --bench")
		return 2
	case *then == "suspend":
		thenSuspend, sleepAction = true, "hybrid-sleep"
	case *then != "":
		fmt.Fprintf(os.Stderr, "khib hibernate: --then %q: the one thing that can follow a save is suspend\n", *then)
		return 2
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	cfg, err := loadConfig()
	if err != nil && (*spec == "" || !set["codec"]) {
		return fail("hibernate: %v", err)
	}
	if cfg != nil && !set["codec"] {
		*codec = cfg.Codec
	}
	if *spec == "" && cfg != nil {
		*spec = cfg.Target
	}
	if *spec == "" {
		fmt.Fprintln(os.Stderr, "khib hibernate: no target: give --target SPEC, or set one with khib configure --target SPEC (see khib hibernate --help)")
		return 2
	}
	if _, err := image.ParseCodec(*codec); err != nil {
		fmt.Fprintf(os.Stderr, "khib hibernate: %v\n", err)
		return 2
	}
	if cfg != nil && !set["encrypt"] && !set["tpm"] {
		*encrypt = cfg.Encrypt == "passphrase" || cfg.Encrypt == "tpm"
		*useTPM = cfg.Encrypt == "tpm"
	}
	*encrypt = *encrypt || *useTPM
	pcrs, err := tpmkey.ParsePCRs(*tpmPCRs)
	if err != nil {
		fmt.Fprintf(os.Stderr, "khib hibernate: --tpm-pcrs: %v\n", err)
		return 2
	}
	kdf, err := parseArgon2(*argon)
	keys := keyOptions{PassFile: *passFile, Passphrase: !*useTPM || *passFile != "", Argon2: kdf}
	if *useTPM {
		keys.TPMPCRs = pcrs
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "khib hibernate: %v\n", err)
		return 2
	}
	if (set["passphrase-file"] || set["argon2"]) && !*encrypt {
		fmt.Fprintln(os.Stderr, "khib hibernate: --passphrase-file and --argon2 go with --encrypt")
		return 2
	}
	if sp, err := target.ParseSpec(*spec); err != nil {
		fmt.Fprintf(os.Stderr, "khib hibernate: --target: %v\n", err)
		return 2
	} else if sp.Kind == target.SpecS3 && thenSuspend {
		fmt.Fprintln(os.Stderr, "khib hibernate: --then suspend needs a target the helper can mark used after a wake; an s3 target cannot be marked from the helper yet")
		return 2
	} else if sp.Kind != target.SpecDevice && (*ret || *bench) {
		fmt.Fprintf(os.Stderr, "khib hibernate: --return and --bench need a device target, not %s (a swap image lasts only while this system is stopped)\n", sp.Kind)
		return 2
	}
	dev := *spec
	res := hibernateResult{Target: dev}
	cmd := mailbox.CmdSave
	if *bench {
		cmd, *ret = mailbox.CmdBenchSave, true
	}
	load := helper.Options{Kernel: *kernel}
	if *bench {
		load.Extra = benchTools()
	}
	if *encrypt {
		// Asked before anything is loaded or written, so that a mistyped
		// passphrase costs nothing.
		if encryptKey, err = newSaveKey(keys); err != nil {
			return fail("hibernate: %v", err)
		}
		defer encryptKey.wipe()
		fmt.Fprintf(os.Stderr, "khib: the image will be encrypted (aes-256-gcm; %s; the passphrase's key derivation took %.1f s)\n", slotSummary(encryptKey.slots), encryptKey.kdf.Seconds())
	}
	if *systemdMode {
		return hibernateSystemd(&res, func() error { return hibernate(&res, dev, *codec, false, load, cmd, *noFilter) }, *kernel)
	}
	err = hibernate(&res, dev, *codec, *ret, load, cmd, *noFilter)
	if err != nil {
		res.Error = err.Error()
	}
	if encryptKey != nil && res.Figures != nil {
		res.Figures["kdf_s"] = encryptKey.kdf.Seconds()
	}
	res.OK = err == nil
	if *asJSON {
		json.NewEncoder(os.Stdout).Encode(res)
	}
	if err != nil {
		return fail("hibernate: %v", err)
	}
	if !*asJSON {
		if res.resumedFromDisk() {
			fmt.Printf("khib: resumed; back after %.1f s away\n", res.AwayS)
			fmt.Fprintf(os.Stderr, "khib: phases: %s\n", phaseLine(res.Phases))
		} else if res.wokeFromSuspend() {
			fmt.Printf("khib: woke after %.1f s asleep; the image on %s was not needed and is marked used\n", res.Figures["slept_s"], dev)
		} else {
			fmt.Printf("khib: back after %.1f s away (image saved, this system went on)\n", res.AwayS)
		}
	}
	return 0
}

// resumedFromDisk reports whether the hibernation ended in a resume from
// the image (rather than a jump back with --return).
func (r *hibernateResult) resumedFromDisk() bool {
	return strings.Contains(r.Mode, "resumed from disk")
}

// minTarget is the least khib accepts before asking the helper: smaller
// devices cannot hold any real system's image. The helper finds out the
// exact need while writing, and says so.
const minTarget = 16 << 20

// usableTarget applies hibernate's checks to a device: a block device,
// not mounted, not swap, not held by another device, big enough.
func usableTarget(dev string) (*target.Info, error) {
	info, err := target.Inspect(dev)
	if err != nil {
		return nil, err
	}
	if err := target.CheckUnused(info); err != nil {
		return nil, err
	}
	if info.Size < minTarget {
		return nil, fmt.Errorf("%s is too small: %d MiB, an image needs at least %d MiB and typically a third to a half of RAM", dev, info.Size>>20, minTarget>>20)
	}
	return info, nil
}

func hibernate(res *hibernateResult, dev, codec string, ret bool, load helper.Options, cmd string, noFilter bool) error {
	tStart := time.Now()
	if os.Geteuid() != 0 {
		return errors.New("must run as root")
	}
	if err := precheckTarget(dev); err != nil {
		return err
	}
	if _, err := jumpable(); err != nil {
		return err
	}
	fwRAM, err := helper.FirmwareRAM()
	if err != nil {
		return err
	}
	// The helper records these with their change counters, and a resume
	// refuses the image if any of them changed (filesystems.go).
	mounts, err := mountedFilesystems()
	if err != nil {
		return err
	}
	nonce, err := image.NewNonce()
	if err != nil {
		return err
	}
	// The reservation tells the helper where the target is, whatever the
	// device is called there, and invalidates an older image on it.
	tgt, err := prepareTarget(dev, nonce, encryptKey)
	if err != nil {
		return err
	}
	res.Target, res.Resume = tgt.dev, tgt.resume
	if res.Target == "" {
		res.Target = dev
	}
	load.Extra = append(load.Extra, tgt.extra...)
	if tgt.undo != nil {
		// Whatever happens next, this system goes on only after the
		// helper is done with the target.
		defer func() {
			if err := tgt.undo(); err != nil {
				fmt.Fprintf(os.Stderr, "khib: warning: giving the target back: %v\n", err)
			}
		}()
	}

	// A save always boots the helper fresh, even when one is armed. A
	// parked helper keeps a kexec image loaded whose one segment is A's
	// jump-back page (A's kexec control page), and every jump swaps that
	// segment with the page (relocate_kernel_64.S: swap_pages). So while a
	// parked helper runs, the control page in A's RAM holds the copy from
	// the helper's previous jump, not what A's relocate_kernel wrote on
	// this one (its stack pointer and CR3 among them), which sits in the
	// helper's own source page. An image saved then makes the resumed A
	// return on the stack of the process that armed the helper, long gone:
	// a triple fault. A fresh helper loads its segment from the control
	// page as A just wrote it, and saves before any swap.
	armed := false
	if cur, err := helper.Current(); err == nil && cur != nil && cur.Parked() {
		armed = true
	}
	res.Phases = []phase{newPhase("A: checks and prepares the target", time.Since(tStart))}
	for attempt := 0; ; attempt++ {
		tLoad := time.Now()
		st, _, err := helper.Ready(load, true)
		if err != nil {
			return err
		}
		res.Phases = append(res.Phases[:1], newPhase("A: loads the helper (kernel, initramfs, core headers)", time.Since(tLoad)))
		res.Mode = "fresh"
		if armed {
			res.Mode = "fresh, an armed helper unloaded"
		}
		how := "a fresh helper"
		if armed {
			how += " (the parked one, armed or left by an earlier save, is replaced)"
		}
		fmt.Fprintf(os.Stderr, "khib: hibernating to %s with %s\n", tgt.name, how)
		var own map[string]any
		if countFree {
			own = ownFreeCount()
		}
		resp, away, err := jump(st, encryptKey, mailbox.Request{Cmd: cmd, Nonce: nonce.String(), Codec: codec, Return: ret || thenSuspend,
			Suspend: thenSuspend, FirmwareRAM: fwRAM, NoFilter: noFilter, Filesystems: mounts, Where: tgt.where.String(), SwapMap: tgt.swapMap, Reservation: tgt.reservation, S3: tgt.s3})
		if errors.Is(err, helper.ErrMailboxMoved) && attempt == 0 {
			helper.Unload()
			continue
		}
		res.AwayS = away.Seconds()
		if err != nil {
			return err
		}
		res.Figures = resp.Figures
		if res.Figures == nil {
			res.Figures = map[string]any{}
		}
		for k, v := range own {
			res.Figures[k] = v
		}
		if !resp.OK {
			return fmt.Errorf("the helper could not save; this system keeps running: %s", resp.Error)
		}
		// B's and C's phases, after a resume: C put them in the answer.
		res.Phases = append(res.Phases, decodePhases(resp.Figures[savePhasesFigure])...)
		res.Phases = append(res.Phases, decodePhases(resp.Figures[resumePhasesFigure])...)
		delete(res.Figures, savePhasesFigure)
		delete(res.Figures, resumePhasesFigure)
		if resp.Figures["from_image"] == true {
			// Resumed from disk. The loaded kexec image now holds garbage:
			// its pages came from the image, and R held the restore
			// helper. Unload it before anything can jump into it.
			res.Mode += ", resumed from disk"
			// The restore helper marked the image used before its jump here.
			if err := helper.Unload(); err != nil {
				fmt.Fprintf(os.Stderr, "khib: warning: unloading the stale helper: %v\n", err)
			}
			return nil
		}
		if thenSuspend {
			return woke(res)
		}
		return nil
	}
}

// countFree is --count-free.
var countFree bool

// ownFreeCount is A's own view of its free memory, taken after the helper
// is loaded and just before the jump: what the helper's walk over A's
// struct pages should find. Errors become figures too, so that a missing
// /proc file shows in the output instead of failing the hibernation.
func ownFreeCount() map[string]any {
	// Hand back to A the heap this process no longer needs (the helper's
	// kernel and initramfs, copied into the kernel by kexec_load): Go's
	// scavenger would otherwise return it between this count and the
	// jump, and the helper would find megabytes more free than A said.
	debug.FreeOSMemory()
	fig := map[string]any{}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var total, free uint64
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) >= 2 && f[0] == "MemTotal:" {
				total, _ = strconv.ParseUint(f[1], 10, 64)
			}
			if len(f) >= 2 && f[0] == "MemFree:" {
				free, _ = strconv.ParseUint(f[1], 10, 64)
			}
		}
		fig["a_used_kib"] = total - free
	}
	if f, err := os.Open("/proc/buddyinfo"); err == nil {
		n, err := freecount.FromBuddyinfo(f)
		f.Close()
		if err != nil {
			fig["a_buddyinfo_error"] = err.Error()
		} else {
			fig["a_buddyinfo_free_pages"] = n
		}
	}
	if f, err := os.Open("/proc/zoneinfo"); err == nil {
		n, err := freecount.PCPFromZoneinfo(f)
		f.Close()
		if err != nil {
			fig["a_pcp_error"] = err.Error()
		} else {
			fig["a_pcp_free_pages"] = n
		}
	}
	flags, err1 := os.Open("/proc/kpageflags")
	counts, err2 := os.Open("/proc/kpagecount")
	if err := errors.Join(err1, err2); err != nil {
		fig["a_kpf_error"] = err.Error()
	} else if n, err := freecount.FromPageFlags(flags, counts); err != nil {
		fig["a_kpf_error"] = err.Error()
	} else {
		fig["a_kpf_free_pages"] = n
	}
	if flags != nil {
		flags.Close()
	}
	if counts != nil {
		counts.Close()
	}
	return fig
}

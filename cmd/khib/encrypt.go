package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/khib/khib/internal/helper"
	"github.com/khib/khib/internal/image"
	"github.com/khib/khib/internal/mailbox"
	"github.com/khib/khib/internal/tpmkey"
)

// Encrypted images, khib's side of them (the format is internal/image's):
//
//   - A reads the passphrase (a file, or the terminal), draws a fresh
//     master key, wraps it into a passphrase key slot with Argon2id, and
//     writes the slot into the reservation (image.WriteEncryptedReservation).
//     The master key goes to B in the mailbox page only
//     (helper.JumpWithKey), which is in RAM, locked, and cleared when the
//     jump returns. The passphrase never leaves A's process.
//   - B takes the key out of the mailbox (and clears it there) before it
//     saves A's memory, and seals the image with it and the reservation's
//     slots.
//   - With --tpm, A also (or only) seals the master key to the machine's
//     TPM 2.0, bound to PCRs (internal/tpmkey), as a second key slot.
//   - Stage 1 tries the TPM first; failing that it asks for the
//     passphrase on the console, three tries, and opens the image with
//     the key; C gets the key in a cpio archive appended to its initramfs
//     in memory (helper.LoadRestore), never on a command line or a disk.

// encryptKey is the key of this khib hibernate's save when it encrypts
// (--encrypt or --tpm, or encrypt = passphrase or tpm in the
// configuration), nil for a save in clear. cmdHibernate sets it before
// hibernate runs.
var encryptKey *saveKey

// reserve writes the reservation: encrypted (with the key slots) when k is.
func reserve(f io.WriterAt, nonce image.Nonce, size int64, k *saveKey) error {
	if k == nil {
		return image.WriteReservation(f, nonce, size)
	}
	return image.WriteEncryptedReservation(f, nonce, size, k.slots)
}

// jump enters the helper with the request and, for an encrypted save,
// the master key (helper.JumpWithKey).
func jump(st *helper.State, k *saveKey, req mailbox.Request) (*mailbox.Response, time.Duration, error) {
	if k == nil {
		return helper.Jump(st, req)
	}
	// The heap's garbage (the helper's kernel and initramfs as read and
	// built) back to A first, so that it is not saved: the encrypted
	// image then holds what the image in clear would.
	debug.FreeOSMemory()
	return helper.JumpWithKey(st, req, k.key)
}

// parseArgon2 reads --argon2's TIME,MEMORY_MIB,LANES.
func parseArgon2(s string) (image.Argon2Params, error) {
	var t, m, p uint64
	parts := strings.Split(s, ",")
	var err error
	if len(parts) == 3 {
		t, err = strconv.ParseUint(parts[0], 10, 32)
		if err == nil {
			m, err = strconv.ParseUint(parts[1], 10, 32)
		}
		if err == nil {
			p, err = strconv.ParseUint(parts[2], 10, 8)
		}
	}
	if len(parts) != 3 || err != nil || m > image.MaxArgon2Memory>>10 {
		return image.Argon2Params{}, fmt.Errorf("--argon2 %q: want TIME,MEMORY_MIB,LANES, e.g. 3,64,4", s)
	}
	a := image.Argon2Params{Time: uint32(t), MemoryKiB: uint32(m << 10), Threads: uint8(p)}
	if err := a.Validate(); err != nil {
		return image.Argon2Params{}, fmt.Errorf("--argon2 %q: %v", s, err)
	}
	return a, nil
}

// maxPassphrase bounds a passphrase, from a file or a terminal.
const maxPassphrase = 1024

// saveKey is what an encrypted save needs in A: the master key for the
// helper and the key slots for the reservation.
type saveKey struct {
	key   []byte
	slots []image.KeySlot
	kdf   time.Duration // the Argon2id derivation, as a figure
}

// wipe clears the master key (best effort: Go may have copied it).
func (k *saveKey) wipe() {
	if k != nil {
		clear(k.key)
	}
}

// keyOptions say which key slots an encrypted save gets.
type keyOptions struct {
	// PassFile is where the passphrase is ("" for the terminal).
	PassFile string
	// Passphrase makes a passphrase slot: with a TPM slot only when a
	// passphrase file is given (a second way in when the PCRs change).
	Passphrase bool
	Argon2     image.Argon2Params
	// TPMPCRs, if set, makes a TPM slot bound to these PCRs.
	TPMPCRs []int
}

// newSaveKey draws a fresh master key and wraps it into the key slots o
// asks for: a TPM slot (sealed to the PCRs' current values) and a
// passphrase slot (Argon2id; the passphrase from a file or the terminal).
func newSaveKey(o keyOptions) (*saveKey, error) {
	k := &saveKey{key: make([]byte, image.KeySize)}
	if _, err := rand.Read(k.key); err != nil {
		return nil, fmt.Errorf("drawing a key: %w", err)
	}
	if o.TPMPCRs != nil {
		slot, err := sealTPM(k.key, o.TPMPCRs)
		if err != nil {
			k.wipe()
			return nil, err
		}
		k.slots = append(k.slots, slot)
	}
	if !o.Passphrase {
		return k, nil
	}
	var pass []byte
	var err error
	if o.PassFile != "" {
		pass, err = readPassphraseFile(o.PassFile)
	} else {
		pass, err = askNewPassphrase()
	}
	if err != nil {
		k.wipe()
		return nil, err
	}
	defer clear(pass)
	t0 := time.Now()
	slot, err := image.NewPassphraseSlot(k.key, pass, o.Argon2)
	if err != nil {
		k.wipe()
		return nil, err
	}
	k.kdf = time.Since(t0)
	k.slots = append(k.slots, slot)
	// Argon2id's 64 MiB are garbage now: hand them back to A, so that
	// they are free pages, which the helper leaves out of the image,
	// and not 64 MiB of incompressible heap to save.
	debug.FreeOSMemory()
	return k, nil
}

// sealTPM seals key to this machine's TPM, bound to pcrs.
func sealTPM(key []byte, pcrs []int) (image.KeySlot, error) {
	t, err := tpmkey.Open()
	if err != nil {
		return image.KeySlot{}, fmt.Errorf("--tpm: %w", err)
	}
	defer t.Close()
	s, err := tpmkey.Seal(t, key, pcrs)
	if err != nil {
		return image.KeySlot{}, err
	}
	return image.KeySlot{Kind: image.SlotTPM, Body: s.Marshal()}, nil
}

// unsealTPM tries the image's TPM slots on this machine's TPM. It returns
// nil and the reason when none opens (no TPM slot, no TPM, other PCRs).
func unsealTPM(sb *image.Superblock) ([]byte, error) {
	var errs []error
	for _, ks := range sb.Slots {
		if ks.Kind != image.SlotTPM {
			continue
		}
		s, err := tpmkey.Parse(ks.Body)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		t, err := tpmkey.Open()
		if err != nil {
			return nil, err
		}
		key, err := s.Unseal(t)
		t.Close()
		if err == nil {
			return key, nil
		}
		errs = append(errs, err)
	}
	if errs == nil {
		return nil, errNoTPMSlot
	}
	return nil, errors.Join(errs...)
}

var errNoTPMSlot = errors.New("the image has no TPM key slot")

// readPassphraseFile reads a passphrase from the first line of a file.
func readPassphraseFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("passphrase file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPassphrase+2))
	if err != nil {
		return nil, fmt.Errorf("passphrase file %s: %w", path, err)
	}
	defer clear(b)
	line, _, _ := bytes.Cut(b, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	return checkPassphrase(line, "passphrase file "+path)
}

func checkPassphrase(p []byte, where string) ([]byte, error) {
	switch {
	case len(p) == 0:
		return nil, fmt.Errorf("%s: empty passphrase", where)
	case len(p) > maxPassphrase:
		return nil, fmt.Errorf("%s: passphrase longer than %d bytes", where, maxPassphrase)
	}
	return bytes.Clone(p), nil
}

// askNewPassphrase asks for a passphrase twice on the terminal.
func askNewPassphrase() ([]byte, error) {
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("no terminal to ask for the passphrase on (%v); give one with --passphrase-file FILE", err)
	}
	defer tty.Close()
	p1, err := readSecretLine(tty, 0, func() { fmt.Fprint(tty, "khib: passphrase for the hibernation image: ") })
	if err != nil {
		return nil, err
	}
	defer clear(p1)
	p2, err := readSecretLine(tty, 0, func() { fmt.Fprint(tty, "khib: the same passphrase again: ") })
	if err != nil {
		return nil, err
	}
	defer clear(p2)
	if !bytes.Equal(p1, p2) {
		return nil, errors.New("the two passphrases differ")
	}
	return checkPassphrase(p1, "terminal")
}

// errTimeout: nobody typed a line in time.
var errTimeout = errors.New("timed out")

// readSecretLine reads one line from f without echo (when f is a
// terminal), giving up after timeout (0: never). Whatever was typed before
// the prompt is dropped, and only then is prompt called: a line typed in
// answer to the prompt is never lost.
func readSecretLine(f *os.File, timeout time.Duration, prompt func()) ([]byte, error) {
	fd := int(f.Fd())
	if old, err := unix.IoctlGetTermios(fd, unix.TCGETS); err == nil {
		t := *old
		t.Lflag &^= unix.ECHO
		t.Lflag |= unix.ICANON | unix.ECHONL
		if err := unix.IoctlSetTermios(fd, unix.TCSETS, &t); err == nil {
			defer unix.IoctlSetTermios(fd, unix.TCSETS, old)
		}
		_ = unix.IoctlSetInt(fd, unix.TCFLSH, unix.TCIFLUSH)
	}
	prompt()
	deadline := time.Now().Add(timeout)
	line := make([]byte, 0, maxPassphrase+1)
	// One byte at a time, so that nothing after the line is consumed (a
	// terminal hands out a line at a time anyway; a pipe does not).
	var buf [1]byte
	for {
		if timeout > 0 {
			left := time.Until(deadline)
			if left <= 0 {
				clear(line)
				return nil, errTimeout
			}
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, err := unix.Poll(pfd, int(left.Milliseconds())+1)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("waiting for the passphrase: %w", err)
			}
			if n == 0 {
				continue
			}
		}
		n, err := f.Read(buf[:])
		for _, c := range buf[:n] {
			if c == '\n' || c == '\r' {
				clear(buf[:])
				return line, nil
			}
			if len(line) <= maxPassphrase {
				line = append(line, c)
			}
		}
		clear(buf[:])
		if err != nil {
			if errors.Is(err, io.EOF) && len(line) > 0 {
				return line, nil
			}
			clear(line)
			return nil, fmt.Errorf("reading the passphrase: %w", err)
		}
	}
}

// saveEncryption is the helper's side: the encryption the reservation
// asks for, with the key A left in the mailbox. Either both are there or
// neither: a reservation that asks for encryption is never saved in clear.
func saveEncryption(rsv *image.Superblock, key []byte) (*image.Encryption, error) {
	switch {
	case rsv.Encrypted() && key == nil:
		return nil, errors.New("the reservation asks for an encrypted image, and A left no key in the mailbox")
	case !rsv.Encrypted() && key != nil:
		return nil, errors.New("A left a key in the mailbox, and the reservation asks for an image in clear")
	case key == nil:
		return nil, nil
	}
	return &image.Encryption{Key: key, Slots: rsv.Slots}, nil
}

// Stage 1's passphrase prompt.
const (
	passphraseTries   = 3
	passphraseTimeout = 2 * time.Minute
)

// unlockFunc turns a passphrase into the image's master key; stage 1 uses
// image.UnlockPassphrase, the tests something cheaper.
type unlockFunc func(pass []byte) ([]byte, error)

// askPassphrase asks for the passphrase of an encrypted image, prompting
// on out and reading lines from in, tries times, and returns the master
// key, or the reason it has none (for stage 1's refusal). Each try says
// which it is; each wrong one says so.
func askPassphrase(in *os.File, out io.Writer, dev string, tries int, timeout time.Duration, unlock unlockFunc) ([]byte, error) {
	for try := 1; try <= tries; try++ {
		pass, err := readSecretLine(in, timeout, func() {
			fmt.Fprintf(out, "khib: the hibernation image on %s is encrypted; type its passphrase (try %d of %d, %d s):\n", dev, try, tries, int(timeout.Seconds()))
		})
		if errors.Is(err, errTimeout) {
			return nil, fmt.Errorf("no passphrase was typed within %d s", int(timeout.Seconds()))
		}
		if err != nil {
			return nil, err
		}
		if len(pass) == 0 {
			fmt.Fprintf(out, "khib: empty passphrase (try %d of %d)\n", try, tries)
			continue
		}
		t0 := time.Now()
		key, err := unlock(pass)
		clear(pass)
		if err == nil {
			fmt.Fprintf(out, "khib: passphrase accepted (key derived in %.1f s)\n", time.Since(t0).Seconds())
			return key, nil
		}
		if !errors.Is(err, image.ErrWrongKey) {
			return nil, err
		}
		fmt.Fprintf(out, "khib: wrong passphrase (try %d of %d, key derived in %.1f s)\n", try, tries, time.Since(t0).Seconds())
	}
	return nil, fmt.Errorf("%d wrong passphrases", tries)
}

// unlockStage1 gets the master key of the encrypted image on dev from
// the console, after checking that this machine can afford the key
// derivation the image asks for. An error is stage 1's reason to boot
// normally.
func unlockStage1(dev string, sb *image.Superblock) ([]byte, error) {
	// The TPM first: on the machine and boot chain that saved the image
	// it needs nobody at the console.
	key, terr := unsealTPM(sb)
	if terr == nil {
		console("khib: the TPM released the image's key")
		return key, nil
	}
	if !errors.Is(terr, errNoTPMSlot) {
		console("khib: the TPM does not release the image's key: %v", terr)
	}
	var need uint64
	for _, s := range sb.Slots {
		if ps, err := s.Passphrase(); err == nil {
			need = max(need, uint64(ps.Params.MemoryKiB)<<10)
		}
	}
	if need == 0 {
		if !errors.Is(terr, errNoTPMSlot) {
			return nil, fmt.Errorf("the TPM does not release the image's key, and the image has no passphrase to fall back on: %w", terr)
		}
		return nil, errors.New("the image is encrypted and has neither a TPM nor a passphrase key slot this khib can open")
	}
	if avail, err := memAvailable("/proc/meminfo"); err == nil && need+64<<20 > avail {
		return nil, fmt.Errorf("the image's key derivation needs %d MiB, and this machine has %d MiB available", need>>20, avail>>20)
	}
	tty, err := os.OpenFile("/dev/console", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("the image is encrypted, and there is no console to ask for its passphrase on: %w", err)
	}
	defer tty.Close()
	return askPassphrase(tty, tty, dev, passphraseTries, passphraseTimeout, func(pass []byte) ([]byte, error) {
		return image.UnlockPassphrase(sb, pass)
	})
}

// memAvailable reads MemAvailable from a meminfo file, in bytes.
func memAvailable(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "MemAvailable:"); ok {
			kib, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s: MemAvailable %q", path, v)
			}
			return kib << 10, nil
		}
	}
	if err := s.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s: no MemAvailable", path)
}

// restoreKey is C's side: the master key stage 1 put into C's initramfs,
// read and removed at once. No file means the image is not encrypted.
func restoreKey() ([]byte, error) {
	b, err := os.ReadFile(helper.RestoreKeyPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the image's key: %w", err)
	}
	if err := os.Remove(helper.RestoreKeyPath); err != nil {
		console("khib-restore: warning: removing %s: %v", helper.RestoreKeyPath, err)
	}
	if len(b) != image.KeySize {
		clear(b)
		return nil, fmt.Errorf("the image's key in %s has %d bytes, want %d", helper.RestoreKeyPath, len(b), image.KeySize)
	}
	return b, nil
}

// unlockImage is stage 1's first step for an encrypted image: its
// passphrase, asked on the console, before anything else is read. It
// returns nil and true for an image in clear (or none, or one that is not
// complete: image.Check says what of it), the key and true for an
// encrypted one whose passphrase was typed, and false when stage 1 must
// boot normally, having said why.
func unlockImage(f io.ReaderAt, dev string) ([]byte, bool) {
	sb, err := image.ReadSuperblock(f)
	if err != nil || !sb.Encrypted() || sb.State != image.StateComplete {
		return nil, true
	}
	console("khib: found an encrypted hibernation image on %s (made %s, %d MiB, %v, %s)",
		dev, sb.CreatedTime().UTC().Format(time.RFC3339), sb.ImageSize>>20, sb.Cipher, slotSummary(sb.Slots))
	key, err := unlockStage1(dev, sb)
	if err != nil {
		console("khib: NOT resuming from the hibernation image on %s:\n  %v\n"+
			"  Nothing of the image was restored; booting normally. The image stays on %s, encrypted:\n"+
			"  the next boot asks again (khib.resume=off on the kernel command line skips it), the next hibernation overwrites it.", dev, err, dev)
		return nil, false
	}
	return key, true
}

// slotSummary describes key slots for people.
func slotSummary(slots []image.KeySlot) string {
	var parts []string
	for _, s := range slots {
		d := s.Kind.String()
		if ps, err := s.Passphrase(); err == nil {
			d += " (" + ps.Params.String() + ")"
		}
		if s.Kind == image.SlotTPM {
			if ts, err := tpmkey.Parse(s.Body); err == nil {
				d += fmt.Sprintf(" (PCRs %v)", ts.PCRList())
			}
		}
		parts = append(parts, d)
	}
	return "key slots: " + strings.Join(parts, ", ")
}

// imageKey is khib image's side: the key of an encrypted image, from
// passFile or (for verify) the terminal. Without a passphrase, inspect
// prints the header and is done (done true, with the exit status).
func imageKey(f io.ReaderAt, path, sub, passFile string, asJSON bool) (key []byte, done bool, code int) {
	sb, err := image.ReadSuperblock(f)
	if err != nil || !sb.Encrypted() {
		return nil, false, 0
	}
	if passFile == "" && sub == "inspect" {
		return nil, true, inspectHeader(sb, path, asJSON)
	}
	if passFile == "" {
		if key, err := unsealTPM(sb); err == nil {
			return key, false, 0
		} else if !errors.Is(err, errNoTPMSlot) {
			fmt.Fprintf(os.Stderr, "khib: the TPM does not release the image's key: %v\n", err)
		}
	}
	var pass []byte
	if passFile != "" {
		pass, err = readPassphraseFile(passFile)
	} else {
		pass, err = askPassphraseTerminal(path)
	}
	if err == nil {
		key, err = image.UnlockPassphrase(sb, pass)
		clear(pass)
	}
	if err != nil {
		if asJSON {
			json.NewEncoder(os.Stdout).Encode(map[string]any{"ok": false, "path": path, "error": err.Error()})
		}
		return nil, true, fail("image %s: %s: %v", sub, path, err)
	}
	return key, false, 0
}

// askPassphraseTerminal asks once for an existing image's passphrase.
func askPassphraseTerminal(path string) ([]byte, error) {
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("the image is encrypted, and there is no terminal to ask for its passphrase on (%v); give --passphrase-file FILE", err)
	}
	defer tty.Close()
	p, err := readSecretLine(tty, 0, func() { fmt.Fprintf(tty, "khib: passphrase of the image on %s: ", path) })
	if err != nil {
		return nil, err
	}
	defer clear(p)
	return checkPassphrase(p, "terminal")
}

// inspectHeader prints what an encrypted image shows without its key.
func inspectHeader(sb *image.Superblock, path string, asJSON bool) int {
	if asJSON {
		var slots []map[string]any
		for _, s := range sb.Slots {
			d := map[string]any{"kind": s.Kind.String()}
			if ps, err := s.Passphrase(); err == nil {
				d["argon2id"] = map[string]any{"time": ps.Params.Time, "memory_kib": ps.Params.MemoryKiB, "lanes": ps.Params.Threads}
			}
			slots = append(slots, d)
		}
		json.NewEncoder(os.Stdout).Encode(map[string]any{
			"path": path, "state": sb.State.String(), "version": sb.Version, "encrypted": true,
			"uuid": sb.UUID.String(), "created": sb.CreatedTime().UTC(), "cipher": sb.Cipher.String(), "key_slots": slots,
			"codec": sb.Codec.String(), "pages": sb.Pages, "zero_pages": sb.ZeroPages, "data_pages": sb.DataPages,
			"chunks": sb.Chunks, "stored_bytes": sb.DataLen, "image_bytes": sb.ImageSize,
		})
		return 0
	}
	fmt.Printf("image %s\n", path)
	fmt.Printf("  state        %s (format version %d)\n", sb.State, sb.Version)
	fmt.Printf("  encrypted    %s, %s\n", sb.Cipher, slotSummary(sb.Slots))
	fmt.Printf("  uuid         %s\n", sb.UUID)
	fmt.Printf("  created      %s\n", sb.CreatedTime().UTC().Format(time.RFC3339))
	fmt.Printf("  pages        %d (%d MiB): %d zero, %d stored\n", sb.Pages, sb.Pages*image.PageSize>>20, sb.ZeroPages, sb.DataPages)
	fmt.Printf("  stored       %.1f MiB in %d chunks, codec %s\n", float64(sb.DataLen)/(1<<20), sb.Chunks, sb.Codec)
	fmt.Printf("  image size   %.1f MiB\n", float64(sb.ImageSize)/(1<<20))
	fmt.Printf("  (A's kernel, memory map and file systems are sealed: give --passphrase-file FILE to see them)\n")
	return 0
}

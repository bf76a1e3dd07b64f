package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/khib/khib/internal/elfcore"
	"github.com/khib/khib/internal/elfdeps"
)

// benchBaselines measures, in the same helper and on the same device as a
// save, what the hardware gives without khib's work: a plain copy of
// /proc/vmcore to the device with read(2) and write(2), as cp does, and
// raw sequential writes of the same amount with O_DIRECT, as dd
// oflag=direct does. Both overwrite the image just written.
func benchBaselines(core *elfcore.File, dev *os.File, figs map[string]any) error {
	size := core.Size()
	// cp /proc/vmcore DEV: 128 KiB buffers, what coreutils' cp uses.
	src, err := os.Open("/proc/vmcore")
	if err != nil {
		return err
	}
	defer src.Close()
	console("khib-helper: bench: copying /proc/vmcore (%d MiB) to the device with read/write", size>>20)
	t0 := time.Now()
	buf := make([]byte, 128<<10)
	n, err := io.CopyBuffer(io.NewOffsetWriter(dev, 0), io.LimitReader(src, size), buf)
	if err != nil {
		return fmt.Errorf("copying /proc/vmcore: %w", err)
	}
	if err := dev.Sync(); err != nil {
		return err
	}
	cp := time.Since(t0)
	figs["cp_vmcore_mb_s"] = float64(n) / 1e6 / cp.Seconds()
	figs["cp_vmcore_s"] = cp.Seconds()

	// dd if=/dev/zero of=DEV bs=1M oflag=direct, same amount.
	name := dev.Name()
	f, err := os.OpenFile(name, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		return fmt.Errorf("opening %s for direct writes: %w", name, err)
	}
	defer f.Close()
	block, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	defer unix.Munmap(block)
	for i := range block {
		block[i] = byte(i * 7)
	}
	console("khib-helper: bench: raw direct writes of %d MiB to %s", n>>20, name)
	t0 = time.Now()
	var w int64
	for w = 0; w+int64(len(block)) <= n; w += int64(len(block)) {
		if _, err := f.WriteAt(block, w); err != nil {
			return fmt.Errorf("raw write at %d: %w", w, err)
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	dd := time.Since(t0)
	figs["dd_mb_s"] = float64(w) / 1e6 / dd.Seconds()
	figs["dd_s"] = dd.Seconds()
	console("khib-helper: bench: cp /proc/vmcore %.0f MB/s, raw writes %.0f MB/s", figs["cp_vmcore_mb_s"], figs["dd_mb_s"])
	return benchMakedumpfile(dev, size, figs)
}

// makedumpfileLevel and makedumpfileArgs make makedumpfile do what a khib
// save does: skip zero pages (1) and free pages (16), compress the rest
// (LZO, the fastest codec Debian's build has) and write it in one stream.
// -F is the flattened format, which goes to standard output: makedumpfile
// will not write to a block device by name.
const makedumpfileLevel = "17"

func makedumpfileArgs() []string {
	// Single-threaded: Debian's makedumpfile 1.7.2 aborts with
	// --num-threads 2 writing the flattened format in this helper.
	return []string{"-F", "-l", "-d", makedumpfileLevel, "/proc/vmcore"}
}

// makedumpfileDirs is where a benchmark looks for makedumpfile, in A and
// in the helper.
var makedumpfileDirs = []string{"/usr/sbin", "/usr/bin", "/sbin", "/bin"}

func findMakedumpfile() string {
	for _, d := range makedumpfileDirs {
		p := filepath.Join(d, "makedumpfile")
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p
		}
	}
	return ""
}

// benchTools returns A's files that the benchmark needs in the helper:
// makedumpfile with its loader and libraries, when A has it.
func benchTools() []string {
	p := findMakedumpfile()
	if p == "" {
		fmt.Fprintf(os.Stderr, "khib: bench: no makedumpfile in %s; it is left out of the comparison\n", strings.Join(makedumpfileDirs, ", "))
		return nil
	}
	files, err := elfdeps.Closure(os.DirFS("/"), p)
	if err != nil && !errors.Is(err, elfdeps.ErrStatic) {
		fmt.Fprintf(os.Stderr, "khib: bench: makedumpfile is left out of the comparison: %v\n", err)
		return nil
	}
	return files
}

// benchMakedumpfile times makedumpfile dumping A's memory to the device,
// when the helper has it. Its figures are per MB of A's RAM, like a save's.
func benchMakedumpfile(dev *os.File, ramBytes int64, figs map[string]any) error {
	p := findMakedumpfile()
	if p == "" {
		console("khib-helper: bench: no makedumpfile in the helper; skipped")
		return nil
	}
	args := makedumpfileArgs()
	console("khib-helper: bench: %s %s > %s", p, strings.Join(args, " "), dev.Name())
	var stderr toolLog
	cmd := exec.Command(p, args...)
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("makedumpfile: %w", err)
	}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("makedumpfile: %w", err)
	}
	n, err := io.Copy(io.NewOffsetWriter(dev, 0), out)
	if err != nil {
		cmd.Process.Kill() // it would block on a pipe nobody reads
	}
	if werr := cmd.Wait(); err == nil {
		err = werr
	}
	if err == nil {
		err = dev.Sync()
	}
	d := time.Since(t0)
	for _, l := range stderr.Lines() {
		console("khib-helper: bench: makedumpfile: %s", l)
	}
	if err != nil {
		return fmt.Errorf("makedumpfile: %w: %s", err, stderr.String())
	}
	figs["makedumpfile_s"] = d.Seconds()
	figs["makedumpfile_mb_s"] = float64(ramBytes) / 1e6 / d.Seconds()
	figs["makedumpfile_bytes"] = n
	figs["makedumpfile_args"] = strings.Join(args, " ")
	console("khib-helper: bench: makedumpfile %.0f MB/s, %.1f MiB written", figs["makedumpfile_mb_s"], float64(n)/(1<<20))
	return nil
}

// toolLog collects what a tool prints, without its progress redraws:
// its last 64 lines.
type toolLog struct {
	partial []byte
	lines   []string
}

func (t *toolLog) Write(p []byte) (int, error) {
	for _, c := range p {
		if c != '\n' && c != '\r' {
			if len(t.partial) < 512 {
				t.partial = append(t.partial, c)
			}
			continue
		}
		l := strings.TrimSpace(string(t.partial))
		t.partial = t.partial[:0]
		if l != "" && !strings.Contains(l, "%]") {
			t.lines = append(t.lines, l)
			if len(t.lines) > 64 {
				t.lines = t.lines[1:]
			}
		}
	}
	return len(p), nil
}

// Lines returns the complete lines seen, and the unfinished one.
func (t *toolLog) Lines() []string {
	if l := strings.TrimSpace(string(t.partial)); l != "" && !strings.Contains(l, "%]") {
		return append(slices.Clip(t.lines), l)
	}
	return t.lines
}

// String is the last three lines, joined: enough to say why it failed.
func (t *toolLog) String() string {
	l := t.Lines()
	return strings.Join(l[max(0, len(l)-3):], " / ")
}

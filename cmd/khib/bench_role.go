package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/khib/khib/internal/elfcore"
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
	return nil
}

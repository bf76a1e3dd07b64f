package helper

import (
	"bytes"
	"fmt"

	"github.com/khib/khib/internal/cpio"
	"github.com/khib/khib/internal/kexec"
)

// LoadRestore loads the restore helper C for an ordinary kexec (no way
// back): the kernel at kernelPath with khib's initramfs, placed in the
// image's R, which is where A's RAM is not. C's memory map gives it only
// that R and the low window; the rest of A's RAM is reserved, so C can
// write it through /dev/mem and will not allocate it. key, if not nil,
// is the master key of an encrypted image: it reaches C as RestoreKeyPath
// in a second cpio archive appended to C's initramfs in memory (the
// kernel unpacks them one after the other), not on C's command line,
// which /proc/cmdline shows to anyone.
func LoadRestore(kernelPath string, region kexec.Range, imageUUID, params string, key []byte, extra ...string) (*kexec.HelperPlan, error) {
	k, err := OpenKernel(kernelPath)
	if err != nil {
		return nil, err
	}
	fw, err := Firmware()
	if err != nil {
		return nil, err
	}
	initrd, err := Initramfs("/proc/self/exe", extra...)
	if err != nil {
		return nil, err
	}
	if key != nil {
		if initrd, err = appendKey(initrd, key); err != nil {
			return nil, err
		}
		// Best effort: the kernel has its copy once the load is done.
		defer clear(initrd)
	}
	plan, err := kexec.PlanHelper(kexec.HelperSpec{
		Kernel: k, Initrd: initrd,
		Cmdline: HelperCmdline("restore", fmt.Sprintf("khib.image=%s %s khib.region=%#x-%#x", imageUUID, params, region.Start, region.End)),
		Region:  region, LowWindow: kexec.DefaultLowWindow, ReserveTop: kexec.DefaultReserveTop,
		Firmware: fw,
	})
	if err != nil {
		return nil, err
	}
	if err := kexec.Load(plan.Entry, plan.Segments, false); err != nil {
		return nil, err
	}
	return plan, nil
}

// RestoreKeyPath is where C finds the master key of an encrypted image:
// a file in its initramfs, readable by root only, that C removes as soon
// as it has read it.
const RestoreKeyPath = "/khib.key"

// appendKey returns initrd followed by a cpio archive holding key at
// RestoreKeyPath.
func appendKey(initrd, key []byte) ([]byte, error) {
	var buf bytes.Buffer
	buf.Grow(1024) // one allocation: no stray copies of the key
	w := cpio.NewWriter(&buf)
	if err := w.File(RestoreKeyPath[1:], 0o400, key); err != nil {
		return nil, fmt.Errorf("restore helper's key: %w", err)
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("restore helper's key: %w", err)
	}
	out := make([]byte, len(initrd)+buf.Len())
	copy(out, initrd)
	copy(out[len(initrd):], buf.Bytes())
	clear(buf.Bytes())
	return out, nil
}

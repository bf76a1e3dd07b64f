package helper

import (
	"fmt"

	"github.com/khib/khib/internal/kexec"
)

// LoadRestore loads the restore helper C for an ordinary kexec (no way
// back): the kernel at kernelPath with khib's initramfs, placed in the
// image's R, which is where A's RAM is not. C's memory map gives it only
// that R and the low window; the rest of A's RAM is reserved, so C can
// write it through /dev/mem and will not allocate it.
func LoadRestore(kernelPath string, region kexec.Range, imageUUID string) (*kexec.HelperPlan, error) {
	k, err := OpenKernel(kernelPath)
	if err != nil {
		return nil, err
	}
	fw, err := Firmware()
	if err != nil {
		return nil, err
	}
	initrd, err := Initramfs("/proc/self/exe")
	if err != nil {
		return nil, err
	}
	plan, err := kexec.PlanHelper(kexec.HelperSpec{
		Kernel: k, Initrd: initrd,
		Cmdline: HelperCmdline("restore", fmt.Sprintf("khib.image=%s khib.region=%#x-%#x", imageUUID, region.Start, region.End)),
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

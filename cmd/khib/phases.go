package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Phases of a hibernation and of a resume as khib itself sees them. Each
// is timed by the kernel that ran it, on its own clock: no clock runs
// across A, B, the resuming boot's kernel, C and A again. The host-side
// view, one clock for all of them from console markers, is the rig's
// (internal/vm/scenarios/phases.go). What no kernel can time is left
// out: the jumps, the decompression of a helper kernel, the commit and
// power-off after the image is complete, the firmware.
//
// The figures travel with the work: B puts its phases in the image's
// metadata (note "phases"), stage 1 gives C its own on C's command line
// (khib.stage1=), and C adds both to the answer in A's mailbox page
// before it jumps to A, so that khib hibernate reports the lot once A
// runs again.
type phase struct {
	Name string  `json:"phase"`
	S    float64 `json:"s"`
}

func newPhase(name string, d time.Duration) phase {
	return phase{name, float64(d.Round(time.Millisecond)) / float64(time.Second)}
}

// upTime is how long the running kernel has been up (CLOCK_BOOTTIME):
// for a helper's /init, the time its kernel took to boot to it.
func upTime() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// phasesNote and phasesFigure are the names B's and C's phases go under.
const (
	phasesNote         = "phases"
	mailboxNote        = "mailbox"
	savePhasesFigure   = "save_phases"
	resumePhasesFigure = "resume_phases"
)

func encodePhases(ps []phase) string {
	b, _ := json.Marshal(ps)
	return string(b)
}

// decodePhases reads phases from their JSON text or from a figure that
// went through JSON as []any; anything else gives none.
func decodePhases(v any) []phase {
	var b []byte
	switch x := v.(type) {
	case string:
		b = []byte(x)
	case nil:
		return nil
	default:
		b, _ = json.Marshal(x)
	}
	var ps []phase
	if json.Unmarshal(b, &ps) != nil {
		return nil
	}
	return ps
}

// stage1Param carries stage 1's phases to C: its kernel's boot and its
// check, in seconds. Loading C, which follows, is timed by nobody: the
// command line that would carry the figure is part of what is loaded.
const stage1Param = "khib.stage1"

func stage1Value(boot, check time.Duration) string {
	return fmt.Sprintf("%s=%.3f,%.3f", stage1Param, boot.Seconds(), check.Seconds())
}

// stage1Phases reads khib.stage1's value back; a malformed one gives none.
func stage1Phases(v string) []phase {
	var b, c float64
	if n, err := fmt.Sscanf(v, "%g,%g", &b, &c); n != 2 || err != nil || b < 0 || c < 0 {
		return nil
	}
	return []phase{
		{"stage 1: the resuming kernel boots to stage 1", b},
		{"stage 1: finds and checks the image", c},
	}
}

// phaseLine is phases on one line, for people.
func phaseLine(ps []phase) string {
	var parts []string
	for _, p := range ps {
		parts = append(parts, fmt.Sprintf("%s %.2f s", p.Name, p.S))
	}
	return strings.Join(parts, "; ")
}

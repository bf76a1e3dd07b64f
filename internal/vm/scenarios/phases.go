package scenarios

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/khib/khib/internal/vm"
	"github.com/khib/khib/internal/vm/scenario"
)

// The phases of a hibernation and of a resume, timed on the host from the
// console: each phase ends at the first line matching its marker after the
// previous phase's end. The host's arrival times are one clock for every
// kernel that runs in one QEMU process (A, B, the stage-1 kernel, C and
// the resumed A), which no clock inside the guest is.

// marker ends a phase. A nil pattern means the machine's exit.
type marker struct {
	phase string
	re    *regexp.Regexp
}

// Phase is one timed phase.
type Phase struct {
	Name    string  `json:"phase"`
	Seconds float64 `json:"s"`
}

func mk(phase, pattern string) marker {
	if pattern == "" {
		return marker{phase: phase}
	}
	return marker{phase, regexp.MustCompile(pattern)}
}

var (
	// khibHibernateMarkers follow the hibernate-start line of the guest
	// script, up to the power-off.
	khibHibernateMarkers = []marker{
		mk("A prepares (sync, core headers, load B)", `Freezing user space processes`),
		mk("A freezes, suspends devices, jumps", `KASLR disabled|Linux version`),
		mk("B boots (decompress, kernel)", `^khib-helper: up`),
		mk("B finds the target, reads A's layout", `^khib-helper: saving A `),
		mk("B classifies A's pages", `^khib-helper: (A has .* free|not filtering)`),
		mk("B saves (read, compress, hash, write)", `^khib-helper: saving 100%`),
		mk("B flushes and commits", `^khib-helper: image complete on`),
		mk("power-off", ""),
	}
	// khibResumeMarkers run from power-on to A's tasks running; the
	// scenario adds its own last phase (its check of the workload).
	khibResumeMarkers = []marker{
		mk("firmware", `Linux version`),
		mk("kernel boots to stage 1", `^khib: found a hibernation image`),
		mk("stage 1 checks the image", `^khib: image intact`),
		mk("stage 1 loads C", `^khib: restoring A through the restore helper`),
		mk("C boots (decompress, kernel)", `^khib-restore: restoring \d+ MiB`),
		mk("C restores A's pages", `^khib-restore: A's memory restored`),
		mk("C marks used, jumps; A resumes devices", `OOM killer enabled`),
		mk("A thaws its tasks", `Restarting tasks`),
	}
	swsuspHibernateMarkers = []marker{
		mk("hibernate() entry", `PM: hibernation: hibernation entry`),
		mk("freeze", `Freezing user space processes completed|Freezing remaining freezable tasks completed`),
		mk("preallocate, make room", `PM: hibernation: Creating image|Creating image:`),
		mk("atomic copy", `Image created`),
		mk("write (compress, swap)", `Image saving done`),
		mk("power-off", ""),
	}
	swsuspResumeMarkers = []marker{
		mk("firmware", `Linux version`),
		mk("kernel boots to resume", `PM: hibernation: resume from hibernation|resume from hibernation`),
		mk("read and decompress the image", `Image loading done`),
		mk("restore, jump, devices", `OOM killer enabled`),
		mk("thaw tasks", `Restarting tasks`),
	}
)

// splitPhases times markers on m's console from the first line matching
// from (nil: power-on) up to the line matching until (nil: QEMU's exit,
// or the last marker). A marker that never shows folds its phase into
// the next one found.
func splitPhases(m *vm.Machine, from *regexp.Regexp, markers []marker) ([]Phase, error) {
	lines := m.Lines()
	i := 0
	var t0 time.Duration
	if from != nil {
		for ; i < len(lines) && !from.MatchString(lines[i].Text); i++ {
		}
		if i == len(lines) {
			return nil, fmt.Errorf("phases: /%s/ never appeared on the console", from)
		}
		t0 = lines[i].At
		i++
	}
	var out []Phase
	pending := ""
	last := t0
	for _, mkr := range markers {
		name := mkr.phase
		if pending != "" {
			name = pending + " + " + name
		}
		if mkr.re == nil {
			exit := m.Exit()
			if exit.At == 0 {
				return nil, fmt.Errorf("phases: %q ends at the machine's exit, which has not come", mkr.phase)
			}
			out = append(out, Phase{name, scenario.Round3((exit.At - last).Seconds())})
			pending = ""
			continue
		}
		j := i
		for ; j < len(lines) && !mkr.re.MatchString(lines[j].Text); j++ {
		}
		if j == len(lines) {
			pending = name
			continue
		}
		out = append(out, Phase{name, scenario.Round3((lines[j].At - last).Seconds())})
		last, i, pending = lines[j].At, j+1, ""
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("phases: none of the markers appeared on the console")
	}
	return out, nil
}

// phaseAt appends one more phase, from the end of phases to at (a time
// on the machine's clock, from its start), given start as phases' origin.
func phaseAt(phases []Phase, name string, start, at time.Duration) []Phase {
	sum := 0.0
	for _, p := range phases {
		sum += p.Seconds
	}
	return append(phases, Phase{name, scenario.Round3(at.Seconds() - start.Seconds() - sum)})
}

// medianPhases combines the phases of several runs: the median of each
// phase by name, in the order of the first run.
func medianPhases(runs [][]Phase) []Phase {
	if len(runs) == 0 {
		return nil
	}
	by := map[string][]float64{}
	var order []string
	for _, r := range runs {
		for _, p := range r {
			if _, ok := by[p.Name]; !ok {
				order = append(order, p.Name)
			}
			by[p.Name] = append(by[p.Name], p.Seconds)
		}
	}
	out := make([]Phase, 0, len(order))
	for _, n := range order {
		v := append([]float64(nil), by[n]...)
		sort.Float64s(v)
		out = append(out, Phase{n, scenario.Round3(median(v))})
	}
	return out
}

// phaseTable prints phases as a table for people: one row per phase with
// its seconds, share of the total and a bar, the slowest marked.
func phaseTable(title string, phases []Phase) string {
	var b strings.Builder
	total, slow := 0.0, 0
	for i, p := range phases {
		total += p.Seconds
		if p.Seconds > phases[slow].Seconds {
			slow = i
		}
	}
	fmt.Fprintf(&b, "%s: %.2f s\n", title, total)
	for i, p := range phases {
		share := 0.0
		if total > 0 {
			share = p.Seconds / total
		}
		mark := ""
		if i == slow {
			mark = "  <- slowest"
		}
		fmt.Fprintf(&b, "  %-46s %6.2f s %4.0f%% %s%s\n", p.Name, p.Seconds, 100*share, strings.Repeat("#", int(share*40+0.5)), mark)
	}
	return b.String()
}

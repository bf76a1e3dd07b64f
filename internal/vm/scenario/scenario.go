// Package scenario is the registry of khib-vm's end-to-end scenarios and the environment they run in.
//
// A scenario is a Go function that builds initramfs images and disks in a
// work directory, boots QEMU machines through Env.Start and returns figures
// for the one-line JSON report. The scenarios themselves live in
// internal/vm/scenarios, one file each, and register from init functions.
package scenario

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/khib/khib/internal/helper"
	"github.com/khib/khib/internal/vm"
)

// Result holds a scenario's figures, merged into the JSON report. Values
// must encode as JSON; keys should be snake_case with a unit suffix
// (boot_s, image_mib).
type Result map[string]any

// Merge copies the entries of other into r, replacing equal keys.
func (r Result) Merge(other map[string]any) Result {
	for k, v := range other {
		r[k] = v
	}
	return r
}

// Scenario is one end-to-end test.
type Scenario struct {
	Name        string
	Description string // one line, shown by `khib-vm list`
	// Timeout bounds the whole run; Env.Start's machines die when it
	// passes. Zero means DefaultTimeout.
	Timeout time.Duration
	Run     func(ctx context.Context, env *Env) (Result, error)
}

// DefaultTimeout is the run limit of a scenario that names none. TCG boots
// take tens of seconds, so this is generous.
const DefaultTimeout = 10 * time.Minute

var (
	regMu    sync.Mutex
	registry = map[string]Scenario{}
)

// Register adds s to the registry. It is meant for init functions and
// panics on a duplicate or nameless scenario, a programming error.
func Register(s Scenario) {
	regMu.Lock()
	defer regMu.Unlock()
	if s.Name == "" || s.Run == nil {
		panic("scenario: Register needs a name and a Run function")
	}
	if _, dup := registry[s.Name]; dup {
		panic("scenario: " + s.Name + " registered twice")
	}
	registry[s.Name] = s
}

// Lookup finds a registered scenario.
func Lookup(name string) (Scenario, bool) {
	regMu.Lock()
	defer regMu.Unlock()
	s, ok := registry[name]
	return s, ok
}

// All returns the registered scenarios sorted by name.
func All() []Scenario {
	regMu.Lock()
	defer regMu.Unlock()
	out := make([]Scenario, 0, len(registry))
	for _, s := range registry {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Options are the knobs of a run, set from khib-vm's flags.
type Options struct {
	MemMiB      int    // guest memory; default 1024
	SMP         int    // guest CPUs; default 1
	WorkloadMiB int    // memory the workload dirties; 0 lets the scenario choose
	Kernel      string // bzImage
	BinDir      string // where khib, khib-workload and friends are
	Accel       string // "", "tcg", "kvm" or "auto"; "" defers to $KHIB_VM_ACCEL
	Timeout     time.Duration
	Keep        bool // keep the work directory after a successful run
	Verbose     bool // echo guest consoles to the log as they arrive
	Demo        bool // scenarios may narrate for a human audience
	// Overlay, Before and After let a user try khib on their own
	// software (scenario cycle): files added to A's root, a command run
	// before hibernating, a command run after resuming.
	Overlay       string
	Before, After string
	// GuestDisk and Deb are for the scenarios on the Debian guest: its
	// disk image as scripts/guest-image.sh built it (next to it, disk.json
	// describes the partitions) and khib's .deb.
	GuestDisk string
	Deb       string
	// Cycles is how many hibernate/resume cycles a soak runs, and Seed
	// seeds the random choices of the fault scenarios; zero lets the
	// scenario choose (a seed from the clock, printed).
	Cycles int
	Seed   int64
	// Runs is how many times a benchmark repeats each measurement (0:
	// its default), and Results the directory it writes its report to
	// ("": none).
	Runs    int
	Results string
	// Region is the helper's reservation (crashkernel=) for the scenarios
	// that take it; "" is their default.
	Region string
	// Append is added to the kernel command line of every machine the
	// scenario boots with a kernel of the rig's (not through a boot
	// loader), such as khib.profile=1.
	Append string
}

// Env is what a running scenario works with.
type Env struct {
	Options
	Scenario string
	WorkDir  string
	// Logf prints one line of human progress (to stderr in khib-vm).
	Logf func(format string, args ...any)

	deadline time.Time
	mu       sync.Mutex
	machines []*vm.Machine
	last     *vm.Machine
}

// Path returns name inside the work directory.
func (e *Env) Path(name string) string { return filepath.Join(e.WorkDir, name) }

// Remaining is the time left before the scenario's timeout; use it as the
// limit of waits that have no tighter bound of their own.
func (e *Env) Remaining() time.Duration {
	if d := time.Until(e.deadline); d > 0 {
		return d
	}
	return 0
}

// Bin returns the path of a binary from BinDir and checks that it exists
// and is statically linked, as everything in the guest must be.
func (e *Env) Bin(name string) (string, error) {
	p := filepath.Join(e.BinDir, name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%s is missing (build it with `make bins`, or point --bindir elsewhere): %w", p, err)
	}
	if err := vm.CheckStatic(p); err != nil {
		return "", fmt.Errorf("%w (build it with CGO_ENABLED=0)", err)
	}
	return p, nil
}

// NewRootfs returns a rootfs with busybox installed, ready for more files
// and an /init.
func (e *Env) NewRootfs() (*vm.Rootfs, error) {
	r := vm.NewRootfs()
	if err := r.AddBusybox(""); err != nil {
		return nil, err
	}
	return r, nil
}

// WriteRootfs writes r to name in the work directory and returns its path.
func (e *Env) WriteRootfs(name string, r *vm.Rootfs) (string, error) {
	p := e.Path(name)
	if err := r.WriteFile(p); err != nil {
		return "", err
	}
	if fi, err := os.Stat(p); err == nil {
		e.Logf("initramfs %s: %.1f MiB", p, float64(fi.Size())/(1<<20))
	}
	return p, nil
}

// NewDisk creates a sparse raw disk image of sizeMiB in the work directory.
func (e *Env) NewDisk(name string, sizeMiB int) (string, error) {
	p := e.Path(name)
	f, err := os.Create(p)
	if err != nil {
		return "", fmt.Errorf("creating disk: %w", err)
	}
	err = f.Truncate(int64(sizeMiB) << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("sizing disk %s: %w", p, err)
	}
	return p, nil
}

// Config returns a machine configuration filled from the options: kernel,
// memory, CPUs, accelerator, DefaultAppend as the command line, and
// progress logging. Set Initrd, add to Append and attach Disks, then Start.
func (e *Env) Config() vm.Config {
	cfg := vm.Config{
		Kernel: e.Kernel,
		Append: vm.DefaultAppend,
		MemMiB: e.MemMiB,
		SMP:    e.SMP,
		Accel:  e.Accel,
		Logf:   e.Logf,
	}
	if e.Verbose {
		cfg.OnLine = func(l vm.Line) { e.Logf("  | %s", l.Text) }
	}
	return cfg
}

// Start boots a machine. name labels it in the work directory: its console
// goes to <name>.console.log unless cfg names a log. The machine is killed
// when the scenario ends or times out; scenarios need not Close it, though
// they may.
func (e *Env) Start(ctx context.Context, name string, cfg vm.Config) (*vm.Machine, error) {
	if cfg.ConsoleLog == "" {
		cfg.ConsoleLog = e.Path(name + ".console.log")
	}
	// Helper kernels are quiet unless A's command line asks otherwise
	// (internal/helper); -v shows their kernel messages too. A machine
	// that boots its disk's boot loader takes its command line from there.
	if e.Verbose && cfg.Kernel != "" {
		cfg.Append = strings.TrimSpace(cfg.Append + " " + helper.HelperLoglevelParam + "=8")
	}
	if e.Append != "" && cfg.Kernel != "" {
		cfg.Append = strings.TrimSpace(cfg.Append + " " + e.Append)
	}
	m, err := vm.Start(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("starting machine %s: %w", name, err)
	}
	e.mu.Lock()
	e.machines = append(e.machines, m)
	e.last = m
	e.mu.Unlock()
	return m, nil
}

// Machines returns the machines started so far, oldest first.
func (e *Env) Machines() []*vm.Machine {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]*vm.Machine(nil), e.machines...)
}

func (e *Env) closeAll() error {
	var errs []error
	for _, m := range e.Machines() {
		if err := m.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Figures collects the KHIBVM:key=value reports of a machine's console.
func Figures(m *vm.Machine) Result { return Result(vm.Figures(m.Lines())) }

// Report is the outcome of one run.
type Report struct {
	Scenario   string
	OK         bool
	Err        error
	WorkDir    string
	Seconds    float64 // wall time of the run
	Accel      string  // of the last machine started
	ConsoleLog string  // of the failing machine, when the error names one
	Tail       string  // its last console lines
	Figures    Result
}

// Run executes s in a fresh work directory under workRoot and always
// returns a Report; machines are killed and reaped before it returns, even
// when the scenario panics.
func Run(ctx context.Context, s Scenario, opts Options, workRoot string, logf func(string, ...any)) (rep Report) {
	t0 := time.Now()
	rep = Report{Scenario: s.Name, Figures: Result{}}
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if opts.MemMiB <= 0 {
		opts.MemMiB = 1024
	}
	if opts.SMP <= 0 {
		opts.SMP = 1
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = s.Timeout
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	dir := filepath.Join(workRoot, s.Name+"-"+t0.Format("20060102-150405.000"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		rep.Err = fmt.Errorf("creating work directory: %w", err)
		return rep
	}
	rep.WorkDir = dir
	logf("scenario %s: work directory %s, timeout %v", s.Name, dir, timeout)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	env := &Env{Options: opts, Scenario: s.Name, WorkDir: dir, Logf: logf}
	env.deadline, _ = ctx.Deadline()

	figs, err := runGuarded(ctx, s, env)
	if cerr := env.closeAll(); cerr != nil {
		err = errors.Join(err, cerr)
	}
	if err != nil && ctx.Err() == context.DeadlineExceeded {
		err = fmt.Errorf("scenario timed out after %v: %w", timeout, err)
	}
	rep.Seconds = time.Since(t0).Seconds()
	rep.Figures.Merge(figs)
	env.mu.Lock()
	if env.last != nil {
		rep.Accel = env.last.Accel()
	}
	env.mu.Unlock()
	rep.Err = err
	rep.OK = err == nil
	var ce *vm.ConsoleError
	if errors.As(err, &ce) {
		rep.ConsoleLog, rep.Tail = ce.LogPath, ce.Tail
	} else if err != nil {
		// Not a console failure, but the last machine's console is still
		// where a reader should look.
		env.mu.Lock()
		if env.last != nil {
			rep.ConsoleLog, rep.Tail = env.last.LogPath(), env.last.Tail(vm.TailLines)
		}
		env.mu.Unlock()
	}
	return rep
}

func runGuarded(ctx context.Context, s Scenario, env *Env) (res Result, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("scenario %s panicked: %v\n%s", s.Name, p, debug.Stack())
		}
	}()
	return s.Run(ctx, env)
}

// JSON renders the report as one line: scenario, ok and error first, then
// the run's own fields and the figures in key order. Figures cannot
// override the fixed fields.
func (r Report) JSON() []byte {
	fixed := []struct {
		k string
		v any
	}{
		{"scenario", r.Scenario},
		{"ok", r.OK},
		{"error", errorText(r.Err)},
		{"seconds", Round3(r.Seconds)},
		{"workdir", r.WorkDir},
	}
	if r.Accel != "" {
		fixed = append(fixed, struct {
			k string
			v any
		}{"accel", r.Accel})
	}
	if r.ConsoleLog != "" {
		fixed = append(fixed, struct {
			k string
			v any
		}{"console_log", r.ConsoleLog})
	}
	seen := map[string]bool{}
	var b bytes.Buffer
	b.WriteByte('{')
	add := func(k string, v any) {
		kb, _ := json.Marshal(k)
		vb, err := json.Marshal(v)
		if err != nil {
			vb, _ = json.Marshal(fmt.Sprint(v))
		}
		if b.Len() > 1 {
			b.WriteByte(',')
		}
		b.Write(kb)
		b.WriteByte(':')
		b.Write(vb)
	}
	for _, f := range fixed {
		add(f.k, f.v)
		seen[f.k] = true
	}
	keys := make([]string, 0, len(r.Figures))
	for k := range r.Figures {
		if !seen[k] {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		add(k, r.Figures[k])
	}
	b.WriteByte('}')
	return b.Bytes()
}

// errorText is the error for the JSON line: a console failure without its
// tail (which goes to stderr), everything on one line.
func errorText(err error) string {
	if err == nil {
		return ""
	}
	msg := err.Error()
	var ce *vm.ConsoleError
	if errors.As(err, &ce) {
		msg = strings.Replace(msg, ce.Error(), ce.Short(), 1)
	}
	if i := strings.Index(msg, "\ngoroutine "); i >= 0 {
		msg = msg[:i] // a panic's stack is for stderr
	}
	return strings.Join(strings.Fields(msg), " ")
}

// Round3 rounds a figure to three decimals for a result line.
func Round3(f float64) float64 {
	return math.Round(f*1000) / 1000
}

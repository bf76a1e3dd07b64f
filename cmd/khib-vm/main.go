// Command khib-vm runs khib's end-to-end scenarios in QEMU guests and reports each as one JSON line.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/khib/khib/internal/vm"
	"github.com/khib/khib/internal/vm/scenario"
	"github.com/khib/khib/internal/vm/scenarios"
)

const usage = `khib-vm - run khib's end-to-end scenarios in QEMU

Usage:
  khib-vm run --scenario NAME [flags]   run one scenario
  khib-vm list                          list the scenarios

'run' prints human progress on stderr and always ends with one JSON line on
stdout: {"scenario":..., "ok":true|false, "error":"...", ...figures}. The exit
status is 0 iff ok. Each run gets a work directory
$TMPDIR/khib-vm/<scenario>-<timestamp>/ with the console logs, initramfs
images and disks; it is removed after a success unless --keep is given, and
always kept after a failure.

Run flags:
`

const envHelp = `
Environment:
  KHIB_VM_ACCEL   tcg, kvm or auto (default auto: KVM only after a probe boot
                  under KVM succeeded; the verdict is cached in
                  ~/.cache/khib/kvm-probe-*)
  KHIB_QEMU       QEMU binary (default qemu-system-x86_64)
  TMPDIR          where work directories go (default /tmp)
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		runFlags(nil, stderr).PrintDefaults()
		fmt.Fprint(stderr, envHelp)
		return 2
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stdout, stderr)
	case "list":
		for _, s := range scenario.All() {
			fmt.Fprintf(stdout, "%-20s %s\n", s.Name, s.Description)
		}
		return 0
	case "help", "-h", "--help", "-help":
		fmt.Fprint(stdout, usage)
		runFlags(nil, stdout).PrintDefaults()
		fmt.Fprint(stdout, envHelp)
		return 0
	default:
		fmt.Fprintf(stderr, "khib-vm: unknown command %q\n\n", args[0])
		fmt.Fprint(stderr, usage)
		return 2
	}
}

type runOpts struct {
	scenario string
	json     bool
	opts     scenario.Options
}

func runFlags(o *runOpts, out io.Writer) *flag.FlagSet {
	if o == nil {
		o = &runOpts{}
	}
	fs := flag.NewFlagSet("khib-vm run", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&o.scenario, "scenario", "", "scenario to run (see 'khib-vm list')")
	fs.IntVar(&o.opts.MemMiB, "mem", 1024, "guest memory in MiB")
	fs.IntVar(&o.opts.SMP, "smp", 1, "guest CPUs")
	fs.IntVar(&o.opts.WorkloadMiB, "workload", 0, "MiB of memory the guest workload fills (0: the scenario's default)")
	fs.BoolVar(&o.json, "json", false, "machine use: skip the human summary on stderr (stdout carries only the JSON line either way)")
	fs.StringVar(&o.opts.Kernel, "kernel", "", "bzImage to boot (default: the output of kernel/build.sh --path in the repository)")
	fs.StringVar(&o.opts.BinDir, "bindir", "", "directory with the static khib binaries (default: bin/ in the repository, else ./bin)")
	fs.StringVar(&o.opts.Accel, "accel", "", "tcg, kvm or auto (default: $KHIB_VM_ACCEL, else auto)")
	fs.DurationVar(&o.opts.Timeout, "timeout", 0, "limit for the whole scenario (default: the scenario's own)")
	fs.BoolVar(&o.opts.Keep, "keep", false, "keep the work directory after a successful run")
	fs.BoolVar(&o.opts.Verbose, "v", false, "echo guest consoles to stderr as they arrive")
	fs.BoolVar(&o.opts.Demo, "demo", false, "narrate the run for a human audience (scenarios that support it)")
	fs.StringVar(&o.opts.Overlay, "overlay", "", "cycle: add this directory's files to A's root filesystem (same paths)")
	fs.StringVar(&o.opts.Before, "before", "", "cycle: shell command run in A before hibernating (may start servers)")
	fs.StringVar(&o.opts.GuestDisk, "guest-disk", "", "distro-*: the Debian guest's disk image (the output of scripts/guest-image.sh); it is copied, never written")
	fs.StringVar(&o.opts.Deb, "deb", "", "distro-*: khib's Debian package, installed in the guest with dpkg -i (make deb)")
	fs.StringVar(&o.opts.After, "after", "", "cycle: shell command run in A after it resumed; ok needs both to exit 0")
	fs.IntVar(&o.opts.Cycles, "cycles", 0, "soak: hibernate/resume cycles (0: the scenario's default)")
	fs.StringVar(&o.opts.Append, "append", "", "kernel parameters added to every rig-booted machine's command line (khib.profile=1: the helpers print CPU profiles)")
	fs.StringVar(&o.opts.Region, "region", "", "cycle, soak: the helper's reservation, crashkernel=SIZE (default "+scenarios.RegionSize+")")
	fs.IntVar(&o.opts.Runs, "runs", 0, "bench: runs of each measurement, reported as medians (0: 3)")
	fs.StringVar(&o.opts.Results, "results", "", "bench: write the report (Markdown, CSV, PNG) into this directory")
	fs.Int64Var(&o.opts.Seed, "seed", 0, "powercut-*, corrupt-images, resume-corrupt-kinds: seed of the random choices, to repeat them (0: from the clock, printed)")
	return fs
}

func cmdRun(args []string, stdout, stderr io.Writer) int {
	var o runOpts
	fs := runFlags(&o, stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
		fmt.Fprint(stderr, envHelp)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	logf := func(format string, a ...any) {
		fmt.Fprintf(stderr, "khib-vm: "+format+"\n", a...)
	}
	fail := func(code int, err error) int {
		rep := scenario.Report{Scenario: o.scenario, Err: err}
		fmt.Fprintf(stderr, "khib-vm: %v\n", err)
		fmt.Fprintf(stdout, "%s\n", rep.JSON())
		return code
	}
	if fs.NArg() > 0 {
		return fail(2, fmt.Errorf("unexpected arguments %q", fs.Args()))
	}
	if o.scenario == "" {
		return fail(2, errors.New("--scenario is required (see 'khib-vm list')"))
	}
	s, ok := scenario.Lookup(o.scenario)
	if !ok {
		var names []string
		for _, s := range scenario.All() {
			names = append(names, s.Name)
		}
		return fail(2, fmt.Errorf("unknown scenario %q (have: %s)", o.scenario, strings.Join(names, ", ")))
	}
	root, rootErr := repoRoot()
	if o.opts.Kernel == "" {
		k, err := defaultKernel(root, rootErr)
		if err != nil {
			return fail(1, err)
		}
		o.opts.Kernel = k
	}
	if _, err := os.Stat(o.opts.Kernel); err != nil {
		return fail(1, fmt.Errorf("kernel: %w (build it with kernel/build.sh or `make kernel`)", err))
	}
	if o.opts.BinDir == "" {
		o.opts.BinDir = "bin"
		if rootErr == nil {
			o.opts.BinDir = filepath.Join(root, "bin")
		}
	}
	logf("kernel %s, bindir %s, %d MiB, %d CPU", o.opts.Kernel, o.opts.BinDir, o.opts.MemMiB, o.opts.SMP)

	// Ctrl-C and SIGTERM end the scenario's context, which kills its
	// machines; the report still gets written.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	workRoot := filepath.Join(os.TempDir(), "khib-vm")
	rep := scenario.Run(ctx, s, o.opts, workRoot, logf)
	if ctx.Err() != nil && rep.Err != nil {
		rep.Err = fmt.Errorf("interrupted: %w", rep.Err)
	}

	if rep.Err != nil {
		fmt.Fprintf(stderr, "khib-vm: scenario %s FAILED after %.1f s: %v\n", s.Name, rep.Seconds, rep.Err)
		var ce *vm.ConsoleError
		if !errors.As(rep.Err, &ce) && rep.Tail != "" {
			// The error did not carry the console; show it anyway.
			fmt.Fprintf(stderr, "khib-vm: last console lines of %s:\n%s", rep.ConsoleLog, rep.Tail)
		}
		fmt.Fprintf(stderr, "khib-vm: work directory kept: %s\n", rep.WorkDir)
	} else {
		if !o.json {
			fmt.Fprintf(stderr, "khib-vm: scenario %s passed in %.1f s\n", s.Name, rep.Seconds)
		}
		if o.opts.Keep {
			fmt.Fprintf(stderr, "khib-vm: work directory kept: %s\n", rep.WorkDir)
		} else if rep.WorkDir != "" {
			if err := os.RemoveAll(rep.WorkDir); err != nil {
				logf("removing %s: %v", rep.WorkDir, err)
			}
		}
	}
	fmt.Fprintf(stdout, "%s\n", rep.JSON())
	if rep.OK {
		return 0
	}
	return 1
}

// repoRoot walks up from the current directory to the one holding go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the current directory")
		}
		dir = parent
	}
}

func defaultKernel(root string, rootErr error) (string, error) {
	if rootErr != nil {
		return "", fmt.Errorf("finding the kernel: %w; run from the repository or pass --kernel", rootErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", filepath.Join(root, "kernel", "build.sh"), "--path")
	cmd.Dir = root
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("kernel/build.sh --path: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// Package vm starts QEMU guests for khib's tests and watches their serial console.
//
// Every Machine owns one qemu-system-x86_64 process. Callers must
// `defer m.Close()` right after a successful Start: Close kills and reaps
// QEMU whatever state it is in. As a second line of defence QEMU runs in its
// own process group with a parent-death signal (SIGKILL), so it also dies
// when the process that started it dies, be it by panic, os.Exit or a kill.
// (Linux delivers that signal when the starting *thread* ends; Go only ends
// threads of goroutines that exit while locked with runtime.LockOSThread,
// so do not call Start from such a goroutine.)
package vm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Disk is a raw disk image attached as a virtio-blk device. Disks appear in
// the guest as /dev/vda, /dev/vdb, ... in the order given.
type Disk struct {
	Path     string
	ReadOnly bool
	// Blkdebug, if set, is a QEMU blkdebug configuration put between the
	// guest and the file, to inject I/O errors (a failing disk).
	Blkdebug string
}

// Config describes one QEMU run.
type Config struct {
	Kernel string // bzImage; empty: boot the first disk through its boot loader
	Initrd string // cpio archive, optionally gzipped
	Append string // kernel command line; see DefaultAppend
	MemMiB int    // default 1024
	SMP    int    // default 1
	Disks  []Disk
	// ConsoleLog receives every console line with a host-time prefix. When
	// empty a file is created in the temporary directory.
	ConsoleLog string
	// Accel is "tcg", "kvm" or "auto". When empty, $KHIB_VM_ACCEL decides,
	// and "auto" when that is unset. "auto" uses KVM only after a probe boot
	// proved that KVM guests run here (see ResolveAccel).
	Accel   string
	Machine string   // default "q35"
	CPU     string   // default "max"
	Extra   []string // appended to the QEMU command line as is
	// QEMU is the emulator binary; default $KHIB_QEMU or qemu-system-x86_64.
	QEMU string
	// OnLine, when set, is called for every console line as it arrives,
	// e.g. to echo the guest live. It must not block.
	OnLine func(Line)
	// Logf, when set, receives one line per rig step (accel choice, start, exit).
	Logf func(format string, args ...any)
	// QMP gives the machine a QMP monitor on a Unix socket that Start
	// places in a fresh temporary directory (Machine.QMP connects to it),
	// and names the drives, in order, DriveID(0), DriveID(1), ... so that
	// QMP commands can address them. -monitor none stays: QMP is separate.
	QMP bool

	qmpSocket string // set by Start when QMP is on
}

// DriveID is the id of the i-th of Config.Disks when Config.QMP is set:
// the block backend's name in query-block, drive_del and friends.
func DriveID(i int) string { return "disk" + strconv.Itoa(i) }

// DefaultAppend is the kernel command line every scenario starts from: the
// console on the first serial port, all messages, and a panic that stops the
// machine at once (with -no-reboot QEMU then exits instead of rebooting).
// no_timer_check, as KVM guests have it: under TCG on a busy host the
// kernel's check of the timer interrupt (4 ticks of IRQ 0) fails now and
// then, and the boot falls back to the 8259 and virtual wire for 0.1-0.2 s
// or panics ("IO-APIC + timer doesn't work!").
const DefaultAppend = "console=ttyS0 earlyprintk=serial loglevel=8 panic=-1 no_console_suspend no_timer_check"

// Line is one line of console output.
type Line struct {
	Text string
	At   time.Duration // since QEMU was started
	// QEMU marks lines QEMU itself wrote to its stderr, not the guest.
	QEMU bool
}

// ExitInfo says how QEMU ended.
type ExitInfo struct {
	Code   int    // exit status; -1 when killed by a signal
	Signal string // the signal that killed QEMU, if any
	// Killed is set when the rig killed QEMU (Close, context end).
	Killed bool
	// PoweredOff is set when QEMU exited with status 0 after the guest
	// kernel announced a power-off: the only clean ending.
	PoweredOff bool
	Rebooted   bool // the guest asked for a reboot (-no-reboot turned it into an exit)
	Halted     bool // the guest halted; QEMU does not exit on its own then
	Panicked   bool // a kernel panic was seen on the console
	At         time.Duration
}

// String describes the ending in a few words, for logs and errors.
func (e ExitInfo) String() string {
	var how string
	switch {
	case e.Panicked:
		how = "guest kernel panicked"
	case e.PoweredOff:
		how = "guest powered off"
	case e.Killed:
		how = "killed by the rig"
	case e.Rebooted:
		how = "guest rebooted"
	case e.Signal != "":
		how = "QEMU killed by " + e.Signal
	case e.Code != 0:
		how = fmt.Sprintf("QEMU failed with status %d", e.Code)
	default:
		how = "QEMU exited without a guest power-off"
	}
	return fmt.Sprintf("%s after %.3f s", how, e.At.Seconds())
}

// Machine is a running (or finished) QEMU process.
type Machine struct {
	cfg     Config
	args    []string
	accel   string
	cmd     *exec.Cmd
	start   time.Time
	logPath string
	stdin   io.WriteCloser
	logf    func(string, ...any)

	mu      sync.Mutex
	log     *os.File
	all     []Line // console and QEMU lines in arrival order
	console []int  // indexes into all of the guest's lines
	cursor  int    // WaitFor resumes here, an index into console
	changed chan struct{}
	exited  bool
	exit    ExitInfo
	killed  bool

	done      chan struct{} // closed once QEMU is reaped and its output drained
	closeOnce sync.Once
	closeErr  error
}

// How long output may keep arriving after QEMU was reaped; only a stray
// child holding the pipe would make it matter.
const drainGrace = 2 * time.Second

// How long Close waits for a killed QEMU to be reaped.
const killWait = 15 * time.Second

// Start launches QEMU as described by cfg. The machine is killed when ctx
// ends. Callers must defer Close.
func Start(ctx context.Context, cfg Config) (*Machine, error) {
	cfg = withDefaults(cfg)
	logf := cfg.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	for _, f := range []struct{ what, path string }{{"kernel", cfg.Kernel}, {"initrd", cfg.Initrd}} {
		if f.path == "" {
			if f.what == "kernel" && len(cfg.Disks) == 0 {
				return nil, errors.New("vm: no kernel and no disk to boot from")
			}
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return nil, fmt.Errorf("vm: %s: %w", f.what, err)
		}
	}
	for _, d := range cfg.Disks {
		if _, err := os.Stat(d.Path); err != nil {
			return nil, fmt.Errorf("vm: disk: %w", err)
		}
	}
	accel, err := ResolveAccel(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if !cfg.QMP {
		return start(ctx, cfg, accel, logf)
	}
	// A directory of its own keeps the socket path short (sun_path holds
	// 108 bytes) and out of the way; reap removes it.
	dir, err := os.MkdirTemp("", "khib-qmp-")
	if err != nil {
		return nil, fmt.Errorf("vm: QMP socket directory: %w", err)
	}
	cfg.qmpSocket = filepath.Join(dir, "qmp.sock")
	m, err := start(ctx, cfg, accel, logf)
	if err != nil {
		os.RemoveAll(dir)
	}
	return m, err
}

func withDefaults(cfg Config) Config {
	if cfg.MemMiB <= 0 {
		cfg.MemMiB = 1024
	}
	if cfg.SMP <= 0 {
		cfg.SMP = 1
	}
	if cfg.Machine == "" {
		cfg.Machine = "q35"
	}
	if cfg.CPU == "" {
		cfg.CPU = "max"
	}
	if cfg.QEMU == "" {
		cfg.QEMU = os.Getenv("KHIB_QEMU")
	}
	if cfg.QEMU == "" {
		cfg.QEMU = "qemu-system-x86_64"
	}
	return cfg
}

// Args returns the QEMU command line (without the binary) for cfg under the
// given accelerator.
func Args(cfg Config, accel string) []string {
	cfg = withDefaults(cfg)
	a := []string{
		"-nodefaults", "-no-reboot", "-display", "none", "-monitor", "none",
		// signal=off: QEMU must not treat a byte from our stdin as Ctrl-C.
		"-chardev", "stdio,id=con0,signal=off", "-serial", "chardev:con0",
		"-machine", cfg.Machine, "-accel", accel, "-cpu", cfg.CPU,
		"-m", strconv.Itoa(cfg.MemMiB), "-smp", strconv.Itoa(cfg.SMP),
	}
	// Without a kernel the machine boots from its first disk, through
	// the firmware and the boot loader installed there.
	if cfg.Kernel != "" {
		a = append(a, "-kernel", cfg.Kernel)
	}
	if cfg.Initrd != "" {
		a = append(a, "-initrd", cfg.Initrd)
	}
	if cfg.Append != "" {
		a = append(a, "-append", cfg.Append)
	}
	if cfg.QMP {
		sock := cfg.qmpSocket
		if sock == "" {
			sock = "QMP-SOCKET" // chosen by Start
		}
		a = append(a, "-qmp", "unix:"+qemuEscape(sock)+",server=on,wait=off")
	}
	for i, d := range cfg.Disks {
		// cache=writeback (QEMU's default) so that a clean QEMU exit leaves
		// every guest write in the file for the next boot to find.
		file := d.Path
		if d.Blkdebug != "" {
			file = "blkdebug:" + d.Blkdebug + ":" + d.Path
		}
		opt := "file=" + qemuEscape(file) + ",format=raw,if=virtio,cache=writeback"
		if d.ReadOnly {
			opt += ",readonly=on"
		}
		if cfg.QMP {
			opt += ",id=" + DriveID(i)
		}
		a = append(a, "-drive", opt)
	}
	return append(a, cfg.Extra...)
}

// qemuEscape doubles commas, QEMU's way of quoting them in option values.
func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

func start(ctx context.Context, cfg Config, accel string, logf func(string, ...any)) (*Machine, error) {
	m := &Machine{
		cfg:     cfg,
		args:    Args(cfg, accel),
		accel:   accel,
		logf:    logf,
		changed: make(chan struct{}),
		done:    make(chan struct{}),
	}
	var err error
	if cfg.ConsoleLog != "" {
		if err := os.MkdirAll(filepath.Dir(cfg.ConsoleLog), 0o755); err != nil {
			return nil, fmt.Errorf("vm: console log: %w", err)
		}
		m.log, err = os.Create(cfg.ConsoleLog)
	} else {
		m.log, err = os.CreateTemp("", "khib-vm-console-*.log")
	}
	if err != nil {
		return nil, fmt.Errorf("vm: console log: %w", err)
	}
	m.logPath = m.log.Name()

	// Our own pipes rather than exec's: exec.Cmd.Wait would block until
	// every holder of the pipe has closed it, and we want to reap QEMU and
	// drain its output independently.
	outR, outW, err := os.Pipe()
	if err != nil {
		m.log.Close()
		return nil, fmt.Errorf("vm: pipe: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		m.log.Close()
		outR.Close()
		outW.Close()
		return nil, fmt.Errorf("vm: pipe: %w", err)
	}
	cmd := exec.Command(cfg.QEMU, m.args...)
	cmd.Stdout = outW
	cmd.Stderr = errW
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:   true,
		Pdeathsig: syscall.SIGKILL,
	}
	// The guest's console input: kept open so that QEMU never sees EOF on
	// stdin, and usable through Send.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		m.log.Close()
		outR.Close()
		outW.Close()
		errR.Close()
		errW.Close()
		return nil, fmt.Errorf("vm: stdin pipe: %w", err)
	}
	m.stdin = stdin
	fmt.Fprintf(m.log, "# %s %s\n", cfg.QEMU, shellQuote(m.args))
	thp := guestTHP()
	fmt.Fprintf(m.log, "# %s\n", thp)
	m.start = time.Now()
	err = cmd.Start()
	outW.Close()
	errW.Close()
	if err != nil {
		m.log.Close()
		outR.Close()
		errR.Close()
		stdin.Close()
		return nil, fmt.Errorf("vm: starting %s: %w", cfg.QEMU, err)
	}
	m.cmd = cmd
	logf("vm: started QEMU pid %d (%s, %d MiB, %d CPU, %s); console log %s", cmd.Process.Pid, accel, cfg.MemMiB, cfg.SMP, thp, m.logPath)

	var readers sync.WaitGroup
	readers.Add(2)
	go func() { defer readers.Done(); m.read(outR, false) }()
	go func() { defer readers.Done(); m.read(errR, true) }()
	go m.reap(&readers, outR, errR)
	go func() {
		select {
		case <-ctx.Done():
			m.kill()
		case <-m.done:
		}
	}()
	return m, nil
}

// maxLine splits runaway output without newlines into pieces, so that one
// line never holds more than this in memory.
const maxLine = 64 << 10

func (m *Machine) read(r *os.File, fromQEMU bool) {
	br := bufio.NewReaderSize(r, 4096)
	var cur []byte
	for {
		chunk, err := br.ReadSlice('\n')
		cur = append(cur, chunk...)
		full := len(chunk) > 0 && chunk[len(chunk)-1] == '\n'
		if full || len(cur) >= maxLine || (err != nil && err != bufio.ErrBufferFull && len(cur) > 0) {
			m.addLine(string(cur), fromQEMU)
			cur = cur[:0]
		}
		if err != nil && err != bufio.ErrBufferFull {
			return
		}
	}
}

func (m *Machine) addLine(s string, fromQEMU bool) {
	at := time.Since(m.start)
	// Serial consoles end lines with CRLF; other control characters are
	// kept so that the log shows what the guest really sent.
	s = strings.TrimRight(s, "\r\n")
	s = strings.TrimPrefix(s, "\r")
	l := Line{Text: s, At: at, QEMU: fromQEMU}
	m.mu.Lock()
	prefix := ""
	if fromQEMU {
		prefix = "qemu: "
	}
	fmt.Fprintf(m.log, "[%8.3f] %s%s\n", at.Seconds(), prefix, s)
	m.all = append(m.all, l)
	if !fromQEMU {
		m.console = append(m.console, len(m.all)-1)
	}
	m.broadcastLocked()
	m.mu.Unlock()
	if !fromQEMU && m.cfg.OnLine != nil {
		m.cfg.OnLine(l)
	}
}

func (m *Machine) broadcastLocked() {
	close(m.changed)
	m.changed = make(chan struct{})
}

func (m *Machine) reap(readers *sync.WaitGroup, outR, errR *os.File) {
	err := m.cmd.Wait()
	at := time.Since(m.start)
	m.stdin.Close()
	drained := make(chan struct{})
	go func() { readers.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(drainGrace):
		// Something else holds the pipes; stop reading so we can finish.
		outR.Close()
		errR.Close()
		<-drained
	}
	outR.Close()
	errR.Close()

	m.mu.Lock()
	e := ExitInfo{At: at, Killed: m.killed}
	if ws, ok := m.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		e.Code = -1
		e.Signal = ws.Signal().String()
	} else {
		e.Code = m.cmd.ProcessState.ExitCode()
	}
	_ = err // the status above says all that Wait's error would
	var sawPowerOff bool
	for _, i := range m.console {
		t := m.all[i].Text
		switch {
		case strings.Contains(t, "Kernel panic - not syncing"):
			e.Panicked = true
		case strings.Contains(t, "reboot: Power down"):
			sawPowerOff = true
		case strings.Contains(t, "reboot: Restarting system"):
			e.Rebooted = true
		case strings.Contains(t, "reboot: System halted"):
			e.Halted = true
		}
	}
	e.PoweredOff = sawPowerOff && e.Code == 0 && !e.Panicked && !e.Killed
	m.exit = e
	m.exited = true
	if m.cfg.qmpSocket != "" {
		os.RemoveAll(filepath.Dir(m.cfg.qmpSocket))
	}
	fmt.Fprintf(m.log, "[%8.3f] # %s\n", at.Seconds(), e)
	m.log.Close()
	m.broadcastLocked()
	m.mu.Unlock()
	m.logf("vm: QEMU pid %d ended: %s", m.cmd.Process.Pid, e)
	close(m.done)
}

// kill sends SIGKILL to QEMU's process group unless it was already reaped.
func (m *Machine) kill() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.exited {
		return
	}
	m.killed = true
	// The pidfd-backed Kill cannot hit a recycled pid; the group kill also
	// takes anything QEMU may have started.
	_ = m.cmd.Process.Kill()
	_ = syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL)
}

// Close kills QEMU if it still runs and waits until it has been reaped. It
// is safe to call more than once and from several goroutines.
func (m *Machine) Close() error {
	m.closeOnce.Do(func() {
		m.kill()
		select {
		case <-m.done:
		case <-time.After(killWait):
			m.closeErr = fmt.Errorf("vm: QEMU pid %d still not reaped %v after SIGKILL", m.cmd.Process.Pid, killWait)
		}
	})
	return m.closeErr
}

// Send writes s to the guest's serial console input.
func (m *Machine) Send(s string) error {
	if _, err := io.WriteString(m.stdin, s); err != nil {
		return fmt.Errorf("vm: writing to the console: %w", err)
	}
	return nil
}

// ConsoleError is returned when a wait on a machine fails. Its message names
// the console log and carries the console's last lines.
type ConsoleError struct {
	Msg     string // what went wrong, without the log
	LogPath string
	Tail    string // last lines of the console, newline-terminated
}

func (e *ConsoleError) Error() string {
	return fmt.Sprintf("%s (console log %s); last console lines:\n%s", e.Msg, e.LogPath, e.Tail)
}

// Short is the message and the log path without the tail, for one-line reports.
func (e *ConsoleError) Short() string {
	return fmt.Sprintf("%s (console log %s)", e.Msg, e.LogPath)
}

// TailLines is how many console lines errors carry.
const TailLines = 30

func (m *Machine) errorf(format string, args ...any) error {
	return &ConsoleError{Msg: fmt.Sprintf(format, args...), LogPath: m.logPath, Tail: m.Tail(TailLines)}
}

// WaitFor returns the first console line matching pattern that arrived after
// the line matched by the previous successful WaitFor, so that consecutive
// calls follow the boot in order. It fails when timeout passes, ctx ends or
// QEMU exits first; the error names the pattern and the console log.
func (m *Machine) WaitFor(ctx context.Context, pattern *regexp.Regexp, timeout time.Duration) (Line, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		m.mu.Lock()
		for i := m.cursor; i < len(m.console); i++ {
			l := m.all[m.console[i]]
			if pattern.MatchString(l.Text) {
				m.cursor = i + 1
				m.mu.Unlock()
				return l, nil
			}
		}
		exited, exit, changed := m.exited, m.exit, m.changed
		m.mu.Unlock()
		if exited {
			return Line{}, m.errorf("%s before /%s/ appeared on the console", exit, pattern)
		}
		select {
		case <-changed:
		case <-timer.C:
			return Line{}, m.errorf("timed out after %v waiting for /%s/ on the console", timeout.Round(time.Millisecond), pattern)
		case <-ctx.Done():
			return Line{}, m.errorf("gave up waiting for /%s/ on the console: %v", pattern, ctx.Err())
		}
	}
}

// Wait waits up to timeout for QEMU to exit and says how it ended. It fails
// only on timeout; QEMU is left running then (Close kills it).
func (m *Machine) Wait(timeout time.Duration) (ExitInfo, error) {
	select {
	case <-m.done:
		return m.Exit(), nil
	case <-time.After(timeout):
		return ExitInfo{}, m.errorf("QEMU still running after %v", timeout)
	}
}

// WaitPowerOff waits for QEMU to exit and fails unless the guest powered off
// cleanly; the error carries the console tail.
func (m *Machine) WaitPowerOff(timeout time.Duration) (ExitInfo, error) {
	e, err := m.Wait(timeout)
	if err != nil {
		return e, err
	}
	if !e.PoweredOff {
		return e, m.errorf("expected a clean power-off, got: %s", e)
	}
	return e, nil
}

// Exit returns how QEMU ended; the zero ExitInfo while it runs.
func (m *Machine) Exit() ExitInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.exit
}

// Done is closed once QEMU has exited and its output is drained.
func (m *Machine) Done() <-chan struct{} { return m.done }

// Lines returns a copy of the guest's console lines so far.
func (m *Machine) Lines() []Line {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Line, len(m.console))
	for j, i := range m.console {
		out[j] = m.all[i]
	}
	return out
}

// Tail returns the last n lines of the console log (QEMU's own messages
// included), each with its time prefix and a newline.
func (m *Machine) Tail(n int) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	from := max(len(m.all)-n, 0)
	var b strings.Builder
	for _, l := range m.all[from:] {
		prefix := ""
		if l.QEMU {
			prefix = "qemu: "
		}
		fmt.Fprintf(&b, "[%8.3f] %s%s\n", l.At.Seconds(), prefix, l.Text)
	}
	return b.String()
}

// LogPath is the console log file.
func (m *Machine) LogPath() string { return m.logPath }

// Accel is the accelerator QEMU runs with ("tcg" or "kvm").
func (m *Machine) Accel() string { return m.accel }

// Pid is QEMU's process id.
func (m *Machine) Pid() int { return m.cmd.Process.Pid }

// Args is the QEMU command line this machine runs, without the binary.
func (m *Machine) Args() []string { return append([]string(nil), m.args...) }

// Started is when QEMU was started.
func (m *Machine) Started() time.Time { return m.start }

func shellQuote(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r == '-' || r == '_' || r == '.' || r == '/' || r == '=' || r == ',' || r == ':' ||
				r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9')
		}) < 0 {
			q[i] = a
		} else {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(q, " ")
}

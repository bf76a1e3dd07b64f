package vm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeQEMU is a stand-in for qemu-system-x86_64 whose behaviour FAKE_MODE
// picks. It writes its arguments to $FAKE_ARGS when set.
const fakeQEMU = `#!/bin/sh
[ -n "$FAKE_ARGS" ] && printf '%s\n' "$@" > "$FAKE_ARGS"
case "$FAKE_MODE" in
poweroff)
	printf 'Linux version 6.12\r\n'
	printf 'KHIBVM:booted uptime=0.50\r\n'
	echo "qemu-system-x86_64: warning: fake" >&2
	printf 'second marker\r\n'
	printf 'KHIBVM:pages=42 ratio=1.5 name=x\r\n'
	printf 'reboot: Power down\r\n'
	exit 0 ;;
panic)
	printf 'Kernel panic - not syncing: Attempted to kill init!\r\n'
	printf -- '---[ end Kernel panic - not syncing: Attempted to kill init! ]---\r\n'
	exit 0 ;;
fail)
	echo "qemu-system-x86_64: -drive file=x: Could not open 'x'" >&2
	exit 1 ;;
partial)
	printf 'no newline at the end'
	exit 0 ;;
hang)
	sleep 1000 &
	echo "child $!"
	echo "pid $$"
	wait ;;
slow)
	i=0
	while [ $i -lt 5 ]; do echo "tick $i"; i=$((i+1)); sleep 0.2; done
	exit 0 ;;
esac
`

func fakeConfig(t *testing.T, mode string) Config {
	t.Helper()
	dir := t.TempDir()
	q := filepath.Join(dir, "qemu")
	if err := os.WriteFile(q, []byte(fakeQEMU), 0o755); err != nil {
		t.Fatal(err)
	}
	k := filepath.Join(dir, "bzImage")
	if err := os.WriteFile(k, []byte("kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("FAKE_MODE", mode)
	return Config{
		Kernel: k, QEMU: q, Accel: "tcg", Append: DefaultAppend,
		ConsoleLog: filepath.Join(dir, "console.log"),
	}
}

func startT(t *testing.T, cfg Config) *Machine {
	t.Helper()
	m, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func TestArgs(t *testing.T) {
	cfg := Config{
		Kernel: "/k", Initrd: "/i", Append: "console=ttyS0 x=1", MemMiB: 512, SMP: 2,
		Disks: []Disk{{Path: "/d,1.img"}, {Path: "/ro.img", ReadOnly: true}},
		Extra: []string{"-device", "foo"},
	}
	got := strings.Join(Args(cfg, "tcg"), " ")
	for _, want := range []string{
		"-nodefaults", "-no-reboot", "-display none", "-monitor none", "-serial chardev:con0",
		"-machine q35", "-accel tcg", "-cpu max", "-m 512", "-smp 2",
		"-kernel /k", "-initrd /i", "-append console=ttyS0 x=1",
		"-drive file=/d,,1.img,format=raw,if=virtio,cache=writeback -drive",
		"file=/ro.img,format=raw,if=virtio,cache=writeback,readonly=on",
		"-device foo",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("args lack %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "unsafe") {
		t.Errorf("args use cache=unsafe: %s", got)
	}
	if def := strings.Join(Args(Config{Kernel: "/k"}, "kvm"), " "); !strings.Contains(def, "-m 1024 -smp 1") {
		t.Errorf("defaults: %s", def)
	}
}

func TestPowerOff(t *testing.T) {
	cfg := fakeConfig(t, "poweroff")
	cfg.ConsoleLog = filepath.Join(t.TempDir(), "sub", "console.log") // parent is created
	var echoed []string
	cfg.OnLine = func(l Line) { echoed = append(echoed, l.Text) }
	m := startT(t, cfg)
	l, err := m.WaitFor(context.Background(), regexp.MustCompile(`^KHIBVM:booted`), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if l.Text != "KHIBVM:booted uptime=0.50" {
		t.Errorf("line %q: carriage return not stripped", l.Text)
	}
	// Sequential waits move forward: "marker" now only matches the second line.
	l2, err := m.WaitFor(context.Background(), regexp.MustCompile(`marker`), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if l2.Text != "second marker" || l2.At < l.At {
		t.Errorf("second wait got %+v after %+v", l2, l)
	}
	e, err := m.WaitPowerOff(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !e.PoweredOff || e.Code != 0 || e.Panicked || e.Killed {
		t.Errorf("exit %+v", e)
	}
	// QEMU's stderr is in the log and the tail, but not among console lines.
	for _, l := range m.Lines() {
		if strings.Contains(l.Text, "warning: fake") {
			t.Errorf("QEMU stderr line among console lines: %q", l.Text)
		}
	}
	if len(m.Lines()) != 5 || len(echoed) != 5 {
		t.Errorf("%d lines, %d echoed; want 5", len(m.Lines()), len(echoed))
	}
	if !strings.Contains(m.Tail(30), "qemu: qemu-system-x86_64: warning: fake") {
		t.Errorf("tail lacks QEMU's stderr:\n%s", m.Tail(30))
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	log, err := os.ReadFile(m.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^\[ +\d+\.\d{3}\] KHIBVM:booted uptime=0\.50$`).Match(log) {
		t.Errorf("log lacks a time-prefixed line:\n%s", log)
	}
	if !strings.Contains(string(log), "# guest powered off") {
		t.Errorf("log lacks the exit summary:\n%s", log)
	}
	figs := Figures(m.Lines())
	want := map[string]any{"uptime": 0.5, "pages": int64(42), "ratio": 1.5, "name": "x"}
	for k, v := range want {
		if figs[k] != v {
			t.Errorf("figure %s = %#v, want %#v (all %v)", k, figs[k], v, figs)
		}
	}
	if _, ok := figs["booted"]; !ok {
		t.Errorf("bare marker not recorded: %v", figs)
	}
}

func TestWaitForAfterExit(t *testing.T) {
	m := startT(t, fakeConfig(t, "poweroff"))
	if _, err := m.Wait(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	// Lines that arrived before the wait started still count.
	if _, err := m.WaitFor(context.Background(), regexp.MustCompile(`Linux version`), time.Second); err != nil {
		t.Fatal(err)
	}
	_, err := m.WaitFor(context.Background(), regexp.MustCompile(`never`), 5*time.Second)
	var ce *ConsoleError
	if !errors.As(err, &ce) {
		t.Fatalf("got %v, want a ConsoleError", err)
	}
	if !strings.Contains(ce.Msg, "guest powered off") || !strings.Contains(ce.Msg, "/never/") ||
		ce.LogPath != m.LogPath() || !strings.Contains(ce.Tail, "reboot: Power down") {
		t.Errorf("error %q lacks the exit, the pattern, the log or the tail", err)
	}
}

func TestPanic(t *testing.T) {
	m := startT(t, fakeConfig(t, "panic"))
	_, err := m.WaitFor(context.Background(), regexp.MustCompile(`KHIBVM:booted`), 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "panicked") || !strings.Contains(err.Error(), "Attempted to kill init") {
		t.Fatalf("panic not reported with the tail: %v", err)
	}
	e, err := m.WaitPowerOff(time.Second)
	if err == nil || !e.Panicked || e.PoweredOff {
		t.Fatalf("WaitPowerOff after panic: %+v, %v", e, err)
	}
}

func TestQEMUFails(t *testing.T) {
	m := startT(t, fakeConfig(t, "fail"))
	e, err := m.Wait(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if e.Code != 1 || e.PoweredOff {
		t.Errorf("exit %+v", e)
	}
	if !strings.Contains(m.Tail(5), "Could not open") {
		t.Errorf("tail lacks QEMU's error: %q", m.Tail(5))
	}
}

func TestPartialLine(t *testing.T) {
	m := startT(t, fakeConfig(t, "partial"))
	if _, err := m.WaitFor(context.Background(), regexp.MustCompile(`at the end$`), 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// A zombie is dead for our purposes; its parent just has not reaped it.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) && s[i+2] == 'Z' {
		return false
	}
	return true
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if !alive(pid) {
			return
		}
	}
	t.Errorf("process %d still alive", pid)
}

func hangPids(t *testing.T, m *Machine) (qemu, child int) {
	t.Helper()
	l, err := m.WaitFor(context.Background(), regexp.MustCompile(`^child \d+`), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	child, _ = strconv.Atoi(strings.TrimPrefix(l.Text, "child "))
	if _, err := m.WaitFor(context.Background(), regexp.MustCompile(`^pid \d+`), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	return m.Pid(), child
}

func TestTimeoutAndClose(t *testing.T) {
	m := startT(t, fakeConfig(t, "hang"))
	qemu, child := hangPids(t, m)
	t0 := time.Now()
	_, err := m.WaitFor(context.Background(), regexp.MustCompile(`login:`), 300*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "timed out after 300ms waiting for /login:/") ||
		!strings.Contains(err.Error(), m.LogPath()) {
		t.Fatalf("timeout error %v", err)
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Errorf("timeout took %v", d)
	}
	if _, err := m.Wait(100 * time.Millisecond); err == nil {
		t.Fatal("Wait on a hung machine returned")
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	e := m.Exit()
	if !e.Killed || e.PoweredOff || e.Signal == "" {
		t.Errorf("exit after Close: %+v", e)
	}
	waitGone(t, qemu)
	waitGone(t, child) // the group kill took QEMU's child too
}

func TestContextCancelKills(t *testing.T) {
	cfg := fakeConfig(t, "hang")
	ctx, cancel := context.WithCancel(context.Background())
	m, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	qemu, child := hangPids(t, m)
	cancel()
	e, err := m.Wait(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !e.Killed {
		t.Errorf("exit %+v", e)
	}
	waitGone(t, qemu)
	waitGone(t, child)
}

func TestWaitForContext(t *testing.T) {
	m := startT(t, fakeConfig(t, "hang"))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := m.WaitFor(ctx, regexp.MustCompile(`never`), time.Minute)
	if err == nil || !strings.Contains(err.Error(), "deadline exceeded") {
		t.Fatalf("got %v", err)
	}
}

func TestConcurrentWaiters(t *testing.T) {
	m := startT(t, fakeConfig(t, "slow"))
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := m.WaitFor(context.Background(), regexp.MustCompile(`tick`), 5*time.Second)
			errs <- err
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.Wait(5 * time.Second); err != nil {
		t.Fatal(err)
	}
}

// TestRepeatedStart checks that machines can follow each other, as a resume
// test boots a second QEMU on the disks the first one left.
func TestRepeatedStart(t *testing.T) {
	cfg := fakeConfig(t, "poweroff")
	disk := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(disk, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.Disks = []Disk{{Path: disk}}
	for i := range 3 {
		m, err := Start(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.WaitPowerOff(5 * time.Second); err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
		m.Close()
	}
}

func TestStartErrors(t *testing.T) {
	cfg := fakeConfig(t, "poweroff")
	bad := cfg
	bad.Kernel = "/nonexistent/bzImage"
	if _, err := Start(context.Background(), bad); err == nil || !strings.Contains(err.Error(), "kernel") {
		t.Errorf("missing kernel: %v", err)
	}
	bad = cfg
	bad.Disks = []Disk{{Path: "/nonexistent.img"}}
	if _, err := Start(context.Background(), bad); err == nil {
		t.Error("missing disk accepted")
	}
	bad = cfg
	bad.Accel = "hvf"
	if _, err := Start(context.Background(), bad); err == nil {
		t.Error("unknown accel accepted")
	}
	bad = cfg
	bad.QEMU = "/nonexistent/qemu"
	if _, err := Start(context.Background(), bad); err == nil {
		t.Error("missing QEMU accepted")
	}
}

func TestAccelEnv(t *testing.T) {
	t.Setenv(AccelEnv, "kvm")
	if a, err := ResolveAccel(context.Background(), Config{}); err != nil || a != "kvm" {
		t.Errorf("env kvm: %q %v", a, err)
	}
	if a, err := ResolveAccel(context.Background(), Config{Accel: "tcg"}); err != nil || a != "tcg" {
		t.Errorf("explicit tcg under env kvm: %q %v", a, err)
	}
	t.Setenv(AccelEnv, "bogus")
	if _, err := ResolveAccel(context.Background(), Config{}); err == nil {
		t.Error("bogus env accepted")
	}
}

// TestParentDeath kills a process that started a machine and checks that
// QEMU dies with it, as happens when a test binary panics or is killed.
func TestParentDeath(t *testing.T) {
	if os.Getenv("KHIB_VM_HELPER") == "1" {
		return // in the helper this test is a no-op; TestMain runs it
	}
	cfg := fakeConfig(t, "hang")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "KHIB_VM_HELPER=1", "HELPER_QEMU="+cfg.QEMU, "HELPER_KERNEL="+cfg.Kernel,
		"HELPER_LOG="+filepath.Join(t.TempDir(), "helper.log"))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var qemu, child int
	if _, err := fmt.Fscan(out, &qemu, &child); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("helper: %v", err)
	}
	if !alive(qemu) {
		t.Fatalf("QEMU %d not running in the helper", qemu)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	waitGone(t, qemu)
	// The child escapes Pdeathsig (it is QEMU's, not ours); with a real
	// QEMU there is none. Clean it up.
	syscall.Kill(child, syscall.SIGKILL)
}

func TestMain(m *testing.M) {
	if os.Getenv("KHIB_VM_HELPER") == "1" {
		os.Setenv("FAKE_MODE", "hang")
		mach, err := Start(context.Background(), Config{Kernel: os.Getenv("HELPER_KERNEL"), QEMU: os.Getenv("HELPER_QEMU"), Accel: "tcg",
			ConsoleLog: os.Getenv("HELPER_LOG")})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		l, err := mach.WaitFor(context.Background(), regexp.MustCompile(`^child`), 5*time.Second)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(mach.Pid(), strings.TrimPrefix(l.Text, "child "))
		time.Sleep(time.Hour) // wait to be killed, deliberately without Close
	}
	os.Exit(m.Run())
}

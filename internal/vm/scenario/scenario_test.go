package scenario

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/khib/khib/internal/vm"
)

const fakeQEMU = `#!/bin/sh
case "$FAKE_MODE" in
hang) echo "started"; exec sleep 1000 ;;
*) printf 'KHIBVM:booted uptime=0.5 pages=7\r\nreboot: Power down\r\n'; exit 0 ;;
esac
`

// fakeEnv points khib-vm's machines at a fake QEMU and returns Options with
// a dummy kernel.
func fakeEnv(t *testing.T, mode string) Options {
	t.Helper()
	dir := t.TempDir()
	q := filepath.Join(dir, "qemu")
	if err := os.WriteFile(q, []byte(fakeQEMU), 0o755); err != nil {
		t.Fatal(err)
	}
	k := filepath.Join(dir, "bzImage")
	if err := os.WriteFile(k, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KHIB_QEMU", q)
	t.Setenv("FAKE_MODE", mode)
	return Options{Kernel: k, BinDir: dir, Accel: "tcg"}
}

var registrations int // -count=N runs TestRegistry N times in one registry

func TestRegistry(t *testing.T) {
	registrations++
	name := "zz-test-" + strconv.Itoa(registrations)
	Register(Scenario{Name: name, Description: "d", Run: func(context.Context, *Env) (Result, error) { return nil, nil }})
	if _, ok := Lookup(name); !ok {
		t.Fatal("registered scenario not found")
	}
	all := All()
	if all[len(all)-1].Name != name {
		t.Errorf("All not sorted: %v", all)
	}
	defer func() {
		if recover() == nil {
			t.Error("duplicate registration accepted")
		}
	}()
	Register(Scenario{Name: name, Run: all[0].Run})
}

func TestRunOK(t *testing.T) {
	opts := fakeEnv(t, "poweroff")
	s := Scenario{Name: "fake-ok", Run: func(ctx context.Context, env *Env) (Result, error) {
		m, err := env.Start(ctx, "one", env.Config())
		if err != nil {
			return nil, err
		}
		if _, err := m.WaitPowerOff(5 * time.Second); err != nil {
			return nil, err
		}
		if _, err := os.Stat(env.Path("one.console.log")); err != nil {
			return nil, err
		}
		return Result{"scenario": "spoof", "x": 1}.Merge(Figures(m)), nil
	}}
	rep := Run(context.Background(), s, opts, t.TempDir(), t.Logf)
	if !rep.OK || rep.Err != nil {
		t.Fatalf("report %+v", rep)
	}
	line := rep.JSON()
	if !strings.HasPrefix(string(line), `{"scenario":"fake-ok","ok":true,"error":""`) || strings.Contains(string(line), "\n") {
		t.Errorf("JSON line %s", line)
	}
	var got map[string]any
	if err := json.Unmarshal(line, &got); err != nil {
		t.Fatal(err)
	}
	if got["scenario"] != "fake-ok" || got["x"] != 1.0 || got["pages"] != 7.0 || got["accel"] != "tcg" {
		t.Errorf("decoded %v", got)
	}
}

func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return !(i >= 0 && i+2 < len(s) && s[i+2] == 'Z')
}

func TestRunPanicKillsMachines(t *testing.T) {
	opts := fakeEnv(t, "hang")
	var pid int
	s := Scenario{Name: "fake-panic", Run: func(ctx context.Context, env *Env) (Result, error) {
		m, err := env.Start(ctx, "hung", env.Config())
		if err != nil {
			return nil, err
		}
		if _, err := m.WaitFor(ctx, regexp.MustCompile("started"), 5*time.Second); err != nil {
			return nil, err
		}
		pid = m.Pid()
		panic("boom")
	}}
	rep := Run(context.Background(), s, opts, t.TempDir(), t.Logf)
	if rep.OK || rep.Err == nil || !strings.Contains(rep.Err.Error(), "panicked: boom") {
		t.Fatalf("report %+v", rep)
	}
	if pid == 0 || alive(pid) {
		t.Errorf("QEMU %d survived the scenario's panic", pid)
	}
	var got map[string]any
	if err := json.Unmarshal(rep.JSON(), &got); err != nil {
		t.Fatal(err)
	}
	if e := got["error"].(string); strings.Contains(e, "goroutine") || !strings.Contains(e, "boom") {
		t.Errorf("JSON error %q", e)
	}
	if got["console_log"] == "" || rep.Tail == "" {
		t.Errorf("no console for a failure outside the console: %v", got)
	}
}

func TestRunTimeout(t *testing.T) {
	opts := fakeEnv(t, "hang")
	opts.Timeout = 300 * time.Millisecond
	var pid int
	s := Scenario{Name: "fake-timeout", Run: func(ctx context.Context, env *Env) (Result, error) {
		m, err := env.Start(ctx, "hung", env.Config())
		if err != nil {
			return nil, err
		}
		pid = m.Pid()
		_, err = m.WaitFor(ctx, regexp.MustCompile("never"), env.Remaining())
		return nil, err
	}}
	rep := Run(context.Background(), s, opts, t.TempDir(), t.Logf)
	if rep.OK || !strings.Contains(rep.Err.Error(), "timed out") {
		t.Fatalf("report %+v", rep)
	}
	var ce *vm.ConsoleError
	if !errors.As(rep.Err, &ce) || rep.ConsoleLog != ce.LogPath {
		t.Errorf("console log not reported: %+v", rep)
	}
	if j := string(rep.JSON()); strings.Contains(j, "last console lines") {
		t.Errorf("JSON carries the tail: %s", j)
	}
	for deadline := time.Now().Add(5 * time.Second); alive(pid) && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	if alive(pid) {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Errorf("QEMU %d survived the timeout", pid)
	}
}

func TestEnvHelpers(t *testing.T) {
	dir := t.TempDir()
	env := &Env{Options: Options{BinDir: dir}, WorkDir: dir, Logf: t.Logf}
	if _, err := env.Bin("khib"); err == nil || !strings.Contains(err.Error(), "make bins") {
		t.Errorf("missing binary: %v", err)
	}
	p, err := env.NewDisk("d.img", 3)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(p); err != nil || fi.Size() != 3<<20 {
		t.Errorf("disk %v %v", fi, err)
	}
}

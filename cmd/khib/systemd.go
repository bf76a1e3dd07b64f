package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/khib/khib/internal/config"
	"github.com/khib/khib/internal/helper"
)

// sleepHookDirs are where systemd-sleep's hooks live. systemd 252 (Debian
// 12) runs only SYSTEM_SLEEP_PATH, /lib/systemd/system-sleep, which is
// /usr/lib/systemd/system-sleep on a merged-/usr system; later systemd
// versions also read /etc/systemd/system-sleep, where an entry overrides
// (or, as a symlink to /dev/null, masks) one of the same name. khib reads
// all of them, earlier directories winning, each directory once.
var sleepHookDirs = []string{"/etc/systemd/system-sleep", "/usr/lib/systemd/system-sleep", "/lib/systemd/system-sleep"}

// sleepHookTimeout is systemd-sleep's DEFAULT_TIMEOUT_USEC for its hooks.
const sleepHookTimeout = 90 * time.Second

// sleepHooks lists the executables of dirs by name, in name order, as
// systemd's execute_directories does.
func sleepHooks(dirs []string) []string {
	byName := map[string]string{}
	seenDir := map[string]bool{}
	for _, d := range dirs {
		real, err := filepath.EvalSymlinks(d)
		if err != nil || seenDir[real] {
			continue
		}
		seenDir[real] = true
		ents, err := os.ReadDir(d)
		if err != nil {
			continue
		}
		for _, e := range ents {
			name := e.Name()
			if _, dup := byName[name]; dup || name[0] == '.' {
				continue
			}
			p := filepath.Join(d, name)
			if t, err := os.Readlink(p); err == nil && t == "/dev/null" {
				byName[name] = "" // masked
				continue
			}
			st, err := os.Stat(p)
			if err != nil || !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
				continue
			}
			byName[name] = p
		}
	}
	var out []string
	for _, p := range byName {
		if p != "" {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b string) int { return cmp.Compare(filepath.Base(a), filepath.Base(b)) })
	return out
}

// runSleepHooks runs every hook with "pre"/"post" and "hibernate", in
// parallel, as systemd-sleep does, and waits for all of them. A failing
// hook is reported on log and otherwise ignored (EXEC_DIR_IGNORE_ERRORS).
func runSleepHooks(hooks []string, phase string, timeout time.Duration, out io.Writer) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, h := range hooks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			cmd := exec.CommandContext(ctx, h, phase, sleepAction)
			cmd.Env = append(os.Environ(), "SYSTEMD_SLEEP_ACTION="+sleepAction)
			cmd.Stdout, cmd.Stderr = out, out
			err := cmd.Run()
			if ctx.Err() != nil {
				err = fmt.Errorf("killed after %.0f s", timeout.Seconds())
			}
			if err != nil {
				mu.Lock()
				fmt.Fprintf(out, "khib: sleep hook %s %s %s failed: %v (ignored, as systemd-sleep does)\n", h, phase, sleepAction, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

// hibernateSystemd is khib hibernate --systemd, what systemd-hibernate.service
// runs in place of systemd-sleep hibernate (khib's drop-in). It does
// systemd-sleep's part around the hibernation: the system-sleep hooks before
// and after, and log lines for the journal. logind has already sent
// PrepareForSleep(true) before starting hibernate.target, and sends
// PrepareForSleep(false) when the job ends (logind-dbus.c: match_job_removed).
// A failure exits 1 with the reason; systemd then marks the unit failed.
func hibernateSystemd(res *hibernateResult, run func() error, kernel string) int {
	hooks := sleepHooks(sleepHookDirs)
	if thenSuspend {
		fmt.Printf("khib: entering hybrid sleep: saving memory to %s, then suspending to RAM\n", res.Target)
	} else {
		fmt.Printf("khib: entering hibernation: saving memory to %s\n", res.Target)
	}
	runSleepHooks(hooks, "pre", sleepHookTimeout, os.Stdout)
	err := run()
	switch {
	case err != nil:
		fmt.Printf("khib: hibernation failed, this system keeps running: %v\n", err)
	case res.resumedFromDisk():
		fmt.Printf("khib: system resumed from %s after %.1f s away\n", res.Target, res.AwayS)
	case res.wokeFromSuspend():
		fmt.Printf("khib: system woke after %.1f s asleep; the image on %s was not needed and is marked used\n", res.Figures["slept_s"], res.Target)
	default:
		fmt.Printf("khib: system back after %.1f s (the image was saved, nothing powered off)\n", res.AwayS)
	}
	runSleepHooks(hooks, "post", sleepHookTimeout, os.Stdout)
	if err != nil {
		return fail("hibernate: %v", err)
	}
	// A helper armed before hibernating is gone after a resume from disk:
	// arm it again so that the next hibernation is as quick.
	if res.resumedFromDisk() && strings.Contains(res.Mode, "armed") {
		if err := rearm(kernel); err != nil {
			fmt.Printf("khib: warning: re-arming the helper: %v (khib arm does it by hand)\n", err)
		} else {
			fmt.Println("khib: helper armed again")
		}
	}
	return 0
}

func rearm(kernel string) error {
	st, booted, err := helper.Ready(helper.Options{Kernel: kernel}, false)
	if err != nil {
		return err
	}
	if booted {
		_, err = helper.RoundTrip(st)
	}
	return err
}

// loadConfig reads /etc/khib.conf. A missing file is no error: cfg is then
// nil and the built-in defaults apply.
func loadConfig() (*config.Config, error) {
	cfg, err := config.Load(config.Path)
	if errors.Is(err, config.ErrNoFile) {
		return nil, nil
	}
	return cfg, err
}

// defaultHelperKernel is the helper kernel when no --kernel is given:
// helper_kernel of /etc/khib.conf if it says, else the built-in choice.
func defaultHelperKernel() string {
	if cfg, err := loadConfig(); err == nil && cfg != nil {
		return cfg.HelperKernel
	}
	return helper.DefaultKernel()
}

package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The appender writes "N\n" for N = last+1, last+2, ... to a file, one
// line every 20 ms, continuing after the last line already there. A file
// appended to across a hibernation must still read as 1..N afterwards.

func appendStart(dir, file string) error {
	if file == "" {
		return errors.New("append-start: --file is required")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	cmd := exec.Command("/proc/self/exe", "appender", "--file", file)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting appender: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "appender.pid"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		return err
	}
	fmt.Printf("appender: pid %d appends to %s\n", cmd.Process.Pid, file)
	return nil
}

func appender(file string) error {
	n, err := appendCheck(file)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM)
	tick := time.NewTicker(20 * time.Millisecond)
	for {
		select {
		case <-stop:
			return f.Sync()
		case <-tick.C:
			n++
			if _, err := f.WriteString(strconv.Itoa(n) + "\n"); err != nil {
				return err
			}
		}
	}
}

// appendCheck returns N if file holds exactly the lines 1..N.
func appendCheck(file string) (int, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	// The appender may be between a line's digits and its newline.
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[:i+1]
	} else {
		b = nil
	}
	s := bufio.NewScanner(bytes.NewReader(b))
	n := 0
	for s.Scan() {
		n++
		if got := strings.TrimSpace(s.Text()); got != strconv.Itoa(n) {
			return n, fmt.Errorf("%s: line %d is %q", file, n, got)
		}
	}
	return n, s.Err()
}

func appendStop(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, "appender.pid"))
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(string(b))
	if err != nil {
		return err
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return fmt.Errorf("appender pid %d: %w", pid, err)
	}
	for i := 0; i < 250; i++ {
		// Gone, or a zombie: the shell that is init here may not reap it.
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return nil
		}
		if f := strings.Fields(string(st)); len(f) > 2 && f[2] == "Z" {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("appender pid %d did not stop", pid)
}

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

	"golang.org/x/sys/unix"
)

// The appender writes "N\n" for N = last+1, last+2, ... to a file, one
// line every 20 ms, continuing after the last line already there. A file
// appended to across a hibernation must still read as 1..N afterwards.
//
// With an acknowledgement file (--ack, the console in the rig) it is a
// write-heavy workload with a durability promise: each line is a record
// of about a KiB, "N " and filler; it is fdatasync'ed, and only then is
// "khib-ack N" written to the ack file. Meanwhile a second writer keeps
// rewriting a bulk file next to it, without syncing, so that the page
// cache and the journal are busy whenever a hibernation or a power cut
// comes. Every acknowledged N must be in the file after anything at all.

// ackRecordBytes is the length of an acknowledged record, newline included.
const ackRecordBytes = 1024

func appendStart(dir, file, ack string) error {
	if file == "" {
		return errors.New("append-start: --file is required")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	args := []string{"appender", "--file", file}
	if ack != "" {
		args = append(args, "--ack", ack)
	}
	cmd := exec.Command("/proc/self/exe", args...)
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

func appender(file, ack string) error {
	n, err := appendCheck(file)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	var acks *os.File
	period := 20 * time.Millisecond
	if ack != "" {
		if acks, err = os.OpenFile(ack, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644); err != nil {
			return err
		}
		defer acks.Close()
		period = 10 * time.Millisecond
		go bulkWriter(filepath.Join(filepath.Dir(file), "bulk"))
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM)
	tick := time.NewTicker(period)
	for {
		select {
		case <-stop:
			return f.Sync()
		case <-tick.C:
			n++
			if acks == nil {
				if _, err := f.WriteString(strconv.Itoa(n) + "\n"); err != nil {
					return err
				}
				continue
			}
			if _, err := f.Write(ackRecord(n)); err != nil {
				return err
			}
			if err := unix.Fdatasync(int(f.Fd())); err != nil {
				return fmt.Errorf("fdatasync %s: %w", file, err)
			}
			if _, err := fmt.Fprintf(acks, "khib-ack %d\n", n); err != nil {
				return err
			}
		}
	}
}

// ackRecord is record n: "n " and filler up to ackRecordBytes with the
// newline.
func ackRecord(n int) []byte {
	b := make([]byte, 0, ackRecordBytes)
	b = strconv.AppendInt(b, int64(n), 10)
	b = append(b, ' ')
	for len(b) < ackRecordBytes-1 {
		b = append(b, byte('a'+(n+len(b))%26))
	}
	return append(b, '\n')
}

// bulkWriter rewrites an 8 MiB file at path in 256 KiB pieces, for ever,
// never syncing: dirty page cache and journal traffic beside the
// acknowledged appends.
func bulkWriter(path string) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		fmt.Fprintf(os.Stderr, "khib-workload: bulk writer: %v\n", err)
		return
	}
	buf := make([]byte, 256<<10)
	for i := 0; ; i++ {
		for j := range buf {
			buf[j] = byte(i + j>>12)
		}
		off := int64(i%32) * int64(len(buf))
		if _, err := f.WriteAt(buf, off); err != nil {
			fmt.Fprintf(os.Stderr, "khib-workload: bulk writer: %v\n", err)
			return
		}
		time.Sleep(50 * time.Millisecond)
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
		// A record is "N" alone, or "N filler" (--ack).
		got, _, _ := strings.Cut(strings.TrimSpace(s.Text()), " ")
		if got != strconv.Itoa(n) {
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

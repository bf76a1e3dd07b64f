// Command khib-workload is the test workload that khib's VM scenarios run
// in the system being hibernated: a process that holds memory filled with
// a deterministic pattern and keeps a counter going, and that can verify
// both after a jump or a resume.
package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/khib/khib/internal/workload"
)

const usage = `Usage:
  khib-workload start [--mib N] [--seed S] [--mixed] [--dir DIR]
      start the workload in the background and wait until its memory is filled
  khib-workload verify [--dir DIR]
      have the workload check all of its memory and that its counter went on
      since the last verify; exit 1 if not
  khib-workload pfns [--count N] [--dir DIR]
      print N pseudo-randomly chosen workload pages as index:pfn,... so that
      the host can find them in a hibernation image
  khib-workload append-start --file F [--ack ACKFILE] [--dir DIR]
      start appending numbered lines to F in the background (every 20 ms).
      With --ack: 1 KiB records, each fdatasync'ed and then acknowledged
      as "khib-ack N" on ACKFILE (the console, say), every 10 ms, and an
      unsynced bulk writer rewriting F's directory's file "bulk"
  khib-workload append-check --file F
      check that F holds lines 1..N in order and nothing else; print N
  khib-workload append-stop [--dir DIR]
  khib-workload stop [--dir DIR]
  khib-workload runas UID COMMAND [ARG...]
      run COMMAND with the given user and group id (for tests as non-root)
`

// report is what the workload writes after each verification.
type report struct {
	Seq       int     `json:"seq"`
	OK        bool    `json:"ok"`
	Pages     int     `json:"pages"`
	BadPages  int     `json:"bad_pages"`
	FirstBad  int     `json:"first_bad"`
	Counter   uint64  `json:"counter"`
	VerifyS   float64 `json:"verify_s"`
	FillS     float64 `json:"fill_s,omitempty"`
	PID       int     `json:"pid"`
	MiB       int     `json:"mib"`
	Seed      uint64  `json:"seed"`
	Mixed     bool    `json:"mixed"`
	BufferVA  uintptr `json:"buffer_va"`
	StartedAt string  `json:"started_at"`
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	mib := fs.Int("mib", 256, "memory to hold, in MiB")
	seed := fs.Uint64("seed", 1, "pattern seed")
	mixed := fs.Bool("mixed", false, "mix random, text-like, zero and sparse pages (default: all random)")
	garbage := fs.Int("garbage", 0, "start: first fill this many MiB with random bytes and free them, leaving free pages that are not zero")
	dir := fs.String("dir", "/run/khib-workload", "state directory")
	pageOut := fs.Int("page-out", 0, "start: after filling and after every check, page this many MiB of the workload out to swap\n(MADV_PAGEOUT), so that part of it is in swap whenever it is not being checked")
	count := fs.Int("count", 1000, "pfns: how many pages")
	file := fs.String("file", "", "append-*: the file appended to")
	ack := fs.String("ack", "", "append-start: acknowledge each fdatasync'ed record on this file")
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage); fs.PrintDefaults() }
	if os.Args[1] == "runas" {
		os.Exit(runas(os.Args[2:]))
	}
	fs.Parse(os.Args[2:])
	var err error
	switch os.Args[1] {
	case "start":
		err = start(*dir, *mib, *seed, *mixed, *garbage, *pageOut)
	case "serve":
		err = serve(*dir, *mib, *seed, *mixed, *pageOut)
	case "verify":
		err = verify(*dir)
	case "stop":
		err = stop(*dir)
	case "pfns":
		err = pfns(*dir, *count)
	case "append-start":
		err = appendStart(*dir, *file, *ack)
	case "appender":
		err = appender(*file, *ack)
	case "append-check":
		var n int
		if n, err = appendCheck(*file); err == nil {
			fmt.Printf("appender: %s holds lines 1..%d in order\n", *file, n)
		}
	case "append-stop":
		err = appendStop(*dir)
	default:
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "khib-workload: %v\n", err)
		os.Exit(1)
	}
}

func start(dir string, mib int, seed uint64, mixed bool, garbage, pageOut int) error {
	if garbage > 0 {
		if err := leaveGarbage(garbage); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	os.Remove(filepath.Join(dir, "report.json"))
	args := []string{"serve", "--dir", dir, "--mib", strconv.Itoa(mib), "--seed", strconv.FormatUint(seed, 10)}
	if mixed {
		args = append(args, "--mixed")
	}
	if pageOut > 0 {
		args = append(args, "--page-out", strconv.Itoa(pageOut))
	}
	cmd := exec.Command("/proc/self/exe", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	log, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting workload: %w", err)
	}
	r, err := waitReport(dir, 0, 10*time.Minute)
	if err != nil {
		return err
	}
	fmt.Printf("workload: pid %d holds %d MiB (seed %d, mixed %v), filled in %.2f s\n", r.PID, r.MiB, r.Seed, r.Mixed, r.FillS)
	return nil
}

// serve is the workload process itself.
func serve(dir string, mib int, seed uint64, mixed bool, pageOut int) error {
	size := mib << 20
	buf, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("allocating %d MiB: %w", mib, err)
	}
	t0 := time.Now()
	pages := size / workload.PageSize
	for i := 0; i < pages; i++ {
		workload.Fill(buf[i*workload.PageSize:(i+1)*workload.PageSize], seed, uint64(i), mixed)
	}
	fill := time.Since(t0)
	// Part of the workload goes to swap, and back there after each
	// check, which swaps it in (the test of a swap target needs pages
	// in swap when the system hibernates).
	out := buf[:min(pageOut<<20, size)]
	pageOutNow := func() {
		if len(out) > 0 {
			if err := unix.Madvise(out, unix.MADV_PAGEOUT); err != nil {
				fmt.Fprintf(os.Stderr, "page-out: %v\n", err)
			}
		}
	}
	pageOutNow()

	var counter atomic.Uint64
	go func() {
		for range time.Tick(10 * time.Millisecond) {
			counter.Add(1)
		}
	}()
	rep := report{PID: os.Getpid(), MiB: mib, Seed: seed, Mixed: mixed, Pages: pages, FirstBad: -1, OK: true,
		FillS: fill.Seconds(), BufferVA: uintptrOf(buf), StartedAt: time.Now().UTC().Format(time.RFC3339)}
	if err := writeReport(dir, &rep); err != nil {
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGTERM)
	scratch := make([]byte, workload.PageSize)
	for s := range sig {
		if s == syscall.SIGTERM {
			return nil
		}
		if s == syscall.SIGUSR2 {
			if err := writePFNs(dir, buf); err != nil {
				fmt.Fprintf(os.Stderr, "pfns: %v\n", err)
			}
			continue
		}
		t := time.Now()
		rep.Seq++
		rep.BadPages, rep.FirstBad = 0, -1
		for i := 0; i < pages; i++ {
			if !workload.Check(buf[i*workload.PageSize:(i+1)*workload.PageSize], seed, uint64(i), mixed, scratch) {
				if rep.FirstBad < 0 {
					rep.FirstBad = i
				}
				rep.BadPages++
			}
		}
		rep.OK = rep.BadPages == 0
		rep.Counter = counter.Load()
		rep.VerifyS = time.Since(t).Seconds()
		pageOutNow()
		if err := writeReport(dir, &rep); err != nil {
			return err
		}
	}
	return nil
}

func verify(dir string) error {
	last, err := readReport(dir)
	if err != nil {
		return fmt.Errorf("no workload running (%w)", err)
	}
	if err := syscall.Kill(last.PID, syscall.SIGUSR1); err != nil {
		return fmt.Errorf("workload pid %d is gone: %w", last.PID, err)
	}
	r, err := waitReport(dir, last.Seq+1, 10*time.Minute)
	if err != nil {
		return err
	}
	if !r.OK {
		return fmt.Errorf("memory check FAILED: %d of %d pages differ, first at page %d", r.BadPages, r.Pages, r.FirstBad)
	}
	if last.Seq > 0 && r.Counter <= last.Counter {
		return fmt.Errorf("counter did not go on: %d, was %d", r.Counter, last.Counter)
	}
	fmt.Printf("workload: verified %d MiB in %.2f s, counter %d (was %d)\n", r.MiB, r.VerifyS, r.Counter, last.Counter)
	return nil
}

func stop(dir string) error {
	r, err := readReport(dir)
	if err != nil {
		return err
	}
	return syscall.Kill(r.PID, syscall.SIGTERM)
}

func writeReport(dir string, r *report) error {
	b, _ := json.Marshal(r)
	tmp := filepath.Join(dir, "report.json.tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, "report.json"))
}

func readReport(dir string) (*report, error) {
	b, err := os.ReadFile(filepath.Join(dir, "report.json"))
	if err != nil {
		return nil, err
	}
	var r report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

func waitReport(dir string, seq int, timeout time.Duration) (*report, error) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if r, err := readReport(dir); err == nil && r.Seq >= seq {
			return r, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil, errors.New("workload did not answer in time; see " + filepath.Join(dir, "log"))
}

func runas(args []string) int {
	if len(args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		return 2
	}
	id, err := strconv.Atoi(args[0])
	if err != nil {
		fmt.Fprintf(os.Stderr, "khib-workload runas: bad uid %q\n", args[0])
		return 2
	}
	cmd := exec.Command(args[1], args[2:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(id), Gid: uint32(id)}}
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		fmt.Fprintf(os.Stderr, "khib-workload runas: %v\n", err)
		return 1
	}
	return 0
}

// writePFNs records where every page of the buffer is in physical memory
// (from /proc/self/pagemap; needs root), one PFN per page, 0 if absent.
func writePFNs(dir string, buf []byte) error {
	pm, err := os.Open("/proc/self/pagemap")
	if err != nil {
		return err
	}
	defer pm.Close()
	pages := len(buf) / workload.PageSize
	ents := make([]byte, 8*pages)
	if _, err := pm.ReadAt(ents, int64(uintptrOf(buf)/workload.PageSize)*8); err != nil {
		return fmt.Errorf("reading pagemap: %w", err)
	}
	out := make([]byte, 0, 8*pages)
	for i := 0; i < pages; i++ {
		e := binary.LittleEndian.Uint64(ents[8*i:])
		pfn := uint64(0)
		if e&(1<<63) != 0 {
			pfn = e & (1<<55 - 1)
		}
		out = binary.LittleEndian.AppendUint64(out, pfn)
	}
	tmp := filepath.Join(dir, "pfns.tmp")
	if err := os.WriteFile(tmp, out, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, "pfns"))
}

// pfns asks the workload for its page frames and prints count of them,
// chosen pseudo-randomly, as index:pfn pairs.
func pfns(dir string, count int) error {
	r, err := readReport(dir)
	if err != nil {
		return fmt.Errorf("no workload running (%w)", err)
	}
	os.Remove(filepath.Join(dir, "pfns"))
	if err := syscall.Kill(r.PID, syscall.SIGUSR2); err != nil {
		return err
	}
	var b []byte
	for i := 0; i < 500; i++ {
		if b, err = os.ReadFile(filepath.Join(dir, "pfns")); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("workload wrote no pfns: %w", err)
	}
	pages := len(b) / 8
	if pages == 0 {
		return errors.New("workload has no pages")
	}
	var sb strings.Builder
	x := uint64(0x9e3779b97f4a7c15)
	for i := 0; i < count; i++ {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		idx := int(x % uint64(pages))
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, "%d:%d", idx, binary.LittleEndian.Uint64(b[8*idx:]))
	}
	fmt.Println(sb.String())
	return nil
}

// leaveGarbage fills memory with random bytes and frees it, so that A has
// free pages whose content is not zero, as on any machine that has run a
// while. A hibernation that saved free pages would store them all.
func leaveGarbage(mib int) error {
	b, err := unix.Mmap(-1, 0, mib<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("garbage: %w", err)
	}
	for i := 0; i < len(b)/workload.PageSize; i++ {
		workload.Fill(b[i*workload.PageSize:(i+1)*workload.PageSize], 0xdead, uint64(i), false)
	}
	return unix.Munmap(b)
}

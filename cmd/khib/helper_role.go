package main

import (
	"bufio"
	"os"
	"strconv"
	"strings"

	"github.com/khib/khib/internal/kexec"
)

// runHelper is the helper kernel's role: it reports where it runs, then
// kexec-jumps back to A. Each time A jumps in again, the jump returns here
// and the helper reports and jumps back once more: A and the helper
// behave as coroutines.
func runHelper(params map[string]string) {
	jb, err := strconv.ParseUint(strings.TrimPrefix(params["khib.jumpback"], "0x"), 16, 64)
	if err != nil || jb == 0 {
		console("khib-helper: error: no jump-back entry on the command line (%q); cannot return to A", params["khib.jumpback"])
		return
	}
	console("khib-helper: up, jump-back entry %#x", jb)
	reportRAM()
	// One segment at the jump-back page, holding that page's own bytes:
	// the helper's identity map for the jump covers only its own RAM plus
	// the loaded segments (machine_kexec_64.c: init_pgtable), and A's
	// re-entry code lives in that page.
	page := jb &^ (kexec.PageSize - 1)
	buf, err := kexec.ReadPhys(page, kexec.PageSize)
	if err != nil {
		console("khib-helper: error: reading A's jump-back page: %v", err)
		return
	}
	if err := kexec.Load(jb, []kexec.Segment{{Name: "jump-back page", Buf: buf, Mem: page, Memsz: kexec.PageSize}}, true); err != nil {
		console("khib-helper: error: loading the jump back to A: %v", err)
		return
	}
	for n := 1; ; n++ {
		console("khib-helper: jumping back to A")
		if err := kexec.Jump(); err != nil {
			console("khib-helper: error: jumping back to A: %v", err)
			return
		}
		console("khib-helper: resumed by A (entry %d)", n+1)
		reportRAM()
	}
}

// reportRAM prints the helper's System RAM as its own /proc/iomem shows
// it, which must lie inside R and the low window only.
func reportRAM() {
	f, err := os.Open("/proc/iomem")
	if err != nil {
		console("khib-helper: cannot read /proc/iomem: %v", err)
		return
	}
	defer f.Close()
	var ram []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		line := s.Text()
		if !strings.HasPrefix(line, " ") && strings.HasSuffix(line, " : System RAM") {
			ram = append(ram, strings.TrimSuffix(line, " : System RAM"))
		}
	}
	console("khib-helper: System RAM %s", strings.Join(ram, " "))
}

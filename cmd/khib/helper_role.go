package main

import (
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/khib/khib/internal/helper"
	"github.com/khib/khib/internal/kexec"
	"github.com/khib/khib/internal/mailbox"
)

// helperEnv is what the helper learns from its command line.
type helperEnv struct {
	jumpBack uint64
	mailbox  uint64
	token    mailbox.Token
	region   kexec.Range // R, which A's loader placed the helper in
	key      []byte      // the master key of the encrypted save under way, from the mailbox
	// up is how long the helper's kernel took to boot to khib; a parked
	// helper resumed later keeps its first boot's (saves never use one).
	up time.Duration
}

func parseHelperParams(params map[string]string) (*helperEnv, error) {
	var h helperEnv
	var err error
	if h.jumpBack, err = strconv.ParseUint(strings.TrimPrefix(params["khib.jumpback"], "0x"), 16, 64); err != nil || h.jumpBack == 0 {
		return nil, fmt.Errorf("no jump-back entry on the command line (%q)", params["khib.jumpback"])
	}
	if h.mailbox, err = strconv.ParseUint(strings.TrimPrefix(params["khib.mailbox"], "0x"), 16, 64); err != nil {
		return nil, fmt.Errorf("no mailbox address on the command line (%q)", params["khib.mailbox"])
	}
	tok, err := hex.DecodeString(params["khib.token"])
	if err != nil || len(tok) != len(h.token) {
		return nil, fmt.Errorf("no mailbox token on the command line")
	}
	copy(h.token[:], tok)
	a, b, ok := strings.Cut(params["khib.region"], "-")
	start, err1 := strconv.ParseUint(strings.TrimPrefix(a, "0x"), 16, 64)
	end, err2 := strconv.ParseUint(strings.TrimPrefix(b, "0x"), 16, 64)
	if !ok || err1 != nil || err2 != nil || end <= start {
		return nil, fmt.Errorf("no reserved region on the command line (%q)", params["khib.region"])
	}
	h.region = kexec.Range{Start: start, End: end}
	return &h, nil
}

// runHelper is the helper kernel's role. It loads the jump back to A once,
// then serves one request per entry: A writes a request into the mailbox
// and jumps in, the helper answers and jumps back (or powers off after a
// successful save). When A jumps in again, the jump returns here, so A and
// the helper behave as coroutines and a parked helper needs no boot.
func runHelper(params map[string]string) {
	up := upTime()
	h, err := parseHelperParams(params)
	if err != nil {
		console("khib-helper: error: %v; cannot talk to A", err)
		return
	}
	h.up = up
	console("khib-helper: up, jump-back entry %#x", h.jumpBack)
	// One segment at the jump-back page, holding that page's own bytes:
	// the helper's identity map for the jump covers only its own RAM plus
	// the loaded segments (machine_kexec_64.c: init_pgtable), and A's
	// re-entry code lives in that page.
	page := h.jumpBack &^ (kexec.PageSize - 1)
	buf, err := kexec.ReadPhys(page, kexec.PageSize)
	if err != nil {
		console("khib-helper: error: reading A's jump-back page: %v", err)
		return
	}
	if err := kexec.Load(h.jumpBack, []kexec.Segment{{Name: "jump-back page", Buf: buf, Mem: page, Memsz: kexec.PageSize}}, true); err != nil {
		console("khib-helper: error: loading the jump back to A: %v", err)
		return
	}
	for entry := 1; ; entry++ {
		if entry > 1 {
			console("khib-helper: resumed by A (entry %d)", entry)
		}
		reportRAM()
		resp := serve(h)
		if err := writeResponse(h, resp); err != nil {
			console("khib-helper: error: answering A: %v", err)
		}
		if resp.OK && resp.Figures["power_off"] == true {
			console("khib-helper: %s", memoryUse())
			console("khib-helper: image complete; powering off")
			unix.Sync()
			if err := kexec.PowerOff(); err != nil {
				console("khib-helper: power off failed: %v; jumping back to A instead", err)
			}
		}
		if !resp.OK {
			console("khib-helper: error: %s", resp.Error)
		}
		console("khib-helper: jumping back to A")
		if err := kexec.Jump(); err != nil {
			console("khib-helper: error: jumping back to A: %v", err)
			return
		}
	}
}

// serve reads A's request and carries it out.
func serve(h *helperEnv) mailbox.Response {
	page, err := kexec.ReadPhys(h.mailbox, mailbox.Size)
	if err != nil {
		return mailbox.Response{Error: fmt.Sprintf("reading the mailbox: %v", err)}
	}
	req, err := mailbox.GetRequest(page, h.token)
	if err != nil {
		return mailbox.Response{Error: err.Error()}
	}
	// An encrypted save's key comes out of A's page at once, before any
	// of A's memory is saved: the image must not hold its own key, and a
	// jump back must find none in A's RAM.
	if h.key, err = mailbox.TakeKey(page, h.token); err != nil {
		return mailbox.Response{Error: err.Error()}
	}
	defer func() { clear(h.key); h.key = nil }()
	if h.key != nil {
		if err := kexec.WritePhys(h.mailbox, page); err != nil {
			return mailbox.Response{Error: fmt.Sprintf("clearing the key in the mailbox: %v", err)}
		}
	}
	t0 := time.Now()
	var resp mailbox.Response
	switch req.Cmd {
	case mailbox.CmdRoundTrip:
		resp = mailbox.Response{OK: true}
	case mailbox.CmdSave, mailbox.CmdBenchSave:
		resp = save(h, req)
	default:
		resp = mailbox.Response{Error: fmt.Sprintf("unknown request %q", req.Cmd)}
	}
	resp.Seq = req.Seq
	if resp.Figures == nil {
		resp.Figures = map[string]any{}
	}
	resp.Figures["helper_s"] = time.Since(t0).Seconds()
	return resp
}

func writeResponse(h *helperEnv, resp mailbox.Response) error {
	page, err := kexec.ReadPhys(h.mailbox, mailbox.Size)
	if err != nil {
		return err
	}
	if err := mailbox.PutResponse(page, h.token, resp); err != nil {
		return err
	}
	return kexec.WritePhys(h.mailbox, page)
}

// reportRAM prints the helper's System RAM as its own /proc/iomem shows
// it, which must lie inside R and the low window only.
func reportRAM() {
	io, err := helper.ReadIomem()
	if err != nil {
		console("khib-helper: %v", err)
		return
	}
	var ram []string
	for _, r := range io.SystemRAM() {
		// iomem's own notation: hex without 0x, inclusive end.
		ram = append(ram, fmt.Sprintf("%08x-%08x", r.Start, r.End-1))
	}
	console("khib-helper: System RAM %s", strings.Join(ram, " "))
}

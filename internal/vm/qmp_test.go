package vm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const qmpGreeting = `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "fake"}, "capabilities": ["oob"]}}`

// qmpReply is what the fake server answers to one command: raw lines to
// send (with %ID% replaced by the command's id), then optionally a hang-up.
type qmpReply struct {
	lines  []string
	hangup bool
}

// fakeQMP serves one connection the way QEMU's monitor does: greeting,
// then for each command the lines handle returns. Commands other than
// qmp_capabilities before it are refused, as QEMU refuses them. It
// returns the socket path and a channel with every command it got.
func fakeQMP(t *testing.T, greeting string, handle func(cmd string, args json.RawMessage) qmpReply) (string, <-chan string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	got := make(chan string, 100)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if greeting != "" {
			fmt.Fprintln(c, greeting)
		}
		negotiated := false
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			var req struct {
				Execute   string          `json:"execute"`
				Arguments json.RawMessage `json:"arguments"`
				ID        json.RawMessage `json:"id"`
			}
			if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
				fmt.Fprintf(c, `{"error": {"class": "GenericError", "desc": "JSON parse error"}}`+"\n")
				continue
			}
			got <- req.Execute
			id := string(req.ID)
			var r qmpReply
			switch {
			case req.Execute == "qmp_capabilities" && !negotiated:
				negotiated = true
				r = handle(req.Execute, req.Arguments)
				if r.lines == nil && !r.hangup {
					r.lines = []string{`{"return": {}, "id": %ID%}`}
				}
			case !negotiated:
				r.lines = []string{`{"id": %ID%, "error": {"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}`}
			default:
				r = handle(req.Execute, req.Arguments)
			}
			for _, line := range r.lines {
				fmt.Fprintln(c, strings.ReplaceAll(line, "%ID%", id))
			}
			if r.hangup {
				return
			}
		}
	}()
	return sock, got
}

// qemuLike answers the commands the scenarios use roughly as QEMU 7.2
// does on q35 with two virtio drives.
func qemuLike(cmd string, args json.RawMessage) qmpReply {
	switch cmd {
	case "qmp_capabilities":
		return qmpReply{}
	case "query-status":
		return qmpReply{lines: []string{
			`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}`,
			`{"return": {"status": "running", "singlestep": false, "running": true}, "id": %ID%}`,
		}}
	case "device_del":
		return qmpReply{lines: []string{`{"id": %ID%, "error": {"class": "GenericError", "desc": "Bus 'pcie.0' does not support hotplugging"}}`}}
	case "human-monitor-command":
		var a struct {
			CommandLine string `json:"command-line"`
		}
		json.Unmarshal(args, &a)
		if a.CommandLine == "drive_del disk1" {
			return qmpReply{lines: []string{`{"return": "", "id": %ID%}`}}
		}
		return qmpReply{lines: []string{`{"return": "Device 'nosuch' not found\r\n", "id": %ID%}`}}
	case "stale":
		// An answer to an older id first, then ours.
		return qmpReply{lines: []string{`{"return": "old", "id": 999}`, `{"return": "new", "id": %ID%}`}}
	case "garbage":
		return qmpReply{lines: []string{`{"return": `}}
	case "noreturn":
		return qmpReply{lines: []string{`{"id": %ID%}`}}
	case "hangup":
		return qmpReply{hangup: true}
	case "silent":
		return qmpReply{}
	}
	return qmpReply{lines: []string{fmt.Sprintf(`{"id": %%ID%%, "error": {"class": "CommandNotFound", "desc": "The command %s has not been found"}}`, cmd)}}
}

func TestQMPDial(t *testing.T) {
	for _, tc := range []struct {
		name     string
		greeting string
		handle   func(string, json.RawMessage) qmpReply
		want     string // error substring; "" for success
	}{
		{"ok", qmpGreeting, qemuLike, ""},
		{"not a greeting", `{"return": {}}`, qemuLike, "not a QMP greeting"},
		{"garbled greeting", `{"QMP": `, qemuLike, "not a QMP greeting"},
		{"capabilities refused", qmpGreeting, func(string, json.RawMessage) qmpReply {
			return qmpReply{lines: []string{`{"id": %ID%, "error": {"class": "GenericError", "desc": "no"}}`}}
		}, "qmp_capabilities: GenericError: no"},
		{"hang-up after greeting", qmpGreeting, func(string, json.RawMessage) qmpReply {
			return qmpReply{hangup: true}
		}, "waiting for the answer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock, _ := fakeQMP(t, tc.greeting, tc.handle)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			q, err := DialQMP(ctx, sock)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				defer q.Close()
				if q.Version() != "7.2.22" {
					t.Errorf("version %q", q.Version())
				}
				return
			}
			if err == nil {
				q.Close()
				t.Fatalf("no error, want %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want %q", err, tc.want)
			}
		})
	}
}

func TestQMPNoSocket(t *testing.T) {
	_, err := DialQMP(context.Background(), filepath.Join(t.TempDir(), "none.sock"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("error %v, want one that wraps ENOENT", err)
	}
}

func TestQMPExecute(t *testing.T) {
	sock, got := fakeQMP(t, qmpGreeting, qemuLike)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	q, err := DialQMP(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	for _, tc := range []struct {
		name      string
		cmd       string
		args      any
		want      string // the answer as JSON, when it succeeds
		wantErr   string
		wantClass string // for a *QMPError
	}{
		{name: "return with an event before it", cmd: "query-status", want: `{"running":true,"singlestep":false,"status":"running"}`},
		{name: "refused", cmd: "device_del", args: map[string]any{"id": "x"}, wantErr: "device_del: GenericError: Bus 'pcie.0' does not support hotplugging", wantClass: "GenericError"},
		{name: "unknown command", cmd: "nosuch", wantErr: "has not been found", wantClass: "CommandNotFound"},
		{name: "stale answer skipped", cmd: "stale", want: `"new"`},
		{name: "no return", cmd: "noreturn", wantErr: "answer without return or error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out any
			err := q.Execute(ctx, tc.cmd, tc.args, &out)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				var qe *QMPError
				if tc.wantClass != "" && (!errors.As(err, &qe) || qe.Class != tc.wantClass || qe.Command != tc.cmd) {
					t.Errorf("error %#v, want a QMPError of class %s for %s", err, tc.wantClass, tc.cmd)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if b, _ := json.Marshal(out); string(b) != tc.want {
				t.Errorf("answer %s, want %s", b, tc.want)
			}
		})
	}
	if ev := q.Events(); len(ev) != 1 || ev[0].Name != "RESUME" {
		t.Errorf("events %+v, want one RESUME", ev)
	}
	// The fake saw the negotiation first.
	if first := <-got; first != "qmp_capabilities" {
		t.Errorf("first command %q", first)
	}
}

func TestQMPHMP(t *testing.T) {
	sock, _ := fakeQMP(t, qmpGreeting, qemuLike)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	q, err := DialQMP(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	for _, tc := range []struct {
		cmdline string
		wantErr string
	}{
		{"drive_del disk1", ""},
		{"drive_del nosuch", "drive_del nosuch: Device 'nosuch' not found"},
	} {
		t.Run(tc.cmdline, func(t *testing.T) {
			err := q.HMPQuiet(ctx, tc.cmdline)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %v, want %q", err, tc.wantErr)
			}
		})
	}
	out, err := q.HMP(ctx, "drive_del nosuch")
	if err != nil || !strings.Contains(out, "not found") {
		t.Errorf("HMP output %q, %v", out, err)
	}
}

// TestQMPTransportFailures: a broken connection fails the command and
// every later one; the client never hangs past ctx.
func TestQMPTransportFailures(t *testing.T) {
	for _, tc := range []struct {
		cmd     string
		timeout time.Duration
		want    string
	}{
		{"hangup", 5 * time.Second, "waiting for the answer"},
		{"garbage", 5 * time.Second, "bad message"},
		{"silent", 200 * time.Millisecond, "i/o timeout"},
	} {
		t.Run(tc.cmd, func(t *testing.T) {
			sock, _ := fakeQMP(t, qmpGreeting, qemuLike)
			q, err := DialQMP(context.Background(), sock)
			if err != nil {
				t.Fatal(err)
			}
			defer q.Close()
			ctx, cancel := context.WithTimeout(context.Background(), tc.timeout)
			defer cancel()
			if err := q.Execute(ctx, tc.cmd, nil, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if err := q.Execute(context.Background(), "query-status", nil, nil); err == nil || !strings.Contains(err.Error(), "client closed") {
				t.Errorf("after a transport failure: %v, want client closed", err)
			}
		})
	}
}

func TestQMPArgs(t *testing.T) {
	cfg := Config{Kernel: "/k", QMP: true, Disks: []Disk{{Path: "/a.img"}, {Path: "/b.img", Blkdebug: "/c.conf"}}}
	cfg.qmpSocket = "/tmp/x,y/qmp.sock"
	got := strings.Join(Args(cfg, "tcg"), " ")
	for _, want := range []string{
		"-monitor none",
		"-qmp unix:/tmp/x,,y/qmp.sock,server=on,wait=off",
		"file=/a.img,format=raw,if=virtio,cache=writeback,id=disk0",
		"file=blkdebug:/c.conf:/b.img,format=raw,if=virtio,cache=writeback,id=disk1",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("args lack %q:\n%s", want, got)
		}
	}
	cfg.QMP = false
	if got := strings.Join(Args(cfg, "tcg"), " "); strings.Contains(got, "-qmp") || strings.Contains(got, "id=disk") {
		t.Errorf("QMP off, yet: %s", got)
	}
}

func TestMachineQMPErrors(t *testing.T) {
	m := startT(t, fakeConfig(t, "poweroff"))
	if _, err := m.QMP(context.Background()); err == nil || !strings.Contains(err.Error(), "no QMP monitor") {
		t.Errorf("without Config.QMP: %v", err)
	}
	// A QEMU that exits without ever creating the socket.
	cfg := fakeConfig(t, "poweroff")
	cfg.QMP = true
	m = startT(t, cfg)
	sock := m.cfg.qmpSocket
	if _, err := m.QMP(context.Background()); err == nil || !strings.Contains(err.Error(), "before the socket answered") {
		t.Errorf("QEMU gone: %v", err)
	}
	m.Wait(5 * time.Second)
	if _, err := os.Stat(filepath.Dir(sock)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket directory %s left behind: %v", filepath.Dir(sock), err)
	}
}

// TestRealQMP runs a real QEMU held before its first instruction (-S) and
// removes a drive's backend through QMP, as hibernate-disk-vanishes does.
func TestRealQMP(t *testing.T) {
	k := realKernel(t)
	cfg := realConfig(t, k, "#!/bin/sh\npoweroff -f\n")
	disk := filepath.Join(t.TempDir(), "d.img")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.Disks = []Disk{{Path: disk}}
	cfg.QMP = true
	cfg.Extra = []string{"-S"}
	m := startT(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	q, err := m.QMP(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	var blocks []struct {
		Device   string          `json:"device"`
		Qdev     string          `json:"qdev"`
		Inserted json.RawMessage `json:"inserted"`
	}
	if err := q.Execute(ctx, "query-block", nil, &blocks); err != nil {
		t.Fatal(err)
	}
	if len(blocks) != 1 || blocks[0].Device != DriveID(0) || blocks[0].Inserted == nil {
		t.Fatalf("query-block: %+v", blocks)
	}
	if err := q.HMPQuiet(ctx, "drive_del "+DriveID(0)); err != nil {
		t.Fatal(err)
	}
	blocks = nil
	if err := q.Execute(ctx, "query-block", nil, &blocks); err != nil {
		t.Fatal(err)
	}
	if len(blocks) != 1 || blocks[0].Inserted != nil {
		t.Errorf("after drive_del: %+v", blocks)
	}
	if err := q.Execute(ctx, "quit", nil, nil); err != nil {
		t.Fatal(err)
	}
	if e, err := m.Wait(10 * time.Second); err != nil || e.Code != 0 {
		t.Errorf("after quit: %+v, %v", e, err)
	}
}

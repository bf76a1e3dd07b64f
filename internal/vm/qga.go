package vm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"
)

// Agent talks to the QEMU guest agent (Debian's qemu-guest-agent) of a
// guest that runs a real distribution, through the virtio-serial port
// org.qemu.guest_agent.0 that AgentArgs adds. The rig uses it to run
// commands in the guest the way an administrator would at a shell, without
// a login on the serial console.
//
// The agent's protocol is QMP-shaped JSON, one object per line; a command
// that starts with guest-sync-delimited makes the agent send 0xFF before
// its answer, so that anything left over from an earlier connection can be
// skipped.
type Agent struct {
	path string
	mu   sync.Mutex
	conn net.Conn
	rd   *bufio.Reader
	id   int64
}

// AgentArgs returns the QEMU options that put the guest agent's port on a
// Unix socket at path, on which QEMU listens.
func AgentArgs(path string) []string {
	return []string{
		"-chardev", "socket,path=" + qemuEscape(path) + ",server=on,wait=off,id=qga0",
		"-device", "virtio-serial",
		"-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
	}
}

// NewAgent returns a client for the agent socket at path; it connects on
// first use.
func NewAgent(path string) *Agent { return &Agent{path: path} }

// Close drops the connection.
func (a *Agent) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.dropLocked()
}

func (a *Agent) dropLocked() error {
	if a.conn == nil {
		return nil
	}
	err := a.conn.Close()
	a.conn, a.rd = nil, nil
	return err
}

// agentError is an error the agent itself returned.
type agentError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *agentError) Error() string { return "guest agent: " + e.Class + ": " + e.Desc }

// call sends one command and decodes its "return" into out (if not nil).
// Any transport error drops the connection, so the next call reconnects.
func (a *Agent) call(ctx context.Context, cmd string, args, out any) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.connectLocked(ctx); err != nil {
		return err
	}
	err := a.roundTripLocked(ctx, cmd, args, out)
	var ae *agentError
	if err != nil && !errors.As(err, &ae) {
		a.dropLocked()
	}
	return err
}

func (a *Agent) connectLocked(ctx context.Context) error {
	if a.conn != nil {
		return nil
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", a.path)
	if err != nil {
		return fmt.Errorf("guest agent socket: %w", err)
	}
	a.conn, a.rd = c, bufio.NewReader(c)
	// Resynchronise: after 0xFF, the next line is the sync's answer.
	a.id++
	id := a.id
	if err := a.sendLocked(ctx, "guest-sync-delimited", map[string]any{"id": id}); err != nil {
		a.dropLocked()
		return err
	}
	for {
		b, err := a.rd.ReadByte()
		if err != nil {
			a.dropLocked()
			return fmt.Errorf("guest agent: waiting for sync: %w", err)
		}
		if b == 0xff {
			break
		}
	}
	var got int64
	if err := a.readLocked(&got); err != nil {
		a.dropLocked()
		return fmt.Errorf("guest agent: sync: %w", err)
	}
	if got != id {
		a.dropLocked()
		return fmt.Errorf("guest agent: sync answered %d, want %d", got, id)
	}
	return nil
}

func (a *Agent) sendLocked(ctx context.Context, cmd string, args any) error {
	msg := map[string]any{"execute": cmd}
	if args != nil {
		msg["arguments"] = args
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(30 * time.Second)
	}
	a.conn.SetDeadline(deadline)
	if _, err := a.conn.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("guest agent: sending %s: %w", cmd, err)
	}
	return nil
}

func (a *Agent) readLocked(out any) error {
	line, err := a.rd.ReadBytes('\n')
	if err != nil {
		return err
	}
	var resp struct {
		Return json.RawMessage `json:"return"`
		Error  *agentError     `json:"error"`
	}
	if err := json.Unmarshal(line, &resp); err != nil {
		return fmt.Errorf("guest agent: bad answer %q: %w", strings.TrimSpace(string(line)), err)
	}
	if resp.Error != nil {
		return resp.Error
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(resp.Return, out)
}

func (a *Agent) roundTripLocked(ctx context.Context, cmd string, args, out any) error {
	if err := a.sendLocked(ctx, cmd, args); err != nil {
		return err
	}
	if err := a.readLocked(out); err != nil {
		return fmt.Errorf("guest agent: %s: %w", cmd, err)
	}
	return nil
}

// WaitReady pings the agent until it answers or timeout passes: the guest
// has booted far enough to run the agent's systemd unit.
func (a *Agent) WaitReady(ctx context.Context, timeout time.Duration) error {
	end := time.Now().Add(timeout)
	var last error
	for time.Now().Before(end) {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		last = a.call(cctx, "guest-ping", nil, nil)
		cancel()
		if last == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(time.Second)
	}
	return fmt.Errorf("guest agent did not answer within %s: %w", timeout, last)
}

// ExecResult is what a command run in the guest did.
type ExecResult struct {
	ExitCode int
	Stdout   string
	Stderr   string
}

// Start runs sh -c script in the guest and returns its pid at once,
// without waiting: for a command after which the guest goes away
// (systemctl hibernate, poweroff). A pid of 0 with no error means the
// command was started but the agent's answer, with its pid, was lost.
//
// Each try has its own short deadline. A request can be lost on the way:
// virtio-console drops what the agent has not read yet when the guest
// freezes its devices, as it does for every kexec jump (khib re-arming its
// helper just after a resume is one). The script first makes a marker
// directory in /run; after a lost try, the marker tells whether the
// script was started, and it is sent again only if it was not.
func (a *Agent) Start(ctx context.Context, script string) (int, error) {
	a.mu.Lock()
	a.id++
	marker := fmt.Sprintf("/run/khib-vm-exec.%d.%d", time.Now().UnixNano(), a.id)
	a.mu.Unlock()
	pid, err := a.exec(ctx, "mkdir "+marker+` && exec /bin/sh -c "$0"`, script)
	for try := 1; try < 4 && err != nil && !isAgentError(err) && ctx.Err() == nil; try++ {
		var st ExecResult
		cpid, cerr := a.exec(ctx, "test -d "+marker)
		if cerr == nil {
			st, cerr = a.wait(ctx, cpid, "test -d "+marker)
		}
		switch {
		case cerr != nil:
			err = cerr
		case st.ExitCode == 0:
			return 0, nil
		default:
			pid, err = a.exec(ctx, "mkdir "+marker+` && exec /bin/sh -c "$0"`, script)
		}
	}
	return pid, err
}

// exec is one guest-exec of sh -c script args... with its own short
// deadline.
func (a *Agent) exec(ctx context.Context, script string, args ...string) (int, error) {
	var ret struct {
		PID int `json:"pid"`
	}
	cctx, cancel := context.WithTimeout(ctx, execTryTimeout)
	defer cancel()
	err := a.call(cctx, "guest-exec", map[string]any{
		"path": "/bin/sh", "arg": append([]string{"-c", script}, args...), "capture-output": true,
	}, &ret)
	return ret.PID, err
}

// execTryTimeout is how long one guest-exec waits for its answer: the
// agent answers at once, having only forked.
var execTryTimeout = 30 * time.Second

func isAgentError(err error) bool {
	var ae *agentError
	return errors.As(err, &ae)
}

// Run runs sh -c script in the guest and waits for it to exit.
func (a *Agent) Run(ctx context.Context, script string) (ExecResult, error) {
	pid, err := a.Start(ctx, script)
	if err != nil {
		return ExecResult{}, err
	}
	if pid == 0 {
		return ExecResult{}, fmt.Errorf("guest command %q: started, but the agent's answer with its pid was lost", script)
	}
	return a.wait(ctx, pid, script)
}

// wait polls the agent until the command with this pid has exited.
func (a *Agent) wait(ctx context.Context, pid int, script string) (ExecResult, error) {
	for {
		var st struct {
			Exited   bool   `json:"exited"`
			ExitCode int    `json:"exitcode"`
			Signal   int    `json:"signal"`
			OutData  []byte `json:"out-data"` // base64 in JSON
			ErrData  []byte `json:"err-data"`
		}
		// Each poll gets its own short deadline, and a poll lost on the
		// way (the agent busy or its port reset) is asked again on a new,
		// resynchronised connection: the command itself runs on.
		var err error
		for try := 0; try < 4; try++ {
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err = a.call(cctx, "guest-exec-status", map[string]any{"pid": pid}, &st)
			cancel()
			var ae *agentError
			if err == nil || errors.As(err, &ae) || ctx.Err() != nil {
				break
			}
		}
		if err != nil {
			return ExecResult{}, err
		}
		if st.Exited {
			r := ExecResult{ExitCode: st.ExitCode, Stdout: string(st.OutData), Stderr: string(st.ErrData)}
			if st.Signal != 0 {
				r.ExitCode = 128 + st.Signal
			}
			return r, nil
		}
		select {
		case <-ctx.Done():
			return ExecResult{}, fmt.Errorf("guest command %q: %w", script, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Must runs script and returns its standard output, or an error that
// carries the exit status and standard error when it fails.
func (a *Agent) Must(ctx context.Context, script string) (string, error) {
	r, err := a.Run(ctx, script)
	if err != nil {
		return "", err
	}
	if r.ExitCode != 0 {
		return r.Stdout, fmt.Errorf("guest command %q exited %d: %s", script, r.ExitCode, strings.TrimSpace(r.Stderr+" "+r.Stdout))
	}
	return r.Stdout, nil
}

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

	"golang.org/x/sys/unix"
)

// QMP is a client of QEMU's machine protocol on a Unix socket: the rig's
// hand on the machine from outside, to do what an operator or the
// hardware would do (pull a disk) while the guest runs.
//
// The protocol is one JSON object per line. QEMU greets with {"QMP":...},
// accepts commands only after qmp_capabilities, answers each command with
// {"return":...} or {"error":{"class","desc"}} carrying the command's
// "id", and sends {"event":...} objects at any time in between; Execute
// keeps those (Events).
type QMP struct {
	mu      sync.Mutex
	conn    net.Conn
	rd      *bufio.Reader
	id      uint64
	version string
	events  []QMPEvent
}

// QMPEvent is an asynchronous event QEMU sent.
type QMPEvent struct {
	Name string          `json:"event"`
	Data json.RawMessage `json:"data,omitempty"`
}

// QMPError is an error QEMU returned for a command.
type QMPError struct {
	Command string
	Class   string `json:"class"`
	Desc    string `json:"desc"`
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp: %s: %s: %s", e.Command, e.Class, e.Desc)
}

// maxQMPLine bounds one message from QEMU; query answers are a few KiB.
const maxQMPLine = 4 << 20

// DialQMP connects to the QMP socket at path, reads QEMU's greeting and
// negotiates capabilities, so that the client is ready for commands. ctx
// bounds the whole handshake.
func DialQMP(ctx context.Context, path string) (*QMP, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: %w", err)
	}
	q := &QMP{conn: c, rd: bufio.NewReader(c)}
	if err := q.handshake(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return q, nil
}

func (q *QMP) handshake(ctx context.Context) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.setDeadline(ctx)
	line, err := q.readLine()
	if err != nil {
		return fmt.Errorf("qmp: waiting for the greeting: %w", err)
	}
	var greet struct {
		QMP *struct {
			Version struct {
				QEMU struct{ Major, Minor, Micro int } `json:"qemu"`
			} `json:"version"`
		} `json:"QMP"`
	}
	if err := json.Unmarshal(line, &greet); err != nil || greet.QMP == nil {
		return fmt.Errorf("qmp: not a QMP greeting: %q", truncate(line))
	}
	v := greet.QMP.Version.QEMU
	q.version = fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro)
	if err := q.executeLocked(ctx, "qmp_capabilities", nil, nil); err != nil {
		return err
	}
	return nil
}

// qmpConnectWait bounds Machine.QMP's wait for the socket when ctx has no
// deadline; QEMU creates it before the guest runs its first instruction.
const qmpConnectWait = 30 * time.Second

// QMP connects to the machine's QMP monitor (Config.QMP). It waits while
// QEMU is still creating the socket, and fails once QEMU has exited or ctx
// ends. Each call returns a new client; the caller closes it.
func (m *Machine) QMP(ctx context.Context) (*QMP, error) {
	if m.cfg.qmpSocket == "" {
		return nil, errors.New("vm: this machine has no QMP monitor (set Config.QMP)")
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, qmpConnectWait)
		defer cancel()
	}
	for {
		q, err := DialQMP(ctx, m.cfg.qmpSocket)
		if err == nil {
			return q, nil
		}
		if !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ECONNREFUSED) {
			return nil, fmt.Errorf("vm: QMP of QEMU pid %d: %w", m.Pid(), err)
		}
		select {
		case <-m.done:
			return nil, fmt.Errorf("vm: QMP of QEMU pid %d: %s before the socket answered", m.Pid(), m.Exit())
		case <-ctx.Done():
			return nil, fmt.Errorf("vm: QMP of QEMU pid %d: %w (last attempt: %v)", m.Pid(), ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Version is QEMU's version as its greeting gave it ("7.2.22").
func (q *QMP) Version() string {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.version
}

// Execute runs one command with args (nil for none) and decodes its
// "return" into out (nil to discard it). QEMU's refusal is a *QMPError.
// A transport failure closes the client: later calls fail too.
func (q *QMP) Execute(ctx context.Context, cmd string, args, out any) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.conn == nil {
		return fmt.Errorf("qmp: %s: client closed", cmd)
	}
	return q.executeLocked(ctx, cmd, args, out)
}

func (q *QMP) executeLocked(ctx context.Context, cmd string, args, out any) error {
	q.id++
	id := q.id
	msg := map[string]any{"execute": cmd, "id": id}
	if args != nil {
		msg["arguments"] = args
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return fmt.Errorf("qmp: %s: encoding arguments: %w", cmd, err)
	}
	q.setDeadline(ctx)
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		q.closeLocked()
		return fmt.Errorf("qmp: sending %s: %w", cmd, err)
	}
	for {
		line, err := q.readLine()
		if err != nil {
			q.closeLocked()
			return fmt.Errorf("qmp: %s: waiting for the answer: %w", cmd, err)
		}
		var resp struct {
			Event  string          `json:"event"`
			Data   json.RawMessage `json:"data"`
			ID     *uint64         `json:"id"`
			Return json.RawMessage `json:"return"`
			Error  *QMPError       `json:"error"`
		}
		if err := json.Unmarshal(line, &resp); err != nil {
			q.closeLocked()
			return fmt.Errorf("qmp: %s: bad message %q: %w", cmd, truncate(line), err)
		}
		if resp.Event != "" {
			q.events = append(q.events, QMPEvent{Name: resp.Event, Data: resp.Data})
			continue
		}
		if resp.ID == nil || *resp.ID != id {
			// An answer to an earlier command that gave up waiting.
			continue
		}
		if resp.Error != nil {
			resp.Error.Command = cmd
			return resp.Error
		}
		if resp.Return == nil {
			return fmt.Errorf("qmp: %s: answer without return or error: %q", cmd, truncate(line))
		}
		if out == nil {
			return nil
		}
		if err := json.Unmarshal(resp.Return, out); err != nil {
			return fmt.Errorf("qmp: %s: decoding the answer: %w", cmd, err)
		}
		return nil
	}
}

// HMP runs a human monitor command (what `-monitor stdio` would take)
// through QMP's human-monitor-command and returns its output. Most HMP
// commands report failure only in that output, so a non-empty output is
// returned as an error by callers that expect silence (see HMPQuiet).
func (q *QMP) HMP(ctx context.Context, cmdline string) (string, error) {
	var out string
	err := q.Execute(ctx, "human-monitor-command", map[string]any{"command-line": cmdline}, &out)
	return out, err
}

// HMPQuiet runs an HMP command that prints nothing when it succeeds, such
// as drive_del, and turns any output into an error.
func (q *QMP) HMPQuiet(ctx context.Context, cmdline string) error {
	out, err := q.HMP(ctx, cmdline)
	if err != nil {
		return err
	}
	if s := strings.TrimSpace(out); s != "" {
		return fmt.Errorf("qmp: %s: %s", cmdline, s)
	}
	return nil
}

// Events returns the events received so far, oldest first.
func (q *QMP) Events() []QMPEvent {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]QMPEvent(nil), q.events...)
}

// Close drops the connection; QEMU keeps running.
func (q *QMP) Close() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.closeLocked()
}

func (q *QMP) closeLocked() error {
	if q.conn == nil {
		return nil
	}
	err := q.conn.Close()
	q.conn, q.rd = nil, nil
	return err
}

func (q *QMP) setDeadline(ctx context.Context) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(30 * time.Second)
	}
	q.conn.SetDeadline(deadline)
}

// readLine reads one message, refusing runaway lines.
func (q *QMP) readLine() ([]byte, error) {
	var line []byte
	for {
		chunk, err := q.rd.ReadSlice('\n')
		line = append(line, chunk...)
		if err == nil {
			return line, nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
		if len(line) > maxQMPLine {
			return nil, fmt.Errorf("message longer than %d bytes", maxQMPLine)
		}
	}
}

func truncate(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

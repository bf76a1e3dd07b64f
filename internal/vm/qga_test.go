package vm

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeAgent answers the few guest-agent commands Agent uses, the way
// qemu-ga does: 0xFF before a guest-sync-delimited answer, one JSON
// object per line. Each connection first gets stale bytes, as a port that
// an earlier client left half-read would.
//
// Scripts come wrapped the way Start sends them ("mkdir MARKER && exec sh
// -c "$0"", script); the fake keeps the markers, as the guest's /run
// would. A script containing "lose-request" has its first guest-exec
// dropped unread, one containing "lose-answer" is started but its first
// answer never comes: what a guest freezing its virtio console does.
func fakeAgent(t *testing.T, exits map[string]int) string {
	t.Helper()
	var mu sync.Mutex
	markers := map[string]bool{}
	lost := map[string]bool{}
	sock := filepath.Join(t.TempDir(), "qga.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				c.Write([]byte(`{"return": {}}` + "\n" + `{"ret`))
				sc := bufio.NewScanner(c)
				scripts := map[int]string{}
				for pid := 100; sc.Scan(); {
					var req struct {
						Execute   string          `json:"execute"`
						Arguments json.RawMessage `json:"arguments"`
					}
					if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
						fmt.Fprintf(c, `{"error":{"class":"JSONParsing","desc":"%v"}}`+"\n", err)
						continue
					}
					switch req.Execute {
					case "guest-sync-delimited":
						var a struct{ ID int64 }
						json.Unmarshal(req.Arguments, &a)
						fmt.Fprintf(c, "\xff{\"return\": %d}\n", a.ID)
					case "guest-ping":
						fmt.Fprint(c, `{"return": {}}`+"\n")
					case "guest-exec":
						var a struct{ Arg []string }
						json.Unmarshal(req.Arguments, &a)
						script, code := a.Arg[len(a.Arg)-1], 0
						mu.Lock()
						if m, ok := strings.CutPrefix(a.Arg[1], "test -d "); ok && len(a.Arg) == 2 {
							if !markers[m] {
								code = 1
							}
							script = fmt.Sprintf("exit %d", code)
						} else if m, _, ok := strings.Cut(strings.TrimPrefix(a.Arg[1], "mkdir "), " && "); ok {
							first := !lost[script]
							lost[script] = true
							if first && strings.Contains(script, "lose-request") {
								mu.Unlock()
								continue
							}
							markers[m] = true
							if first && strings.Contains(script, "lose-answer") {
								mu.Unlock()
								continue
							}
						}
						mu.Unlock()
						pid++
						scripts[pid] = script
						fmt.Fprintf(c, `{"return": {"pid": %d}}`+"\n", pid)
					case "guest-exec-status":
						var a struct{ PID int }
						json.Unmarshal(req.Arguments, &a)
						s, ok := scripts[a.PID]
						if !ok {
							fmt.Fprint(c, `{"error":{"class":"GenericError","desc":"Invalid parameter 'pid'"}}`+"\n")
							continue
						}
						out := base64.StdEncoding.EncodeToString([]byte("ran " + s))
						code := exits[s]
						if s == "exit 1" {
							code = 1
						}
						fmt.Fprintf(c, `{"return": {"exited": true, "exitcode": %d, "out-data": "%s"}}`+"\n", code, out)
					default:
						fmt.Fprintf(c, `{"error":{"class":"CommandNotFound","desc":"%s"}}`+"\n", req.Execute)
					}
				}
			}(c)
		}
	}()
	return sock
}

func TestAgent(t *testing.T) {
	sock := fakeAgent(t, map[string]int{"false": 1})
	a := NewAgent(sock)
	defer a.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.WaitReady(ctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		script  string
		wantOut string
		wantErr bool
	}{
		{"echo hi", "ran echo hi", false},
		{"false", "ran false", true},
	}
	for _, tc := range tests {
		out, err := a.Must(ctx, tc.script)
		if out != tc.wantOut || (err != nil) != tc.wantErr {
			t.Errorf("Must(%q) = %q, %v; want %q, error %v", tc.script, out, err, tc.wantOut, tc.wantErr)
		}
	}
	// A dropped connection is made again, with a new sync.
	a.Close()
	if out, err := a.Must(ctx, "echo again"); err != nil || out != "ran echo again" {
		t.Fatalf("after reconnect: %q, %v", out, err)
	}
}

// A guest-exec lost on the way is sent again; one whose answer was lost
// is not started twice.
func TestAgentLostExec(t *testing.T) {
	old := execTryTimeout
	execTryTimeout = 300 * time.Millisecond
	defer func() { execTryTimeout = old }()
	a := NewAgent(fakeAgent(t, nil))
	defer a.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := a.Must(ctx, "echo lose-request"); err != nil || out != "ran echo lose-request" {
		t.Errorf("after a lost request: %q, %v; want it run once more", out, err)
	}
	pid, err := a.Start(ctx, "systemctl lose-answer")
	if err != nil || pid != 0 {
		t.Errorf("Start after a lost answer = %d, %v; want 0 (started, pid unknown), no error", pid, err)
	}
	if _, err := a.Must(ctx, "echo lose-answer"); err == nil || !strings.Contains(err.Error(), "lost") {
		t.Errorf("Must after a lost answer: %v; want an error saying the answer was lost", err)
	}
}

func TestAgentNoSocket(t *testing.T) {
	a := NewAgent(filepath.Join(t.TempDir(), "none.sock"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.WaitReady(ctx, 1500*time.Millisecond); err == nil {
		t.Fatal("WaitReady without an agent succeeded")
	}
}

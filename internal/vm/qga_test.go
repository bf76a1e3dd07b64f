package vm

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// fakeAgent answers the few guest-agent commands Agent uses, the way
// qemu-ga does: 0xFF before a guest-sync-delimited answer, one JSON
// object per line. Each connection first gets stale bytes, as a port that
// an earlier client left half-read would.
func fakeAgent(t *testing.T, exits map[string]int) string {
	t.Helper()
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
						pid++
						scripts[pid] = a.Arg[1]
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
						fmt.Fprintf(c, `{"return": {"exited": true, "exitcode": %d, "out-data": "%s"}}`+"\n", exits[s], out)
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

func TestAgentNoSocket(t *testing.T) {
	a := NewAgent(filepath.Join(t.TempDir(), "none.sock"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.WaitReady(ctx, 1500*time.Millisecond); err == nil {
		t.Fatal("WaitReady without an agent succeeded")
	}
}

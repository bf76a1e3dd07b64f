package sleep

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestMemSleep(t *testing.T) {
	for _, tc := range []struct {
		name, state, memSleep string
		want, err             string
	}{
		{"deep", "freeze mem disk\n", "s2idle [deep]\n", "deep", ""},
		{"s2idle", "freeze mem\n", "[s2idle]\n", "s2idle", ""},
		{"old kernel", "mem disk\n", "", "deep", ""},
		{"no mem", "freeze disk\n", "[s2idle]\n", "", "not mem"},
		{"no suspend", "", "", "", "CONFIG_SUSPEND"},
		{"nothing current", "mem\n", "s2idle deep\n", "", "marks no current"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			os.MkdirAll(filepath.Join(root, "sys/power"), 0o755)
			if tc.state != "" {
				os.WriteFile(filepath.Join(root, "sys/power/state"), []byte(tc.state), 0o644)
			}
			if tc.memSleep != "" {
				os.WriteFile(filepath.Join(root, "sys/power/mem_sleep"), []byte(tc.memSleep), 0o644)
			}
			old := Root
			Root = root
			defer func() { Root = old }()
			got, err := MemSleep()
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("MemSleep() = %q, %v; want an error saying %q", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("MemSleep() = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

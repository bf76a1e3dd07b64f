package scenarios

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"time"

	"github.com/khib/khib/internal/vm"
	"github.com/khib/khib/internal/vm/scenario"
)

// s3Server is khib-s3d on the host's loopback, which the guests reach
// through QEMU's user-mode network as 10.0.2.2.
type s3Server struct {
	cmd   *exec.Cmd
	port  int
	creds string // the host's copy of the credentials file
}

const (
	s3Bucket   = "khib"
	s3Creds    = "access_key = khibtest\nsecret_key = khib-test-secret-0123456789\n"
	guestCreds = "/etc/khib/s3.creds"
	// guestIP is A's network in QEMU's user-mode net, as ip= gives it.
	guestIP = "10.0.2.15::10.0.2.2:255.255.255.0::eth0:off"
	// s3NIC is the virtio network card the S3 scenarios give the guest.
	s3MAC = "52:54:00:4b:48:49"
)

func startS3(ctx context.Context, env *scenario.Env) (*s3Server, error) {
	bin, err := env.Bin("khib-s3d")
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	creds := env.Path("s3.creds")
	if err := os.WriteFile(creds, []byte(s3Creds), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, bin, "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--bucket", s3Bucket, "--creds", creds, "--data", env.Path("s3-data"))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting khib-s3d: %w", err)
	}
	ready := make(chan error, 1)
	go func() {
		s := bufio.NewScanner(stderr)
		said := false
		for s.Scan() {
			env.Logf("%s", s.Text())
			if !said && strings.Contains(s.Text(), "listening on") {
				said = true
				ready <- nil
			}
		}
		if !said {
			ready <- fmt.Errorf("khib-s3d exited before listening")
		}
	}()
	select {
	case err := <-ready:
		if err != nil {
			return nil, err
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		return nil, fmt.Errorf("khib-s3d did not listen within 30 s")
	}
	return &s3Server{cmd: cmd, port: port, creds: creds}, nil
}

func (s *s3Server) stop() {
	s.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill()
	}
}

// url is the image's URL as the guest (guest true) or the host reaches it.
func (s *s3Server) url(key string, guest bool) string {
	if guest {
		return fmt.Sprintf("s3://%s/%s?endpoint=10.0.2.2:%d&tls=0&creds=%s", s3Bucket, key, s.port, guestCreds)
	}
	return fmt.Sprintf("s3://%s/%s?endpoint=127.0.0.1:%d&tls=0&creds=%s", s3Bucket, key, s.port, s.creds)
}

// s3Target is a cycle into the object store; with migrate, the resume
// runs in a QEMU process with a blank image disk and a copy of A's data
// disk (the same virtual hardware, the same root disk contents).
func s3Target(srv *s3Server, key string, migrate bool) *cycleTarget {
	return &cycleTarget{
		name: "s3", guest: srv.url(key, true), resume: srv.url(key, true), workload: 256,
		extraAppend: " ip=" + guestIP,
		netdev:      true,
		prepare: `ip link set eth0 up || fail eth0
ip addr add 10.0.2.15/24 dev eth0 || fail ipaddr
ip route add default via 10.0.2.2 || fail route`,
		rootfs: func(rfs *vm.Rootfs) {
			rfs.AddDir("/etc/khib", 0o755)
			rfs.AddFile(guestCreds, 0o600, []byte(s3Creds))
		},
		firstBoot: regexp.MustCompile(`^khib: no hibernation image on s3://`),
		spentRE:   usedRE,
		hostImage: func(_ *scenario.Env, _ []vm.Disk, _ string) (string, error) { return srv.url(key, false), nil },
		beforeResume: func(env *scenario.Env, cfg *vm.Config, res scenario.Result) error {
			if !migrate {
				return nil
			}
			// Another machine: a blank image disk, the root disk's contents.
			blank, err := env.NewDisk("image-migrated.img", max(1024, env.MemMiB+256))
			if err != nil {
				return err
			}
			data := env.Path("data-migrated.img")
			if out, err := exec.Command("cp", "--sparse=always", cfg.Disks[1].Path, data).CombinedOutput(); err != nil {
				return fmt.Errorf("copying the data disk: %v\n%s", err, out)
			}
			cfg.Disks[0].Path, cfg.Disks[1].Path = blank, data
			res["migrated"] = "a new QEMU process with a blank image disk and a copy of the data disk"
			env.Logf("migrate: the resume runs on a blank image disk and a copy of A's data disk")
			return nil
		},
		checkImage: func(m *vm.Machine, res scenario.Result) error {
			if lastLine(m, `^khib-helper: network up: `) == "" {
				return fmt.Errorf("the helper did not bring up the network")
			}
			return nil
		},
	}
}

func init() {
	for _, migrate := range []bool{false, true} {
		name, desc := "cycle-s3", "cycle into an S3 object store (khib-s3d, gofakes3 with SigV4 checks, on the host's loopback, "+
			"reached through QEMU's user-mode network): the helper brings up A's network and uploads the image in parts; stage 1 "+
			"brings up ip= and checks it; the restore helper reads it and marks it used with a marker object"
		if migrate {
			name, desc = "migrate-s3", "cold migration: an image saved to S3 resumes in another QEMU process with the same virtual "+
				"hardware, a blank image disk and a copy of the data disk"
		}
		migrate := migrate
		scenario.Register(scenario.Scenario{
			Name: name, Description: desc, Timeout: 20 * time.Minute,
			Run: func(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
				srv, err := startS3(ctx, env)
				if err != nil {
					return nil, err
				}
				defer srv.stop()
				return runCycles(ctx, env, cycleRun{cycles: 1, tgt: s3Target(srv, "rig/"+name+".khib", migrate)})
			},
		})
	}
}

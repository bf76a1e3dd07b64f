package scenarios

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/khib/khib/internal/vm"
	"github.com/khib/khib/internal/vm/scenario"
)

// The Debian guest: a disk built by scripts/guest-image.sh (msdos label;
// 1 = ext4 root, 2 = swap, 3 = the partition for khib's image) that boots
// through GRUB and its initramfs into systemd, with khib installed from
// its .deb by dpkg -i in the guest itself. The rig drives the guest
// through Debian's qemu-guest-agent (vm.Agent), as an administrator
// would at a shell.

// imagePartition is the partition of the guest disk that takes the image.
const imagePartition = 3

// partition is one entry of an msdos partition table, in bytes.
type partition struct{ Start, Size int64 }

// diskLabel reads the msdos partition table of a raw disk: the disk
// signature (the first half of every PARTUUID) and the four primary
// partitions.
func diskLabel(disk string) (sig uint32, parts [4]partition, err error) {
	f, err := os.Open(disk)
	if err != nil {
		return 0, parts, err
	}
	defer f.Close()
	mbr := make([]byte, 512)
	if _, err := io.ReadFull(f, mbr); err != nil {
		return 0, parts, fmt.Errorf("%s: reading the MBR: %w", disk, err)
	}
	if mbr[510] != 0x55 || mbr[511] != 0xaa {
		return 0, parts, fmt.Errorf("%s: no msdos partition table", disk)
	}
	le := binary.LittleEndian
	for i := range parts {
		e := mbr[446+16*i:]
		parts[i] = partition{int64(le.Uint32(e[8:])) * 512, int64(le.Uint32(e[12:])) * 512}
	}
	return le.Uint32(mbr[440:]), parts, nil
}

// distroGuest is one Debian guest disk and the machine booted from it.
type distroGuest struct {
	env   *scenario.Env
	disk  string // this run's copy
	extra []vm.Disk
	sig   uint32
	parts [4]partition
	m     *vm.Machine
	agent *vm.Agent
	boots int
	// qemu, if set, gives extra QEMU arguments for the boot of that name
	// (a TPM, another device).
	qemu func(name string) []string
}

// imageSpec is how khib's configuration names the image partition.
func (g *distroGuest) imageSpec() string {
	return fmt.Sprintf("PARTUUID=%08x-%02d", g.sig, imagePartition)
}

// boot starts a new QEMU process from the disk (GRUB, no -kernel) and
// waits for the guest agent, that is for systemd to have started it. It
// returns the seconds from QEMU's start to the agent's first answer.
func (g *distroGuest) boot(ctx context.Context, name string) (float64, error) {
	return g.bootAs(ctx, name, true)
}

// loginRE is the line getty prints above its prompt on the serial
// console (/etc/issue): a normal boot has reached its login services. The
// prompt itself ends without a newline, so it is no line of its own.
var loginRE = regexp.MustCompile(`GNU/Linux .*ttyS0`)

// bootAs is boot; with normal, it first waits for the login prompt on the
// console, because the guest agent answers early in a boot and then
// sometimes stops answering while systemd is still starting units (seen
// under TCG with two busy vCPUs). A boot that resumes A shows no prompt:
// A's agent has been running all along.
func (g *distroGuest) bootAs(ctx context.Context, name string, normal bool) (float64, error) {
	g.boots++
	sock := g.env.Path(name + ".qga.sock")
	os.Remove(sock)
	cfg := g.env.Config()
	cfg.Kernel, cfg.Append = "", ""
	cfg.Disks = append([]vm.Disk{{Path: g.disk}}, g.extra...)
	cfg.Extra = append(cfg.Extra, vm.AgentArgs(sock)...)
	if g.qemu != nil {
		cfg.Extra = append(cfg.Extra, g.qemu(name)...)
	}
	m, err := g.env.Start(ctx, name, cfg)
	if err != nil {
		return 0, err
	}
	g.m = m
	if g.agent != nil {
		g.agent.Close()
	}
	if normal {
		if _, err := m.WaitFor(ctx, loginRE, min(g.env.Remaining(), 8*time.Minute)); err != nil {
			return 0, err
		}
	}
	g.agent = vm.NewAgent(sock)
	// Stop waiting as soon as QEMU is gone: a guest that crashed or reset
	// will never answer.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-m.Done():
			cancel()
		case <-wctx.Done():
		}
	}()
	if err := g.agent.WaitReady(wctx, min(g.env.Remaining(), 8*time.Minute)); err != nil {
		select {
		case <-m.Done():
			return 0, fmt.Errorf("%s: %s before the guest agent answered (console: %s)", name, m.Exit(), m.LogPath())
		default:
		}
		return 0, fmt.Errorf("%s: %v (console: %s)", name, err, m.LogPath())
	}
	took := time.Since(m.Started()).Seconds()
	if !normal {
		// A resumed A finishes the sleep job that hibernated it, and
		// with an armed helper re-arms it with one more kexec round trip:
		// wait for that, so that the scenario's next steps (another
		// systemctl hibernate above all) do not race it.
		if _, err := g.sh(ctx, settleScript); err != nil {
			return 0, fmt.Errorf("%s: after the resume, the sleep job did not finish: %w (console: %s)", name, err, m.LogPath())
		}
	}
	return took, nil
}

// settleScript waits up to a minute for systemd's sleep services to be
// done.
const settleScript = `for i in $(seq 300); do
  case "$(systemctl show -p ActiveState --value systemd-hibernate.service systemd-hybrid-sleep.service)" in
  *activating*) sleep 0.2 ;;
  *) exit 0 ;;
  esac
done
echo "systemd-hibernate.service or systemd-hybrid-sleep.service still running after a minute" >&2
exit 1`

// errorf is an error about the current machine that names its console log.
func (g *distroGuest) errorf(format string, a ...any) error {
	return fmt.Errorf("%s (console: %s)", fmt.Sprintf(format, a...), g.m.LogPath())
}

// sh runs a script in the guest and returns its output; a non-zero exit
// is an error that names the script.
func (g *distroGuest) sh(ctx context.Context, script string) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	out, err := g.agent.Must(cctx, script)
	return strings.TrimSpace(out), err
}

// running waits for systemd to finish starting and fails unless every
// unit is fine, naming the failed units and their last journal lines.
// when says at which point of the scenario ("after the resume").
func (g *distroGuest) running(ctx context.Context, when string) error {
	st, _ := g.sh(ctx, "systemctl is-system-running --wait || true")
	if st == "running" {
		return nil
	}
	failed, _ := g.sh(ctx, "systemctl --failed --no-legend --plain | head -5")
	why, _ := g.sh(ctx, "for u in $(systemctl --failed --no-legend --plain | awk '{print $1}' | head -3); do journalctl -b -u \"$u\" -o cat --no-pager | tail -4; done")
	return g.errorf("%s, systemctl is-system-running says %q; failed units: %s; their journal: %s", when, st, failed, strings.ReplaceAll(why, "\n", " | "))
}

// waitOff waits for the machine to power off by itself.
func (g *distroGuest) waitOff(timeout time.Duration) error {
	_, err := g.m.WaitPowerOff(timeout)
	if g.agent != nil {
		g.agent.Close()
	}
	return err
}

// poweroff shuts the guest down the normal way and waits for QEMU to exit.
func (g *distroGuest) poweroff(ctx context.Context) error {
	if _, err := g.agent.Start(ctx, "systemctl poweroff"); err != nil {
		return err
	}
	return g.waitOff(3 * time.Minute)
}

// fsck checks the root filesystem from the host, read-only (e2fsck -fn
// on a copy of partition 1), and returns e2fsck's summary line.
func (g *distroGuest) fsck() (string, error) {
	root := g.env.Path("root.fsck.img")
	defer os.Remove(root)
	p := g.parts[0]
	cmd := exec.Command("dd", "if="+g.disk, "of="+root, "bs=1M", "iflag=skip_bytes,count_bytes",
		"skip="+strconv.FormatInt(p.Start, 10), "count="+strconv.FormatInt(p.Size, 10), "conv=sparse", "status=none")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("copying the root partition: %v: %s", err, out)
	}
	out, err := exec.Command("e2fsck", "-fn", root).CombinedOutput()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	summary := lines[len(lines)-1]
	if err != nil {
		return summary, fmt.Errorf("e2fsck -fn of the root: %v:\n%s", err, out)
	}
	return summary, nil
}

// copySparse copies a disk image, keeping holes.
func copySparse(src, dst string) error {
	out, err := exec.Command("cp", "--sparse=always", src, dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("copying %s: %v: %s", src, err, out)
	}
	return nil
}

func fileHash(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// systemFingerprint prints what installing khib may change: every file
// name under /etc, /usr and /boot (contents only where they matter: the
// boot loader's kernel command line, the initramfs's file list, the
// hibernate unit and enabled units), so that distro-remove can show that
// dpkg -r leaves the system as it was. grub.cfg and the initramfs are
// regenerated by the package's scripts, so their names stay and what is
// compared is what khib would have put in them.
const systemFingerprint = `set -e
find /etc /usr /boot -xdev \( -type f -o -type l \) | grep -v -e '^/etc/machine-id$' -e '^/etc/ld.so.cache$' | LC_ALL=C sort
echo "grub.cfg crashkernel lines: $(grep -c crashkernel= /boot/grub/grub.cfg || true)"
echo "initramfs khib files: $(lsinitramfs /boot/initrd.img-$(uname -r) | grep -c khib || true)"
echo "systemd-hibernate.service: $(systemctl show -p ExecStart --value systemd-hibernate.service | grep -o 'path=[^ ;]*')"
echo "enabled units: $(systemctl list-unit-files --state=enabled --no-legend | awk '{print $1}' | LC_ALL=C sort | tr '\n' ' ')"
echo "kernel command line crashkernel: $(grep -c crashkernel= /proc/cmdline || true)"`

// sleepHook is a system-sleep hook of the test's own: systemd-sleep (or
// khib in its place) runs it with "pre hibernate" and "post hibernate",
// and what it logs must be in the journal of the one boot.
const sleepHook = `#!/bin/sh
logger -t khib-vm-hook "system-sleep hook: $1 $2"
echo "$1 $2 $(cat /proc/sys/kernel/random/boot_id)" >>/var/lib/khib-vm-hook.log
`

// newDistroGuest copies the Debian guest disk into the work directory
// with khib installed: from the cache when this disk and .deb were
// installed before, otherwise by a boot that runs dpkg -i and khib
// configure in the guest, then powers it off. The install is cached
// because it takes a minute or two under TCG and every distro scenario
// starts from it; the cache key covers the base disk and the .deb.
func newDistroGuest(ctx context.Context, env *scenario.Env) (*distroGuest, error) {
	if env.GuestDisk == "" || env.Deb == "" {
		return nil, errors.New("the distro scenarios need --guest-disk (scripts/guest-image.sh) and --deb (make deb)")
	}
	for _, p := range []string{env.GuestDisk, env.Deb} {
		if _, err := os.Stat(p); err != nil {
			return nil, err
		}
	}
	wl, err := env.Bin("khib-workload")
	if err != nil {
		return nil, err
	}
	debHash, err := fileHash(env.Deb)
	if err != nil {
		return nil, err
	}
	wlHash, err := fileHash(wl)
	if err != nil {
		return nil, err
	}
	st, err := os.Stat(env.GuestDisk)
	if err != nil {
		return nil, err
	}
	key := sha256.Sum256([]byte(fmt.Sprintf("%s %d %d %s %s recipe 2", env.GuestDisk, st.Size(), st.ModTime().UnixNano(), debHash, wlHash)))
	cacheDir := filepath.Join(cacheRoot(), "guest-installed", hex.EncodeToString(key[:6]))
	cached := filepath.Join(cacheDir, "disk.raw")

	g := &distroGuest{env: env, disk: env.Path("disk.raw")}
	if g.sig, g.parts, err = diskLabel(env.GuestDisk); err != nil {
		return nil, err
	}
	if _, err := os.Stat(cached); err == nil {
		env.Logf("khib installed in the guest before: %s", cached)
		return g, copySparse(cached, g.disk)
	}
	if err := copySparse(env.GuestDisk, g.disk); err != nil {
		return nil, err
	}
	// The package reaches the guest on a small ext4 disk, as it would on
	// a USB stick.
	dir := env.Path("debdisk")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	for _, c := range [][2]string{{env.Deb, "khib.deb"}, {wl, "khib-workload"}} {
		if err := copySparse(c[0], filepath.Join(dir, c[1])); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "hook"), []byte(sleepHook), 0o755); err != nil {
		return nil, err
	}
	debDisk := env.Path("debdisk.img")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", dir, debDisk, "64M").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("mkfs.ext4 -d for the package disk: %v: %s", err, out)
	}
	g.extra = []vm.Disk{{Path: debDisk, ReadOnly: true}}
	t0 := time.Now()
	if _, err := g.boot(ctx, "install"); err != nil {
		return nil, err
	}
	steps := []string{
		"mkdir -p /mnt/khib-deb && mount -o ro /dev/vdb /mnt/khib-deb",
		"install -m 0755 /mnt/khib-deb/khib-workload /usr/local/bin/khib-workload",
		"install -m 0755 /mnt/khib-deb/hook /usr/lib/systemd/system-sleep/khib-vm-hook",
		// What distro-remove compares with after dpkg -r.
		"mkdir -p /var/lib/khib-vm && (" + systemFingerprint + ") >/var/lib/khib-vm/before-install.txt",
		"DEBIAN_FRONTEND=noninteractive dpkg -i /mnt/khib-deb/khib.deb",
		"umount /mnt/khib-deb && rmdir /mnt/khib-deb",
		"khib configure --target " + g.imageSpec(),
		"grep -q crashkernel= /boot/grub/grub.cfg",
	}
	for _, s := range steps {
		if out, err := g.sh(ctx, s); err != nil {
			return nil, fmt.Errorf("installing khib in the guest: %w", err)
		} else if out != "" {
			env.Logf("  guest: %s", lastLines(out, 3))
		}
	}
	if err := g.poweroff(ctx); err != nil {
		return nil, fmt.Errorf("powering off after the install: %w", err)
	}
	env.Logf("khib installed in the guest by dpkg -i in %.1f s", time.Since(t0).Seconds())
	g.extra = nil
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, err
	}
	tmp := cached + ".tmp"
	if err := copySparse(g.disk, tmp); err != nil {
		return nil, err
	}
	return g, os.Rename(tmp, cached)
}

// bootedDistroGuest is newDistroGuest with its first normal boot done.
func bootedDistroGuest(ctx context.Context, env *scenario.Env) (*distroGuest, error) {
	g, err := newDistroGuest(ctx, env)
	if err != nil {
		return nil, err
	}
	_, err = g.boot(ctx, "boot1")
	return g, err
}

func cacheRoot() string {
	if c := os.Getenv("KHIB_CACHE"); c != "" {
		return c
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "khib")
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, " | ")
}

// redisFill stores known data in the guest's redis-server over loopback
// and opens a held connection: a transient systemd service keeps one TCP
// connection to redis open, answers one PING on it at once, and a second
// command on the same connection when /run/khib-vm-held.go appears.
const redisFill = `set -e
systemctl is-active --quiet redis-server
head -c 1048576 /dev/urandom | base64 -w0 >/run/khib-vm-blob
redis-cli -x SET khib:blob </run/khib-vm-blob >/dev/null
redis-cli SET khib:blob:md5 "$(md5sum </run/khib-vm-blob | cut -c1-32)" >/dev/null
[ "$(redis-cli GET khib:blob | tr -d '\n' | md5sum | cut -c1-32)" = "$(md5sum </run/khib-vm-blob | cut -c1-32)" ]
seq 50000 | awk '{printf "SET khib:key:%d value:%d\r\n", $1, $1}' | redis-cli --pipe >/dev/null
systemd-run --quiet --unit=khib-vm-held /bin/bash -c '
exec 3<>/dev/tcp/127.0.0.1/6379
printf "PING\r\n" >&3; read -r a <&3; echo "$a" >/run/khib-vm-held.1
while [ ! -e /run/khib-vm-held.go ]; do sleep 0.2; done
printf "GET khib:blob:md5\r\n" >&3; read -r n <&3; read -r v <&3; echo "$v" | tr -d "\r" >/run/khib-vm-held.2
sleep infinity'
for i in $(seq 50); do [ -s /run/khib-vm-held.1 ] && break; sleep 0.2; done
grep -q PONG /run/khib-vm-held.1
echo "dbsize=$(redis-cli DBSIZE) pid=$(systemctl show -p MainPID --value redis-server)"`

// redisCheck checks the data and the held connection after the resume.
const redisCheck = `set -e
echo "dbsize=$(redis-cli DBSIZE) pid=$(systemctl show -p MainPID --value redis-server)"
[ "$(redis-cli GET khib:blob | tr -d '\n' | md5sum | cut -c1-32)" = "$(md5sum </run/khib-vm-blob | cut -c1-32)" ] || { echo "blob differs" >&2; exit 1; }
[ "$(redis-cli GET khib:blob:md5)" = "$(md5sum </run/khib-vm-blob | cut -c1-32)" ]
touch /run/khib-vm-held.go
for i in $(seq 50); do [ -s /run/khib-vm-held.2 ] && break; sleep 0.2; done
[ "$(cat /run/khib-vm-held.2)" = "$(md5sum </run/khib-vm-blob | cut -c1-32)" ] || { echo "held connection: $(cat /run/khib-vm-held.2 2>&1)" >&2; exit 1; }
echo held-connection-ok`

var dbsizeRE = regexp.MustCompile(`dbsize=(\d+) pid=(\d+)`)

func init() {
	scenario.Register(scenario.Scenario{
		Name: "distro-cycle",
		Description: "Debian guest booted through GRUB with khib from its .deb: redis-server holds data and a client's " +
			"TCP connection, `systemctl hibernate`, power off, a new QEMU process resumes through the initramfs: same boot ID, " +
			"one journal boot with the sleep hooks, data and connection intact, system running; the next boot is normal, fsck clean",
		Timeout: 30 * time.Minute,
		Run: func(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
			return distroCycle(ctx, env, false, "", nil)
		},
	})
	scenario.Register(scenario.Scenario{
		Name: "distro-s3",
		Description: "distro-cycle with the image in an S3 store (khib-s3d on the host's loopback, a virtio NIC on QEMU's " +
			"user-mode network, systemd-networkd in the guest): khib configure records the network, the initramfs brings " +
			"it up, reads the object and resumes; the restore helper marks the object used",
		Timeout: 30 * time.Minute,
		Run: func(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
			srv, err := startS3(ctx, env)
			if err != nil {
				return nil, err
			}
			defer srv.stop()
			return distroCycle(ctx, env, false, "s3", srv)
		},
	})
	scenario.Register(scenario.Scenario{
		Name: "distro-swap",
		Description: "distro-cycle with the image in the guest's swap partition, in use (khib configure --target swap:PARTUUID=…): " +
			"`systemctl hibernate` saves into its free slots, the initramfs resumes from it, and the swap partition is " +
			"swapped to again, by the resumed system and by the next boot's systemd",
		Timeout: 30 * time.Minute,
		Run: func(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
			return distroCycle(ctx, env, false, "swap", nil)
		},
	})
	scenario.Register(scenario.Scenario{
		Name: "distro-refusal",
		Description: "Debian guest: after `systemctl hibernate` a byte of an image chunk is flipped; stage 1 finds the header " +
			"intact, the restore helper finds the bad chunk as it restores, says why, marks the image used and reboots; the " +
			"next boot says the image was used and goes on to multi-user, with nothing of A restored",
		Timeout: 30 * time.Minute,
		Run: func(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
			return distroCycle(ctx, env, true, "", nil)
		},
	})
}

// swapPartition is the guest disk's swap partition.
const swapPartition = 2

// distroCycle is distro-cycle, or with corrupt distro-refusal; with
// tgt "swap" the image goes into the swap partition (distro-swap).
func distroCycle(ctx context.Context, env *scenario.Env, corrupt bool, tgt string, srv *s3Server) (scenario.Result, error) {
	res := scenario.Result{}
	g, err := newDistroGuest(ctx, env)
	if err != nil {
		return res, err
	}
	if tgt == "s3" {
		// Every boot has the network card: A's, and stage 1's.
		g.qemu = func(string) []string {
			return []string{"-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,mac=" + s3MAC}
		}
	}
	up, err := g.boot(ctx, "boot1")
	if err != nil {
		return res, err
	}
	res["boot_s"] = scenario.Round3(up)
	if err := g.running(ctx, "before hibernating"); err != nil {
		return res, err
	}
	check, err := g.sh(ctx, "khib check --json")
	if err != nil {
		return res, fmt.Errorf("khib check in the installed guest: %w", err)
	}
	var rep struct {
		OK     bool `json:"ok"`
		Checks []struct {
			Name    string `json:"name"`
			OK      bool   `json:"ok"`
			Skipped bool   `json:"skipped"`
		} `json:"checks"`
	}
	if err := json.Unmarshal([]byte(check), &rep); err != nil {
		return res, fmt.Errorf("khib check --json: %w", err)
	}
	var passed []string
	for _, c := range rep.Checks {
		if !c.OK {
			return res, fmt.Errorf("khib check in the installed guest: %s fails: %s", c.Name, lastLines(check, 3))
		}
		if !c.Skipped {
			passed = append(passed, c.Name)
		}
	}
	res["check_passed"] = strings.Join(passed, " ")
	if tgt == "swap" {
		spec := fmt.Sprintf("swap:PARTUUID=%08x-%02d", g.sig, swapPartition)
		out, err := g.sh(ctx, "swapon --show=NAME --noheadings && khib configure --target "+spec+" && grep -E '^(target|resume) ' /etc/khib.conf")
		if err != nil {
			return res, fmt.Errorf("khib configure --target %s: %w", spec, err)
		}
		res["target"], res["configured"] = spec, lastLines(out, 3)
	}
	if tgt == "s3" {
		url := srv.url("distro/image.khib", true)
		steps := []string{
			// A static address on QEMU's user-mode network, by systemd-networkd.
			"mkdir -p /etc/systemd/network && printf '[Match]\\nMACAddress=" + s3MAC + "\\n[Network]\\nAddress=10.0.2.15/24\\nGateway=10.0.2.2\\n' " +
				">/etc/systemd/network/50-khib-test.network && systemctl enable --now systemd-networkd >/dev/null 2>&1; " +
				"for i in $(seq 60); do hostname -I | grep -q 10.0.2.15 && break; sleep 1; done; hostname -I",
			"mkdir -p /etc/khib && umask 077 && printf 'access_key = khibtest\\nsecret_key = khib-test-secret-0123456789\\n' >" + guestCreds,
			"khib configure --target '" + url + "' && grep -E '^(target|net) ' /etc/khib.conf",
		}
		for _, st := range steps {
			out, err := g.sh(ctx, st)
			if err != nil {
				return res, fmt.Errorf("setting up the s3 target: %w", err)
			}
			res["configured"] = lastLines(out, 3)
		}
		res["target"] = url
	}
	if _, err := g.sh(ctx, "systemctl is-active khib-arm.service"); err != nil {
		return res, fmt.Errorf("khib-arm.service did not park the helper: %w", err)
	}
	bootID, err := g.sh(ctx, "cat /proc/sys/kernel/random/boot_id")
	if err != nil {
		return res, err
	}
	fill, err := g.sh(ctx, redisFill)
	if err != nil {
		return res, err
	}
	before := dbsizeRE.FindStringSubmatch(fill)
	if before == nil {
		return res, fmt.Errorf("redis: %q", fill)
	}
	res["redis_keys"], _ = strconv.Atoi(before[1])
	used, _ := g.sh(ctx, `awk '/^MemTotal/{t=$2} /^MemFree/{f=$2} END{print int((t-f)/1024)}' /proc/meminfo`)
	res["a_used_mib"], _ = strconv.Atoi(used)

	// systemctl hibernate: logind, systemd-hibernate.service, khib. The
	// guest powers off by itself.
	t0 := time.Now()
	if _, err := g.agent.Start(ctx, "systemctl hibernate"); err != nil {
		return res, err
	}
	if err := g.waitOff(5 * time.Minute); err != nil {
		return res, fmt.Errorf("after systemctl hibernate: %w", err)
	}
	res["hibernate_s"] = scenario.Round3(time.Since(t0).Seconds())
	if tgt == "s3" {
		ins, err := inspectImage(env, srv.url("distro/image.khib", false))
		if err != nil {
			return res, fmt.Errorf("no complete image in the store after systemctl hibernate: %w", err)
		}
		res["image_mib"] = scenario.Round3(float64(ins.ImageBytes) / (1 << 20))
		res["image_state"] = ins.State
	} else if tgt == "swap" {
		ins, err := inspectPartition(env, g.disk, g.parts[swapPartition-1], "swap:%s@0")
		if err != nil {
			return res, fmt.Errorf("no complete image in the swap partition after systemctl hibernate: %w", err)
		}
		res["image_mib"] = scenario.Round3(float64(ins.ImageBytes) / (1 << 20))
		res["image_state"] = ins.State
	} else if ins, err := inspectPartition(env, g.disk, g.parts[imagePartition-1], ""); err != nil {
		return res, fmt.Errorf("no complete image after systemctl hibernate: %w", err)
	} else {
		res["image_mib"] = scenario.Round3(float64(ins.ImageBytes) / (1 << 20))
		res["image_state"] = ins.State
	}
	if corrupt {
		p := g.parts[imagePartition-1]
		what, err := corruptChunkIn(g.disk, p.Start, p.Size)
		if err != nil {
			return res, err
		}
		res["tamper"] = what
	}

	t1 := time.Now()
	if corrupt {
		// Stage 1 checks the header, index and metadata, which are
		// intact; C finds the flipped chunk as it restores, marks the
		// image used and reboots (QEMU's -no-reboot ends that machine).
		// The boot after it is normal.
		if err := bootRefusedByC(ctx, g, "boot2", res); err != nil {
			return res, err
		}
		if _, err := g.bootAs(ctx, "boot3", true); err != nil {
			return res, err
		}
		id3, err := g.sh(ctx, "cat /proc/sys/kernel/random/boot_id")
		if err != nil {
			return res, err
		}
		return distroRefused(ctx, g, res, bootID, id3)
	}
	if _, err := g.bootAs(ctx, "boot2", corrupt); err != nil {
		return res, err
	}
	id2, err := g.sh(ctx, "cat /proc/sys/kernel/random/boot_id")
	if err != nil {
		return res, err
	}
	res["resume_s"] = scenario.Round3(time.Since(t1).Seconds())
	if id2 != bootID {
		return res, g.errorf("the boot ID changed (%s before, %s after): the guest booted normally instead of resuming", bootID, id2)
	}
	after, err := g.sh(ctx, redisCheck)
	if err != nil {
		return res, fmt.Errorf("redis after the resume: %w", err)
	}
	if a := dbsizeRE.FindStringSubmatch(after); a == nil || a[1] != before[1] || a[2] != before[2] {
		return res, fmt.Errorf("redis after the resume: %q, before: %q", after, fill)
	}
	res["held_connection"] = strings.Contains(after, "held-connection-ok")
	if err := g.running(ctx, "after the resume"); err != nil {
		return res, err
	}
	// One boot in the journal, holding the start of the boot, the
	// hibernation and both runs of the sleep hook.
	j, err := g.sh(ctx, `journalctl -b -o cat --no-pager | grep -E -c 'Linux version|system-sleep hook: (pre|post) hibernate|khib' ; `+
		`journalctl -b -o cat --no-pager | grep -E 'system-sleep hook: (pre|post) hibernate'; journalctl -b -o cat --no-pager -u systemd-hibernate.service | tail -n 5`)
	if err != nil {
		return res, fmt.Errorf("journalctl: %w", err)
	}
	if !strings.Contains(j, "hook: pre hibernate") || !strings.Contains(j, "hook: post hibernate") {
		return res, fmt.Errorf("the journal of the resumed boot lacks the system-sleep hooks: %s", lastLines(j, 8))
	}
	kernelStart, _ := g.sh(ctx, "journalctl -b -k -o cat --no-pager | grep -c 'Linux version' || true")
	if kernelStart != "1" {
		return res, fmt.Errorf("journalctl -b holds %s kernel starts, want 1 (the boot before the hibernation)", kernelStart)
	}
	hooks, _ := g.sh(ctx, "cat /var/lib/khib-vm-hook.log")
	res["hooks"] = hooks
	if tgt == "swap" {
		// The resumed system swaps to it as before, and its signature is
		// back (C gave it back), so a swapoff and swapon work.
		sw, err := g.sh(ctx, "swapon --show=NAME --noheadings && swapoff -a && swapon -a && swapon --show=NAME --noheadings | wc -l")
		if err != nil || !strings.HasSuffix(sw, "1") {
			return res, fmt.Errorf("after the resume, the swap partition is not usable again: %q %v", sw, err)
		}
		res["swap_after_resume"] = "swapoff -a && swapon -a: ok"
	}
	res["journal_tail"] = lastLines(j, 5)

	// The next boot is normal, and the root is clean.
	if err := g.poweroff(ctx); err != nil {
		return res, err
	}
	if res["fsck"], err = g.fsck(); err != nil {
		return res, err
	}
	if _, err := g.boot(ctx, "boot3"); err != nil {
		return res, err
	}
	id3, err := g.sh(ctx, "cat /proc/sys/kernel/random/boot_id")
	if err != nil {
		return res, err
	}
	if id3 == bootID {
		return res, g.errorf("the boot after the resumed one resumed again (boot ID %s)", id3)
	}
	if err := g.running(ctx, "the next boot"); err != nil {
		return res, err
	}
	if tgt == "swap" {
		if n, _ := g.sh(ctx, "swapon --show=NAME --noheadings | wc -l"); n != "1" {
			return res, fmt.Errorf("the next boot: systemd did not swap to the swap partition (%q active)", n)
		}
		res["next_boot_swap"] = "active"
	}
	res["next_boot"] = "normal"
	return res, g.poweroff(ctx)
}

// restoreRefusedRE is the start of the restore helper's refusal.
var restoreRefusedRE = regexp.MustCompile(`khib-restore: NOT resuming`)

// bootRefusedByC powers the guest on with the corrupted image in place:
// the restore helper must refuse it with its reason and reboot.
func bootRefusedByC(ctx context.Context, g *distroGuest, name string, res scenario.Result) error {
	cfg := g.env.Config()
	cfg.Kernel, cfg.Append = "", ""
	cfg.Disks = append([]vm.Disk{{Path: g.disk}}, g.extra...)
	m, err := g.env.Start(ctx, name, cfg)
	if err != nil {
		return err
	}
	g.m = m
	if _, err := m.WaitFor(ctx, restoreRefusedRE, min(g.env.Remaining(), 8*time.Minute)); err != nil {
		return fmt.Errorf("%s: the restore helper did not refuse the corrupted image: %w", name, err)
	}
	exit, err := m.Wait(2 * time.Minute)
	if err != nil {
		return err
	}
	if !exit.Rebooted {
		return g.errorf("after refusing, the restore helper did not reboot: %s", exit)
	}
	var reason []string
	lines := m.Lines()
	for i, l := range lines {
		if restoreRefusedRE.MatchString(l.Text) {
			for _, r := range lines[i:min(i+4, len(lines))] {
				reason = append(reason, strings.TrimSpace(r.Text))
			}
			break
		}
	}
	res["reason"] = strings.Join(reason, " ")
	if !strings.Contains(res["reason"].(string), "checksum mismatch") {
		return fmt.Errorf("the restore helper refused for another reason: %s", res["reason"])
	}
	res["refused_by"] = "restore helper"
	return nil
}

// usedRE is stage 1's word on an image an earlier boot used.
var usedRE = regexp.MustCompile(`hibernation image on .* was used by an earlier boot`)

func distroRefused(ctx context.Context, g *distroGuest, res scenario.Result, before, after string) (scenario.Result, error) {
	if after == before {
		return res, g.errorf("the guest resumed from a corrupted image (boot ID %s)", after)
	}
	if countLines(g.m, usedRE) != 1 {
		return res, g.errorf("the boot after the refusal did not say the image was used")
	}
	if err := g.running(ctx, "after the refusal"); err != nil {
		return res, err
	}
	// Nothing restored: the redis data of the hibernated system is gone
	// (redis never saved it: it was written seconds before).
	keys, _ := g.sh(ctx, "redis-cli DBSIZE")
	res["redis_keys_after"] = keys
	if err := g.poweroff(ctx); err != nil {
		return res, err
	}
	res["fsck"], _ = g.fsck()
	return res, nil
}

// inspectPartition runs khib image inspect on the image partition of a
// disk, copied out.
// inspectPartition copies partition p out of disk and inspects the image
// in it; with form (e.g. "swap:%s@0") the copy's path is put into it.
func inspectPartition(env *scenario.Env, disk string, p partition, form string) (*inspection, error) {
	img, err := extractRange(env, disk, "image.part", p.Start, p.Size)
	if err != nil {
		return nil, err
	}
	defer os.Remove(img)
	if form != "" {
		return inspectImage(env, fmt.Sprintf(form, img))
	}
	return inspectImage(env, img)
}

func init() {
	scenario.Register(scenario.Scenario{
		Name: "distro-filter",
		Description: "Debian guest on the distro kernel (KASLR, vmemmap): the image's uncompressed payload is at most 1.3x " +
			"A's used memory, and the helper's free-page count agrees with A's own (KPF_BUDDY) within 2%",
		Timeout: 30 * time.Minute,
		Run:     distroFilter,
	})
}

// distroFilter hibernates with --return (a snapshot; A goes on), so that
// A's own counts, taken by khib hibernate --count-free after the helper
// is loaded and just before the jump, and the image can be compared in
// one boot.
func distroFilter(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
	res := scenario.Result{}
	g, err := bootedDistroGuest(ctx, env)
	if err != nil {
		return res, err
	}
	mib := workloadMiB(env, 300)
	if _, err := g.sh(ctx, fmt.Sprintf("khib-workload start --mib %d --seed %d --mixed --garbage %d", mib, workloadSeed, garbageMiB)); err != nil {
		return res, err
	}
	// A freshly booted system frees memory for a while (units finishing,
	// udev workers exiting), which would land between A's count and the
	// helper's: let it settle first.
	if _, err := g.sh(ctx, "systemctl is-system-running --wait >/dev/null || true; sleep 5"); err != nil {
		return res, err
	}
	// Which layout the walk met: 5-level paging (LA57) or not, KASLR on
	// unless the command line says nokaslr.
	res["la57"], _ = g.sh(ctx, "grep -q ' la57' /proc/cpuinfo && echo yes || echo no")
	res["kaslr"], _ = g.sh(ctx, "grep -qw nokaslr /proc/cmdline && echo off || echo on")
	hj, err := g.sh(ctx, "khib hibernate --return --json --count-free --target /dev/vda3")
	if err != nil {
		return res, fmt.Errorf("hibernate --return in the guest: %w", err)
	}
	var h struct {
		OK      bool           `json:"ok"`
		Figures map[string]any `json:"figures"`
	}
	if err := jsonUnmarshal(hj[max(0, strings.Index(hj, "{")):], &h); err != nil {
		return res, err
	}
	if _, err := g.sh(ctx, "khib-workload verify"); err != nil {
		return res, fmt.Errorf("the workload after the snapshot: %w", err)
	}
	ij, err := g.sh(ctx, "khib image inspect --json /dev/vda3")
	if err != nil {
		return res, err
	}
	var ins inspection
	if err := jsonUnmarshal(ij, &ins); err != nil {
		return res, err
	}
	num := func(k string) float64 { f, _ := h.Figures[k].(float64); return f }
	kpf, info, pcp, used := num("a_kpf_free_pages"), num("a_buddyinfo_free_pages"), num("a_pcp_free_pages"), num("a_used_kib")*1024
	helperFree, _ := strconv.ParseFloat(ins.Meta.Notes["free_pages"], 64)
	if kpf == 0 || used == 0 || helperFree == 0 {
		return res, fmt.Errorf("missing counts: A's KPF_BUDDY %v, used %v, the helper's %v (hibernate figures %v)", kpf, used, helperFree, h.Figures)
	}
	payload := float64(ins.Pages) * 4096
	res["a_used_mib"] = scenario.Round3(used / (1 << 20))
	res["payload_mib"] = scenario.Round3(payload / (1 << 20))
	res["payload_over_used"] = scenario.Round3(payload / used)
	res["image_mib"] = scenario.Round3(float64(ins.ImageBytes) / (1 << 20))
	res["helper_free_pages"] = helperFree
	res["a_kpf_free_pages"] = kpf
	res["a_buddyinfo_free_pages"] = info
	res["a_pcp_free_pages"] = pcp
	res["free_diff_vs_kpf"] = scenario.Round3((helperFree - kpf) / kpf)
	// A's free pages are its buddy pages (KPF_BUDDY) plus those on its
	// per-CPU lists, which carry no flag and which the kernel hands to the
	// buddy lists in the background, so that by the helper's walk most of
	// them are buddy pages: compare with both.
	dev := (helperFree - (kpf + pcp)) / (kpf + pcp)
	res["free_diff_vs_kpf_plus_pcp"] = scenario.Round3(dev)
	if info > 0 {
		res["free_diff_vs_buddyinfo"] = scenario.Round3((helperFree - info) / info)
	}
	if payload > 1.3*used {
		return res, fmt.Errorf("payload %.0f MiB is %.2fx A's used memory %.0f MiB, want at most 1.3x", payload/(1<<20), payload/used, used/(1<<20))
	}
	if dev > 0.02 || dev < -0.02 {
		return res, fmt.Errorf("the helper counted %.0f free pages, A's KPF_BUDDY walk %.0f plus %.0f on per-CPU lists (%+.1f%%), want within 2%%", helperFree, kpf, pcp, 100*dev)
	}
	return res, nil
}

func jsonUnmarshal(s string, v any) error {
	if err := json.Unmarshal([]byte(s), v); err != nil {
		return fmt.Errorf("khib image inspect --json in the guest: %w", err)
	}
	return nil
}

func init() {
	scenario.Register(scenario.Scenario{
		Name: "distro-remove",
		Description: "Debian guest: dpkg -r khib leaves the system as it was before dpkg -i (files under /etc, /usr, /boot, " +
			"GRUB's command line, the initramfs, the hibernate unit, enabled units), and the next boot has no crashkernel=",
		Timeout: 30 * time.Minute,
		Run:     distroRemove,
	})
}

func distroRemove(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
	res := scenario.Result{}
	g, err := bootedDistroGuest(ctx, env)
	if err != nil {
		return res, err
	}
	if out, err := g.sh(ctx, "DEBIAN_FRONTEND=noninteractive dpkg -r khib 2>&1"); err != nil {
		return res, fmt.Errorf("dpkg -r khib: %w", err)
	} else {
		res["dpkg_r"] = lastLines(out, 4)
	}
	// The running kernel still has its crashkernel= until the reboot, so
	// compare after one.
	if err := g.poweroff(ctx); err != nil {
		return res, err
	}
	if _, err := g.boot(ctx, "boot2"); err != nil {
		return res, err
	}
	diff, err := g.sh(ctx, "("+systemFingerprint+") >/run/after-remove.txt; diff /var/lib/khib-vm/before-install.txt /run/after-remove.txt || true")
	if err != nil {
		return res, err
	}
	if diff != "" {
		return res, fmt.Errorf("after dpkg -r khib and a reboot the system differs from before dpkg -i:\n%s", diff)
	}
	res["compared"], _ = g.sh(ctx, "wc -l </run/after-remove.txt")
	if err := g.running(ctx, "after dpkg -r and a reboot"); err != nil {
		return res, err
	}
	res["same_as_before_install"] = true
	return res, g.poweroff(ctx)
}

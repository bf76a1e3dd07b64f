// Package netconf brings up a helper's network the way the running
// system had it: one IPv4 address on the interface with a given MAC, and
// a default route, in the kernel's ip= command-line form. The helpers and
// stage 1 need it to reach a network target (an S3 store); they have no
// ip or dhclient, so it speaks rtnetlink itself.
package netconf

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Config is one interface's IPv4 setup.
type Config struct {
	Addr    netip.Prefix // address and prefix length
	Gateway netip.Addr   // default route; invalid for none
	Device  string       // interface name, as A calls it
	MAC     string       // the interface's hardware address, to find it under any name
}

// String gives the config in the kernel's ip= form
// (Documentation/admin-guide/nfs/nfsroot.rst), plus the MAC as a ninth
// field that the kernel would ignore:
// client::gateway:netmask::device:off:::mac
func (c Config) String() string {
	gw := ""
	if c.Gateway.IsValid() {
		gw = c.Gateway.String()
	}
	mask := net.IP(net.CIDRMask(c.Addr.Bits(), 32)).String()
	s := fmt.Sprintf("%s::%s:%s::%s:off", c.Addr.Addr(), gw, mask, c.Device)
	if c.MAC != "" {
		s += ":::" + strings.ReplaceAll(c.MAC, ":", "-")
	}
	return s
}

// Parse reads the ip= form String writes (the MAC field optional).
func Parse(s string) (Config, error) {
	f := strings.Split(s, ":")
	if len(f) < 4 {
		return Config{}, fmt.Errorf("ip=%s: want client::gateway:netmask[:hostname:device:off]", s)
	}
	var c Config
	a, err := netip.ParseAddr(f[0])
	if err != nil || !a.Is4() {
		return Config{}, fmt.Errorf("ip=%s: client address %q is not IPv4", s, f[0])
	}
	mask := net.ParseIP(f[3]).To4()
	if mask == nil {
		return Config{}, fmt.Errorf("ip=%s: netmask %q", s, f[3])
	}
	ones, bits := net.IPMask(mask).Size()
	if bits != 32 {
		return Config{}, fmt.Errorf("ip=%s: netmask %q is not contiguous", s, f[3])
	}
	c.Addr = netip.PrefixFrom(a, ones)
	if f[2] != "" {
		if c.Gateway, err = netip.ParseAddr(f[2]); err != nil || !c.Gateway.Is4() {
			return Config{}, fmt.Errorf("ip=%s: gateway %q is not IPv4", s, f[2])
		}
	}
	if len(f) > 5 {
		c.Device = f[5]
	}
	if len(f) > 9 && f[9] != "" {
		if _, err := net.ParseMAC(strings.ReplaceAll(f[9], "-", ":")); err != nil {
			return Config{}, fmt.Errorf("ip=%s: MAC %q", s, f[9])
		}
		c.MAC = strings.ReplaceAll(f[9], "-", ":")
	}
	return c, nil
}

// Route returns the running system's setup for reaching host: the
// interface of its default route (or of the route to host), its IPv4
// address and the gateway, read from /proc/net/route.
func Route(host string) (Config, error) {
	var dst netip.Addr
	if ips, err := net.LookupIP(host); err == nil {
		for _, ip := range ips {
			if a, ok := netip.AddrFromSlice(ip.To4()); ok && ip.To4() != nil {
				dst = a
				break
			}
		}
	}
	f, err := os.Open("/proc/net/route")
	if err != nil {
		return Config{}, err
	}
	defer f.Close()
	best, bestLen := "", -1
	var gw netip.Addr
	s := bufio.NewScanner(f)
	for s.Scan() {
		fl := strings.Fields(s.Text())
		if len(fl) < 8 || fl[0] == "Iface" {
			continue
		}
		d, g, m := hexIP(fl[1]), hexIP(fl[2]), hexIP(fl[7])
		bits := prefixLen(m)
		p := netip.PrefixFrom(d, bits)
		if dst.IsValid() && !p.Contains(dst) {
			continue
		}
		if !dst.IsValid() && bits != 0 {
			continue
		}
		if bits > bestLen {
			best, bestLen, gw = fl[0], bits, g
		}
	}
	if best == "" {
		return Config{}, fmt.Errorf("no route to %s: bring the network up first", host)
	}
	ifi, err := net.InterfaceByName(best)
	if err != nil {
		return Config{}, err
	}
	c := Config{Device: best, MAC: ifi.HardwareAddr.String()}
	if gw != netip.IPv4Unspecified() {
		c.Gateway = gw
	}
	addrs, _ := ifi.Addrs()
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() {
			c.Addr = p
			return c, nil
		}
	}
	return Config{}, fmt.Errorf("interface %s has no IPv4 address", best)
}

func hexIP(s string) netip.Addr {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 4 {
		return netip.Addr{}
	}
	// /proc/net/route prints the address as a host-order (little-endian) word.
	return netip.AddrFrom4([4]byte{b[3], b[2], b[1], b[0]})
}

func prefixLen(m netip.Addr) int {
	if !m.IsValid() {
		return 0
	}
	b := m.As4()
	ones, _ := net.IPMask(b[:]).Size()
	return ones
}

// Apply sets c up in this kernel: the interface (found by MAC, else by
// name, else the first that is not loopback) up with c's address, and the
// default route. It waits up to timeout for the interface to appear.
func Apply(c Config, timeout time.Duration) (string, error) {
	var ifi *net.Interface
	deadline := time.Now().Add(timeout)
	for {
		ifi = find(c)
		if ifi != nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if ifi == nil {
		return "", fmt.Errorf("no network interface (MAC %s, name %s): the kernel may lack its driver", c.MAC, c.Device)
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return "", fmt.Errorf("netlink: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return "", fmt.Errorf("netlink: %w", err)
	}
	up := make([]byte, unix.SizeofIfInfomsg)
	up[0] = unix.AF_UNSPEC
	binary.LittleEndian.PutUint32(up[4:], uint32(ifi.Index))
	binary.LittleEndian.PutUint32(up[8:], unix.IFF_UP)  // flags
	binary.LittleEndian.PutUint32(up[12:], unix.IFF_UP) // change
	if err := request(fd, unix.RTM_NEWLINK, 0, up); err != nil {
		return "", fmt.Errorf("bringing %s up: %w", ifi.Name, err)
	}
	a4 := c.Addr.Addr().As4()
	am := []byte{unix.AF_INET, byte(c.Addr.Bits()), 0, unix.RT_SCOPE_UNIVERSE, 0, 0, 0, 0}
	binary.LittleEndian.PutUint32(am[4:], uint32(ifi.Index))
	am = append(am, attr(unix.IFA_LOCAL, a4[:])...)
	am = append(am, attr(unix.IFA_ADDRESS, a4[:])...)
	if err := request(fd, unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, am); err != nil {
		return "", fmt.Errorf("address %s on %s: %w", c.Addr, ifi.Name, err)
	}
	if c.Gateway.IsValid() {
		g4 := c.Gateway.As4()
		rt := []byte{unix.AF_INET, 0, 0, 0, unix.RT_TABLE_MAIN, unix.RTPROT_BOOT, unix.RT_SCOPE_UNIVERSE, unix.RTN_UNICAST, 0, 0, 0, 0}
		rt = append(rt, attr(unix.RTA_GATEWAY, g4[:])...)
		oif := make([]byte, 4)
		binary.LittleEndian.PutUint32(oif, uint32(ifi.Index))
		rt = append(rt, attr(unix.RTA_OIF, oif)...)
		if err := request(fd, unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, rt); err != nil {
			return "", fmt.Errorf("default route via %s: %w", c.Gateway, err)
		}
	}
	return ifi.Name, nil
}

// Remove undoes Apply: it takes c's address off the interface (its
// routes go with it) and brings the interface down, so that a system
// booting on finds it as its firmware left it.
func Remove(c Config) error {
	ifi := find(c)
	if ifi == nil {
		return nil
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	a4 := c.Addr.Addr().As4()
	am := []byte{unix.AF_INET, byte(c.Addr.Bits()), 0, unix.RT_SCOPE_UNIVERSE, 0, 0, 0, 0}
	binary.LittleEndian.PutUint32(am[4:], uint32(ifi.Index))
	am = append(am, attr(unix.IFA_LOCAL, a4[:])...)
	if err := request(fd, unix.RTM_DELADDR, 0, am); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("removing %s from %s: %w", c.Addr, ifi.Name, err)
	}
	down := make([]byte, unix.SizeofIfInfomsg)
	down[0] = unix.AF_UNSPEC
	binary.LittleEndian.PutUint32(down[4:], uint32(ifi.Index))
	binary.LittleEndian.PutUint32(down[12:], unix.IFF_UP) // change: flags stay 0
	return request(fd, unix.RTM_NEWLINK, 0, down)
}

func find(c Config) *net.Interface {
	all, err := net.Interfaces()
	if err != nil {
		return nil
	}
	for i := range all {
		if c.MAC != "" && strings.EqualFold(all[i].HardwareAddr.String(), c.MAC) {
			return &all[i]
		}
	}
	for i := range all {
		if c.Device != "" && all[i].Name == c.Device {
			return &all[i]
		}
	}
	if c.MAC == "" {
		for i := range all {
			if all[i].Flags&net.FlagLoopback == 0 {
				return &all[i]
			}
		}
	}
	return nil
}

func attr(typ uint16, data []byte) []byte {
	n := unix.SizeofRtAttr + len(data)
	b := make([]byte, (n+3)&^3)
	binary.LittleEndian.PutUint16(b[0:], uint16(n))
	binary.LittleEndian.PutUint16(b[2:], typ)
	copy(b[unix.SizeofRtAttr:], data)
	return b
}

var seq uint32

// request sends one rtnetlink request with NLM_F_ACK and reads the ack.
func request(fd int, typ uint16, flags uint16, body []byte) error {
	seq++
	n := unix.SizeofNlMsghdr + len(body)
	msg := make([]byte, n)
	binary.LittleEndian.PutUint32(msg[0:], uint32(n))
	binary.LittleEndian.PutUint16(msg[4:], typ)
	binary.LittleEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK|flags)
	binary.LittleEndian.PutUint32(msg[8:], seq)
	copy(msg[unix.SizeofNlMsghdr:], body)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 8192)
	for {
		k, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:k])
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Seq != seq || m.Header.Type != unix.NLMSG_ERROR {
				continue
			}
			if len(m.Data) < 4 {
				return errors.New("short netlink ack")
			}
			if e := int32(binary.LittleEndian.Uint32(m.Data)); e != 0 {
				if unix.Errno(-e) == unix.EEXIST {
					return nil
				}
				return unix.Errno(-e)
			}
			return nil
		}
	}
}

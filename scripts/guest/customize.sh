#!/bin/sh
# mmdebstrap --customize-hook of scripts/guest-image.sh: turns the
# bootstrapped Debian tree into khib's guest. It runs on the host, after
# every package is installed, with the tree as $1 and its /proc, /sys and
# /dev mounted by mmdebstrap; commands meant for the guest go through
# chroot "$1". Everything it needs comes from the environment that
# guest-image.sh exports:
#   KHIB_GUEST_FILES    scripts/guest (this directory)
#   KHIB_GUEST_KERNEL   the distro kernel's staging directory (root/, release)
#   KHIB_GUEST_RELEASE  its release, e.g. 6.12.118-khib
#   KHIB_GUEST_ROOT_UUID, KHIB_GUEST_SWAP_UUID  the filesystems to be made
#   KHIB_GUEST_MANIFEST  where to write the list of installed packages
#
# Nothing here may touch a block device: the chroot sees the host's /dev
# and /sys, and the host's own disk may well be /dev/vda too. So no
# grub-install, grub-probe or update-grub here; GRUB's boot sectors are
# written into the image file by guest-image.sh, from the core.img made
# below.
set -eu

root=$1
files=$KHIB_GUEST_FILES
rel=$KHIB_GUEST_RELEASE
in_root() { chroot "$root" "$@"; }
say() { echo "guest-image: customize: $*" >&2; }

# The kernel command line, one source: GRUB_CMDLINE_LINUX of grub-default.
cmdline=$(sed -n 's/^GRUB_CMDLINE_LINUX="\(.*\)"$/\1/p' "$files/grub-default")

say "system files"
echo khib-guest >"$root/etc/hostname"
cat >"$root/etc/hosts" <<HOSTS
127.0.0.1	localhost
127.0.1.1	khib-guest
::1		localhost ip6-localhost ip6-loopback
ff02::1		ip6-allnodes
ff02::2		ip6-allrouters
HOSTS
# mmdebstrap copied the host's resolv.conf; the guest has no network of its own.
: >"$root/etc/resolv.conf"
cat >"$root/etc/fstab" <<FSTAB
# /etc/fstab of khib's guest. Partition 3 (PARTUUID=<disk id>-03) is
# khib's image partition: unformatted, never mounted.
# <file system>	<mount point>	<type>	<options>	<dump>	<pass>
UUID=$KHIB_GUEST_ROOT_UUID	/	ext4	errors=remount-ro	0	1
UUID=$KHIB_GUEST_SWAP_UUID	none	swap	sw	0	0
FSTAB
# A test VM: root logs in on the serial console without a password
# (Debian's pam_unix has nullok).
in_root passwd -d root >/dev/null
# systemd's getty generator starts serial-getty@ttyS0 because console=ttyS0
# is on the command line; the link makes it independent of the command line.
mkdir -p "$root/etc/systemd/system/getty.target.wants"
ln -sf /lib/systemd/system/serial-getty@.service \
	"$root/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service"
# No display manager: multi-user.target is the whole system.
ln -sf /lib/systemd/system/multi-user.target "$root/etc/systemd/system/default.target"

say "debconf: grub-pc installs to /dev/vda from now on"
# Only the answers: no grub-install runs here. grub-pc's postinst runs
# grub-install on upgrades (it finds /boot/grub/i386-pc/core.img), and in
# the booted guest /dev/vda is this disk. The command line answers match
# grub-default, so the config script reads back what is there.
in_root debconf-set-selections <<DEBCONF
grub-pc grub-pc/install_devices multiselect /dev/vda
grub-pc grub-pc/install_devices seen true
grub-pc grub-pc/install_devices_empty boolean false
grub-pc grub2/linux_cmdline string $cmdline
grub-pc grub2/linux_cmdline seen true
grub-pc grub2/linux_cmdline_default string
grub-pc grub2/linux_cmdline_default seen true
grub-pc grub-pc/timeout string 0
grub-pc grub-pc/hidden_timeout boolean false
grub-pc grub2/enable_os_prober boolean false
DEBCONF
cp "$files/grub-default" "$root/etc/default/grub"

say "kernel $rel"
cp "$KHIB_GUEST_KERNEL/root/boot/vmlinuz-$rel" "$KHIB_GUEST_KERNEL/root/boot/config-$rel" \
	"$KHIB_GUEST_KERNEL/root/boot/System.map-$rel" "$root/boot/"
# /lib is a link to usr/lib in bookworm: go through it, do not replace it.
mkdir -p "$root/lib/modules"
rm -rf "$root/lib/modules/$rel"
cp -a "$KHIB_GUEST_KERNEL/root/lib/modules/$rel" "$root/lib/modules/"
in_root depmod "$rel"

say "initramfs"
cp "$files/initramfs-modules" "$root/etc/initramfs-tools/modules"
# MODULES=most (Debian's default) also takes every block and filesystem
# module; =dep would look at the host's devices from inside this chroot.
sed -i 's/^MODULES=.*/MODULES=most/' "$root/etc/initramfs-tools/initramfs.conf"
# The fsck hook cannot see the root device from a chroot: say what it is, so
# that fsck.ext4 goes into the initramfs.
sed -i "s/^FSTYPE=.*/FSTYPE=ext4/" "$root/etc/initramfs-tools/initramfs.conf"
# Linux's own hibernation resumes from the swap partition, as the Debian
# installer would set it up. (update-initramfs warns that it finds no such swap
# device: it looks at the host. The setting goes into the initramfs anyway.)
echo "RESUME=UUID=$KHIB_GUEST_SWAP_UUID" >"$root/etc/initramfs-tools/conf.d/resume"
in_root update-initramfs -c -k "$rel" >&2
for m in virtio_blk.ko ext4.ko jbd2.ko mbcache.ko crc16.ko crc32c_generic.ko; do
	if ! in_root lsinitramfs "/boot/initrd.img-$rel" | grep -q "/$m"; then
		say "the initramfs lacks $m"
		exit 1
	fi
done

say "GRUB"
# What grub-install would put in /boot/grub: the i386-pc modules (normal.mod
# and the rest are loaded from there), core.img, an environment block, and
# a device map naming the guest's disk.
mkdir -p "$root/boot/grub/i386-pc"
cp -a "$root/usr/lib/grub/i386-pc/." "$root/boot/grub/i386-pc/"
# core.img: diskboot.img + lzma_decompress.img + the kernel with what it
# needs to reach /boot/grub on partition 1 of the BIOS boot disk. Its first
# sector's blocklist says "the rest starts at sector 2", which is where it
# goes: guest-image.sh puts it at sector 1, right after the MBR.
in_root grub-mkimage -O i386-pc -p '(hd0,msdos1)/boot/grub' \
	-o /boot/grub/i386-pc/core.img biosdisk part_msdos ext2
in_root grub-editenv /boot/grub/grubenv create
echo '(hd0)	/dev/vda' >"$root/boot/grub/device.map"
sed -e "s|@ROOT_UUID@|$KHIB_GUEST_ROOT_UUID|g" -e "s|@RELEASE@|$rel|g" -e "s|@CMDLINE@|$cmdline|g" \
	"$files/grub.cfg.in" >"$root/boot/grub/grub.cfg"
chmod 444 "$root/boot/grub/grub.cfg"

# The guest's manifest, kept next to the image.
in_root dpkg-query -W -f '${Package} ${Version}\n' >"$KHIB_GUEST_MANIFEST"

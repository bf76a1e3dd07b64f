#!/bin/sh
# Build khib's Debian 12 guest: a raw virtio disk image that boots through
# GRUB (BIOS) into khib's distro kernel.
#
# Usage: scripts/guest-image.sh [KERNEL_DIR]          build (or reuse) and print the disk.raw path
#        scripts/guest-image.sh [KERNEL_DIR] --path   print where disk.raw would be, build nothing
#
# KERNEL_DIR (or $KHIB_DISTRO_KERNEL) is the staging directory of the
# distro kernel, by default what `kernel/build.sh distro --path` prints:
# release (REL) and root/boot/vmlinuz-REL, config-REL, System.map-REL,
# root/lib/modules/REL/. The guest gets that kernel, not Debian's.
#
# The disk (sizes in MiB, offsets from the start of the disk; disk.env and
# disk.json next to the image give them in bytes, with the IDs):
#   sector 0        MBR: GRUB's boot.img, msdos partition table, disk id
#                   0x6b686962 ("khib")
#   sectors 1..     GRUB's core.img, in the gap before partition 1
#   1 MiB     2560  partition 1, ext4 "khib-root", the root filesystem
#   2561 MiB   512  partition 2, swap "khib-swap"
#   3073 MiB  1280  partition 3, unformatted: khib's hibernation image
#                   (PARTUUID 6b686962-03)
# The file is sparse. The UUIDs are fixed (below), so the guest's fstab and
# the rig can name them; several copies of the disk are never attached to
# one VM.
#
# The root filesystem is made by mmdebstrap from deb.debian.org (bookworm,
# bookworm-updates, bookworm-security) with the packages in
# scripts/guest/packages, then made into the guest by
# scripts/guest/customize.sh (system files, the kernel and its initramfs,
# GRUB's files). No loop device, mount or grub-install is used: the
# filesystems are made in files (mkfs.ext4 -d, mkswap), the partition table
# on the image file (sfdisk), and GRUB's two boot images are written into
# the file's first sectors here, after checking the sector numbers in them.
#
# The result is cached in
#   ${KHIB_CACHE:-$HOME/.cache/khib}/guest/bookworm-<release>-<hash>/
# (disk.raw, disk.env, disk.json, manifest, build.log, build-seconds),
# where the hash covers scripts/guest/*, this script and the kernel's
# release and vmlinuz. A second run with the same inputs prints the path at
# once. Downloaded .debs are kept in .../guest/debs for the next build.
# Never boot the cached disk.raw itself: boot a copy
# (cp --sparse=always).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
self="$here/$(basename "$0")"
repo=$(dirname "$here")
files="$here/guest"
cache=${KHIB_CACHE:-$HOME/.cache/khib}

# The layout, in MiB. Partition 1 starts at 1 MiB: sectors 1..2047 hold
# GRUB's core.img.
root_start=1
root_mib=2560
swap_mib=512
image_mib=1280
swap_start=$((root_start + root_mib))
image_start=$((swap_start + swap_mib))
disk_mib=$((image_start + image_mib))
# The IDs. An msdos PARTUUID is <disk id>-<partition number>.
disk_id=6b686962
root_uuid=6b686962-726f-4f74-a000-000000000001
swap_uuid=6b686962-7377-4170-a000-000000000002
mib=1048576

say() { echo "guest-image: $*" >&2; }

path_only=
kdir=${KHIB_DISTRO_KERNEL:-}
for arg in "$@"; do
	case "$arg" in
	--path) path_only=1 ;;
	-*)
		echo "usage: scripts/guest-image.sh [KERNEL_DIR] [--path]" >&2
		exit 2
		;;
	*) kdir=$arg ;;
	esac
done
if [ -z "$kdir" ]; then
	kdir=$("$repo/kernel/build.sh" distro --path)
fi
if [ ! -f "$kdir/release" ]; then
	say "no distro kernel in $kdir (no release file); build it with: kernel/build.sh distro"
	exit 1
fi
kdir=$(cd "$kdir" && pwd)
rel=$(cat "$kdir/release")
vmlinuz="$kdir/root/boot/vmlinuz-$rel"
for f in "$vmlinuz" "$kdir/root/boot/config-$rel" "$kdir/root/lib/modules/$rel/modules.dep"; do
	if [ ! -f "$f" ]; then
		say "$f is missing: $kdir is not a complete kernel staging directory"
		exit 1
	fi
done

# The cache key: every input that changes what is built.
hash=$(
	for f in $(cd "$files" && ls | LC_ALL=C sort); do
		echo "== $f"
		cat "$files/$f"
	done
	echo "== guest-image.sh"
	cat "$self"
	echo "== kernel $rel"
	sha256sum <"$vmlinuz"
)
hash=$(echo "$hash" | sha256sum | cut -c1-12)
out="$cache/guest/bookworm-$rel-$hash"
if [ -n "$path_only" ]; then
	echo "$out/disk.raw"
	exit 0
fi
if [ -f "$out/disk.raw" ]; then
	echo "$out/disk.raw"
	exit 0
fi

# The host's tools, installed when missing (as scripts/deps.sh does).
need="mmdebstrap fdisk e2fsprogs util-linux"
missing=""
for p in $need; do
	if ! dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing="$missing $p"
	fi
done
if [ -n "$missing" ]; then
	if [ "$(id -u)" != 0 ]; then
		say "missing packages:$missing; run as root or: sudo apt-get install$missing"
		exit 1
	fi
	say "installing$missing"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
if [ "$(id -u)" != 0 ]; then
	say "mmdebstrap runs in root mode here: run as root"
	exit 1
fi

# One build at a time; whoever waited may find the image made meanwhile.
mkdir -p "$cache/guest/debs"
exec 9>"$cache/guest/.lock"
flock 9
if [ -f "$out/disk.raw" ]; then
	echo "$out/disk.raw"
	exit 0
fi

tmp="$cache/guest/.build-$rel-$hash-$$"
log="$tmp/build.log"
# cleanup: on any exit, remove the build directory, unless something is
# still mounted below it (rm must never walk into a /proc or /dev). A
# failed build leaves its log in .../guest/failed-<release>-<hash>.log.
cleanup() {
	rc=$?
	[ -d "$tmp" ] || exit $rc
	if [ "$rc" != 0 ] && [ -f "$log" ]; then
		cp "$log" "$cache/guest/failed-$rel-$hash.log"
		say "failed; the last lines of $cache/guest/failed-$rel-$hash.log:"
		tail -n 25 "$log" >&2
	fi
	if grep -q " $tmp/" /proc/mounts; then
		say "$tmp still has mounts below it; not removing it"
	else
		rm -rf --one-file-system "$tmp"
	fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
rm -rf "$tmp"
mkdir -p "$tmp"
start=$(date +%s)

# The root filesystem. mmdebstrap's "apt" variant (Essential: yes and apt)
# plus the package list; no Recommends, no manuals, documentation or
# translations (the dpkg filters stay in the guest for later installs).
pkgs=$(grep -v '^#' "$files/packages" | grep . | tr '\n' ',' | sed 's/,$//')
say "bootstrapping Debian bookworm into $tmp/root (log: $log)"
export KHIB_GUEST_FILES="$files" KHIB_GUEST_KERNEL="$kdir" KHIB_GUEST_RELEASE="$rel"
export KHIB_GUEST_ROOT_UUID="$root_uuid" KHIB_GUEST_SWAP_UUID="$swap_uuid"
export KHIB_GUEST_MANIFEST="$tmp/manifest"
mmdebstrap --mode=root --variant=apt --arch=amd64 --format=directory \
	--include="$pkgs" \
	--aptopt='APT::Install-Recommends "false"' \
	--aptopt='APT::Install-Suggests "false"' \
	--dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/info/*' \
	--dpkgopt='path-exclude=/usr/share/doc/*' \
	--dpkgopt='path-include=/usr/share/doc/*/copyright' \
	--dpkgopt='path-exclude=/usr/share/locale/*' \
	--dpkgopt='path-include=/usr/share/locale/locale.alias' \
	--dpkgopt='path-exclude=/usr/share/lintian/*' \
	--skip=essential/unlink \
	--setup-hook='mkdir -p "$1/var/cache/apt/archives"' \
	--setup-hook="sync-in $cache/guest/debs /var/cache/apt/archives/" \
	--customize-hook="sync-out /var/cache/apt/archives $cache/guest/debs" \
	--customize-hook='"$KHIB_GUEST_FILES/customize.sh" "$1"' \
	bookworm "$tmp/root" \
	"deb http://deb.debian.org/debian bookworm main" \
	"deb http://deb.debian.org/debian bookworm-updates main" \
	"deb http://deb.debian.org/debian-security bookworm-security main" \
	>>"$log" 2>&1
rm -f "$cache/guest/debs/lock"
rm -rf "$cache/guest/debs/partial"
boot_img="$tmp/root/usr/lib/grub/i386-pc/boot.img"
core_img="$tmp/root/boot/grub/i386-pc/core.img"
cp "$boot_img" "$core_img" "$tmp/"

# The filesystems, each in a file of its partition's size.
say "ext4 root filesystem ($root_mib MiB) from the tree"
truncate -s "${root_mib}M" "$tmp/root.ext4"
mkfs.ext4 -q -F -L khib-root -U "$root_uuid" -d "$tmp/root" "$tmp/root.ext4" >>"$log" 2>&1
e2fsck -fn "$tmp/root.ext4" >>"$log" 2>&1
if grep -q " $tmp/" /proc/mounts; then
	say "$tmp has mounts below it after mmdebstrap"
	exit 1
fi
rm -rf --one-file-system "$tmp/root"
truncate -s "${swap_mib}M" "$tmp/swap.img"
chmod 600 "$tmp/swap.img"
mkswap -L khib-swap -U "$swap_uuid" "$tmp/swap.img" >>"$log" 2>&1

# The disk: partition table, then each filesystem copied into place
# (conv=sparse skips the zeros, so the file stays sparse).
say "disk image ($disk_mib MiB, sparse)"
disk="$tmp/disk.raw"
truncate -s "${disk_mib}M" "$disk"
sfdisk --no-reread --no-tell-kernel -q "$disk" >>"$log" 2>&1 <<EOF
label: dos
label-id: 0x$disk_id
unit: sectors

start=$((root_start * 2048)), size=$((root_mib * 2048)), type=83, bootable
start=$((swap_start * 2048)), size=$((swap_mib * 2048)), type=82
start=$((image_start * 2048)), size=$((image_mib * 2048)), type=da
EOF
dd if="$tmp/root.ext4" of="$disk" bs=1M seek="$root_start" conv=notrunc,sparse status=none
dd if="$tmp/swap.img" of="$disk" bs=1M seek="$swap_start" conv=notrunc,sparse status=none
rm -f "$tmp/root.ext4" "$tmp/swap.img"

# u8/u16/u64 FILE OFFSET: a little-endian number read from FILE.
u8() { od -An -tu1 -j"$2" -N1 "$1" | tr -d ' '; }
u16() { od -An -tu2 --endian=little -j"$2" -N2 "$1" | tr -d ' '; }
u64() { od -An -tu8 --endian=little -j"$2" -N8 "$1" | tr -d ' '; }

# GRUB, as grub-install's setup would embed it (grub-core/boot/i386/pc/
# boot.S and diskboot.S; include/grub/i386/pc/boot.h):
#  - boot.img is the MBR's code: its first 440 bytes go to sector 0, in
#    front of the disk id and partition table. It loads one sector, the
#    LBA at 0x5c (kernel_sector, u64), to 0x8000 and jumps there; its byte
#    at 0x64 (boot_drive) is 0xff, "the drive the BIOS booted from". That
#    sector is core.img's first, so kernel_sector must be 1, which is
#    boot.img's default. grub-setup also turns the jmp at 0x66 into two
#    nops on hard disks, so that a BIOS passing a bad drive number in DL
#    gets 0x80 instead; so do we.
#  - core.img's first sector is diskboot.img, which loads the rest from
#    the blocklist in its last 12 bytes (start u64, sectors u16, segment
#    u16). grub-mkimage leaves start at 2 and sets the count; with core.img
#    written from sector 1 contiguously, the rest starts at sector 2, so
#    that list is right as it is. It must end before partition 1.
say "GRUB boot.img and core.img into sectors 0 and 1.."
boot_size=$(stat -c %s "$tmp/boot.img")
core_size=$(stat -c %s "$tmp/core.img")
core_sectors=$(((core_size + 511) / 512))
bad=""
[ "$boot_size" = 512 ] || bad="$bad boot.img is $boot_size bytes, not 512;"
[ "$(u64 "$tmp/boot.img" 92)" = 1 ] || bad="$bad boot.img's kernel_sector is $(u64 "$tmp/boot.img" 92), not 1;"
[ "$(u8 "$tmp/boot.img" 100)" = 255 ] || bad="$bad boot.img's boot_drive is $(u8 "$tmp/boot.img" 100), not 0xff;"
[ "$(u8 "$tmp/boot.img" 102)" = 235 ] || bad="$bad boot.img has no short jmp at 0x66;"
[ "$(u64 "$tmp/core.img" 500)" = 2 ] || bad="$bad core.img's blocklist starts at $(u64 "$tmp/core.img" 500), not 2;"
[ "$(u16 "$tmp/core.img" 508)" = $((core_sectors - 1)) ] || bad="$bad core.img's blocklist has $(u16 "$tmp/core.img" 508) sectors, not $((core_sectors - 1));"
[ "$(u16 "$tmp/core.img" 510)" = $((0x820)) ] || bad="$bad core.img's blocklist segment is $(u16 "$tmp/core.img" 510), not 0x820;"
[ $((1 + core_sectors)) -le $((root_start * 2048)) ] || bad="$bad core.img ($core_sectors sectors) does not fit before partition 1;"
if [ -n "$bad" ]; then
	say "GRUB's images are not what this script knows:$bad"
	exit 1
fi
dd if="$tmp/boot.img" of="$disk" bs=440 count=1 conv=notrunc status=none
printf '\220\220' | dd of="$disk" bs=1 seek=102 conv=notrunc status=none
dd if="$tmp/core.img" of="$disk" bs=512 seek=1 conv=notrunc status=none
[ "$(u16 "$disk" 510)" = $((0xaa55)) ] || {
	say "the MBR lost its signature"
	exit 1
}

# Check the result from outside: the table and each filesystem's ID.
sfdisk -d "$disk" >>"$log" 2>&1
got=$(blkid -p -O $((root_start * mib)) -o value -s UUID "$disk")
[ "$got" = "$root_uuid" ] || {
	say "partition 1 has UUID '$got', not $root_uuid"
	exit 1
}
got=$(blkid -p -O $((swap_start * mib)) -o value -s UUID "$disk")
[ "$got" = "$swap_uuid" ] || {
	say "partition 2 has UUID '$got', not $swap_uuid"
	exit 1
}

# What the rig and the tests need to know about the disk.
cat >"$tmp/disk.env" <<EOF
KHIB_GUEST_RELEASE=$rel
KHIB_GUEST_DISK_SIZE=$((disk_mib * mib))
KHIB_GUEST_DISK_ID=0x$disk_id
KHIB_GUEST_ROOT_DEVICE=/dev/vda1
KHIB_GUEST_ROOT_UUID=$root_uuid
KHIB_GUEST_ROOT_PARTUUID=$disk_id-01
KHIB_GUEST_ROOT_OFFSET=$((root_start * mib))
KHIB_GUEST_ROOT_SIZE=$((root_mib * mib))
KHIB_GUEST_SWAP_DEVICE=/dev/vda2
KHIB_GUEST_SWAP_UUID=$swap_uuid
KHIB_GUEST_SWAP_PARTUUID=$disk_id-02
KHIB_GUEST_SWAP_OFFSET=$((swap_start * mib))
KHIB_GUEST_SWAP_SIZE=$((swap_mib * mib))
KHIB_GUEST_IMAGE_DEVICE=/dev/vda3
KHIB_GUEST_IMAGE_PARTUUID=$disk_id-03
KHIB_GUEST_IMAGE_OFFSET=$((image_start * mib))
KHIB_GUEST_IMAGE_SIZE=$((image_mib * mib))
EOF
cat >"$tmp/disk.json" <<EOF
{
  "release": "$rel",
  "disk_size": $((disk_mib * mib)),
  "disk_id": "0x$disk_id",
  "partitions": [
    {"number": 1, "name": "root", "device": "/dev/vda1", "fstype": "ext4", "label": "khib-root", "uuid": "$root_uuid", "partuuid": "$disk_id-01", "offset": $((root_start * mib)), "size": $((root_mib * mib))},
    {"number": 2, "name": "swap", "device": "/dev/vda2", "fstype": "swap", "label": "khib-swap", "uuid": "$swap_uuid", "partuuid": "$disk_id-02", "offset": $((swap_start * mib)), "size": $((swap_mib * mib))},
    {"number": 3, "name": "image", "device": "/dev/vda3", "fstype": "", "label": "", "uuid": "", "partuuid": "$disk_id-03", "offset": $((image_start * mib)), "size": $((image_mib * mib))}
  ]
}
EOF

end=$(date +%s)
echo "$((end - start))" >"$tmp/build-seconds"
rm -f "$tmp/boot.img" "$tmp/core.img"
mv -T "$tmp" "$out"
say "built in $((end - start)) s: $(du -h "$out/disk.raw" | cut -f1) used of $disk_mib MiB"
echo "$out/disk.raw"

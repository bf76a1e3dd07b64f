#!/bin/sh
# Build khib's Debian package without debhelper.
#
# Usage: scripts/build-deb.sh [VERSION [OUTDIR [HELPER_BZIMAGE]]]
#
#   VERSION         package version (default: 0.1~git<commit>, +dirty when
#                   the tree has changes)
#   OUTDIR          where khib_<VERSION>_amd64.deb goes (default: bin)
#   HELPER_BZIMAGE  the helper kernel (default: kernel/build.sh --path, which
#                   must have been built: make kernel)
#
# Prints the path of the package. The package holds /usr/sbin/khib (static),
# /usr/lib/khib/bzImage, the initramfs-tools hook and boot script, the GRUB
# drop-in, the systemd units and drop-ins, and the docs; see
# docs/system-integration.md. No file is a dpkg conffile, so that dpkg -r
# removes every one of them.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
export PATH="/usr/local/go/bin:$PATH"
cd "$here"

version=${1:-}
if [ -z "$version" ]; then
	rev=$(git rev-parse --short=10 HEAD 2>/dev/null || echo unknown)
	version="0.1~git$rev"
	if [ -n "$(git status --porcelain -- cmd internal packaging scripts/build-deb.sh go.mod go.sum 2>/dev/null)" ]; then
		version="$version+dirty"
	fi
fi
case "$version" in
[0-9]*) ;;
*)
	echo "build-deb: version $version must start with a digit (Debian policy 5.6.12)" >&2
	exit 2
	;;
esac
if ! dpkg --validate-version "$version" 2>/dev/null; then
	echo "build-deb: $version is not a valid Debian version" >&2
	exit 2
fi
outdir=${2:-bin}
kernel=${3:-$(kernel/build.sh --path)}
if [ ! -r "$kernel" ]; then
	echo "build-deb: no helper kernel at $kernel: build it with make kernel (kernel/build.sh), or give its path as the third argument" >&2
	exit 1
fi

stage=$(mktemp -d "${TMPDIR:-/tmp}/khib-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT INT TERM
root="$stage/root"

d() { install -d -m 0755 "$root/$1"; }
f() { install -m "$1" "$2" "$root/$3"; } # mode, source, destination

for dir in DEBIAN usr/sbin usr/lib/khib usr/share/doc/khib \
	usr/share/initramfs-tools/hooks usr/share/initramfs-tools/scripts/local-premount \
	etc/default/grub.d usr/lib/systemd/system/systemd-hibernate.service.d \
	usr/lib/systemd/system/systemd-hybrid-sleep.service.d \
	usr/lib/systemd/system/systemd-logind.service.d; do
	d "$dir"
done

CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$root/usr/sbin/khib" ./cmd/khib
chmod 0755 "$root/usr/sbin/khib"
f 0644 "$kernel" usr/lib/khib/bzImage
f 0755 packaging/initramfs-tools/hooks/khib usr/share/initramfs-tools/hooks/khib
f 0755 packaging/initramfs-tools/scripts/local-premount/khib usr/share/initramfs-tools/scripts/local-premount/khib
f 0644 packaging/grub/khib.cfg etc/default/grub.d/khib.cfg
f 0644 packaging/systemd/khib-arm.service usr/lib/systemd/system/khib-arm.service
f 0644 packaging/systemd/systemd-hibernate.service.d/khib.conf usr/lib/systemd/system/systemd-hibernate.service.d/khib.conf
f 0644 packaging/systemd/systemd-hybrid-sleep.service.d/khib.conf usr/lib/systemd/system/systemd-hybrid-sleep.service.d/khib.conf
f 0644 packaging/systemd/systemd-logind.service.d/khib.conf usr/lib/systemd/system/systemd-logind.service.d/khib.conf
f 0644 README.md usr/share/doc/khib/README.md
f 0644 docs/system-integration.md usr/share/doc/khib/system-integration.md
for s in postinst prerm postrm; do
	f 0755 "packaging/debian/$s" "DEBIAN/$s"
done

size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@SIZE@/$size/" packaging/debian/control.in >"$root/DEBIAN/control"
chmod 0644 "$root/DEBIAN/control"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort | xargs md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums"

# Reproducible: every mtime is the last commit's time.
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
find "$root" -exec touch -h -d "@$epoch" {} +
export SOURCE_DATE_EPOCH="$epoch"

mkdir -p "$outdir"
deb="$outdir/khib_${version}_amd64.deb"
dpkg-deb --build --root-owner-group -Zxz "$root" "$deb" >/dev/null
echo "$deb"

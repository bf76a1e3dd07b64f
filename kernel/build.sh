#!/bin/sh
# Build khib's x86_64 kernel from Debian's linux-source-6.12 package.
#
# Usage: kernel/build.sh [small]          build (or reuse) and print the bzImage path
#        kernel/build.sh [small] --path   print where the bzImage would be, build nothing
#        kernel/build.sh distro [--path]  the distro-grade kernel (see distro_build
#                                         below); prints its staging directory
#
# "small" is tinyconfig plus config-fragment: one bzImage, no modules, that
# boots the busybox rig in seconds and is the helper kernel (B and C)
# everywhere. "distro" is Debian's own configuration with KEXEC_JUMP, the
# system kernel A of the Debian guest.
#
# Next to bzImage it leaves bzImage-rebuilt: the same source and config
# built once more with another build number (KBUILD_BUILD_VERSION=2). It
# has the same release string and a different build-id, which is what the
# resume-foreign scenario needs: an image saved by one build must be
# refused by another build of the same release. It is a relink of the
# first build's tree, about a minute.
#
# The result is cached outside the repository, in
#   ${KHIB_CACHE:-$HOME/.cache/khib}/kernel/<source version>-<config hash>/
# where the hash covers config-fragment and the recipe version below (bump
# it when a change to this script changes what it builds). A second run
# with the same inputs reuses the cached bzImage and returns at once.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
cache=${KHIB_CACHE:-$HOME/.cache/khib}
tarball=/usr/src/linux-source-6.12.tar.xz
jobs=${KHIB_JOBS:-$(nproc)}
recipe=1
distro_recipe=1

flavour=small
case "${1:-}" in
small | distro)
	flavour=$1
	shift
	;;
esac

if [ ! -f "$tarball" ]; then
	echo "kernel/build.sh: $tarball is missing; install it with: apt-get install linux-source-6.12" >&2
	exit 1
fi

srcver=$(dpkg-query -W -f '${Version}' linux-source-6.12 2>/dev/null || stat -c %Y "$tarball")
src="$cache/src/$srcver/linux-source-6.12"

# unpack: the source tree, shared by all configs and builds.
unpack() {
	[ -f "$src/Makefile" ] && return 0
	echo "kernel/build.sh: unpacking $tarball" >&2
	rm -rf "$cache/src/$srcver"
	mkdir -p "$cache/src/$srcver"
	tar -C "$cache/src/$srcver" -xf "$tarball"
}

# fragment_lines FILE: the option lines of a fragment, comments dropped.
fragment_lines() { grep -v '^#' "$1" | grep .; }

# check_fragment FILE CONFIG: every option of FILE kept its value.
check_fragment() {
	missing=0
	for line in $(fragment_lines "$1"); do
		case "$line" in
		*=n)
			# "=n" means: not set, or absent.
			grep -qx "${line%=n}=[ym].*" "$2" || continue
			;;
		*) grep -qx "$line" "$2" && continue ;;
		esac
		echo "kernel/build.sh: $line did not take effect (unmet dependency?)" >&2
		missing=1
	done
	[ "$missing" = 0 ]
}

# distro_build: Debian's config for amd64 from linux-config-6.12, the
# options of distro/fragment on top, then `make localmodconfig` against
# distro/modules (an lsmod listing of what the guest loads), so that only
# the built-in part of Debian's kernel and those modules are compiled.
# The result is a staging tree, laid out as the root of a system:
#   root/boot/vmlinuz-REL, root/boot/config-REL, root/boot/System.map-REL,
#   root/lib/modules/REL/
# plus release (REL) and build-seconds. The guest image installs it.
distro_build() {
	dconfig=/usr/src/linux-config-6.12/config.amd64_none_amd64.xz
	if [ ! -f "$dconfig" ]; then
		echo "kernel/build.sh: $dconfig is missing; install it with: apt-get install linux-config-6.12" >&2
		exit 1
	fi
	cfgver=$(dpkg-query -W -f '${Version}' linux-config-6.12 2>/dev/null || echo unknown)
	hash=$( (xz -dc "$dconfig"; cat "$here/distro/fragment" "$here/distro/modules"; echo "recipe $distro_recipe") | sha256sum | cut -c1-12)
	out="$cache/kernel/distro-$srcver-$hash"
	if [ "${1:-}" = "--path" ]; then
		echo "$out"
		exit 0
	fi
	if [ -f "$out/release" ]; then
		echo "$out"
		exit 0
	fi
	if [ "$cfgver" != "$srcver" ]; then
		echo "kernel/build.sh: note: linux-config-6.12 is $cfgver, linux-source-6.12 is $srcver" >&2
	fi
	unpack
	obj="$cache/build/distro-$srcver-$hash"
	mkdir -p "$obj"
	start=$(date +%s)
	echo "kernel/build.sh: configuring the distro kernel in $obj" >&2
	xz -dc "$dconfig" >"$obj/.config"
	apply() {
		for line in $(fragment_lines "$here/distro/fragment"); do
			opt=${line%%=*}
			val=${line#*=}
			case "$val" in
			y) "$src/scripts/config" --file "$obj/.config" --enable "$opt" ;;
			n) "$src/scripts/config" --file "$obj/.config" --disable "$opt" ;;
			\"*) "$src/scripts/config" --file "$obj/.config" --set-str "$opt" "$(echo "$val" | sed 's/^"//; s/"$//')" ;;
			*) "$src/scripts/config" --file "$obj/.config" --set-val "$opt" "$val" ;;
			esac
		done
		make -s -C "$src" O="$obj" ARCH=x86_64 olddefconfig >>"$obj/config.log" 2>&1
	}
	apply
	# localmodconfig asks about nothing new here (the config is for this
	# very source); `yes ''` answers any question with the default anyway.
	yes '' | make -s -C "$src" O="$obj" ARCH=x86_64 LSMOD="$here/distro/modules" localmodconfig >>"$obj/config.log" 2>&1
	apply
	check_fragment "$here/distro/fragment" "$obj/.config" || exit 1
	echo "kernel/build.sh: building the distro kernel with $jobs jobs (about 25 minutes on 2 cores)" >&2
	make -s -C "$src" O="$obj" ARCH=x86_64 -j"$jobs" bzImage modules >&2
	rel=$(cat "$obj/include/config/kernel.release")
	rm -rf "$out.tmp"
	mkdir -p "$out.tmp/root/boot"
	make -s -C "$src" O="$obj" ARCH=x86_64 INSTALL_MOD_PATH="$out.tmp/root" INSTALL_MOD_STRIP=1 modules_install >&2
	rm -f "$out.tmp/root/lib/modules/$rel/build" "$out.tmp/root/lib/modules/$rel/source"
	cp "$obj/arch/x86/boot/bzImage" "$out.tmp/root/boot/vmlinuz-$rel"
	cp "$obj/.config" "$out.tmp/root/boot/config-$rel"
	cp "$obj/System.map" "$out.tmp/root/boot/System.map-$rel"
	end=$(date +%s)
	echo "$((end - start))" >"$out.tmp/build-seconds"
	echo "$rel" >"$out.tmp/release"
	rm -rf "$out"
	mv "$out.tmp" "$out"
	echo "kernel/build.sh: distro kernel $rel built in $((end - start)) s" >&2
	echo "$out"
}

if [ "$flavour" = distro ]; then
	distro_build "$@"
	exit 0
fi
hash=$( (cat "$here/config-fragment"; echo "recipe $recipe") | sha256sum | cut -c1-12)
out="$cache/kernel/$srcver-$hash"

if [ "${1:-}" = "--path" ]; then
	echo "$out/bzImage"
	exit 0
fi

# rebuilt: the second build, a relink in the first build's tree with
# another build number. The tree is left at build number 2, which matters
# to nobody: bzImage has been copied out already.
rebuilt() {
	[ -f "$out/bzImage-rebuilt" ] && return 0
	if [ ! -f "$obj/vmlinux" ]; then
		echo "kernel/build.sh: the build tree $obj is gone; remove $out to rebuild both kernels" >&2
		exit 1
	fi
	unpack
	echo "kernel/build.sh: building bzImage-rebuilt (build number 2) in $obj" >&2
	make -s -C "$src" O="$obj" ARCH=x86_64 -j"$jobs" KBUILD_BUILD_VERSION=2 bzImage >&2
	cp "$obj/arch/x86/boot/bzImage" "$out/bzImage-rebuilt.tmp"
	mv "$out/bzImage-rebuilt.tmp" "$out/bzImage-rebuilt"
}

obj="$cache/build/$srcver-$hash"
if [ -f "$out/bzImage" ]; then
	rebuilt
	echo "$out/bzImage"
	exit 0
fi

unpack

# Build out of tree so that several configs can share one unpacked source.
mkdir -p "$obj"
start=$(date +%s)
echo "kernel/build.sh: configuring in $obj" >&2
make -s -C "$src" O="$obj" ARCH=x86_64 tinyconfig >"$obj/config.log" 2>&1
grep -v '^#' "$here/config-fragment" | grep . >>"$obj/.config"
# olddefconfig warns about every option the fragment overrides; keep that
# noise in a log and check the outcome below instead.
make -s -C "$src" O="$obj" ARCH=x86_64 olddefconfig >>"$obj/config.log" 2>&1

# Every option of the fragment must have survived olddefconfig.
check_fragment "$here/config-fragment" "$obj/.config" || exit 1

echo "kernel/build.sh: building bzImage with $jobs jobs (about 10 minutes on 2 cores)" >&2
make -s -C "$src" O="$obj" ARCH=x86_64 -j"$jobs" bzImage >&2
mkdir -p "$out"
cp "$obj/arch/x86/boot/bzImage" "$out/bzImage.tmp"
cp "$obj/.config" "$out/config"
mv "$out/bzImage.tmp" "$out/bzImage"
end=$(date +%s)
echo "$((end - start))" >"$out/build-seconds"
echo "kernel/build.sh: built in $((end - start)) s" >&2
rebuilt "$obj"
echo "$out/bzImage"

#!/bin/sh
# Build khib's x86_64 kernel from Debian's linux-source-6.12 package.
#
# Usage: kernel/build.sh            build (or reuse) and print the bzImage path
#        kernel/build.sh --path     print where the bzImage would be, build nothing
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

if [ ! -f "$tarball" ]; then
	echo "kernel/build.sh: $tarball is missing; install it with: apt-get install linux-source-6.12" >&2
	exit 1
fi

srcver=$(dpkg-query -W -f '${Version}' linux-source-6.12 2>/dev/null || stat -c %Y "$tarball")
hash=$( (cat "$here/config-fragment"; echo "recipe $recipe") | sha256sum | cut -c1-12)
out="$cache/kernel/$srcver-$hash"

if [ "${1:-}" = "--path" ]; then
	echo "$out/bzImage"
	exit 0
fi

# unpack: the source tree, shared by all configs and builds.
unpack() {
	[ -f "$src/Makefile" ] && return 0
	echo "kernel/build.sh: unpacking $tarball" >&2
	rm -rf "$cache/src/$srcver"
	mkdir -p "$cache/src/$srcver"
	tar -C "$cache/src/$srcver" -xf "$tarball"
}

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

src="$cache/src/$srcver/linux-source-6.12"
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
missing=0
for line in $(grep -v '^#' "$here/config-fragment" | grep .); do
	if ! grep -qx "$line" "$obj/.config"; then
		echo "kernel/build.sh: $line did not take effect (unmet dependency?)" >&2
		missing=1
	fi
done
[ "$missing" = 0 ] || exit 1

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

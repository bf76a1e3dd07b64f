#!/bin/sh
# Install the Debian packages khib's build, tests and demo need, if any
# are missing. Runs as root; does nothing when everything is present.
set -eu
pkgs="qemu-system-x86 linux-source-6.12 bc bison flex libelf-dev libssl-dev cpio xz-utils lz4 make gcc binutils busybox-static e2fsprogs dosfstools mtools makedumpfile linux-config-6.12 mmdebstrap fdisk swtpm swtpm-tools"
missing=""
for p in $pkgs; do
	if ! dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing="$missing $p"
	fi
done
if [ -n "$missing" ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "scripts/deps.sh: missing packages:$missing; run as root or: sudo apt-get install$missing" >&2
		exit 1
	fi
	echo "scripts/deps.sh: installing$missing" >&2
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
if ! command -v go >/dev/null 2>&1; then
	echo "scripts/deps.sh: Go is missing; install Go 1.26 (https://go.dev/dl) and put it on PATH" >&2
	exit 1
fi

#!/bin/sh
# Assemble purgatory.S into the flat binary that internal/kexec embeds.
# Needs GNU binutils (as, objcopy). Run through `go generate ./internal/kexec`.
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
as --64 -o "$tmp/p.o" purgatory.S
ld -m elf_x86_64 -Ttext=0 -e _start -o "$tmp/p.elf" "$tmp/p.o"
objcopy -O binary -j .text "$tmp/p.elf" purgatory.bin

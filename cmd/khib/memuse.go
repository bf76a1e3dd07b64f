package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// memoryUse is one console line on a helper's memory: its kernel's
// MemTotal (R less the kernel's own reservations), what is still
// available, and khib's peak resident set (VmHWM). It is what tells
// whether a smaller R would do.
func memoryUse() string {
	return fmt.Sprintf("memory: MemTotal %d MiB, MemAvailable %d MiB, khib's peak RSS %d MiB",
		kib("/proc/meminfo", "MemTotal")>>10, kib("/proc/meminfo", "MemAvailable")>>10, kib("/proc/self/status", "VmHWM")>>10)
}

// kib reads one "Key: N kB" field of a /proc file such as /proc/meminfo;
// -1 if it is missing.
func kib(path, key string) int64 {
	f, err := os.Open(path)
	if err != nil {
		return -1
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		k, v, ok := strings.Cut(s.Text(), ":")
		if !ok || k != key {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return -1
		}
		return n
	}
	return -1
}

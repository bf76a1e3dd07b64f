package main

import (
	"fmt"
	"os"

	"github.com/khib/khib/internal/freecount"
)

// buddyPages prints the pages the running kernel has free, from
// /proc/kpageflags and from /proc/buddyinfo (package freecount).
func buddyPages() error {
	flags, err := os.Open("/proc/kpageflags")
	if err != nil {
		return err
	}
	defer flags.Close()
	counts, err := os.Open("/proc/kpagecount")
	if err != nil {
		return err
	}
	defer counts.Close()
	kpf, err := freecount.FromPageFlags(flags, counts)
	if err != nil {
		return err
	}
	bi, err := os.Open("/proc/buddyinfo")
	if err != nil {
		return err
	}
	defer bi.Close()
	info, err := freecount.FromBuddyinfo(bi)
	if err != nil {
		return err
	}
	fmt.Printf("kpf_buddy_pages=%d buddyinfo_pages=%d\n", kpf, info)
	return nil
}

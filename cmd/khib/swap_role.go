package main

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"os"

	"github.com/khib/khib/internal/blockmap"
	"github.com/khib/khib/internal/image"
	"github.com/khib/khib/internal/kexec"
	"github.com/khib/khib/internal/mailbox"
	"github.com/khib/khib/internal/target"
)

// writeSwapMap is the helper's first step of a save to A's swap: A
// reserved free slots and left their extents and the image reservation
// in its RAM (prepareSwap), because it cannot write to its active swap
// area. The helper finds the swap area by its UUID, writes the
// reservation into the first slot of the image space, the block map into
// the slots before it and the anchor into the swap header, marking the
// area as holding an image. It returns the device's path.
func writeSwapMap(sm *mailbox.SwapMap, nonce image.Nonce) (string, error) {
	want, err := hex.DecodeString(sm.UUID)
	if err != nil || len(want) != 16 {
		return "", fmt.Errorf("swap: bad UUID %q in the request", sm.UUID)
	}
	paths, err := target.BlockDevices()
	if err != nil {
		return "", err
	}
	for _, p := range paths {
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			continue
		}
		hdr := make([]byte, blockmap.PageSize)
		_, err = f.ReadAt(hdr, sm.Anchor)
		magic := string(hdr[blockmap.SwapMagicOff:])
		if err != nil || (magic != blockmap.SwapMagic && magic != blockmap.HeldSwapMagic) || !bytes.Equal(hdr[swapUUIDOff:swapUUIDOff+16], want) {
			f.Close()
			continue
		}
		err = writeSwapMapOn(f, sm, nonce)
		f.Close()
		if err != nil {
			return "", fmt.Errorf("swap on %s: %w", p, err)
		}
		return p, nil
	}
	return "", fmt.Errorf("swap: no block device holds the swap area %s at offset %d (looked at %d devices)", sm.UUID, sm.Anchor, len(paths))
}

func writeSwapMapOn(f *os.File, sm *mailbox.SwapMap, nonce image.Nonce) error {
	size, err := target.DeviceSize(f)
	if err != nil {
		return err
	}
	readPage := func(addr uint64) ([]byte, error) { return kexec.ReadPhys(addr, blockmap.PageSize) }
	ext, err := blockmap.DecodeList(sm.Extents, readPage, size)
	if err != nil {
		return err
	}
	rsv, _, err := reservationInRAM(sm.Reservation, nonce)
	if err != nil {
		return err
	}
	m, err := blockmap.Plan(blockmap.KindSwap, nonce, sm.Anchor, ext)
	if err != nil {
		return err
	}
	if _, err := m.View(f).WriteAt(rsv, 0); err != nil {
		return fmt.Errorf("writing the reservation: %w", err)
	}
	if err := m.Write(f, true); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing: %w", err)
	}
	return nil
}

// giveBackSwap puts the swap signature back on the swap area at anchor
// on dev if khib's mark is there, and says so on the console as who: the
// helper after a failed save (A goes on swapping to it), stage 1 when it
// does not resume from it (the system's swapon must find a swap area).
func giveBackSwap(who, dev string, anchor int64) {
	if dev == "" {
		return
	}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err == nil {
		defer f.Close()
		var changed bool
		if changed, err = blockmap.RestoreSwap(f, anchor); err == nil && changed {
			if err = f.Sync(); err == nil {
				console("%s: the swap area on %s has its swap signature back; the image in it is given up", who, dev)
			}
		}
	}
	if err != nil {
		console("%s: cannot give the swap area on %s back: %v; run mkswap on it before swapon", who, dev, err)
	}
}

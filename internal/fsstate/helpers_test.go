package fsstate

import (
	"bytes"
	"encoding/binary"
)

// synth describes a small synthetic ext4 file system: just the structures
// ReadState follows, at known places, so that each can be broken on its
// own.
type synth struct {
	bs       int64 // block size
	blocks   int64 // device size in blocks
	bit64    bool  // 64-byte group descriptors, table address split lo/hi
	inodeSz  uint16
	noJ      bool   // no journal at all
	blockMap bool   // journal inode uses a block map, not extents
	depth    int    // extent tree depth: 0 (root is a leaf), 1 or 2
	table    uint64 // inode table block
	jblk     uint64 // journal superblock block
	seq      uint32
	start    uint32
	mnt      uint16
	mtime    int64
	kbytes   uint64
}

func defaultSynth() synth {
	return synth{bs: 1024, blocks: 16, inodeSz: 256, table: 3, jblk: 10, seq: 7, start: 0, mnt: 3, mtime: 0x1_6000_0000, kbytes: 4242}
}

// image returns the device's bytes.
func (s synth) image() []byte {
	le, be := binary.LittleEndian, binary.BigEndian
	img := make([]byte, s.bs*s.blocks)
	sb := img[1024:2048]
	le.PutUint32(sb[0x04:], uint32(s.blocks))
	fdb := uint32(0)
	if s.bs == 1024 {
		fdb = 1
	}
	le.PutUint32(sb[0x14:], fdb)
	logBS := uint32(0)
	for 1024<<logBS < s.bs {
		logBS++
	}
	le.PutUint32(sb[0x18:], logBS)
	le.PutUint32(sb[0x28:], 64) // inodes per group
	le.PutUint32(sb[0x2C:], uint32(s.mtime))
	sb[0x275] = byte(s.mtime >> 32)
	le.PutUint32(sb[0x30:], 0x6000_1234)
	le.PutUint16(sb[0x34:], s.mnt)
	le.PutUint16(sb[0x38:], extMagic)
	le.PutUint16(sb[0x3A:], stateValid)
	le.PutUint32(sb[0x4C:], 1)
	le.PutUint16(sb[0x58:], s.inodeSz)
	incompat := uint32(0x0002 | 0x0040) // filetype, extents
	if s.bit64 {
		incompat |= incompat64Bit
		le.PutUint16(sb[0xFE:], 64)
	}
	le.PutUint32(sb[0x60:], incompat)
	copy(sb[0x68:], []byte{0xe7, 0x82, 0xcd, 0xc2, 0x31, 0xa0, 0x49, 0x50, 0x97, 0x55, 0xfc, 0x67, 0xfa, 0x78, 0x3a, 0x2c})
	copy(sb[0x78:], "khibdata")
	le.PutUint64(sb[0x178:], s.kbytes)
	if !s.noJ {
		le.PutUint32(sb[0x5C:], compatHasJournal)
		le.PutUint32(sb[0xE0:], 8)
	}
	// Group descriptor 0.
	gd := img[int64(fdb+1)*s.bs:]
	le.PutUint32(gd[0x08:], uint32(s.table))
	if s.bit64 {
		le.PutUint32(gd[0x28:], uint32(s.table>>32))
	}
	ino := img[int64(s.table)*s.bs+7*int64(s.inodeSz):]
	iblock := ino[0x28:0x64]
	if s.blockMap {
		le.PutUint32(iblock, uint32(s.jblk))
	} else {
		le.PutUint32(ino[0x20:], extentsFlag)
		node := iblock
		nodeMax := uint16(4)
		for d := s.depth; d >= 0; d-- {
			le.PutUint16(node[0:], extentMagic)
			le.PutUint16(node[2:], 1)
			le.PutUint16(node[4:], nodeMax)
			le.PutUint16(node[6:], uint16(d))
			e := node[12:]
			if d == 0 {
				le.PutUint32(e[0:], 0)
				le.PutUint16(e[4:], 64)
				le.PutUint16(e[6:], uint16(s.jblk>>32))
				le.PutUint32(e[8:], uint32(s.jblk))
				break
			}
			leaf := uint64(5 + d) // blocks 6 and 7 hold the lower levels
			le.PutUint32(e[0:], 0)
			le.PutUint32(e[4:], uint32(leaf))
			le.PutUint16(e[8:], uint16(leaf>>32))
			node = img[int64(leaf)*s.bs : int64(leaf+1)*s.bs]
			nodeMax = uint16((s.bs - 12) / 12)
		}
	}
	j := img[int64(s.jblk)*s.bs:]
	be.PutUint32(j[0:], jbd2Magic)
	be.PutUint32(j[4:], jbd2SBv2)
	be.PutUint32(j[0x0C:], uint32(s.bs))
	be.PutUint32(j[0x18:], s.seq)
	be.PutUint32(j[0x1C:], s.start)
	return img
}

func read(img []byte) (*Superblock, error) {
	return ReadState(bytes.NewReader(img), int64(len(img)))
}

package main

import (
	"context"
	"errors"
	"io"
	"log"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// The FUSE side: a root directory holding the store's files.

const blockSize = 4096 // statfs's block size and st_blksize

// rootNode is the only directory.
type rootNode struct {
	fs.Inode
	st      *store
	mounted time.Time
	logger  *log.Logger
}

// fileNode is one file; it stays bound to its *file across renames and
// after an unlink.
type fileNode struct {
	fs.Inode
	root *rootNode
	f    *file
}

// handle is an open file.
type handle struct {
	node *fileNode
}

var (
	_ fs.NodeGetattrer = (*rootNode)(nil)
	_ fs.NodeSetattrer = (*rootNode)(nil)
	_ fs.NodeLookuper  = (*rootNode)(nil)
	_ fs.NodeReaddirer = (*rootNode)(nil)
	_ fs.NodeCreater   = (*rootNode)(nil)
	_ fs.NodeUnlinker  = (*rootNode)(nil)
	_ fs.NodeRmdirer   = (*rootNode)(nil)
	_ fs.NodeRenamer   = (*rootNode)(nil)
	_ fs.NodeMkdirer   = (*rootNode)(nil)
	_ fs.NodeMknoder   = (*rootNode)(nil)
	_ fs.NodeSymlinker = (*rootNode)(nil)
	_ fs.NodeLinker    = (*rootNode)(nil)
	_ fs.NodeStatfser  = (*rootNode)(nil)
	_ fs.NodeGetattrer = (*fileNode)(nil)
	_ fs.NodeSetattrer = (*fileNode)(nil)
	_ fs.NodeOpener    = (*fileNode)(nil)
	_ fs.NodeStatfser  = (*fileNode)(nil)
	_ fs.FileReader    = (*handle)(nil)
	_ fs.FileWriter    = (*handle)(nil)
	_ fs.FileFlusher   = (*handle)(nil)
	_ fs.FileFsyncer   = (*handle)(nil)
	_ fs.FileReleaser  = (*handle)(nil)
	_ fs.FileGetattrer = (*handle)(nil)
)

func newRoot(st *store, logger *log.Logger) *rootNode {
	return &rootNode{st: st, mounted: time.Now(), logger: logger}
}

// errno turns a store error into a FUSE reply, logging device errors.
func (r *rootNode) errno(op string, err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	if r.logger != nil {
		r.logger.Printf("%s: %v", op, err)
	}
	return syscall.EIO
}

// errno is rootNode.errno for an operation on n's file, named in the log.
func (n *fileNode) errno(op string, err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return n.root.errno(op+" "+n.root.st.stat(n.f).name, err)
}

func (r *rootNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o755
	out.Nlink = 2
	out.SetTimes(&r.mounted, &r.mounted, &r.mounted)
	out.Blksize = blockSize
	return 0
}

func (r *rootNode) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EPERM
}

// node returns the inode for f, the one already known for it if any.
func (r *rootNode) node(ctx context.Context, f *file) *fs.Inode {
	return r.NewInode(ctx, &fileNode{root: r, f: f}, fs.StableAttr{Mode: syscall.S_IFREG, Ino: f.ino})
}

func (r *rootNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	f := r.st.lookup(name)
	if f == nil {
		return nil, syscall.ENOENT
	}
	fillAttr(&out.Attr, r.st.stat(f))
	return r.node(ctx, f), 0
}

func (r *rootNode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	files := r.st.list()
	entries := make([]fuse.DirEntry, len(files))
	for i, fi := range files {
		entries[i] = fuse.DirEntry{Name: fi.name, Ino: fi.ino, Mode: syscall.S_IFREG}
	}
	return fs.NewListDirStream(entries), 0
}

func (r *rootNode) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	f, err := r.st.create(name, mode, true)
	if err != nil {
		return nil, nil, 0, r.errno("create "+name, err)
	}
	fillAttr(&out.Attr, r.st.stat(f))
	n := r.node(ctx, f)
	return n, &handle{node: n.Operations().(*fileNode)}, 0, 0
}

func (r *rootNode) Unlink(ctx context.Context, name string) syscall.Errno {
	return r.errno("unlink "+name, r.st.unlink(name))
}

func (r *rootNode) Rmdir(ctx context.Context, name string) syscall.Errno {
	if r.st.lookup(name) != nil {
		return syscall.ENOTDIR
	}
	return syscall.ENOENT
}

func (r *rootNode) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	if newParent.EmbeddedInode() != r.EmbeddedInode() {
		return syscall.EXDEV
	}
	const renameNoReplace = 1 // RENAME_NOREPLACE
	if flags&^(renameNoReplace|fs.RENAME_EXCHANGE) != 0 {
		return syscall.EINVAL
	}
	return r.errno("rename "+name, r.st.rename(name, newName, flags&renameNoReplace != 0, flags&fs.RENAME_EXCHANGE != 0))
}

// Mkdir, Mknod, Symlink and Link: the filesystem holds regular files only.
func (r *rootNode) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (r *rootNode) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (r *rootNode) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (r *rootNode) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (r *rootNode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	fillStatfs(out, r.st.space(nil))
	return 0
}

func fillStatfs(out *fuse.StatfsOut, si spaceInfo) {
	out.Bsize = blockSize
	out.Frsize = blockSize
	out.Blocks = uint64(si.total / blockSize)
	out.Bfree = uint64(si.free / blockSize)
	out.Bavail = uint64(si.avail / blockSize)
	out.Files = maxFiles
	out.Ffree = uint64(maxFiles - si.files)
	out.NameLen = maxNameLen
}

func fillAttr(a *fuse.Attr, fi fileInfo) {
	a.Ino = fi.ino
	a.Mode = syscall.S_IFREG | fi.mode
	a.Nlink = 1
	a.Size = uint64(fi.size)
	a.Blocks = uint64(alignUp(fi.size) / 512)
	a.Blksize = blockSize
	a.SetTimes(&fi.mtime, &fi.mtime, &fi.mtime)
}

func (n *fileNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	fillAttr(&out.Attr, n.root.st.stat(n.f))
	return 0
}

func (n *fileNode) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	st := n.root.st
	// Owners cannot change: every file belongs to the server's user.
	me := uint32(syscall.Getuid())
	if uid, ok := in.GetUID(); ok && uid != me {
		return syscall.EPERM
	}
	if gid, ok := in.GetGID(); ok && gid != uint32(syscall.Getgid()) {
		return syscall.EPERM
	}
	if size, ok := in.GetSize(); ok {
		if size > 1<<62 {
			return syscall.EFBIG
		}
		if err := st.truncate(n.f, int64(size)); err != nil {
			return n.errno("truncate", err)
		}
	}
	var mode *uint32
	if m, ok := in.GetMode(); ok {
		mode = &m
	}
	var mtime *time.Time
	if t, ok := in.GetMTime(); ok {
		mtime = &t
	}
	if mode != nil || mtime != nil {
		if err := st.setattr(n.f, mode, mtime); err != nil {
			return n.errno("setattr", err)
		}
	}
	// An atime is accepted and forgotten.
	fillAttr(&out.Attr, st.stat(n.f))
	return 0
}

func (n *fileNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	st := n.root.st
	// With FUSE_ATOMIC_O_TRUNC the kernel passes O_TRUNC here; without it,
	// it sends a SETATTR of size 0 first.
	if flags&syscall.O_TRUNC != 0 {
		if err := st.truncate(n.f, 0); err != nil {
			return nil, 0, n.errno("truncate", err)
		}
	}
	st.open(n.f)
	return &handle{node: n}, 0, 0
}

func (n *fileNode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	fillStatfs(out, n.root.st.space(n.f))
	return 0
}

func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n, err := h.node.root.st.readAt(h.node.f, dest, off)
	if err != nil && err != io.EOF {
		return nil, h.node.errno("read", err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	n, err := h.node.root.st.writeAt(h.node.f, data, off)
	if err != nil {
		return uint32(n), h.node.errno("write", err)
	}
	return uint32(n), 0
}

func (h *handle) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	return h.node.Getattr(ctx, h, out)
}

func (h *handle) Flush(ctx context.Context) syscall.Errno {
	return h.node.errno("flush", h.node.root.st.commit())
}

func (h *handle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	return h.node.errno("fsync", h.node.root.st.fsync())
}

func (h *handle) Release(ctx context.Context) syscall.Errno {
	return h.node.errno("release", h.node.root.st.release(h.node.f))
}

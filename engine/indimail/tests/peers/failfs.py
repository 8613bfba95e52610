#!/usr/bin/python3
"""A passthrough FUSE file system whose flushes (and writes) fail on demand.

usage: failfs.py BACKING MOUNTPOINT CONTROL

Mounts MOUNTPOINT (in the foreground) as a mirror of the directory BACKING.
Before each fsync, fdatasync and directory fsync it looks for the file
CONTROL/fsync, before each write for CONTROL/write: while the file exists the
operation returns EIO to the kernel (so the caller's write(2), fsync(2),
fdatasync(2) or io_uring operation completes with EIO), and one line
"<op> <path>" is appended to CONTROL/injected. Removing the file heals it.
A failed write writes nothing; a failed flush flushes nothing (the data stays
in the backing directory's page cache, as after a real device's failed flush).

Built on fusepy (Debian python3-fusepy, module `fusepy`; fusermount from
package fuse). Everything else is passed through to BACKING with the caller's
flags (O_CREAT|O_EXCL keeps its meaning); O_APPEND is dropped on the backing
descriptor because the kernel hands FUSE absolute offsets. Locks (flock) are
left to the kernel, which keeps them for the mount.
"""
import errno, os, sys
import fusepy
from fusepy import FUSE, FuseOSError, Operations

backing, mountpoint, control = (os.path.realpath(a) for a in sys.argv[1:4])


def failing(op, path, switch):
    if not os.path.exists(os.path.join(control, switch)):
        return False
    fd = os.open(os.path.join(control, "injected"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, ("%s %s\n" % (op, path)).encode())
    finally:
        os.close(fd)
    return True


class FailFs(Operations):
    use_ns = True

    def real(self, path):
        return backing + path

    def getattr(self, path, fh=None):
        st = os.fstat(fh.fh) if fh else os.lstat(self.real(path))
        keys = ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size",
                "st_atime_ns", "st_mtime_ns", "st_ctime_ns", "st_blocks", "st_blksize")
        attrs = {k: getattr(st, k) for k in keys}
        for t in ("st_atime", "st_mtime", "st_ctime"):
            attrs[t] = attrs.pop(t + "_ns")
        return attrs

    def access(self, path, amode):
        if not os.access(self.real(path), amode):
            raise FuseOSError(errno.EACCES)
        return 0

    def chmod(self, path, mode):
        return os.chmod(self.real(path), mode)

    def chown(self, path, uid, gid):
        return os.lchown(self.real(path), uid, gid)

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self.real(path))

    def readlink(self, path):
        return os.readlink(self.real(path))

    def mkdir(self, path, mode):
        return os.mkdir(self.real(path), mode)

    def rmdir(self, path):
        return os.rmdir(self.real(path))

    def unlink(self, path):
        return os.unlink(self.real(path))

    def rename(self, old, new):
        return os.rename(self.real(old), self.real(new))

    def link(self, target, source):
        return os.link(self.real(source), self.real(target))

    def symlink(self, target, source):
        return os.symlink(source, self.real(target))

    def statfs(self, path):
        sv = os.statvfs(self.real(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")
        return {k: getattr(sv, k) for k in keys}

    def utimens(self, path, times=None):
        return os.utime(self.real(path), ns=times, follow_symlinks=False)

    def truncate(self, path, length, fh=None):
        if fh:
            return os.ftruncate(fh.fh, length)
        return os.truncate(self.real(path), length)

    def open(self, path, fi):
        fi.fh = os.open(self.real(path), fi.flags & ~os.O_APPEND)
        return 0

    def create(self, path, mode, fi):
        fi.fh = os.open(self.real(path), (fi.flags & ~os.O_APPEND) | os.O_CREAT, mode)
        return 0

    def read(self, path, size, offset, fi):
        return os.pread(fi.fh, size, offset)

    def write(self, path, data, offset, fi):
        if failing("write", path, "write"):
            raise FuseOSError(errno.EIO)
        return os.pwrite(fi.fh, data, offset)

    def flush(self, path, fi):
        return 0

    def release(self, path, fi):
        os.close(fi.fh)
        return 0

    def fsync(self, path, datasync, fi):
        if failing("fdatasync" if datasync else "fsync", path, "fsync"):
            raise FuseOSError(errno.EIO)
        if datasync:
            os.fdatasync(fi.fh)
        else:
            os.fsync(fi.fh)
        return 0

    def fsyncdir(self, path, datasync, fh):
        if failing("fsyncdir", path, "fsync"):
            raise FuseOSError(errno.EIO)
        fd = os.open(self.real(path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return 0


if __name__ == "__main__":
    # Multithreaded (a slow flush does not stall other operations);
    # allow_other so a server that dropped root can use its queue.
    FUSE(FailFs(), mountpoint, raw_fi=True, foreground=True, nothreads=False,
         allow_other=True, use_ino=True, fsname="failfs")

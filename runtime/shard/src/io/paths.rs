//! Calls on paths and whole file systems: directory and file-system
//! flushes, rename and unlink (io_uring operations where io_uring has them),
//! and the synchronous directory metadata calls.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::{blocking, current_driver, Driver};
#[cfg(feature = "sim")]
use super::{sim, sim_fs};

/// fsyncs a directory, making the creates, renames and links inside it
/// durable (needed on this ext4 without a journal, see MEASUREMENTS.md).
/// The open is an io_uring operation on that driver.
pub async fn sync_dir(path: impl AsRef<Path>) -> io::Result<()> {
    match current_driver() {
        Driver::Uring => {
            let dir = tokio_uring::fs::OpenOptions::new()
                .read(true)
                .open(path)
                .await?;
            let r = dir.sync_all().await;
            let c = dir.close().await;
            r.and(c)
        }
        Driver::Epoll => {
            let path = path.as_ref().to_path_buf();
            blocking(move || std::fs::File::open(path)?.sync_all()).await
        }
        #[cfg(feature = "sim")]
        Driver::Sim => {
            let fs = sim::current();
            fs.maybe_yield().await;
            fs.sync_dir(path.as_ref())
        }
    }
}

/// `syncfs(2)` on the file system holding `dir`: every file's data and
/// metadata and every directory entry written there before the call is on
/// stable storage when it returns, with one device flush for all of them.
/// io_uring has no `syncfs`, so it runs on the blocking pool on both drivers
/// (a hand-off per call, shared by all the writes it covers).
pub async fn sync_fs(dir: impl AsRef<Path>) -> io::Result<()> {
    match current_driver() {
        Driver::Uring | Driver::Epoll => {
            let dir = dir.as_ref().to_path_buf();
            blocking(move || {
                let d = std::fs::File::open(dir)?;
                // SAFETY: a valid descriptor owned by `d` for the call.
                if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            })
            .await
        }
        #[cfg(feature = "sim")]
        Driver::Sim => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the simulation has no file-system-wide sync",
        )),
    }
}

/// Whether [`sync_fs`] on the file system holding `file` makes that file
/// durable: a local block file system whose `syncfs` writes back every dirty
/// file and flushes the device (ext2/3/4, XFS, btrfs, F2FS), or tmpfs
/// (nothing there survives a crash anyway). False elsewhere: NFS and FUSE
/// leave durability to each file's own `fsync`.
pub fn sync_fs_covers(file: &impl AsRawFd) -> io::Result<bool> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: a borrowed descriptor and a buffer the size of `statfs`.
    if unsafe { libc::fstatfs(file.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatfs succeeded and filled the buffer.
    let kind = unsafe { st.assume_init() }.f_type as u64;
    const COVERED: [u64; 5] = [
        0xEF53,      // ext2, ext3, ext4
        0x5846_5342, // XFS
        0x9123_683E, // btrfs
        0xF2F5_2010, // F2FS
        0x0102_1994, // tmpfs
    ];
    Ok(COVERED.contains(&kind))
}

/// Reports a write-back error of `file`'s data since it was opened, after a
/// [`sync_fs`] wrote it back (`sync_file_range` with both waits: on clean
/// pages it only waits and returns the file's own error, with no device
/// flush). `syncfs` reports errors file-system-wide, once per descriptor, so
/// an error of this file could have gone to another caller's `syncfs`.
pub fn check_written_back(file: &impl AsRawFd) -> io::Result<()> {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a descriptor borrowed for the call; offset 0, length 0 = all.
    if unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `rename(2)`, as an io_uring operation on that driver (on the blocking
/// pool on epoll).
pub async fn rename(from: impl AsRef<Path>, to: impl AsRef<Path>) -> io::Result<()> {
    match current_driver() {
        Driver::Uring => tokio_uring::fs::rename(from, to).await,
        Driver::Epoll => {
            let (from, to) = (from.as_ref().to_path_buf(), to.as_ref().to_path_buf());
            blocking(move || std::fs::rename(from, to)).await
        }
        #[cfg(feature = "sim")]
        Driver::Sim => sim::current().rename(from.as_ref(), to.as_ref()),
    }
}

/// `unlink(2)`, as an io_uring operation on that driver (on the blocking
/// pool on epoll).
pub async fn remove_file(path: impl AsRef<Path>) -> io::Result<()> {
    match current_driver() {
        Driver::Uring => tokio_uring::fs::remove_file(path).await,
        Driver::Epoll => {
            let path = path.as_ref().to_path_buf();
            blocking(move || std::fs::remove_file(path)).await
        }
        #[cfg(feature = "sim")]
        Driver::Sim => sim::current().remove_file(path.as_ref()),
    }
}

// Directory metadata calls, synchronous on every driver: each is a
// microsecond system call made at open or from `Drop`, where awaiting is
// not possible. They work without a runtime too (plain std), so tools that
// read a queue directory share them.

/// `unlink(2)` now, for `Drop` implementations that cannot await
/// [`remove_file`].
pub fn remove_file_now(path: impl AsRef<Path>) -> io::Result<()> {
    #[cfg(feature = "sim")]
    if let Some(fs) = sim_fs() {
        return fs.remove_file(path.as_ref());
    }
    std::fs::remove_file(path)
}

/// `mkdir -p`. New directories are durable only once their parent is
/// fsynced ([`sync_dir`]).
pub fn create_dir_all(path: impl AsRef<Path>) -> io::Result<()> {
    #[cfg(feature = "sim")]
    if let Some(fs) = sim_fs() {
        return fs.create_dir_all(path.as_ref());
    }
    std::fs::create_dir_all(path)
}

/// Whether `path` is a directory.
pub fn is_dir(path: impl AsRef<Path>) -> bool {
    #[cfg(feature = "sim")]
    if let Some(fs) = sim_fs() {
        return fs.is_dir(path.as_ref());
    }
    path.as_ref().is_dir()
}

/// The names in directory `path` (no `.`/`..`), in no particular order.
pub fn read_dir(path: impl AsRef<Path>) -> io::Result<Vec<std::ffi::OsString>> {
    #[cfg(feature = "sim")]
    if let Some(fs) = sim_fs() {
        return fs.read_dir(path.as_ref());
    }
    std::fs::read_dir(path)?
        .map(|e| e.map(|e| e.file_name()))
        .collect()
}

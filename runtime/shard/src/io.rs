//! Owned-buffer I/O that runs on io_uring (tokio-uring) or, where io_uring is
//! unavailable, on tokio's epoll driver with the same behaviour.
//!
//! Buffers are passed by value and handed back with the result, the shape
//! io_uring needs (the kernel owns the memory while an operation is in
//! flight). Reads fill the *spare capacity* of the `Vec` (`len..capacity`)
//! and advance its length, exactly as tokio-uring does, so a caller can keep
//! an unconsumed tail at the front of its buffer and read more after it.
//! Writes send `buf[..len]`.
//!
//! On the epoll driver, sockets use tokio's reactor and file operations that
//! may block on the device (`pwrite`, `fdatasync`) run on tokio's blocking
//! pool, so one slow flush never stalls a shard's other sessions.
//!
//! With the cargo feature `sim` (tests only) a third driver,
//! [`Driver::Sim`], runs every file operation here on a simulated,
//! fault-injecting file system ([`sim`]); production builds carry none of it.

mod paths;
#[cfg(feature = "sim")]
pub mod sim;

pub use paths::{
    check_written_back, create_dir_all, is_dir, read_dir, remove_file, remove_file_now, rename,
    sync_dir, sync_fs, sync_fs_covers,
};

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;

/// Which kernel interface a shard's runtime uses for I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// io_uring through tokio-uring (the default).
    Uring,
    /// epoll through tokio's reactor; file I/O on the blocking pool.
    Epoll,
    /// The simulated file system of [`sim::SimFs::run`] (feature `sim`,
    /// tests only; never chosen by `INDIMAIL_DRIVER`). No sockets.
    #[cfg(feature = "sim")]
    Sim,
}

impl Driver {
    /// The driver asked for by `INDIMAIL_DRIVER` (`uring` or `epoll`);
    /// `uring` when unset. An unknown value is an error naming it.
    pub fn from_env() -> Result<Driver, String> {
        match std::env::var("INDIMAIL_DRIVER") {
            Err(_) => Ok(Driver::Uring),
            Ok(v) => v.parse(),
        }
    }

    /// Name as written in logs and `INDIMAIL_DRIVER`.
    pub fn name(self) -> &'static str {
        match self {
            Driver::Uring => "uring",
            Driver::Epoll => "epoll",
            #[cfg(feature = "sim")]
            Driver::Sim => "sim",
        }
    }
}

impl std::str::FromStr for Driver {
    type Err = String;
    fn from_str(s: &str) -> Result<Driver, String> {
        match s.trim() {
            "" | "uring" | "io_uring" => Ok(Driver::Uring),
            "epoll" => Ok(Driver::Epoll),
            other => Err(format!(
                "INDIMAIL_DRIVER: unknown driver `{other}` (expected `uring` or `epoll`)"
            )),
        }
    }
}

thread_local! {
    static CURRENT: Cell<Option<Driver>> = const { Cell::new(None) };
}

/// The driver of the runtime running on this thread.
///
/// # Panics
/// Outside [`run`] there is no runtime; calling this there is a programming
/// error.
pub fn current_driver() -> Driver {
    CURRENT
        .with(|c| c.get())
        .expect("shard::io used outside shard::io::run")
}

/// Runs `f` with `driver` as this thread's current driver.
fn with_driver<T>(driver: Driver, f: impl FnOnce() -> T) -> T {
    let previous = CURRENT.with(|c| c.replace(Some(driver)));
    struct Restore(Option<Driver>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(previous);
    f()
}

/// The simulated file system, when the simulation runs on this thread.
#[cfg(feature = "sim")]
fn sim_fs() -> Option<sim::SimFs> {
    (CURRENT.with(|c| c.get()) == Some(Driver::Sim)).then(sim::current)
}

/// Whether io_uring can be set up on this machine (kernel support, not
/// disabled by `kernel.io_uring_disabled`, not blocked by seccomp).
/// Returns the error that prevented it otherwise.
pub fn probe_uring() -> Result<(), io::Error> {
    // Building a runtime performs io_uring_setup; a disabled or filtered
    // io_uring fails here with EPERM/ENOSYS rather than later mid-request.
    std::thread::spawn(|| tokio_uring::Runtime::new(&tokio_uring::builder()).map(drop))
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("io_uring probe panicked")))
}

/// Picks the driver to use: the requested one, falling back from io_uring to
/// epoll when io_uring cannot be set up. The second value is the reason for a
/// fallback, to be logged once by the caller.
pub fn choose_driver(requested: Driver) -> (Driver, Option<String>) {
    match requested {
        Driver::Epoll => (Driver::Epoll, None),
        #[cfg(feature = "sim")]
        Driver::Sim => (Driver::Sim, None),
        Driver::Uring => match probe_uring() {
            Ok(()) => (Driver::Uring, None),
            Err(e) => (
                Driver::Epoll,
                Some(format!(
                    "io_uring unavailable ({e}); using the epoll driver"
                )),
            ),
        },
    }
}

/// Runs `fut` to completion on a fresh single-threaded runtime of the given
/// driver on this thread. Inside it, `tokio::task::spawn_local`, tokio's
/// timers, sync primitives and `spawn_blocking` work on both drivers.
///
/// # Panics
/// If the runtime cannot be built (use [`choose_driver`] first to fall back),
/// or for [`Driver::Sim`], which needs its file system ([`sim::SimFs::run`]).
pub fn run<F: Future>(driver: Driver, fut: F) -> F::Output {
    with_driver(driver, || match driver {
        Driver::Uring => {
            // COOP_TASKRUN: no IPI into a running shard per completion (tokio-uring
            // reaps at park anyway); kernels before 6.0 refuse these flags.
            let mut flags = tokio_uring::uring_builder();
            flags.setup_coop_taskrun().setup_single_issuer();
            let rt = tokio_uring::Runtime::new(
                tokio_uring::builder().entries(1024).uring_builder(&flags),
            )
            .or_else(|_| tokio_uring::Runtime::new(tokio_uring::builder().entries(1024)))
            .expect("io_uring runtime (use shard::io::choose_driver to fall back)");
            rt.block_on(fut)
        }
        Driver::Epoll => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio current-thread runtime");
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, fut)
        }
        #[cfg(feature = "sim")]
        Driver::Sim => panic!("Driver::Sim runs through shard::io::sim::SimFs::run"),
    })
}

/// How to open a file: the subset of `std::fs::OpenOptions` the project
/// uses, as plain fields so every driver (the simulated one too) can read
/// them. New files get `mode` (default 0o666) less the umask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    read: bool,
    write: bool,
    create: bool,
    create_new: bool,
    truncate: bool,
    mode: u32,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions::new()
    }
}

impl OpenOptions {
    /// Nothing set; mode 0o666.
    pub fn new() -> OpenOptions {
        OpenOptions {
            read: false,
            write: false,
            create: false,
            create_new: false,
            truncate: false,
            mode: 0o666,
        }
    }

    /// Open for reading.
    pub fn read(&mut self, on: bool) -> &mut Self {
        self.read = on;
        self
    }

    /// Open for writing.
    pub fn write(&mut self, on: bool) -> &mut Self {
        self.write = on;
        self
    }

    /// Create the file if it does not exist.
    pub fn create(&mut self, on: bool) -> &mut Self {
        self.create = on;
        self
    }

    /// Create the file, failing if it exists (`O_CREAT|O_EXCL`).
    pub fn create_new(&mut self, on: bool) -> &mut Self {
        self.create_new = on;
        self
    }

    /// Truncate an existing file to 0 bytes.
    pub fn truncate(&mut self, on: bool) -> &mut Self {
        self.truncate = on;
        self
    }

    /// Permission bits of a created file (before the umask).
    pub fn mode(&mut self, mode: u32) -> &mut Self {
        self.mode = mode;
        self
    }

    fn to_std(self) -> std::fs::OpenOptions {
        use std::os::unix::fs::OpenOptionsExt;
        let mut o = std::fs::OpenOptions::new();
        o.read(self.read)
            .write(self.write)
            .create(self.create)
            .create_new(self.create_new)
            .truncate(self.truncate)
            .mode(self.mode);
        o
    }
}

/// An open file. Positional reads and writes only: the queue and Maildir
/// writers always know their offsets, and positional I/O needs no shared
/// cursor.
pub struct File {
    inner: FileInner,
}

enum FileInner {
    Uring(tokio_uring::fs::File),
    Epoll(Arc<std::fs::File>),
    #[cfg(feature = "sim")]
    Sim(sim::SimFile),
}

impl File {
    /// Opens with the given options. The `open(2)` itself is synchronous: it
    /// is a metadata operation measured in microseconds, and doing it
    /// directly keeps error reporting identical on both drivers.
    pub async fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> io::Result<File> {
        #[cfg(feature = "sim")]
        if let Some(fs) = sim_fs() {
            fs.maybe_yield().await;
            return Ok(File {
                inner: FileInner::Sim(fs.open(path.as_ref(), opts)?),
            });
        }
        let f = opts.to_std().open(path)?;
        Ok(File::from_std(f))
    }

    /// Creates a new file for writing (`O_CREAT|O_EXCL`, mode 0666 less the
    /// umask). On io_uring the `openat` is an io_uring operation, so a slow
    /// directory (a big Maildir, a busy journal) never stalls the shard;
    /// on epoll it runs on the blocking pool.
    pub async fn create_new(path: impl AsRef<Path>) -> io::Result<File> {
        match current_driver() {
            Driver::Uring => {
                let f = tokio_uring::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .await?;
                Ok(File {
                    inner: FileInner::Uring(f),
                })
            }
            Driver::Epoll => {
                let path = path.as_ref().to_path_buf();
                let f = blocking(move || {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(path)
                })
                .await?;
                Ok(File::from_std(f))
            }
            #[cfg(feature = "sim")]
            Driver::Sim => {
                let mut o = OpenOptions::new();
                o.write(true).create_new(true);
                File::open(path, &o).await
            }
        }
    }

    /// The file's inode number and device (`st_ino`, `st_dev`), from the
    /// open descriptor.
    ///
    /// On io_uring this is a direct `statx` with `AT_STATX_DONT_SYNC`, not
    /// an io_uring operation: io_uring always hands `statx` to a worker
    /// thread (two context switches per Maildir delivery), while the inode
    /// and device of an open file are in memory and never change, so the
    /// call cannot block, not even on NFS (no attribute revalidation).
    pub async fn inode(&self) -> io::Result<(u64, u64)> {
        match &self.inner {
            FileInner::Uring(f) => {
                let mut st = std::mem::MaybeUninit::<libc::statx>::zeroed();
                // SAFETY: a valid descriptor, an empty NUL-terminated path
                // with AT_EMPTY_PATH, and a buffer the size of `statx`.
                let r = unsafe {
                    libc::statx(
                        f.as_raw_fd(),
                        c"".as_ptr(),
                        libc::AT_EMPTY_PATH | libc::AT_STATX_DONT_SYNC,
                        libc::STATX_INO,
                        st.as_mut_ptr(),
                    )
                };
                if r != 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: statx succeeded and filled the buffer.
                let st = unsafe { st.assume_init() };
                let dev = libc::makedev(st.stx_dev_major, st.stx_dev_minor);
                Ok((st.stx_ino, dev))
            }
            FileInner::Epoll(f) => {
                use std::os::unix::fs::MetadataExt;
                let m = f.metadata()?;
                Ok((m.ino(), m.dev()))
            }
            #[cfg(feature = "sim")]
            FileInner::Sim(f) => Ok((f.ino(), 0)),
        }
    }

    /// The file's size in bytes, from the open descriptor.
    pub async fn len(&self) -> io::Result<u64> {
        match &self.inner {
            FileInner::Uring(f) => Ok(f.statx().await?.stx_size),
            FileInner::Epoll(f) => Ok(f.metadata()?.len()),
            #[cfg(feature = "sim")]
            FileInner::Sim(f) => f.len(),
        }
    }

    /// `ftruncate(2)`: sets the size (recovery cutting a torn tail; rare,
    /// so on io_uring it is a direct system call).
    pub async fn set_len(&self, len: u64) -> io::Result<()> {
        match &self.inner {
            FileInner::Uring(f) => with_std_file(f.as_raw_fd(), |s| s.set_len(len)),
            FileInner::Epoll(f) => {
                let f = Arc::clone(f);
                blocking(move || f.set_len(len)).await
            }
            #[cfg(feature = "sim")]
            FileInner::Sim(f) => f.set_len(len),
        }
    }

    /// Creates `path` for a small file written once and kept (a Maildir
    /// delivery in `tmp/`), writes `data` and makes it durable (what a
    /// write and `fdatasync` give) before it returns the open file; on an
    /// error, the failed step ("create", "write" or "sync"). The file is left
    /// in place on error (the caller removes it).
    ///
    /// Two io_uring hand-offs fewer than create, write and `fdatasync` as
    /// io_uring operations (issue 23: context switches were the largest
    /// cost of a Maildir delivery): the create is a direct `openat` (a short
    /// in-memory metadata call in a small, private directory, which
    /// io_uring always hands to a worker thread), and the file is opened
    /// `O_DSYNC`, so one write both stores and syncs the data.
    pub async fn create_durable(
        path: impl AsRef<Path>,
        data: Vec<u8>,
    ) -> Result<File, (&'static str, io::Error)> {
        match current_driver() {
            Driver::Uring | Driver::Epoll => {
                use std::os::unix::fs::OpenOptionsExt;
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_DSYNC)
                    .open(path)
                    .map_err(|e| ("create", e))?;
                let f = File::from_std(f);
                let (r, _) = f.write_all_at(data, 0).await;
                match r {
                    Ok(()) => Ok(f),
                    Err(e) => {
                        let _ = f.close().await;
                        Err(("write", e))
                    }
                }
            }
            #[cfg(feature = "sim")]
            Driver::Sim => {
                let f = File::create_new(path).await.map_err(|e| ("create", e))?;
                let (r, _) = f.write_all_at(data, 0).await;
                let r = match r {
                    Ok(()) => f.sync_data().await.map_err(|e| ("sync", e)),
                    Err(e) => Err(("write", e)),
                };
                match r {
                    Ok(()) => Ok(f),
                    Err(e) => {
                        let _ = f.close().await;
                        Err(e)
                    }
                }
            }
        }
    }

    /// Wraps an already open file.
    ///
    /// # Panics
    /// On [`Driver::Sim`]: the simulation has no kernel files.
    pub fn from_std(f: std::fs::File) -> File {
        let inner = match current_driver() {
            Driver::Uring => FileInner::Uring(tokio_uring::fs::File::from_std(f)),
            Driver::Epoll => FileInner::Epoll(Arc::new(f)),
            #[cfg(feature = "sim")]
            Driver::Sim => panic!("File::from_std under the simulated file system"),
        };
        File { inner }
    }

    /// Writes all of `buf[..len]` at `pos`.
    pub async fn write_all_at(&self, buf: Vec<u8>, pos: u64) -> (io::Result<()>, Vec<u8>) {
        match &self.inner {
            FileInner::Uring(f) => f.write_all_at(buf, pos).await,
            FileInner::Epoll(f) => {
                let f = Arc::clone(f);
                blocking(move || {
                    use std::os::unix::fs::FileExt;
                    let r = f.write_all_at(&buf, pos);
                    (r, buf)
                })
                .await
            }
            #[cfg(feature = "sim")]
            FileInner::Sim(f) => {
                let r = f.write_all_at(&buf, pos).await;
                (r, buf)
            }
        }
    }

    /// Reads into the spare capacity of `buf` at `pos`, returning the count
    /// (0 at end of file).
    pub async fn read_at(&self, buf: Vec<u8>, pos: u64) -> (io::Result<usize>, Vec<u8>) {
        match &self.inner {
            FileInner::Uring(f) => {
                let (r, s) = f.read_at(spare(buf), pos).await;
                (r, s.into_inner())
            }
            FileInner::Epoll(f) => {
                let f = Arc::clone(f);
                blocking(move || {
                    use std::os::unix::fs::FileExt;
                    let mut buf = buf;
                    let len = buf.len();
                    let spare = buf.capacity() - len;
                    buf.resize(len + spare, 0);
                    let r = f.read_at(&mut buf[len..], pos);
                    buf.truncate(len + *r.as_ref().unwrap_or(&0));
                    (r, buf)
                })
                .await
            }
            #[cfg(feature = "sim")]
            FileInner::Sim(f) => {
                let mut buf = buf;
                match f.read_at(pos, buf.capacity() - buf.len()).await {
                    Ok(got) => {
                        buf.extend_from_slice(&got);
                        (Ok(got.len()), buf)
                    }
                    Err(e) => (Err(e), buf),
                }
            }
        }
    }

    /// Fills the whole spare capacity of `buf` from `pos`; a short file is
    /// an `UnexpectedEof` error.
    pub async fn read_exact_at(&self, buf: Vec<u8>, pos: u64) -> (io::Result<()>, Vec<u8>) {
        match &self.inner {
            FileInner::Uring(f) => {
                let (r, s) = f.read_exact_at(spare(buf), pos).await;
                (r, s.into_inner())
            }
            FileInner::Epoll(f) => {
                let f = Arc::clone(f);
                blocking(move || {
                    use std::os::unix::fs::FileExt;
                    let mut buf = buf;
                    let len = buf.len();
                    let spare = buf.capacity() - len;
                    buf.resize(len + spare, 0);
                    let r = f.read_exact_at(&mut buf[len..], pos);
                    if r.is_err() {
                        buf.truncate(len);
                    }
                    (r, buf)
                })
                .await
            }
            #[cfg(feature = "sim")]
            FileInner::Sim(f) => {
                let mut buf = buf;
                let want = buf.capacity() - buf.len();
                match f.read_at(pos, want).await {
                    Ok(got) if got.len() == want => {
                        buf.extend_from_slice(&got);
                        (Ok(()), buf)
                    }
                    Ok(_) => (Err(io::ErrorKind::UnexpectedEof.into()), buf),
                    Err(e) => (Err(e), buf),
                }
            }
        }
    }

    /// `fdatasync(2)`: the data and the metadata needed to read it back.
    pub async fn sync_data(&self) -> io::Result<()> {
        match &self.inner {
            FileInner::Uring(f) => f.sync_data().await,
            FileInner::Epoll(f) => {
                let f = Arc::clone(f);
                blocking(move || f.sync_data()).await
            }
            #[cfg(feature = "sim")]
            FileInner::Sim(f) => f.sync().await,
        }
    }

    /// `fsync(2)`.
    pub async fn sync_all(&self) -> io::Result<()> {
        match &self.inner {
            FileInner::Uring(f) => f.sync_all().await,
            FileInner::Epoll(f) => {
                let f = Arc::clone(f);
                blocking(move || f.sync_all()).await
            }
            #[cfg(feature = "sim")]
            FileInner::Sim(f) => f.sync().await,
        }
    }

    /// Closes the file, reporting the close error if any.
    pub async fn close(self) -> io::Result<()> {
        match self.inner {
            FileInner::Uring(f) => f.close().await,
            FileInner::Epoll(f) => {
                drop(f);
                Ok(())
            }
            #[cfg(feature = "sim")]
            FileInner::Sim(f) => {
                drop(f);
                Ok(())
            }
        }
    }
}

/// A simulated file has no descriptor: -1 (an `fcntl` on it fails EBADF).
impl AsRawFd for File {
    fn as_raw_fd(&self) -> RawFd {
        match &self.inner {
            FileInner::Uring(f) => f.as_raw_fd(),
            FileInner::Epoll(f) => f.as_raw_fd(),
            #[cfg(feature = "sim")]
            FileInner::Sim(_) => -1,
        }
    }
}

/// Borrows a raw file descriptor as a `std::fs::File` for one call without
/// taking ownership of it.
fn with_std_file<T>(fd: RawFd, f: impl FnOnce(&std::fs::File) -> io::Result<T>) -> io::Result<T> {
    // SAFETY: the fd is open for the duration of the borrow (owned by the
    // caller's file) and ManuallyDrop prevents a double close.
    let s = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    f(&s)
}

/// A whole (small) file, read with [`File`] positional reads.
pub async fn read(path: impl AsRef<Path>) -> io::Result<Vec<u8>> {
    let mut o = OpenOptions::new();
    o.read(true);
    let f = File::open(path, &o).await?;
    let len = f.len().await?;
    let (r, buf) = f.read_exact_at(Vec::with_capacity(len as usize), 0).await;
    let c = f.close().await;
    r.and(c).map(|()| buf)
}

/// The wall clock: `SystemTime::now()`, or the simulated clock under
/// [`Driver::Sim`] (so a simulated run does not depend on real time).
pub fn system_time() -> std::time::SystemTime {
    #[cfg(feature = "sim")]
    if let Some(fs) = sim_fs() {
        return fs.now_time();
    }
    std::time::SystemTime::now()
}

/// The spare capacity of `buf` as a tokio-uring slice: tokio-uring reads
/// into the start of a plain `Vec`, so appending needs an explicit slice.
fn spare(buf: Vec<u8>) -> tokio_uring::buf::Slice<Vec<u8>> {
    use tokio_uring::buf::BoundedBuf;
    let (len, cap) = (buf.len(), buf.capacity());
    buf.slice(len..cap)
}

/// Runs `f` on the runtime's blocking pool, under the policy of the shard's
/// own pool jobs ([`crate::Scheduling`]).
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(crate::helpers::wrap(f)).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// The simulation models storage only.
#[cfg(feature = "sim")]
fn no_sim_sockets() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "no sockets under the simulated driver",
    )
}

/// A connected TCP stream.
pub struct TcpStream {
    inner: StreamInner,
}

enum StreamInner {
    Uring(tokio_uring::net::TcpStream),
    Epoll(tokio::net::TcpStream),
}

impl TcpStream {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
        let inner = match current_driver() {
            Driver::Uring => StreamInner::Uring(tokio_uring::net::TcpStream::connect(addr).await?),
            Driver::Epoll => StreamInner::Epoll(tokio::net::TcpStream::connect(addr).await?),
            #[cfg(feature = "sim")]
            Driver::Sim => return Err(no_sim_sockets()),
        };
        Ok(TcpStream { inner })
    }

    /// Wraps a connected std stream (made non-blocking here).
    pub fn from_std(s: std::net::TcpStream) -> io::Result<TcpStream> {
        let inner = match current_driver() {
            Driver::Uring => StreamInner::Uring(tokio_uring::net::TcpStream::from_std(s)),
            Driver::Epoll => {
                s.set_nonblocking(true)?;
                StreamInner::Epoll(tokio::net::TcpStream::from_std(s)?)
            }
            #[cfg(feature = "sim")]
            Driver::Sim => return Err(no_sim_sockets()),
        };
        Ok(TcpStream { inner })
    }

    /// Reads into the spare capacity of `buf`; 0 means the peer closed.
    pub async fn read(&self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match &self.inner {
            StreamInner::Uring(s) => {
                let (r, s) = s.read(spare(buf)).await;
                (r, s.into_inner())
            }
            StreamInner::Epoll(s) => {
                let mut buf = buf;
                loop {
                    if let Err(e) = s.readable().await {
                        return (Err(e), buf);
                    }
                    let len = buf.len();
                    let spare = buf.capacity() - len;
                    buf.resize(len + spare, 0);
                    let r = s.try_read(&mut buf[len..]);
                    match r {
                        Ok(n) => {
                            buf.truncate(len + n);
                            return (Ok(n), buf);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            buf.truncate(len);
                            continue;
                        }
                        Err(e) => {
                            buf.truncate(len);
                            return (Err(e), buf);
                        }
                    }
                }
            }
        }
    }

    /// Writes all of `buf[..len]`.
    pub async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match &self.inner {
            StreamInner::Uring(s) => s.write_all(buf).await,
            StreamInner::Epoll(s) => {
                let mut off = 0;
                while off < buf.len() {
                    if let Err(e) = s.writable().await {
                        return (Err(e), buf);
                    }
                    match s.try_write(&buf[off..]) {
                        Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                        Ok(n) => off += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return (Err(e), buf),
                    }
                }
                (Ok(()), buf)
            }
        }
    }

    /// Shuts down one or both directions.
    pub fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        match &self.inner {
            StreamInner::Uring(s) => s.shutdown(how),
            StreamInner::Epoll(s) => socket_ref(s.as_raw_fd(), |sock| sock.shutdown(how)),
        }
    }

    /// Disables Nagle's algorithm (replies are written whole already).
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        match &self.inner {
            StreamInner::Uring(s) => s.set_nodelay(nodelay),
            StreamInner::Epoll(s) => s.set_nodelay(nodelay),
        }
    }

    /// Whether the peer has sent bytes not read yet (a peek: nothing is
    /// consumed and it never waits), e.g. a client talking before the greeting.
    pub fn has_unread_input(&self) -> bool {
        let mut b = [0u8; 1];
        // SAFETY: a one-byte buffer owned here; MSG_PEEK consumes nothing and
        // MSG_DONTWAIT never blocks, whatever the socket's mode.
        let n = unsafe {
            libc::recv(
                self.as_raw_fd(),
                b.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n > 0
    }

    /// The remote address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        socket_ref(self.as_raw_fd(), |s| s.peer_addr())
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        socket_ref(self.as_raw_fd(), |s| s.local_addr())
    }
}

impl AsRawFd for TcpStream {
    fn as_raw_fd(&self) -> RawFd {
        match &self.inner {
            StreamInner::Uring(s) => s.as_raw_fd(),
            StreamInner::Epoll(s) => s.as_raw_fd(),
        }
    }
}

/// Borrows a raw socket as a `std::net::TcpStream` for option calls without
/// taking ownership of the descriptor.
fn socket_ref<T>(
    fd: RawFd,
    f: impl FnOnce(&std::net::TcpStream) -> io::Result<T>,
) -> io::Result<T> {
    // SAFETY: the fd is open for the duration of the borrow (owned by the
    // caller's stream) and ManuallyDrop prevents a double close.
    let s = std::mem::ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
    f(&s)
}

/// A listening TCP socket.
pub struct TcpListener {
    inner: ListenerInner,
}

enum ListenerInner {
    Uring(tokio_uring::net::TcpListener),
    Epoll(tokio::net::TcpListener),
}

impl TcpListener {
    /// Wraps a bound, listening std socket (e.g. one made by
    /// [`bind_reuseport`]).
    pub fn from_std(l: std::net::TcpListener) -> io::Result<TcpListener> {
        let inner = match current_driver() {
            Driver::Uring => ListenerInner::Uring(tokio_uring::net::TcpListener::from_std(l)),
            Driver::Epoll => {
                l.set_nonblocking(true)?;
                ListenerInner::Epoll(tokio::net::TcpListener::from_std(l)?)
            }
            #[cfg(feature = "sim")]
            Driver::Sim => return Err(no_sim_sockets()),
        };
        Ok(TcpListener { inner })
    }

    /// Accepts one connection.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        match &self.inner {
            ListenerInner::Uring(l) => {
                let (s, a) = l.accept().await?;
                Ok((
                    TcpStream {
                        inner: StreamInner::Uring(s),
                    },
                    a,
                ))
            }
            ListenerInner::Epoll(l) => {
                let (s, a) = l.accept().await?;
                Ok((
                    TcpStream {
                        inner: StreamInner::Epoll(s),
                    },
                    a,
                ))
            }
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.inner {
            ListenerInner::Uring(l) => l.local_addr(),
            ListenerInner::Epoll(l) => l.local_addr(),
        }
    }
}

/// Dropping a listener stops it listening (`shutdown(2)` of the socket):
/// the connections waiting in its backlog are reset, new ones are no longer
/// routed to it, and every accept still in flight ends with an error.
/// Closing the descriptor is not enough on io_uring: an accept in flight
/// holds the socket open, so it would go on taking connections that nobody
/// serves (through a shutdown's drain) until the process exits.
impl Drop for TcpListener {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        let fd = match &self.inner {
            ListenerInner::Uring(l) => l.as_raw_fd(),
            ListenerInner::Epoll(l) => l.as_raw_fd(),
        };
        // SAFETY: shutdown(2) on the descriptor this listener owns and
        // closes right after.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }
}

/// Binds a listening socket with `SO_REUSEPORT`, so each shard can bind the
/// same address and the kernel spreads incoming connections across them.
/// `TCP_NODELAY` is set here, once: accepted sockets inherit it (Linux).
pub fn bind_reuseport(addr: SocketAddr, backlog: i32) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_nodelay(true)?;
    sock.bind(&addr.into())?;
    sock.listen(backlog)?;
    let fd: OwnedFd = sock.into();
    // SAFETY: `fd` is a freshly created, owned, listening TCP socket.
    Ok(unsafe { std::net::TcpListener::from_raw_fd(fd.into_raw_fd()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_parse() {
        assert_eq!("epoll".parse::<Driver>(), Ok(Driver::Epoll));
        assert_eq!("uring".parse::<Driver>(), Ok(Driver::Uring));
        assert!("kqueue".parse::<Driver>().unwrap_err().contains("kqueue"));
    }

    #[test]
    fn file_roundtrip_both_drivers() {
        for d in [Driver::Uring, Driver::Epoll] {
            let dir =
                std::env::temp_dir().join(format!("shard-io-{}-{}", std::process::id(), d.name()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("f");
            run(d, async {
                assert_eq!(current_driver(), d);
                let mut o = OpenOptions::new();
                o.read(true).write(true).create(true).truncate(true);
                let f = File::open(&path, &o).await.unwrap();
                let (r, _) = f.write_all_at(b"hello world".to_vec(), 0).await;
                r.unwrap();
                let (r, _) = f.write_all_at(b"HELLO".to_vec(), 0).await;
                r.unwrap();
                f.sync_data().await.unwrap();
                let mut buf = Vec::with_capacity(16);
                buf.extend_from_slice(b">");
                let (r, buf) = f.read_at(buf, 6).await;
                assert_eq!(r.unwrap(), 5);
                assert_eq!(&buf, b">world");
                let (r, buf) = f.read_exact_at(Vec::with_capacity(11), 0).await;
                r.unwrap();
                assert_eq!(&buf, b"HELLO world");
                let (r, _) = f.read_exact_at(Vec::with_capacity(20), 0).await;
                assert!(r.is_err());
                f.close().await.unwrap();
                sync_dir(&dir).await.unwrap();
            });
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}

//! A simulated storage backend for [`super::File`] and the path functions
//! of [`super`], for deterministic fault-injection tests (cargo feature
//! `sim`; production builds carry none of it).
//!
//! The code under test runs unchanged: inside [`SimFs::run`] the current
//! driver is [`Driver::Sim`](super::Driver) and every file operation of
//! `shard::io` goes to an in-memory file system instead of the kernel. The
//! whole run is a function of one seed: a small PRNG decides faults and
//! task interleavings, and the clock ([`super::system_time`]) advances by a
//! millisecond per operation from a fixed epoch.
//!
//! # What is modelled (ext4 without a journal, as measured here)
//! - Per file, the *page cache* (what reads see) and the *disk* (what a
//!   power cut keeps). A write dirties the 512-byte sectors it touches;
//!   `fdatasync`/`fsync` copy dirty sectors and the size to disk.
//! - Directory entries (create, rename, unlink) reach the disk only when
//!   the directory is fsynced ([`super::sync_dir`]).
//! - A **power cut** ([`SimFs::crash`], or scheduled at operation number
//!   [`Faults::crash_at_op`]) keeps the disk plus a random subset of the
//!   dirty sectors (torn writes at sector granularity), a random file size
//!   between the durable and the cached one (new space reading as zeros or,
//!   with [`Faults::garbage`], stale bytes), and for each unsynced directory
//!   entry either its old or its new state. Every later operation fails
//!   with `EIO` until [`SimFs::restart`] boots the surviving state.
//! - **EIO on fsync** ([`Faults::sync_error_per_mille`]): like Linux, the
//!   dirty sectors are then marked clean whether or not they were written
//!   (each reaches the disk with probability ½), so reads still show data a
//!   later, successful fsync will never write (the "fsyncgate" lesson). A
//!   failed directory fsync writes a random part of its pending entries.
//! - **EIO on write** ([`Faults::write_error_per_mille`]): a random prefix
//!   of the sectors is written to the cache, then the call fails.
//!
//! # What is not
//! Silent corruption of durable data (bit rot, misdirected writes), full
//! disks as such (a failed write stands for them), reads failing, other
//! processes, permissions, hard links, removing directories, timing of real
//! devices. Directories themselves are created durable-on-parent-fsync like
//! files; renames of directories are not supported.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::future::Future;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Driver, OpenOptions};

/// Sector size: the unit in which unsynced writes survive a power cut.
pub const SECTOR: usize = 512;

/// Seconds since the epoch at which every simulated clock starts.
pub const EPOCH_SECS: u64 = 1_700_000_000;

/// A small deterministic PRNG (SplitMix64): a run is a function of its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// True with probability `per_mille` / 1000.
    pub fn per_mille(&mut self, per_mille: u32) -> bool {
        per_mille > 0 && self.below(1000) < u64::from(per_mille)
    }

    /// A fair coin.
    pub fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }
}

/// What may go wrong, and when. The default is a perfect disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Power cut at this operation number (counted from the last
    /// [`SimFs::restart`], from 1); the operation fails, a write being
    /// issued is torn.
    pub crash_at_op: Option<u64>,
    /// Chance (‰) that an `fsync`/`fdatasync`/directory fsync fails with EIO.
    pub sync_error_per_mille: u32,
    /// Chance (‰) that a write fails with EIO after writing a prefix.
    pub write_error_per_mille: u32,
    /// Chance (‰) that an operation lets other tasks run first (varies the
    /// interleaving of concurrent commits).
    pub yield_per_mille: u32,
    /// New file space a power cut exposes holds stale bytes instead of zeros.
    pub garbage: bool,
}

/// Counters of what the simulation did since [`SimFs::new`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Operations performed.
    pub ops: u64,
    /// Syncs (file or directory) failed on purpose.
    pub sync_errors: u64,
    /// Writes failed on purpose.
    pub write_errors: u64,
    /// Power cuts.
    pub crashes: u64,
}

/// A simulated file system; cheap to clone (a shared handle).
#[derive(Clone)]
pub struct SimFs {
    w: Rc<RefCell<World>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    File(usize),
    Dir,
}

#[derive(Default, Clone)]
struct Dir {
    /// Entries as the running system sees them.
    cur: BTreeMap<OsString, Node>,
    /// Entries on disk.
    disk: BTreeMap<OsString, Node>,
}

#[derive(Default, Clone)]
struct Inode {
    /// Name at creation, for traces.
    name: PathBuf,
    data: Vec<u8>,
    disk: Vec<u8>,
    /// Sectors written since the last flush.
    dirty: BTreeSet<usize>,
}

struct World {
    rng: Rng,
    /// Bumped by every restart: handles of an older boot are dead.
    boot: u64,
    ops: u64,
    clock_ms: u64,
    crashed: bool,
    faults: Faults,
    inodes: Vec<Inode>,
    dirs: BTreeMap<PathBuf, Dir>,
    stats: SimStats,
    /// Print every operation to stderr ([`SimFs::set_trace`]).
    trace: bool,
}

thread_local! {
    static CURRENT_FS: RefCell<Option<SimFs>> = const { RefCell::new(None) };
}

/// The file system of the [`SimFs::run`] on this thread.
pub(super) fn current() -> SimFs {
    CURRENT_FS
        .with(|c| c.borrow().clone())
        .expect("Driver::Sim outside SimFs::run")
}

/// The error of an injected fault and of every operation after a power
/// cut: what a failing device returns.
fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

fn crashed_error() -> io::Error {
    eio()
}

fn not_found() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOENT)
}

/// `path` as a normalized absolute path (the simulation's only kind).
fn norm(path: &Path) -> io::Result<PathBuf> {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::Prefix(_) => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }
    if !path.is_absolute() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "simulated paths are absolute",
        ));
    }
    Ok(out)
}

fn split(path: &Path) -> io::Result<(PathBuf, OsString)> {
    let p = norm(path)?;
    match (p.parent(), p.file_name()) {
        (Some(d), Some(n)) => Ok((d.to_path_buf(), n.to_os_string())),
        _ => Err(io::Error::from_raw_os_error(libc::EISDIR)),
    }
}

impl World {
    fn log(&self, what: std::fmt::Arguments<'_>) {
        if self.trace {
            eprintln!("sim op {}: {what}", self.ops + 1);
        }
    }

    /// Counts an operation; true when the scheduled power cut is now. After
    /// a cut every operation fails.
    fn tick(&mut self) -> io::Result<bool> {
        if self.crashed {
            return Err(crashed_error());
        }
        self.ops += 1;
        self.stats.ops += 1;
        self.clock_ms += 1;
        Ok(self.faults.crash_at_op == Some(self.ops))
    }

    /// A counted operation that cannot tear: cut first, then fail.
    fn op(&mut self) -> io::Result<()> {
        if self.tick()? {
            self.power_cut();
            return Err(crashed_error());
        }
        Ok(())
    }

    fn dir(&self, p: &Path) -> io::Result<&Dir> {
        self.dirs.get(p).ok_or_else(not_found)
    }

    fn dir_mut(&mut self, p: &Path) -> io::Result<&mut Dir> {
        self.dirs.get_mut(p).ok_or_else(not_found)
    }

    fn lookup(&self, path: &Path) -> io::Result<Option<Node>> {
        let p = norm(path)?;
        if p == Path::new("/") {
            return Ok(Some(Node::Dir));
        }
        let (d, n) = split(&p)?;
        Ok(self.dir(&d)?.cur.get(&n).cloned())
    }

    fn open(&mut self, path: &Path, o: &OpenOptions) -> io::Result<usize> {
        self.log(format_args!("open {} {o:?}", path.display()));
        self.op()?;
        let (d, n) = split(path)?;
        let existing = self.dir(&d)?.cur.get(&n).cloned();
        match existing {
            Some(Node::Dir) => Err(io::Error::from_raw_os_error(libc::EISDIR)),
            Some(Node::File(_)) if o.create_new => Err(io::Error::from_raw_os_error(libc::EEXIST)),
            Some(Node::File(ino)) => {
                if o.truncate {
                    self.set_len(ino, 0);
                }
                Ok(ino)
            }
            None if o.create || o.create_new => {
                let ino = self.inodes.len();
                self.inodes.push(Inode {
                    name: norm(path)?,
                    ..Inode::default()
                });
                self.dir_mut(&d)?.cur.insert(n, Node::File(ino));
                Ok(ino)
            }
            None => Err(not_found()),
        }
    }

    fn set_len(&mut self, ino: usize, len: usize) {
        let f = &mut self.inodes[ino];
        let old = f.data.len();
        f.data.resize(len, 0);
        // A size change is flushed with the data; mark the boundary sector
        // so the next sync carries the new length even when nothing else
        // is dirty.
        f.dirty.insert(len.min(old) / SECTOR);
        f.dirty.retain(|&s| s * SECTOR <= len);
    }

    fn write(&mut self, ino: usize, buf: &[u8], pos: usize) -> io::Result<()> {
        self.log(format_args!(
            "write {} {}+{}",
            self.inodes[ino].name.display(),
            pos,
            buf.len()
        ));
        let crash = self.tick()?;
        let fail = !crash && self.rng.per_mille(self.faults.write_error_per_mille);
        let mut n = buf.len();
        if fail && n > 0 {
            n = self.rng.below(n as u64) as usize;
        }
        let f = &mut self.inodes[ino];
        if f.data.len() < pos + n {
            f.data.resize(pos + n, 0);
        }
        f.data[pos..pos + n].copy_from_slice(&buf[..n]);
        if n > 0 {
            for s in pos / SECTOR..=(pos + n - 1) / SECTOR {
                f.dirty.insert(s);
            }
        }
        if crash {
            self.power_cut();
            return Err(crashed_error());
        }
        if fail {
            self.log(format_args!("  -> EIO after {n} bytes"));
            self.stats.write_errors += 1;
            return Err(eio());
        }
        Ok(())
    }

    fn read(&mut self, ino: usize, pos: usize, max: usize) -> io::Result<Vec<u8>> {
        self.op()?;
        let d = &self.inodes[ino].data;
        let start = pos.min(d.len());
        let end = pos.saturating_add(max).min(d.len());
        Ok(d[start..end].to_vec())
    }

    fn flush_file(&mut self, ino: usize) -> io::Result<()> {
        self.log(format_args!("fsync {}", self.inodes[ino].name.display()));
        self.op()?;
        let fail = self.rng.per_mille(self.faults.sync_error_per_mille);
        let dirty = std::mem::take(&mut self.inodes[ino].dirty);
        let len = self.inodes[ino].data.len();
        if !fail {
            let f = &mut self.inodes[ino];
            f.disk.resize(len, 0);
            for s in dirty {
                copy_sector(&f.data, &mut f.disk, s);
            }
            return Ok(());
        }
        self.log(format_args!("  -> EIO"));
        // Linux marks the pages clean whether or not they reached the disk.
        for s in dirty {
            if self.rng.coin() {
                let f = &mut self.inodes[ino];
                let end = ((s + 1) * SECTOR).min(len);
                if f.disk.len() < end {
                    f.disk.resize(end, 0);
                }
                copy_sector(&f.data, &mut f.disk, s);
            }
        }
        self.stats.sync_errors += 1;
        Err(eio())
    }

    fn flush_dir(&mut self, path: &Path) -> io::Result<()> {
        self.log(format_args!("fsync dir {}", path.display()));
        self.op()?;
        let p = norm(path)?;
        self.dir(&p)?;
        let fail = self.rng.per_mille(self.faults.sync_error_per_mille);
        if !fail {
            let d = self.dir_mut(&p)?;
            d.disk = d.cur.clone();
            return Ok(());
        }
        let d = self.dirs.get(&p).expect("checked above").clone();
        let names: BTreeSet<&OsString> = d.cur.keys().chain(d.disk.keys()).collect();
        let mut disk = d.disk.clone();
        for name in names {
            if d.cur.get(name) != d.disk.get(name) && self.rng.coin() {
                match d.cur.get(name) {
                    Some(n) => disk.insert(name.clone(), n.clone()),
                    None => disk.remove(name),
                };
            }
        }
        self.log(format_args!("  -> EIO"));
        self.dirs.get_mut(&p).expect("checked above").disk = disk;
        self.stats.sync_errors += 1;
        Err(eio())
    }

    /// The power cut: what is on disk survives, with a random part of what
    /// was not yet flushed.
    fn power_cut(&mut self) {
        if self.crashed {
            return;
        }
        self.log(format_args!("POWER CUT"));
        self.crashed = true;
        self.stats.crashes += 1;
        let mut dirs: BTreeMap<PathBuf, Dir> = BTreeMap::new();
        let mut inodes: Vec<Inode> = Vec::new();
        let mut renumber: BTreeMap<usize, usize> = BTreeMap::new();
        let mut stack = vec![PathBuf::from("/")];
        while let Some(p) = stack.pop() {
            let d = self.dirs[&p].clone();
            let names: BTreeSet<&OsString> = d.cur.keys().chain(d.disk.keys()).collect();
            let mut kept = BTreeMap::new();
            for name in names {
                let (c, k) = (d.cur.get(name), d.disk.get(name));
                let pick = if c == k || self.rng.coin() { c } else { k };
                match pick {
                    None => {}
                    Some(Node::Dir) => {
                        let child = p.join(name);
                        if self.dirs.contains_key(&child) {
                            kept.insert(name.clone(), Node::Dir);
                            stack.push(child);
                        }
                    }
                    Some(Node::File(ino)) => {
                        let new = match renumber.get(ino) {
                            Some(&n) => n,
                            None => {
                                let survivor = self.survivor(*ino);
                                if self.trace {
                                    eprintln!(
                                        "sim: {} survives: {} of {} bytes ({} on disk)",
                                        p.join(name).display(),
                                        survivor.len(),
                                        self.inodes[*ino].data.len(),
                                        self.inodes[*ino].disk.len()
                                    );
                                }
                                inodes.push(Inode {
                                    name: p.join(name),
                                    data: survivor.clone(),
                                    disk: survivor,
                                    dirty: BTreeSet::new(),
                                });
                                renumber.insert(*ino, inodes.len() - 1);
                                inodes.len() - 1
                            }
                        };
                        kept.insert(name.clone(), Node::File(new));
                    }
                }
            }
            dirs.insert(
                p,
                Dir {
                    cur: kept.clone(),
                    disk: kept,
                },
            );
        }
        self.dirs = dirs;
        self.inodes = inodes;
    }

    /// The content of a file after a power cut.
    fn survivor(&mut self, ino: usize) -> Vec<u8> {
        let f = self.inodes[ino].clone();
        let (lo, hi) = (
            f.disk.len().min(f.data.len()),
            f.disk.len().max(f.data.len()),
        );
        let len = match self.rng.below(3) {
            0 => f.disk.len(),
            1 => f.data.len(),
            _ => lo + self.rng.below((hi - lo + 1) as u64) as usize,
        };
        let mut out = f.disk.clone();
        if out.len() < len {
            let fill = if self.faults.garbage { 0xA5 } else { 0 };
            out.resize(len, fill);
        }
        out.truncate(len);
        for s in f.dirty {
            if self.rng.coin() {
                copy_sector(&f.data, &mut out, s);
            }
        }
        out
    }
}

/// Copies sector `s` of `from` over `to`, within both lengths.
fn copy_sector(from: &[u8], to: &mut [u8], s: usize) {
    let start = s * SECTOR;
    let end = ((s + 1) * SECTOR).min(from.len()).min(to.len());
    if start < end {
        to[start..end].copy_from_slice(&from[start..end]);
    }
}

impl SimFs {
    /// An empty file system (only `/`, durable) whose randomness comes
    /// from `seed`, with no faults scheduled.
    pub fn new(seed: u64) -> SimFs {
        let mut dirs = BTreeMap::new();
        dirs.insert(PathBuf::from("/"), Dir::default());
        SimFs {
            w: Rc::new(RefCell::new(World {
                rng: Rng::new(seed),
                boot: 0,
                ops: 0,
                clock_ms: 0,
                crashed: false,
                faults: Faults::default(),
                inodes: Vec::new(),
                dirs,
                stats: SimStats::default(),
                trace: false,
            })),
        }
    }

    /// Sets the faults of this boot (operation numbers count from the last
    /// restart).
    pub fn set_faults(&self, f: Faults) {
        self.w.borrow_mut().faults = f;
    }

    /// Prints every operation, and what survives a power cut, to stderr.
    pub fn set_trace(&self, on: bool) {
        self.w.borrow_mut().trace = on;
    }

    /// Cuts the power now (nothing happens if it is already cut).
    pub fn crash(&self) {
        self.w.borrow_mut().power_cut();
    }

    /// Whether the power is cut.
    pub fn crashed(&self) -> bool {
        self.w.borrow().crashed
    }

    /// Boots the surviving state after a power cut: faults cleared,
    /// operations counted from 0, every handle of the previous boot dead.
    /// The clock keeps running.
    pub fn restart(&self) {
        let mut w = self.w.borrow_mut();
        w.power_cut();
        w.crashed = false;
        w.boot += 1;
        w.ops = 0;
        w.faults = Faults::default();
    }

    /// Operations since the last restart.
    pub fn ops(&self) -> u64 {
        self.w.borrow().ops
    }

    /// Counters since creation.
    pub fn stats(&self) -> SimStats {
        self.w.borrow().stats.clone()
    }

    /// The simulated clock (also [`super::system_time`] inside [`SimFs::run`]).
    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH
            + Duration::from_secs(EPOCH_SECS)
            + Duration::from_millis(self.w.borrow().clock_ms)
    }

    /// Moves the simulated clock forward.
    pub fn advance(&self, d: Duration) {
        self.w.borrow_mut().clock_ms += d.as_millis() as u64;
    }

    /// The names in directory `path` as the running system sees them
    /// (not counted as an operation; for test assertions).
    pub fn list(&self, path: &Path) -> Vec<String> {
        let w = self.w.borrow();
        norm(path)
            .ok()
            .and_then(|p| w.dirs.get(&p).cloned())
            .map(|d| {
                d.cur
                    .keys()
                    .map(|k| k.to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The cached content of file `path` (not counted; for assertions).
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let w = self.w.borrow();
        match w.lookup(path).ok()?? {
            Node::File(ino) => Some(w.inodes[ino].data.clone()),
            Node::Dir => None,
        }
    }

    /// Runs `fut` to completion on a single-threaded runtime whose
    /// `shard::io` operations use this file system.
    pub fn run<F: Future>(&self, fut: F) -> F::Output {
        let previous_fs = CURRENT_FS.with(|c| c.replace(Some(self.clone())));
        struct Restore(Option<SimFs>);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT_FS.with(|c| *c.borrow_mut() = self.0.take());
            }
        }
        let _restore = Restore(previous_fs);
        super::with_driver(Driver::Sim, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("tokio current-thread runtime");
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, fut)
        })
    }

    /// Lets other tasks run first, now and then (per [`Faults`]).
    pub(super) async fn maybe_yield(&self) {
        let y = {
            let mut w = self.w.borrow_mut();
            let p = w.faults.yield_per_mille;
            w.rng.per_mille(p)
        };
        if y {
            tokio::task::yield_now().await;
        }
    }

    pub(super) fn open(&self, path: &Path, o: &OpenOptions) -> io::Result<SimFile> {
        let mut w = self.w.borrow_mut();
        let ino = w.open(path, o)?;
        Ok(SimFile {
            fs: self.clone(),
            boot: w.boot,
            ino,
        })
    }

    pub(super) fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.w.borrow_mut().flush_dir(path)
    }

    pub(super) fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut w = self.w.borrow_mut();
        w.log(format_args!("rename {} {}", from.display(), to.display()));
        w.op()?;
        let (fd, fname) = split(from)?;
        let (td, tname) = split(to)?;
        w.dir(&td)?;
        let node = w.dir(&fd)?.cur.get(&fname).cloned().ok_or_else(not_found)?;
        if node == Node::Dir {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "simulated rename of a directory",
            ));
        }
        w.dir_mut(&fd)?.cur.remove(&fname);
        w.dir_mut(&td)?.cur.insert(tname, node);
        Ok(())
    }

    pub(super) fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut w = self.w.borrow_mut();
        w.log(format_args!("unlink {}", path.display()));
        w.op()?;
        let (d, n) = split(path)?;
        match w.dir(&d)?.cur.get(&n) {
            Some(Node::File(_)) => {
                w.dir_mut(&d)?.cur.remove(&n);
                Ok(())
            }
            Some(Node::Dir) => Err(io::Error::from_raw_os_error(libc::EISDIR)),
            None => Err(not_found()),
        }
    }

    pub(super) fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut w = self.w.borrow_mut();
        w.op()?;
        let p = norm(path)?;
        let mut cur = PathBuf::from("/");
        for c in p.components().skip(1) {
            let name = c.as_os_str().to_os_string();
            let next = cur.join(&name);
            match w.dir(&cur)?.cur.get(&name) {
                Some(Node::Dir) => {}
                Some(Node::File(_)) => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
                None => {
                    w.dir_mut(&cur)?.cur.insert(name, Node::Dir);
                    w.dirs.insert(next.clone(), Dir::default());
                }
            }
            cur = next;
        }
        Ok(())
    }

    pub(super) fn is_dir(&self, path: &Path) -> bool {
        let mut w = self.w.borrow_mut();
        w.op().is_ok() && matches!(w.lookup(path), Ok(Some(Node::Dir)))
    }

    pub(super) fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        let mut w = self.w.borrow_mut();
        w.op()?;
        let p = norm(path)?;
        Ok(w.dir(&p)?.cur.keys().cloned().collect())
    }

    pub(super) fn now_time(&self) -> SystemTime {
        self.now()
    }
}

/// An open simulated file.
pub(super) struct SimFile {
    fs: SimFs,
    boot: u64,
    ino: usize,
}

impl SimFile {
    fn world(&self) -> io::Result<std::cell::RefMut<'_, World>> {
        let w = self.fs.w.borrow_mut();
        if w.boot != self.boot || w.crashed {
            return Err(crashed_error());
        }
        Ok(w)
    }

    pub(super) async fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.fs.maybe_yield().await;
        self.world()?.write(self.ino, buf, pos as usize)
    }

    pub(super) async fn read_at(&self, pos: u64, max: usize) -> io::Result<Vec<u8>> {
        self.fs.maybe_yield().await;
        self.world()?.read(self.ino, pos as usize, max)
    }

    pub(super) async fn sync(&self) -> io::Result<()> {
        self.fs.maybe_yield().await;
        self.world()?.flush_file(self.ino)
    }

    pub(super) fn len(&self) -> io::Result<u64> {
        let mut w = self.world()?;
        w.op()?;
        Ok(w.inodes[self.ino].data.len() as u64)
    }

    pub(super) fn set_len(&self, len: u64) -> io::Result<()> {
        let mut w = self.world()?;
        w.log(format_args!(
            "truncate {} {len}",
            w.inodes[self.ino].name.display()
        ));
        w.op()?;
        w.set_len(self.ino, len as usize);
        Ok(())
    }

    pub(super) fn ino(&self) -> u64 {
        self.ino as u64
    }
}

#[cfg(test)]
mod tests {
    use super::super::{self as io_, File};
    use super::*;

    fn rw() -> OpenOptions {
        let mut o = OpenOptions::new();
        o.read(true).write(true).create(true);
        o
    }

    #[test]
    fn synced_data_and_entries_survive_a_power_cut() {
        for seed in 0..50 {
            let fs = SimFs::new(seed);
            fs.run(async {
                io_::create_dir_all("/q/seg").unwrap();
                io_::sync_dir("/q").await.unwrap();
                io_::sync_dir("/").await.unwrap();
                let f = File::open("/q/seg/a", &rw()).await.unwrap();
                let (r, _) = f.write_all_at(vec![7; 1500], 0).await;
                r.unwrap();
                f.sync_data().await.unwrap();
                io_::sync_dir("/q/seg").await.unwrap();
                let (r, _) = f.write_all_at(vec![9; 1000], 1500).await;
                r.unwrap();
            });
            fs.restart();
            let got = fs.contents(Path::new("/q/seg/a")).expect("file survives");
            assert!(got.len() >= 1500 && got.len() <= 2500, "{}", got.len());
            assert_eq!(&got[..1500], &[7; 1500][..]);
            assert!(got[1536.min(got.len())..].iter().all(|&b| b == 9 || b == 0));
        }
    }

    #[test]
    fn unsynced_entries_may_vanish_and_fsync_errors_lose_data() {
        let (mut vanished, mut lost) = (0, 0);
        for seed in 0..200 {
            let fs = SimFs::new(seed);
            fs.set_faults(Faults {
                sync_error_per_mille: 1000,
                ..Faults::default()
            });
            let err = fs.run(async {
                io_::create_dir_all("/d").unwrap();
                let f = File::open("/d/x", &rw()).await.unwrap();
                let (r, _) = f.write_all_at(vec![1; 4096], 0).await;
                r.unwrap();
                let e = f.sync_data().await.unwrap_err();
                // The cache still shows the data a later sync will not write.
                let (r, b) = f.read_at(Vec::with_capacity(4096), 0).await;
                assert_eq!(r.unwrap(), 4096);
                assert!(b.iter().all(|&x| x == 1));
                e
            });
            assert_eq!(err.raw_os_error(), Some(libc::EIO));
            fs.restart();
            match fs.contents(Path::new("/d/x")) {
                None => vanished += 1,
                Some(c) if c.len() < 4096 || c.iter().any(|&b| b != 1) => lost += 1,
                Some(_) => {}
            }
        }
        assert!(vanished > 0 && lost > 0, "{vanished} {lost}");
    }

    #[test]
    fn same_seed_same_world() {
        let run = |seed| {
            let fs = SimFs::new(seed);
            fs.set_faults(Faults {
                crash_at_op: Some(9),
                sync_error_per_mille: 300,
                write_error_per_mille: 300,
                yield_per_mille: 500,
                garbage: true,
            });
            fs.run(async {
                let _ = io_::create_dir_all("/d");
                for i in 0..10u8 {
                    if let Ok(f) = File::open(format!("/d/{i}"), &rw()).await {
                        let _ = f.write_all_at(vec![i; 3000], 0).await;
                        let _ = f.sync_all().await;
                    }
                }
            });
            fs.restart();
            (0..10)
                .map(|i| fs.contents(&PathBuf::from(format!("/d/{i}"))))
                .collect::<Vec<_>>()
        };
        for seed in 0..20 {
            assert_eq!(run(seed), run(seed));
        }
    }
}

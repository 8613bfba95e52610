//! Group commit of directory and file-system flushes (one shard's Maildir
//! deliveries).
//!
//! A Maildir delivery is durable only once `new/` is fsynced after its
//! rename ([`sync_dir`]), or the whole file system synced ([`sync_fs`],
//! `syncfs(2)`, also used before the rename for the file's data, see
//! [`crate::maildir::SyncMode`]). Concurrent deliveries into the same `new/`
//! (onto the same file system) on one shard share that flush: every
//! delivery that renamed its file joins the group waiting
//! for the *next* flush to start (a flush already running may have started
//! before its rename, so it does not count). Up to [`MAX_IN_FLIGHT`] flushes
//! of one directory run at once: a group starts its flush at once while
//! fewer are running, else when one ends. Each member gets the result of the
//! flush that covered it, so a failed fsync fails (defers) every member of
//! that group, and none reports success before a flush that began after its
//! rename has succeeded: "a finished recipient is durable" is unchanged.
//!
//! Why more than one in flight: where a directory fsync is a journal commit
//! (ext4 with a journal, XFS) the file system already merges concurrent
//! fsyncs, and one flush at a time made later deliveries wait for it
//! (measured 0.76-0.87 of a flush each); where it writes the directory's
//! blocks itself (ext4 without a journal), sharing pays (loadtest/RESULTS.md).
//!
//! The table is per thread, so per shard: two shards delivering into the
//! same Maildir each flush it for their own groups (correct, just less
//! sharing). Each flush runs as its own local task, so a delivery that is
//! cancelled while it waits does not strand the others.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use tokio::sync::oneshot;

type Reply = oneshot::Sender<Result<(), Rc<io::Error>>>;

/// Flushes of one directory that may run at once (see the module doc).
pub const MAX_IN_FLIGHT: usize = 2;

thread_local! {
    static IN_FLIGHT_CAP: Cell<usize> = const { Cell::new(MAX_IN_FLIGHT) };
}

/// Sets how many flushes of one directory may run at once on this thread
/// (at least 1). For benchmarks that compare caps in one run; the server
/// keeps [`MAX_IN_FLIGHT`].
pub fn set_flushes_in_flight(n: usize) {
    IN_FLIGHT_CAP.with(|c| c.set(n.max(1)));
}

/// What one flush makes durable: a directory's entries, or everything on a
/// file system (identified by its device number).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Target {
    Dir(PathBuf),
    Fs(u64),
}

struct Group {
    /// Members whose rename is done, waiting for a flush that starts later.
    waiting: Vec<Reply>,
    /// Flushes of this target running now.
    in_flight: usize,
    /// The directory the flush opens (for a file system: any directory on it).
    path: PathBuf,
}

/// What this shard's directory flushes did since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushStats {
    /// Directory fsyncs issued.
    pub flushes: u64,
    /// Deliveries they covered (members of all groups).
    pub members: u64,
    /// Of `flushes`, those that were a whole file system's (`syncfs`).
    pub fs_flushes: u64,
}

thread_local! {
    /// Directories with a flusher running, and who waits for its next flush.
    static GROUPS: RefCell<HashMap<Target, Group>> = RefCell::new(HashMap::new());
    static STATS: Cell<FlushStats> = const {
        Cell::new(FlushStats { flushes: 0, members: 0, fs_flushes: 0 })
    };
    static GROUPING: Cell<bool> = const { Cell::new(true) };
}

/// Turns sharing off (or back on) for this thread: each call then flushes on
/// its own, as before group commit. For benchmarks that compare the two in
/// one run; the server never turns it off.
pub fn set_grouping(on: bool) {
    GROUPING.with(|g| g.set(on));
}

fn count(flushes: u64, members: u64, fs: bool) {
    STATS.with(|s| {
        let mut v = s.get();
        v.flushes += flushes;
        v.members += members;
        v.fs_flushes += u64::from(fs) * flushes;
        s.set(v);
    });
}

/// This thread's (shard's) counters.
pub fn stats() -> FlushStats {
    STATS.with(Cell::get)
}

/// Makes the entries created or renamed in `dir` before this call durable,
/// sharing the fsync with the other deliveries into `dir` waiting at the
/// same time (see the module doc).
pub async fn sync_dir(dir: &Path) -> io::Result<()> {
    if !GROUPING.with(Cell::get) {
        count(1, 1, false);
        return shard::io::sync_dir(dir).await;
    }
    join(Target::Dir(dir.to_path_buf()), dir).await
}

/// Makes everything written on the file system with device number `dev`
/// before this call durable (`syncfs(2)` through `dir`, a directory on it),
/// sharing the flush with every other delivery on this shard waiting for
/// that file system, whatever its Maildir.
pub async fn sync_fs(dev: u64, dir: &Path) -> io::Result<()> {
    if !GROUPING.with(Cell::get) {
        count(1, 1, true);
        return shard::io::sync_fs(dir).await;
    }
    join(Target::Fs(dev), dir).await
}

async fn join(target: Target, dir: &Path) -> io::Result<()> {
    let (tx, rx) = oneshot::channel();
    let start = GROUPS.with(|g| {
        let mut g = g.borrow_mut();
        let group = g.entry(target.clone()).or_insert_with(|| Group {
            waiting: Vec::new(),
            in_flight: 0,
            path: dir.to_path_buf(),
        });
        // A file system's group can live as long as deliveries keep coming:
        // its flush opens the latest joiner's directory, which exists now,
        // not the first one's, which may since have been removed.
        if matches!(target, Target::Fs(_)) && group.path != dir {
            group.path = dir.to_path_buf();
        }
        group.waiting.push(tx);
        if group.in_flight < IN_FLIGHT_CAP.with(Cell::get) {
            group.in_flight += 1;
            true
        } else {
            false
        }
    });
    if start {
        tokio::task::spawn_local(flusher(target));
    }
    match rx.await {
        Ok(r) => r.map_err(|e| io::Error::new(e.kind(), e.to_string())),
        // The runtime is shutting down and dropped the flusher: not durable.
        Err(_) => Err(io::Error::other("directory flush abandoned")),
    }
}

/// One of `dir`'s flush slots: flushes for the group waiting when it runs,
/// then for the next one, until nobody waits; then frees the slot.
async fn flusher(target: Target) {
    // If the runtime drops this task, free its slot; members it held get
    // "abandoned", and a later delivery on this thread starts a flush.
    struct Slot<'a>(&'a Target);
    impl Drop for Slot<'_> {
        fn drop(&mut self) {
            let _ = GROUPS.try_with(|g| {
                let mut g = g.borrow_mut();
                if let Some(group) = g.get_mut(self.0) {
                    group.in_flight -= 1;
                    if group.in_flight == 0 && group.waiting.is_empty() {
                        g.remove(self.0);
                    }
                }
            });
        }
    }
    let _slot = Slot(&target);
    loop {
        let batch = GROUPS.with(|g| {
            let mut g = g.borrow_mut();
            let group = g.get_mut(&target)?;
            if group.waiting.is_empty() {
                return None;
            }
            Some((std::mem::take(&mut group.waiting), group.path.clone()))
        });
        let Some((batch, path)) = batch else { return };
        let r = match &target {
            Target::Dir(_) => shard::io::sync_dir(&path).await,
            Target::Fs(_) => shard::io::sync_fs(&path).await,
        }
        .map_err(Rc::new);
        count(1, batch.len() as u64, matches!(target, Target::Fs(_)));
        for member in batch {
            // A member that went away (cancelled) needs no answer.
            let _ = member.send(r.clone());
        }
    }
}

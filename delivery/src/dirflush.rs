//! Group commit of directory flushes (one shard's Maildir deliveries).
//!
//! A Maildir delivery is durable only once `new/` is fsynced after its
//! rename. Concurrent deliveries into the same `new/` on one shard share
//! that fsync: the first one starts a flusher; every delivery that renamed
//! its file joins the group waiting for the *next* flush to start (a flush
//! already running may have started before its rename, so it does not
//! count). Each member gets the result of the flush that covered it, so a
//! failed fsync fails (defers) every member of that group, and none reports
//! success before a flush that began after its rename has succeeded: "a
//! finished recipient is durable" is unchanged.
//!
//! The table is per thread, so per shard: two shards delivering into the
//! same Maildir each flush it for their own groups (correct, just less
//! sharing). The flusher runs as its own local task, so a delivery that is
//! cancelled while it leads a flush does not strand the others.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use tokio::sync::oneshot;

type Reply = oneshot::Sender<Result<(), Rc<io::Error>>>;

#[derive(Default)]
struct Group {
    /// Members whose rename is done, waiting for a flush that starts now.
    waiting: Vec<Reply>,
}

/// What this shard's directory flushes did since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushStats {
    /// Directory fsyncs issued.
    pub flushes: u64,
    /// Deliveries they covered (members of all groups).
    pub members: u64,
}

thread_local! {
    /// Directories with a flusher running, and who waits for its next flush.
    static GROUPS: RefCell<HashMap<PathBuf, Group>> = RefCell::new(HashMap::new());
    static STATS: Cell<FlushStats> = const { Cell::new(FlushStats { flushes: 0, members: 0 }) };
    static GROUPING: Cell<bool> = const { Cell::new(true) };
}

/// Turns sharing off (or back on) for this thread: each call then flushes on
/// its own, as before group commit. For benchmarks that compare the two in
/// one run; the server never turns it off.
pub fn set_grouping(on: bool) {
    GROUPING.with(|g| g.set(on));
}

fn count(flushes: u64, members: u64) {
    STATS.with(|s| {
        let mut v = s.get();
        v.flushes += flushes;
        v.members += members;
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
        count(1, 1);
        return shard::io::sync_dir(dir).await;
    }
    let (tx, rx) = oneshot::channel();
    let lead = GROUPS.with(|g| {
        let mut g = g.borrow_mut();
        match g.get_mut(dir) {
            Some(group) => {
                group.waiting.push(tx);
                false
            }
            None => {
                g.insert(dir.to_path_buf(), Group { waiting: vec![tx] });
                true
            }
        }
    });
    if lead {
        tokio::task::spawn_local(flusher(dir.to_path_buf()));
    }
    match rx.await {
        Ok(r) => r.map_err(|e| io::Error::new(e.kind(), e.to_string())),
        // The runtime is shutting down and dropped the flusher: not durable.
        Err(_) => Err(io::Error::other("directory flush abandoned")),
    }
}

/// Flushes `dir` for each group in turn until nobody waits, then leaves.
async fn flusher(dir: PathBuf) {
    // If the runtime drops this task, forget the group: its members get
    // "abandoned", and a later delivery on this thread starts a new flusher.
    struct Forget<'a>(&'a Path);
    impl Drop for Forget<'_> {
        fn drop(&mut self) {
            let _ = GROUPS.try_with(|g| g.borrow_mut().remove(self.0));
        }
    }
    let _forget = Forget(&dir);
    loop {
        let batch = GROUPS.with(|g| {
            let mut g = g.borrow_mut();
            let group = g.get_mut(&dir)?;
            if group.waiting.is_empty() {
                return None;
            }
            Some(std::mem::take(&mut group.waiting))
        });
        let Some(batch) = batch else { return };
        let r = shard::io::sync_dir(&dir).await.map_err(Rc::new);
        count(1, batch.len() as u64);
        for member in batch {
            // A member that went away (cancelled) needs no answer.
            let _ = member.send(r.clone());
        }
    }
}

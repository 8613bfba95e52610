//! The queue proper, one module a job: `recovery` opens a queue,
//! `writer` receives and commits messages, `segment_log` is the commit
//! path (reserve, write, group sync), `schedule` hands out due
//! recipients, `outcomes` records what delivery did, `operator_hold`
//! freezes and thaws messages, `read` reads what is stored,
//! `compaction` reclaims space and `health` tracks a failing store.
//! Runs on one shard thread (`!Send`).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::UNIX_EPOCH;

use shard::io::{self as sio, File, OpenOptions};
use tokio::sync::Notify;

use crate::index::Index;
use crate::state::RecipientState;
use crate::{MessageId, QueueConfig};

mod compaction;
mod health;
mod lanes;
mod operator_hold;
mod outcomes;
mod read;
mod recovery;
mod schedule;
mod segment_log;
mod writer;

pub use lanes::{Lane, LaneLimits};
pub(crate) use operator_hold::{parse_hold_file, HOLD_FILE};
pub use writer::MessageWriter;

use segment_log::SyncFailure;

/// First pause (seconds) of delivery after the store failed a write or
/// flush; doubled by each failed [`Queue::probe`] up to [`STORE_BACKOFF_MAX`].
pub const STORE_BACKOFF_MIN: u64 = 1;

/// Longest pause (seconds) between two probes of a failing store.
pub const STORE_BACKOFF_MAX: u64 = 60;

/// Directory (inside the queue directory) of messages recovery could not
/// read whole: `<id>.env` (what was known of the envelope, and why) and
/// `<id>.body` (whatever was left of a spilled body).
pub const QUARANTINE_DIR: &str = "quarantine";

/// The write path of a queue is failing (a write or flush failed and no
/// flush has succeeded since). While it lasts [`Queue::due`] hands nothing
/// out: a delivery whose outcome cannot be recorded would only be repeated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFailure {
    /// Unix seconds of the first failure of this episode.
    pub since: u64,
    /// Failed writes, flushes and outcome records in this episode.
    pub errors: u64,
    /// The latest error, as text.
    pub last_error: String,
    /// When the store may be probed again ([`Queue::probe`]).
    pub retry_at: u64,
    /// The current pause between probes, in seconds.
    pub backoff: u64,
}

/// What recovery found when the queue was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files scanned.
    pub segments: u64,
    /// Records read and applied.
    pub records: u64,
    /// Live messages (at least one recipient pending).
    pub messages: u64,
    /// Recipients still to be delivered.
    pub recipients_pending: u64,
    /// Bytes of torn tails discarded (truncated).
    pub torn_bytes: u64,
    /// Records skipped mid-segment because their checksum or content was
    /// bad, as "segment file: offset: reason".
    pub corrupt_records: Vec<String>,
    /// Segments whose header was damaged (records were still read).
    pub bad_headers: Vec<String>,
    /// OUTCOME records for messages no longer present (normal after a
    /// segment was reclaimed).
    pub orphan_outcomes: u64,
    /// Messages dropped because their spill file is missing (they were
    /// never acknowledged: the spill file is made durable first).
    pub missing_bodies: u64,
    /// Spill files of aborted or finished transactions removed.
    pub orphan_spill_files: u64,
    /// Segments deleted because nothing in them was live.
    pub segments_deleted: u64,
    /// Messages moved to `quarantine/` because their body could not be
    /// read whole (spill file missing, short or failing its checksum), as
    /// "id: reason". Their recipients are recorded Failed: never retried,
    /// never silent.
    pub quarantined: Vec<String>,
    /// Wall time of the recovery, in milliseconds.
    pub millis: u64,
}

/// Counters and gauges of one queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Live messages.
    pub messages: u64,
    /// Recipients pending (scheduled or handed out by `due`).
    pub recipients_pending: u64,
    /// Recipients handed out by `due` and not yet answered.
    pub recipients_leased: u64,
    /// Recipients held back by [`Queue::hold`] (ETRN/ATRN domains), part of
    /// `recipients_pending`.
    pub recipients_held: u64,
    /// Messages on operator hold ([`Queue::freeze`]).
    pub messages_frozen: u64,
    /// Segment files present.
    pub segments: u64,
    /// Current (append) segment number.
    pub current_segment: u32,
    /// Messages committed since open.
    pub commits: u64,
    /// OUTCOME records written since open.
    pub outcome_records: u64,
    /// Group syncs completed (each one fdatasync per dirty file).
    pub syncs: u64,
    /// Syncs that failed (their waiters got a temporary error).
    pub sync_errors: u64,
    /// Record writes that failed.
    pub write_errors: u64,
    /// Record bytes written (padding included).
    pub bytes_written: u64,
    /// Write calls that put records into segments: one per contiguous run
    /// of records per group sync, however many records the run holds.
    pub record_writes: u64,
    /// Messages whose body went to a spill file.
    pub spilled: u64,
    /// Segments deleted since open.
    pub segments_deleted: u64,
    /// Messages copied forward by compaction since open.
    pub compacted: u64,
    /// Failures while deleting segments or spill files (retried later).
    pub reclaim_errors: u64,
    /// Segments sealed after a failed flush (never written again).
    pub segments_sealed: u64,
    /// Whether the write path is failing now (see [`StoreFailure`]).
    pub store_failing: bool,
    /// Messages moved to `quarantine/` by the recovery of this open.
    pub quarantined: u64,
}

/// A recipient whose next attempt is due, handed out by [`Queue::due`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueRecipient {
    /// Message.
    pub id: MessageId,
    /// Index into the envelope's recipients.
    pub rcpt: usize,
    /// Recipient address.
    pub recipient: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// When it was due.
    pub next_attempt: u64,
}

/// One queue directory, owned by one shard. Cheap to clone (shared handle).
#[derive(Clone)]
pub struct Queue {
    sh: Rc<Shared>,
}

struct Shared {
    cfg: QueueConfig,
    seg_dir: PathBuf,
    big_dir: PathBuf,
    st: RefCell<State>,
    /// Woken when a sync epoch completes.
    synced: Notify,
    /// Woken when a segment roll completes.
    rolled: Notify,
    /// Woken when a compaction releases its messages.
    compacted: Notify,
    /// Woken when a reserved record's write finishes (or is abandoned).
    written: Notify,
    /// One [`Queue::freeze`]/[`Queue::thaw`] at a time, from the change in
    /// memory to the rewrite of the hold file (or its undoing): two
    /// interleaved rewrites share `hold.tmp`, so the older set could be
    /// renamed into place last (simulation seed 36), and one operation's
    /// undo after a failed write could undo another's change (seed 7703).
    hold_file: tokio::sync::Mutex<()>,
    /// The scheduler's wake-up: one permit per commit batch.
    arrivals: Rc<Notify>,
}

struct SegFile {
    file: Rc<File>,
    /// Reservations not yet finished (a commit whose MESSAGE record is in
    /// flight is not in the index yet; the segment must not go meanwhile).
    pending: u32,
    /// Offsets of reservations whose record is not written yet. A record
    /// is acknowledged only once every record reserved before it in its
    /// segment is written (see [`Queue::wait_durable_in`]).
    unwritten: BTreeSet<u64>,
}

impl SegFile {
    fn new(file: Rc<File>) -> SegFile {
        SegFile {
            file,
            pending: 0,
            unwritten: BTreeSet::new(),
        }
    }
}

#[derive(Default)]
struct State {
    index: Index,
    /// (next attempt, message key, recipient index) of pending recipients
    /// not handed out, by delivery channel.
    schedule: lanes::Schedule,
    leased: HashSet<(u64, u32)>,
    /// Pending recipients neither scheduled nor leased: held for an ETRN or
    /// ATRN (memory only; a restart schedules them again).
    held: HashSet<(u64, u32)>,
    /// Messages on operator hold ([`Queue::freeze`]): none of their
    /// recipients is scheduled; persisted in `<queue>/hold`.
    frozen: HashSet<u64>,
    /// A rewrite of `<queue>/hold` failed: the file may not match `frozen`.
    hold_file_stale: bool,
    /// Outcome writes in flight per message (compaction waits for zero).
    busy: HashMap<u64, u32>,
    /// Messages being copied forward (outcomes wait).
    compacting: HashSet<u64>,
    segs: BTreeMap<u32, SegFile>,
    cur_seg: u32,
    write_pos: u64,
    rolling: bool,
    /// Set after a failed write or sync: the next reservation starts a new
    /// segment, so nothing is appended after pages the kernel may have
    /// dropped.
    force_roll: bool,
    dirty: Vec<Rc<File>>,
    /// Records waiting for the next group sync to write them.
    queued_writes: Vec<segment_log::QueuedWrite>,
    dirty_seg_dir: bool,
    dirty_big_dir: bool,
    sync_started: u64,
    sync_done: u64,
    sync_in_flight: bool,
    failed_epochs: BTreeMap<u64, SyncFailure>,
    spill_nonce: u64,
    maintaining: bool,
    /// A segment was unlinked but the directory sync failed: no further
    /// segment may be deleted until it succeeds (deletions must become
    /// durable oldest first, or a resurrected old segment could outlive the
    /// outcomes that killed its messages).
    unsynced_delete: bool,
    /// Segments whose flush failed (fsyncgate: after a failed fsync the
    /// kernel may have dropped dirty pages and a later fsync can succeed
    /// without them), so no record in them written since is trusted.
    sealed: HashSet<u32>,
    /// Set while the write path fails; cleared by a successful flush.
    failure: Option<StoreFailure>,
    /// The episode a successful flush ended, until [`Queue::take_healed`]
    /// (any flush may end it, not only a probe).
    healed: Option<StoreFailure>,
    stats: QueueStats,
}

/// Writes a whole file (created or truncated) and makes its data durable;
/// the directory entry is the caller's (it fsyncs the directory).
async fn write_durable(path: &Path, data: Vec<u8>) -> io::Result<()> {
    let mut o = OpenOptions::new();
    o.write(true).create(true).truncate(true).mode(0o600);
    let f = File::open(path, &o).await?;
    let (r, _) = f.write_all_at(data, 0).await;
    let r = match r {
        Ok(()) => f.sync_all().await,
        Err(e) => Err(e),
    };
    let c = f.close().await;
    r.and(c)
}

/// Unix seconds by the I/O layer's clock (simulated under `Driver::Sim`).
fn now_secs() -> u64 {
    sio::system_time()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn rw_options(create_new: bool) -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true).write(true).mode(0o600);
    if create_new {
        o.create_new(true);
    }
    o
}

impl Queue {
    /// Counters and gauges.
    pub fn stats(&self) -> QueueStats {
        let st = self.sh.st.borrow();
        let mut s = st.stats.clone();
        s.messages = st.index.messages.len() as u64;
        s.recipients_leased = st.leased.len() as u64;
        s.recipients_held = st.held.len() as u64;
        s.messages_frozen = st.frozen.len() as u64;
        s.recipients_pending = st.schedule.len() as u64 + s.recipients_leased + s.recipients_held;
        for &key in &st.frozen {
            if let Some(e) = st.index.messages.get(&key) {
                s.recipients_pending += e
                    .rcpts
                    .iter()
                    .enumerate()
                    .filter(|(i, r)| {
                        r.state == RecipientState::Pending && !st.leased.contains(&(key, *i as u32))
                    })
                    .count() as u64;
            }
        }
        s.segments = st.segs.len() as u64;
        s.current_segment = st.cur_seg;
        s.store_failing = st.failure.is_some();
        s
    }

    /// The configuration the queue was opened with.
    pub fn config(&self) -> &QueueConfig {
        &self.sh.cfg
    }
}

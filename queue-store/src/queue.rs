//! The queue proper: segment log, group commit, spill files, recovery,
//! schedule, reclaim and compaction. Runs on one shard thread (`!Send`).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Instant, UNIX_EPOCH};

use shard::io::{self as sio, sync_dir, File, OpenOptions};
use tokio::sync::Notify;

use crate::error::QueueError;
use crate::format::{
    self, align_up, encode_message, encode_outcome, finish_record, padded_len, patch_key,
    segment_file_name, segment_header, BodyLoc, BodyRef, MAX_PAYLOAD, REC_HEADER_LEN,
    SEG_HEADER_LEN,
};
use crate::index::{scan_segment, Entry, Index};
use crate::state::{RecipientOutcome, RecipientState, RecipientStatus};
use crate::{Durability, Envelope, MessageId, QueueConfig};

/// Spill files are written in pieces of this size, so a body streamed in
/// many small SMTP chunks costs few write calls.
const SPILL_WRITE: usize = 256 * 1024;
/// Failed sync epochs remembered for waiters that have not looked yet.
const FAILED_EPOCHS_KEPT: usize = 64;
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

struct SyncFailure {
    op: &'static str,
    path: PathBuf,
    os: Option<i32>,
    kind: io::ErrorKind,
    msg: String,
}

impl SyncFailure {
    fn to_error(&self) -> QueueError {
        let e = match self.os {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(self.kind, self.msg.clone()),
        };
        QueueError::io(self.op, self.path.clone(), e)
    }
}

#[derive(Default)]
struct State {
    index: Index,
    /// (next attempt, message key, recipient index) of pending recipients
    /// not handed out.
    schedule: BTreeSet<(u64, u64, u32)>,
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

/// Notes a failed write or flush in the store's health.
fn note_failure(st: &mut State, msg: String) {
    let now = now_secs();
    match &mut st.failure {
        Some(f) => {
            f.errors += 1;
            f.last_error = msg;
        }
        None => {
            st.failure = Some(StoreFailure {
                since: now,
                errors: 1,
                last_error: msg,
                retry_at: now + STORE_BACKOFF_MIN,
                backoff: STORE_BACKOFF_MIN,
            })
        }
    }
}

/// The operator-hold list of a queue: one message id per line.
pub(crate) const HOLD_FILE: &str = "hold";

/// The ids in the text of a hold file (bad lines skipped).
pub(crate) fn parse_hold_file(text: &[u8]) -> Vec<MessageId> {
    String::from_utf8_lossy(text)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The ids in `<dir>/hold` (missing file: none).
async fn read_hold_file(dir: &Path) -> Vec<MessageId> {
    sio::read(dir.join(HOLD_FILE))
        .await
        .map(|t| parse_hold_file(&t))
        .unwrap_or_default()
}

/// Checks a spill file against the length and CRC32C its record names.
async fn verify_spill(path: &Path, len: u64, crc: u32) -> Result<(), String> {
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let mut o = OpenOptions::new();
    o.read(true);
    let f = File::open(path, &o)
        .await
        .map_err(|e| format!("spill file big/{name}: {e}"))?;
    let size = f
        .len()
        .await
        .map_err(|e| format!("spill file big/{name}: {e}"))?;
    if size != len {
        let _ = f.close().await;
        return Err(format!(
            "spill file big/{name} is {size} bytes, its record says {len}"
        ));
    }
    let (r, body) = f.read_exact_at(Vec::with_capacity(len as usize), 0).await;
    let _ = f.close().await;
    r.map_err(|e| format!("spill file big/{name}: {e}"))?;
    if crc32c::crc32c(&body) != crc {
        return Err(format!("spill file big/{name} fails its checksum"));
    }
    Ok(())
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
    /// Opens (creating if needed) the queue in `config.dir`, replays every
    /// segment, truncates torn tails, removes orphan spill files and
    /// rebuilds the index and schedule.
    pub async fn open(config: QueueConfig) -> Result<(Queue, RecoveryReport), QueueError> {
        config.validate()?;
        let started = Instant::now();
        let seg_dir = config.dir.join("seg");
        let big_dir = config.dir.join("big");
        let mut created = false;
        for d in [&config.dir, &seg_dir, &big_dir] {
            if !sio::is_dir(d) {
                sio::create_dir_all(d).map_err(|e| QueueError::io("mkdir", d, e))?;
                created = true;
            }
        }
        if created {
            for d in [&config.dir, &seg_dir, &big_dir] {
                sync_dir(d)
                    .await
                    .map_err(|e| QueueError::io("fsync dir", d, e))?;
            }
            if let Some(parent) = config.dir.parent() {
                sync_dir(parent)
                    .await
                    .map_err(|e| QueueError::io("fsync dir", parent, e))?;
            }
        }

        let mut report = RecoveryReport::default();
        let nums = crate::segment_numbers(&seg_dir)?;

        let mut index = Index::default();
        let mut segs = BTreeMap::new();
        let mut last_end = 0u64;
        let mut dir_changed = false;
        for &n in &nums {
            let path = seg_dir.join(segment_file_name(n));
            let file = File::open(&path, &rw_options(false))
                .await
                .map_err(|e| QueueError::io("open", &path, e))?;
            let len = file
                .len()
                .await
                .map_err(|e| QueueError::io("stat", &path, e))? as usize;
            let (r, buf) = file.read_exact_at(Vec::with_capacity(len), 0).await;
            r.map_err(|e| QueueError::io("read", &path, e))?;
            let scan = scan_segment(&buf, |off, l, d| index.apply(n, off, l, d));
            drop(buf);
            report.segments += 1;
            report.records += scan.records;
            for (off, reason) in &scan.corrupt {
                report
                    .corrupt_records
                    .push(format!("{}: {off}: {reason}", path.display()));
            }
            if let Some(h) = scan.header_error {
                report.bad_headers.push(format!("{}: {h}", path.display()));
            }
            if scan.valid_end == 0 {
                // Not even a header: a segment whose creation was torn.
                report.torn_bytes += scan.torn_bytes;
                let _ = file.close().await;
                sio::remove_file(&path)
                    .await
                    .map_err(|e| QueueError::io("unlink", &path, e))?;
                dir_changed = true;
                continue;
            }
            if scan.torn_bytes > 0 {
                report.torn_bytes += scan.torn_bytes;
                file.set_len(scan.valid_end as u64)
                    .await
                    .map_err(|e| QueueError::io("truncate", &path, e))?;
                file.sync_all()
                    .await
                    .map_err(|e| QueueError::io("fsync", &path, e))?;
            }
            last_end = scan.valid_end as u64;
            segs.insert(n, SegFile::new(Rc::new(file)));
        }
        if dir_changed {
            sync_dir(&seg_dir)
                .await
                .map_err(|e| QueueError::io("fsync dir", &seg_dir, e))?;
        }
        report.orphan_outcomes = index.orphan_outcomes;

        // Spill files: drop messages whose body never became durable, delete
        // files no live message references.
        let mut on_disk = BTreeSet::new();
        let names = sio::read_dir(&big_dir).map_err(|e| QueueError::io("readdir", &big_dir, e))?;
        for name in names {
            if let Ok(name) = name.into_string() {
                on_disk.insert(name);
            }
        }
        // Every spilled body is checked whole (length and CRC32C): a
        // record is only written once its body is durable, so a body that
        // does not verify is damage, and the message is quarantined rather
        // than deferred forever.
        let mut referenced = BTreeSet::new();
        let mut damaged: Vec<(u64, String)> = Vec::new();
        for (&key, e) in &index.messages {
            if let BodyLoc::Spilled { name, len, crc } = &e.body {
                if on_disk.contains(name) {
                    referenced.insert(name.clone());
                    if let Err(why) = verify_spill(&big_dir.join(name), *len, *crc).await {
                        damaged.push((key, why));
                    }
                } else {
                    report.missing_bodies += 1;
                    damaged.push((key, format!("spill file big/{name} missing")));
                }
            }
        }
        damaged.sort();
        let damaged_keys: HashSet<u64> = damaged.iter().map(|d| d.0).collect();
        for name in on_disk.difference(&referenced) {
            let p = big_dir.join(name);
            if sio::remove_file(&p).await.is_ok() {
                report.orphan_spill_files += 1;
            }
        }

        let mut st = State {
            index,
            segs,
            spill_nonce: sio::system_time()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1),
            ..State::default()
        };
        // Sorted first: BTreeSet builds from a sorted sequence in one pass,
        // much cheaper than a million inserts.
        st.frozen = read_hold_file(&config.dir)
            .await
            .into_iter()
            .filter(|id| id.queue == config.queue_no && st.index.messages.contains_key(&id.key()))
            .map(|id| id.key())
            .collect();
        let mut due: Vec<(u64, u64, u32)> = Vec::with_capacity(st.index.messages.len());
        for (&key, e) in &st.index.messages {
            if st.frozen.contains(&key) || damaged_keys.contains(&key) {
                continue;
            }
            for (i, r) in e.rcpts.iter().enumerate() {
                if r.state == RecipientState::Pending {
                    due.push((r.next_attempt, key, i as u32));
                }
            }
        }
        due.sort_unstable();
        st.schedule = due.into_iter().collect();
        report.messages = st.index.messages.len() as u64;
        report.recipients_pending = st.schedule.len() as u64;

        let last = st.segs.keys().next_back().copied();
        let sh = Rc::new(Shared {
            seg_dir,
            big_dir,
            st: RefCell::new(st),
            synced: Notify::new(),
            rolled: Notify::new(),
            compacted: Notify::new(),
            written: Notify::new(),
            hold_file: tokio::sync::Mutex::new(()),
            arrivals: Rc::new(Notify::new()),
            cfg: config,
        });
        let q = Queue { sh };
        match last {
            Some(n) if last_end < q.sh.cfg.segment_size => {
                let mut st = q.sh.st.borrow_mut();
                st.cur_seg = n;
                st.write_pos = align_up(last_end as usize) as u64;
            }
            _ => {
                let next = last.map_or(1, |n| n + 1);
                let file = q.create_segment(next).await?;
                file.sync_data()
                    .await
                    .map_err(|e| QueueError::io("fdatasync", q.seg_path(next), e))?;
                sync_dir(&q.sh.seg_dir)
                    .await
                    .map_err(|e| QueueError::io("fsync dir", &q.sh.seg_dir, e))?;
                let mut st = q.sh.st.borrow_mut();
                st.segs.insert(next, SegFile::new(file));
                st.cur_seg = next;
                st.write_pos = SEG_HEADER_LEN as u64;
            }
        }
        for (key, why) in damaged {
            let id = MessageId::from_key(q.sh.cfg.queue_no, key);
            q.quarantine(key, &why).await?;
            report.quarantined.push(format!("{id}: {why}"));
        }
        report.messages = q.sh.st.borrow().index.messages.len() as u64;
        let before = q.sh.st.borrow().stats.segments_deleted;
        q.reclaim().await?;
        report.segments_deleted = q.sh.st.borrow().stats.segments_deleted - before;
        report.millis = started.elapsed().as_millis() as u64;
        Ok((q, report))
    }

    /// Moves a message whose body cannot be read whole to `quarantine/`
    /// (`<id>.env` says what is known and why, `<id>.body` keeps what is
    /// left of the body) and records its pending recipients Failed, so it
    /// is neither retried forever nor lost without a trace.
    async fn quarantine(&self, key: u64, why: &str) -> Result<(), QueueError> {
        let id = MessageId::from_key(self.sh.cfg.queue_no, key);
        let (env, body, pending) = {
            let st = self.sh.st.borrow();
            let Some(e) = st.index.messages.get(&key) else {
                return Ok(());
            };
            let pending: Vec<usize> = e
                .rcpts
                .iter()
                .enumerate()
                .filter(|(_, r)| r.state == RecipientState::Pending)
                .map(|(i, _)| i)
                .collect();
            (Rc::clone(&e.envelope), e.body.clone(), pending)
        };
        let dir = self.sh.cfg.dir.join(QUARANTINE_DIR);
        let created = !sio::is_dir(&dir);
        sio::create_dir_all(&dir).map_err(|e| QueueError::io("mkdir", &dir, e))?;
        let mut text = format!(
            "id {id}\nreason {why}\narrival {}\nsender <{}>\n",
            env.arrival, env.sender
        );
        for (i, r) in env.recipients.iter().enumerate() {
            let state = if pending.contains(&i) {
                "pending"
            } else {
                "final"
            };
            text.push_str(&format!("recipient <{r}> {state}\n"));
        }
        let env_path = dir.join(format!("{id}.env"));
        write_durable(&env_path, text.into_bytes())
            .await
            .map_err(|e| QueueError::io("write", &env_path, e))?;
        if let BodyLoc::Spilled { name, .. } = &body {
            let from = self.sh.big_dir.join(name);
            let to = dir.join(format!("{id}.body"));
            match sio::rename(&from, &to).await {
                Ok(()) => sync_dir(&self.sh.big_dir)
                    .await
                    .map_err(|e| QueueError::io("fsync dir", &self.sh.big_dir, e))?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(QueueError::io("rename", &from, e)),
            }
        }
        sync_dir(&dir)
            .await
            .map_err(|e| QueueError::io("fsync dir", &dir, e))?;
        if created {
            sync_dir(&self.sh.cfg.dir)
                .await
                .map_err(|e| QueueError::io("fsync dir", &self.sh.cfg.dir, e))?;
        }
        let reply = format!("message quarantined: {why} (#4.3.0)");
        let outs: Vec<(usize, RecipientOutcome)> = pending
            .into_iter()
            .map(|i| {
                (
                    i,
                    RecipientOutcome::Failed {
                        reply: reply.clone(),
                    },
                )
            })
            .collect();
        // Marks the recipients leased so `record_outcomes` finds them in the
        // state it expects; they were never scheduled.
        self.record_outcomes(&id, &outs).await?;
        self.sh.st.borrow_mut().stats.quarantined += 1;
        Ok(())
    }

    /// Starts a message (one per SMTP transaction).
    pub fn begin(&self) -> MessageWriter {
        MessageWriter {
            q: self.clone(),
            buf: Vec::new(),
            len: 0,
            crc: 0,
            spill: None,
        }
    }

    /// Hands out up to `limit` pending recipients whose next attempt is at
    /// or before `now`, earliest first (ties: oldest message first). Each
    /// is leased: it is not handed out again until an outcome is recorded
    /// or it is [`Queue::release`]d; a restart forgets leases.
    pub fn due(&self, now: u64, limit: usize) -> Vec<DueRecipient> {
        let mut st = self.sh.st.borrow_mut();
        if st.failure.is_some() {
            // The outcome could not be recorded: delivering now would only
            // deliver again (see `StoreFailure`).
            return Vec::new();
        }
        let picked: Vec<(u64, u64, u32)> = st
            .schedule
            .iter()
            .take_while(|k| k.0 <= now)
            .take(limit)
            .copied()
            .collect();
        let mut out = Vec::with_capacity(picked.len());
        for k in picked {
            st.schedule.remove(&k);
            let (next, key, idx) = k;
            let Some(e) = st.index.messages.get(&key) else {
                continue;
            };
            let Some(addr) = e.envelope.recipients.get(idx as usize) else {
                continue;
            };
            if e.rcpts[idx as usize].state != RecipientState::Pending {
                // Never hand out a finished recipient, whatever the schedule
                // says.
                continue;
            }
            out.push(DueRecipient {
                id: MessageId::from_key(self.sh.cfg.queue_no, key),
                rcpt: idx as usize,
                recipient: addr.clone(),
                attempts: e.rcpts[idx as usize].attempts,
                next_attempt: next,
            });
            st.leased.insert((key, idx));
        }
        out
    }

    /// Returns a leased recipient to the schedule without an outcome (e.g.
    /// at shutdown), due at its recorded next attempt time.
    pub fn release(&self, id: &MessageId, rcpt: usize) {
        self.release_at(id, rcpt, 0);
    }

    /// Returns a leased recipient to the schedule, due no sooner than
    /// `not_before` nor than its recorded next attempt. Memory only: for an
    /// outcome that could not be recorded (a restart schedules it at its
    /// recorded time, which is at-least-once).
    pub fn release_at(&self, id: &MessageId, rcpt: usize, not_before: u64) {
        let mut st = self.sh.st.borrow_mut();
        let st = &mut *st;
        let key = id.key();
        if st.leased.remove(&(key, rcpt as u32)) && !st.frozen.contains(&key) {
            if let Some(r) = st
                .index
                .messages
                .get_mut(&key)
                .and_then(|e| e.rcpts.get_mut(rcpt))
                .filter(|r| r.state == RecipientState::Pending)
            {
                // The schedule key must be the recipient's next_attempt:
                // every later removal (outcome, freeze, take) looks it up by
                // that time, and a stale entry would hand a finished
                // recipient out again (simulation seed 1994).
                r.next_attempt = r.next_attempt.max(not_before);
                st.schedule.insert((r.next_attempt, key, rcpt as u32));
            }
        }
    }

    /// Whether (and since when, how often) the write path is failing.
    pub fn store_failure(&self) -> Option<StoreFailure> {
        self.sh.st.borrow().failure.clone()
    }

    /// The failure episode that ended since the last call, if any: a
    /// successful flush ends it, whether of a probe or of a commit.
    pub fn take_healed(&self) -> Option<StoreFailure> {
        self.sh.st.borrow_mut().healed.take()
    }

    /// Tries the write path of a failing store: starts a fresh segment and
    /// flushes it. Success ends the failure episode (delivery resumes);
    /// failure doubles the pause before the next probe (up to
    /// [`STORE_BACKOFF_MAX`]). Does nothing on a healthy store.
    pub async fn probe(&self) -> Result<(), QueueError> {
        if self.sh.st.borrow().failure.is_none() {
            return Ok(());
        }
        self.sh.st.borrow_mut().force_roll = true;
        let res = async {
            let resv = self.reserve(0).await?;
            drop(resv);
            self.wait_durable().await
        }
        .await;
        if let Err(e) = &res {
            let mut st = self.sh.st.borrow_mut();
            let now = now_secs();
            if st.failure.is_none() {
                note_failure(&mut st, e.to_string());
            }
            if let Some(f) = &mut st.failure {
                f.backoff = (f.backoff * 2).clamp(STORE_BACKOFF_MIN, STORE_BACKOFF_MAX);
                f.retry_at = now + f.backoff;
                f.last_error = e.to_string();
            }
        }
        res
    }

    /// Holds a leased recipient back: it is not handed out by [`Queue::due`]
    /// again until [`Queue::take_matching`] or [`Queue::unhold`] releases it
    /// (on-demand delivery: ETRN, ATRN). Memory only: a restart schedules it
    /// again at its recorded next attempt, where the caller holds it anew.
    /// Returns false (and does nothing) when the recipient is not leased.
    pub fn hold(&self, id: &MessageId, rcpt: usize) -> bool {
        let mut st = self.sh.st.borrow_mut();
        let k = (id.key(), rcpt as u32);
        if id.queue != self.sh.cfg.queue_no || !st.leased.remove(&k) {
            return false;
        }
        // On operator hold: it stays out of the schedule until thawed.
        if !st.frozen.contains(&k.0) {
            st.held.insert(k);
        }
        true
    }

    /// Returns held recipients whose address satisfies `matches` to the
    /// schedule, due at their recorded next attempt (a domain no longer held
    /// after a reload). Returns how many.
    pub fn unhold(&self, mut matches: impl FnMut(&str) -> bool) -> usize {
        let mut st = self.sh.st.borrow_mut();
        let st = &mut *st;
        let mut back = Vec::new();
        for &(key, idx) in &st.held {
            let Some(e) = st.index.messages.get(&key) else {
                continue;
            };
            if e.envelope
                .recipients
                .get(idx as usize)
                .is_some_and(|a| matches(a))
            {
                back.push((e.rcpts[idx as usize].next_attempt, key, idx));
            }
        }
        for &(next, key, idx) in &back {
            st.held.remove(&(key, idx));
            st.schedule.insert((next, key, idx));
        }
        back.len()
    }

    /// Leases every pending recipient whose address satisfies `matches` and
    /// that is not leased already, whether held or scheduled (at any time,
    /// also in the future): what an ETRN or ATRN flushes now. Messages on
    /// operator hold ([`Queue::freeze`]) are left alone. Oldest message
    /// first. The caller records outcomes or [`Queue::release`]s them.
    pub fn take_matching(&self, mut matches: impl FnMut(&str) -> bool) -> Vec<DueRecipient> {
        let frozen = self.sh.st.borrow().frozen.clone();
        self.take_where(|id, env, idx| !frozen.contains(&id.key()) && matches(&env.recipients[idx]))
    }

    /// Leases every pending recipient for which `matches(id, envelope,
    /// index)` holds and that is not leased already: scheduled, held or on
    /// operator hold alike (queue tools: delete, bounce). Oldest message
    /// first. The caller records outcomes or [`Queue::release`]s them.
    pub fn take_where(
        &self,
        mut matches: impl FnMut(MessageId, &Envelope, usize) -> bool,
    ) -> Vec<DueRecipient> {
        let queue_no = self.sh.cfg.queue_no;
        let mut st = self.sh.st.borrow_mut();
        let st = &mut *st;
        let mut picked: Vec<(u64, u32)> = Vec::new();
        for (&key, e) in &st.index.messages {
            let id = MessageId::from_key(queue_no, key);
            for (idx, r) in e.rcpts.iter().enumerate() {
                let k = (key, idx as u32);
                if r.state == RecipientState::Pending
                    && !st.leased.contains(&k)
                    && matches(id, &e.envelope, idx)
                {
                    picked.push(k);
                }
            }
        }
        picked.sort_unstable();
        let mut out = Vec::with_capacity(picked.len());
        for (key, idx) in picked {
            let e = &st.index.messages[&key];
            let r = &e.rcpts[idx as usize];
            if !st.held.remove(&(key, idx)) {
                st.schedule.remove(&(r.next_attempt, key, idx));
            }
            st.leased.insert((key, idx));
            out.push(DueRecipient {
                id: MessageId::from_key(queue_no, key),
                rcpt: idx as usize,
                recipient: e.envelope.recipients[idx as usize].clone(),
                attempts: r.attempts,
                next_attempt: r.next_attempt,
            });
        }
        out
    }

    /// Makes every scheduled recipient for which `matches(id, envelope,
    /// index)` holds due at `now` (an operator's "retry now"); leased, held
    /// and frozen ones are left alone. Memory only: after a restart the
    /// recorded next attempt applies again. Returns how many; wake the
    /// scheduler with [`Queue::subscribe`] afterwards.
    pub fn retry_now(
        &self,
        now: u64,
        mut matches: impl FnMut(MessageId, &Envelope, usize) -> bool,
    ) -> usize {
        let queue_no = self.sh.cfg.queue_no;
        let mut st = self.sh.st.borrow_mut();
        let st = &mut *st;
        let moved: Vec<(u64, u64, u32)> = st
            .schedule
            .iter()
            .filter(|&&(next, key, idx)| {
                next > now
                    && st.index.messages.get(&key).is_some_and(|e| {
                        matches(
                            MessageId::from_key(queue_no, key),
                            &e.envelope,
                            idx as usize,
                        )
                    })
            })
            .copied()
            .collect();
        for &(next, key, idx) in &moved {
            st.schedule.remove(&(next, key, idx));
            if let Some(e) = st.index.messages.get_mut(&key) {
                e.rcpts[idx as usize].next_attempt = now;
            }
            st.schedule.insert((now, key, idx));
        }
        moved.len()
    }

    /// Puts a live message on operator hold (postsuper -h): none of its
    /// pending recipients is handed out by [`Queue::due`] or
    /// [`Queue::take_matching`] until [`Queue::thaw`]; deliveries already in
    /// flight finish. Durable: the set is rewritten to `<queue>/hold` (small
    /// file, written with plain std I/O: an operator action, rarely run)
    /// before this returns. Returns false when it was held already.
    pub async fn freeze(&self, id: &MessageId) -> Result<bool, QueueError> {
        let _one = self.sh.hold_file.lock().await;
        let key = id.key();
        let changed = {
            let mut st = self.sh.st.borrow_mut();
            let st = &mut *st;
            let e = st
                .index
                .messages
                .get(&key)
                .filter(|_| id.queue == self.sh.cfg.queue_no)
                .ok_or(QueueError::UnknownMessage(*id))?;
            let changed = st.frozen.insert(key);
            if changed {
                for (idx, r) in e.rcpts.iter().enumerate() {
                    let k = (key, idx as u32);
                    if r.state == RecipientState::Pending && !st.leased.contains(&k) {
                        st.held.remove(&k);
                        st.schedule.remove(&(r.next_attempt, key, idx as u32));
                    }
                }
            }
            changed
        };
        if !changed && !self.sh.st.borrow().hold_file_stale {
            return Ok(false);
        }
        if let Err(e) = self.write_hold_file().await {
            if changed {
                self.thaw_in_memory(key, None);
            }
            return Err(e);
        }
        Ok(changed)
    }

    /// Takes a message off operator hold; its pending recipients are due at
    /// `now` (or their recorded next attempt, if earlier). Durable like
    /// [`Queue::freeze`]. Returns false when it was not held.
    pub async fn thaw(&self, id: &MessageId, now: u64) -> Result<bool, QueueError> {
        let _one = self.sh.hold_file.lock().await;
        let key = id.key();
        let (frozen, stale) = {
            let st = self.sh.st.borrow();
            (
                id.queue == self.sh.cfg.queue_no && st.frozen.contains(&key),
                st.hold_file_stale,
            )
        };
        if !frozen && !stale {
            return Ok(false);
        }
        if frozen {
            self.thaw_in_memory(key, Some(now));
        }
        if let Err(e) = self.write_hold_file().await {
            if frozen {
                // Not durable: put it back on hold, as on disk.
                let _ = self.refreeze_in_memory(key);
            }
            return Err(e);
        }
        Ok(frozen)
    }

    /// Whether a message is on operator hold.
    pub fn is_frozen(&self, id: &MessageId) -> bool {
        id.queue == self.sh.cfg.queue_no && self.sh.st.borrow().frozen.contains(&id.key())
    }

    fn thaw_in_memory(&self, key: u64, now: Option<u64>) {
        let mut st = self.sh.st.borrow_mut();
        let st = &mut *st;
        if !st.frozen.remove(&key) {
            return;
        }
        let Some(e) = st.index.messages.get_mut(&key) else {
            return;
        };
        for (idx, r) in e.rcpts.iter_mut().enumerate() {
            let k = (key, idx as u32);
            if r.state == RecipientState::Pending && !st.leased.contains(&k) {
                if let Some(now) = now {
                    r.next_attempt = r.next_attempt.min(now);
                }
                st.schedule.insert((r.next_attempt, key, idx as u32));
            }
        }
    }

    fn refreeze_in_memory(&self, key: u64) -> bool {
        let mut st = self.sh.st.borrow_mut();
        let st = &mut *st;
        let Some(e) = st.index.messages.get(&key) else {
            return false;
        };
        for (idx, r) in e.rcpts.iter().enumerate() {
            st.schedule.remove(&(r.next_attempt, key, idx as u32));
        }
        st.frozen.insert(key)
    }

    /// Rewrites `<queue>/hold` with the frozen set: temp file, fsync,
    /// rename, directory fsync.
    /// The caller holds `Shared::hold_file`. After a failure the file on
    /// disk may hold either set (the rename may have happened), so the next
    /// freeze or thaw rewrites it even when it changes nothing in memory
    /// (simulation seed 119).
    async fn write_hold_file(&self) -> Result<(), QueueError> {
        let r = self.rewrite_hold_file().await;
        self.sh.st.borrow_mut().hold_file_stale = r.is_err();
        r
    }

    async fn rewrite_hold_file(&self) -> Result<(), QueueError> {
        let mut ids: Vec<MessageId> = {
            let st = self.sh.st.borrow();
            st.frozen
                .iter()
                .map(|&k| MessageId::from_key(self.sh.cfg.queue_no, k))
                .collect()
        };
        ids.sort_unstable();
        let mut text = String::new();
        for id in ids {
            text.push_str(&id.to_string());
            text.push('\n');
        }
        let dir = &self.sh.cfg.dir;
        let tmp = dir.join("hold.tmp");
        let path = dir.join(HOLD_FILE);
        write_durable(&tmp, text.into_bytes())
            .await
            .map_err(|e| QueueError::io("write", &tmp, e))?;
        sio::rename(&tmp, &path)
            .await
            .map_err(|e| QueueError::io("rename", &path, e))?;
        sync_dir(dir)
            .await
            .map_err(|e| QueueError::io("fsync dir", dir, e))
    }

    /// Earliest next-attempt time among scheduled (not leased) recipients.
    pub fn next_due_time(&self) -> Option<u64> {
        let st = self.sh.st.borrow();
        if let Some(f) = &st.failure {
            // Nothing is due while the store fails; the next probe is.
            return Some(f.retry_at);
        }
        st.schedule.first().map(|k| k.0)
    }

    /// The scheduler's wake-up: `notify_one` is called after every commit,
    /// so a waiting (or next) `notified().await` returns at once. Meant for
    /// one consumer.
    pub fn subscribe(&self) -> Rc<Notify> {
        Rc::clone(&self.sh.arrivals)
    }

    /// Envelope of a live message.
    pub fn envelope(&self, id: &MessageId) -> Option<Rc<Envelope>> {
        if id.queue != self.sh.cfg.queue_no {
            return None;
        }
        let st = self.sh.st.borrow();
        st.index
            .messages
            .get(&id.key())
            .map(|e| Rc::clone(&e.envelope))
    }

    /// Current status of every recipient of a live message.
    pub fn recipients(&self, id: &MessageId) -> Option<Vec<RecipientStatus>> {
        if id.queue != self.sh.cfg.queue_no {
            return None;
        }
        let st = self.sh.st.borrow();
        st.index.messages.get(&id.key()).map(|e| e.rcpts.clone())
    }

    /// Ids of all live messages, oldest first.
    pub fn message_ids(&self) -> Vec<MessageId> {
        let st = self.sh.st.borrow();
        let mut keys: Vec<u64> = st.index.messages.keys().copied().collect();
        keys.sort_unstable();
        keys.into_iter()
            .map(|k| MessageId::from_key(self.sh.cfg.queue_no, k))
            .collect()
    }

    /// The whole body of a live message, checksum verified.
    pub async fn read_message(&self, id: &MessageId) -> Result<Vec<u8>, QueueError> {
        let (entry, file) = {
            let st = self.sh.st.borrow();
            let e = st
                .index
                .messages
                .get(&id.key())
                .filter(|_| id.queue == self.sh.cfg.queue_no)
                .ok_or(QueueError::UnknownMessage(*id))?;
            let file = st.segs.get(&e.seg).map(|s| Rc::clone(&s.file));
            (e.clone(), file)
        };
        match &entry.body {
            BodyLoc::Inline { start, len } => {
                let path = self.seg_path(entry.seg);
                let file = file.ok_or(QueueError::Corrupt {
                    path: path.clone(),
                    offset: u64::from(entry.offset),
                    reason: "segment of a live message is gone",
                })?;
                let (r, rec) = file
                    .read_exact_at(
                        Vec::with_capacity(entry.len as usize),
                        u64::from(entry.offset),
                    )
                    .await;
                r.map_err(|e| QueueError::io("read", &path, e))?;
                match format::parse_at(&rec, 0) {
                    format::Parsed::Record { .. } => {}
                    _ => {
                        return Err(QueueError::Corrupt {
                            path,
                            offset: u64::from(entry.offset),
                            reason: "message record no longer verifies",
                        })
                    }
                }
                let (s, l) = (*start as usize, *len as usize);
                let mut rec = rec;
                rec.truncate(s + l);
                rec.drain(..s);
                Ok(rec)
            }
            BodyLoc::Spilled { name, len, crc } => {
                let path = self.sh.big_dir.join(name);
                let mut o = OpenOptions::new();
                o.read(true);
                let f = File::open(&path, &o)
                    .await
                    .map_err(|e| QueueError::io("open", &path, e))?;
                let (r, body) = f.read_exact_at(Vec::with_capacity(*len as usize), 0).await;
                r.map_err(|e| QueueError::io("read", &path, e))?;
                let _ = f.close().await;
                if crc32c::crc32c(&body) != *crc {
                    return Err(QueueError::Corrupt {
                        path,
                        offset: 0,
                        reason: "spill file checksum mismatch",
                    });
                }
                Ok(body)
            }
        }
    }

    /// Records delivery outcomes for some recipients of a message; durable
    /// (group-committed) when it returns. Nothing is written if any entry is
    /// invalid. When every recipient is final the message leaves the queue.
    ///
    /// Outcomes for *different* recipients of one message may be recorded
    /// concurrently; two concurrent calls for the *same* recipient are a
    /// caller bug (the later write wins on disk, the memory state may show
    /// either).
    pub async fn record_outcomes(
        &self,
        id: &MessageId,
        outcomes: &[(usize, RecipientOutcome)],
    ) -> Result<(), QueueError> {
        if id.queue != self.sh.cfg.queue_no {
            return Err(QueueError::UnknownMessage(*id));
        }
        let key = id.key();
        // A message being copied forward must not change under the copy.
        loop {
            let n = self.sh.compacted.notified();
            if !self.sh.st.borrow().compacting.contains(&key) {
                break;
            }
            n.await;
        }
        let changes = {
            let st = self.sh.st.borrow();
            let e = st
                .index
                .messages
                .get(&key)
                .ok_or(QueueError::UnknownMessage(*id))?;
            let mut changes: Vec<(u32, RecipientStatus)> = Vec::with_capacity(outcomes.len());
            for (idx, o) in outcomes {
                let cur = match changes.iter().find(|c| c.0 as usize == *idx) {
                    Some(c) => c.1.clone(),
                    None => e
                        .rcpts
                        .get(*idx)
                        .cloned()
                        .ok_or(QueueError::NoSuchRecipient {
                            id: *id,
                            index: *idx,
                        })?,
                };
                let new = cur.apply(o).map_err(|source| QueueError::Transition {
                    id: *id,
                    index: *idx,
                    source,
                })?;
                match changes.iter_mut().find(|c| c.0 as usize == *idx) {
                    Some(c) => c.1 = new,
                    None => changes.push((*idx as u32, new)),
                }
            }
            changes
        };
        if changes.is_empty() {
            return Ok(());
        }
        let _busy = BusyGuard::new(&self.sh, key);
        let mut rec = encode_outcome(key, &changes);
        if rec.len() - REC_HEADER_LEN > MAX_PAYLOAD {
            return Err(QueueError::EnvelopeTooLarge);
        }
        finish_record(&mut rec);
        let written = async {
            let resv = self.reserve(rec.len() as u64).await?;
            self.write_record(&resv, rec).await?;
            let (seg, pos) = (resv.seg, resv.pos);
            drop(resv);
            self.wait_durable_in(seg, pos).await
        }
        .await;
        if let Err(e) = written {
            let mut st = self.sh.st.borrow_mut();
            match &mut st.failure {
                Some(f) => f.errors += 1,
                None => note_failure(&mut st, e.to_string()),
            }
            return Err(e);
        }

        let dead = {
            let mut st = self.sh.st.borrow_mut();
            st.stats.outcome_records += 1;
            let st = &mut *st;
            let Some(e) = st.index.messages.get_mut(&key) else {
                return Ok(());
            };
            for (idx, new) in changes {
                let slot = &mut e.rcpts[idx as usize];
                if slot.state == RecipientState::Pending {
                    st.schedule.remove(&(slot.next_attempt, key, idx));
                }
                st.leased.remove(&(key, idx));
                st.held.remove(&(key, idx));
                if new.state == RecipientState::Pending && !st.frozen.contains(&key) {
                    st.schedule.insert((new.next_attempt, key, idx));
                }
                *slot = new;
            }
            if e.is_dead() {
                st.frozen.remove(&key);
                st.index.remove(key)
            } else {
                None
            }
        };
        if let Some(e) = dead {
            if let BodyLoc::Spilled { name, .. } = &e.body {
                // The final outcome is durable, so the body is no longer
                // needed; if this unlink is lost in a crash, recovery removes
                // the unreferenced file.
                match sio::remove_file(self.sh.big_dir.join(name)).await {
                    Ok(()) => {}
                    // Moved to quarantine/.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(_) => self.sh.st.borrow_mut().stats.reclaim_errors += 1,
                }
            }
            if self.reclaim().await.is_err() {
                self.sh.st.borrow_mut().stats.reclaim_errors += 1;
            }
        }
        Ok(())
    }

    /// Housekeeping the scheduler calls now and then: copies the live
    /// messages of a sparse oldest segment forward (compaction) and deletes
    /// segments that hold nothing live. Returns the number of messages moved.
    pub async fn maintain(&self) -> Result<u64, QueueError> {
        let moved = self.compact_head().await?;
        self.reclaim().await?;
        Ok(moved)
    }

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

    fn seg_path(&self, n: u32) -> PathBuf {
        self.sh.seg_dir.join(segment_file_name(n))
    }

    /// Creates segment `n` with its header written (not yet synced).
    async fn create_segment(&self, n: u32) -> Result<Rc<File>, QueueError> {
        let path = self.seg_path(n);
        let file = File::open(&path, &rw_options(true))
            .await
            .map_err(|e| QueueError::io("create", &path, e))?;
        let hdr = segment_header(n, self.sh.cfg.queue_no, now_secs());
        let (r, _) = file.write_all_at(hdr, 0).await;
        if let Err(e) = r {
            let _ = file.close().await;
            let _ = sio::remove_file(&path).await;
            return Err(QueueError::io("write", &path, e));
        }
        Ok(Rc::new(file))
    }

    /// Reserves `len` bytes (a padded record) in the current segment,
    /// rolling to a new segment when it is full.
    async fn reserve(&self, len: u64) -> Result<Reservation, QueueError> {
        loop {
            let wait = self.sh.rolled.notified();
            if self.sh.st.borrow().rolling {
                wait.await;
                continue;
            }
            let roll_to = {
                let mut st = self.sh.st.borrow_mut();
                let empty = st.write_pos <= SEG_HEADER_LEN as u64;
                let fits = st.write_pos + len <= self.sh.cfg.segment_size;
                if !st.force_roll && (fits || empty) && st.write_pos + len <= u64::from(u32::MAX) {
                    let seg = st.cur_seg;
                    let pos = st.write_pos;
                    st.write_pos += len;
                    let sf = st.segs.get_mut(&seg).expect("current segment is open");
                    sf.pending += 1;
                    if len > 0 {
                        sf.unwritten.insert(pos);
                    }
                    return Ok(Reservation {
                        sh: Rc::clone(&self.sh),
                        seg,
                        pos,
                        file: Rc::clone(&sf.file),
                    });
                }
                st.rolling = true;
                st.cur_seg + 1
            };
            let guard = RollGuard { sh: &self.sh };
            let file = match self.create_segment(roll_to).await {
                Ok(f) => f,
                Err(e) => {
                    note_failure(&mut self.sh.st.borrow_mut(), e.to_string());
                    return Err(e);
                }
            };
            let mut st = self.sh.st.borrow_mut();
            st.segs.insert(roll_to, SegFile::new(file));
            st.cur_seg = roll_to;
            st.write_pos = SEG_HEADER_LEN as u64;
            st.force_roll = false;
            // The new directory entry must be durable before anything in the
            // new segment is reported durable.
            st.dirty_seg_dir = true;
            let f = Rc::clone(&st.segs[&roll_to].file);
            push_dirty(&mut st, f);
            drop(st);
            drop(guard);
        }
    }

    /// Writes a finished record at its reservation and marks the file for
    /// the next group sync.
    async fn write_record(&self, resv: &Reservation, rec: Vec<u8>) -> Result<(), QueueError> {
        let n = rec.len() as u64;
        let (r, _) = resv.file.write_all_at(rec, resv.pos).await;
        let mut st = self.sh.st.borrow_mut();
        if let Some(sf) = st.segs.get_mut(&resv.seg) {
            sf.unwritten.remove(&resv.pos);
        }
        self.sh.written.notify_waiters();
        match r {
            Ok(()) => {
                st.stats.bytes_written += n;
                push_dirty(&mut st, Rc::clone(&resv.file));
                Ok(())
            }
            Err(e) => {
                st.stats.write_errors += 1;
                st.force_roll = true;
                // A partly written record (a torn header) would end the
                // segment's readable part at recovery: nothing after it
                // may be acknowledged.
                if st.sealed.insert(resv.seg) {
                    st.stats.segments_sealed += 1;
                }
                let e = QueueError::io("write", self.seg_path(resv.seg), e);
                note_failure(&mut st, e.to_string());
                Err(e)
            }
        }
    }

    /// Waits until everything written before this call is durable. Joins
    /// the next sync epoch: if a sync is running, it may have started before
    /// our write finished, so we wait for the one after it, which then
    /// covers every write finished meanwhile (group commit).
    async fn wait_durable(&self) -> Result<(), QueueError> {
        let need = self.sh.st.borrow().sync_started + 1;
        loop {
            let wait = self.sh.synced.notified();
            {
                let mut st = self.sh.st.borrow_mut();
                if st.sync_done >= need {
                    return match st.failed_epochs.get(&need) {
                        Some(f) => Err(f.to_error()),
                        None => Ok(()),
                    };
                }
                if !st.sync_in_flight {
                    st.sync_in_flight = true;
                    st.sync_started += 1;
                    let epoch = st.sync_started;
                    let files = std::mem::take(&mut st.dirty);
                    let seg_dir = std::mem::take(&mut st.dirty_seg_dir);
                    let big_dir = std::mem::take(&mut st.dirty_big_dir);
                    // The sync runs as its own task so that a cancelled
                    // waiter cannot leave the epoch half done.
                    let q = self.clone();
                    tokio::task::spawn_local(async move {
                        q.run_sync(epoch, files, seg_dir, big_dir).await;
                    });
                }
            }
            wait.await;
        }
    }

    /// Waits until every record reserved before offset `pos` of segment
    /// `seg` is written (or abandoned).
    ///
    /// Records are written in the order their tasks get to it, not in the
    /// order of their offsets. Were a record acknowledged while an earlier
    /// one's space was still empty, a power cut could keep the tail of the
    /// earlier record but not its header (sectors and pages reach the disk
    /// in any order); recovery, which cannot resynchronise inside damaged
    /// bytes, would then end the segment there and lose the acknowledged
    /// record after it (simulation seed 688).
    async fn wait_written_before(&self, seg: u32, pos: u64) {
        loop {
            let wait = self.sh.written.notified();
            let busy = self
                .sh
                .st
                .borrow()
                .segs
                .get(&seg)
                .is_some_and(|sf| sf.unwritten.range(..pos).next().is_some());
            if !busy {
                return;
            }
            wait.await;
        }
    }

    /// [`Queue::wait_durable`] for a record written at `pos` in segment
    /// `seg`: first waits for the records reserved before it there
    /// ([`Queue::wait_written_before`]); also fails when that segment was
    /// sealed meanwhile (a later flush that "succeeded" proves nothing
    /// about it, see `State::sealed`).
    async fn wait_durable_in(&self, seg: u32, pos: u64) -> Result<(), QueueError> {
        self.wait_written_before(seg, pos).await;
        self.wait_durable().await?;
        if self.sh.st.borrow().sealed.contains(&seg) {
            return Err(QueueError::io(
                "fdatasync",
                self.seg_path(seg),
                io::Error::other("segment sealed after a failed flush"),
            ));
        }
        Ok(())
    }

    async fn run_sync(&self, epoch: u64, files: Vec<Rc<File>>, seg_dir: bool, big_dir: bool) {
        let res = self.sync_all(&files, seg_dir, big_dir).await;
        let mut st = self.sh.st.borrow_mut();
        st.sync_done = epoch;
        st.sync_in_flight = false;
        st.stats.syncs += 1;
        if let Err(f) = res {
            st.stats.sync_errors += 1;
            st.force_roll = true;
            note_failure(&mut st, f.to_error().to_string());
            // fsyncgate: never trust these segments again.
            let hit: Vec<u32> = st
                .segs
                .iter()
                .filter(|(_, sf)| files.iter().any(|f| Rc::ptr_eq(f, &sf.file)))
                .map(|(&n, _)| n)
                .collect();
            for n in hit {
                if st.sealed.insert(n) {
                    st.stats.segments_sealed += 1;
                }
            }
            st.dirty_seg_dir |= seg_dir;
            st.dirty_big_dir |= big_dir;
            st.failed_epochs.insert(epoch, f);
            while st.failed_epochs.len() > FAILED_EPOCHS_KEPT {
                st.failed_epochs.pop_first();
            }
        } else if !files.is_empty() || seg_dir || big_dir {
            // Something reached stable storage: the write path works again.
            if let Some(f) = st.failure.take() {
                st.healed = Some(f);
            }
        }
        drop(st);
        self.sh.synced.notify_waiters();
    }

    async fn sync_all(
        &self,
        files: &[Rc<File>],
        seg_dir: bool,
        big_dir: bool,
    ) -> Result<(), SyncFailure> {
        let fail = |op, path: &Path, e: io::Error| SyncFailure {
            op,
            path: path.to_path_buf(),
            os: e.raw_os_error(),
            kind: e.kind(),
            msg: e.to_string(),
        };
        match self.sh.cfg.durability {
            Durability::UnsafeNoSync => return Ok(()),
            Durability::Fdatasync => {
                for f in files {
                    f.sync_data()
                        .await
                        .map_err(|e| fail("fdatasync", &self.sh.cfg.dir, e))?;
                }
            }
            Durability::Fsync => {
                for f in files {
                    f.sync_all()
                        .await
                        .map_err(|e| fail("fsync", &self.sh.cfg.dir, e))?;
                }
            }
        }
        if seg_dir {
            sync_dir(&self.sh.seg_dir)
                .await
                .map_err(|e| fail("fsync dir", &self.sh.seg_dir, e))?;
        }
        if big_dir {
            sync_dir(&self.sh.big_dir)
                .await
                .map_err(|e| fail("fsync dir", &self.sh.big_dir, e))?;
        }
        Ok(())
    }

    /// Deletes segments from the oldest while they hold no live message.
    ///
    /// Only a prefix is deleted: OUTCOME records for a message live in the
    /// segments after its MESSAGE record, so deleting a middle segment could
    /// lose the outcome that finished a message of an older, surviving
    /// segment (and resurrect it). Compaction moves the few live messages
    /// out of an old segment so the prefix keeps advancing.
    async fn reclaim(&self) -> Result<(), QueueError> {
        if self.sh.st.borrow().maintaining {
            return Ok(());
        }
        let _g = MaintainGuard::new(&self.sh);
        loop {
            if self.sh.st.borrow().unsynced_delete {
                sync_dir(&self.sh.seg_dir)
                    .await
                    .map_err(|e| QueueError::io("fsync dir", &self.sh.seg_dir, e))?;
                self.sh.st.borrow_mut().unsynced_delete = false;
            }
            let victim = {
                let st = self.sh.st.borrow();
                match st.segs.iter().next() {
                    Some((&n, sf))
                        if n != st.cur_seg && sf.pending == 0 && st.index.live_in(n).msgs == 0 =>
                    {
                        n
                    }
                    _ => return Ok(()),
                }
            };
            let path = self.seg_path(victim);
            match sio::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(QueueError::io("unlink", &path, e)),
            }
            {
                let mut st = self.sh.st.borrow_mut();
                st.segs.remove(&victim);
                st.stats.segments_deleted += 1;
                st.unsynced_delete = true;
            }
        }
    }

    /// Copies the live messages of the oldest segment forward when it is
    /// sparse (live bytes ≤ `compact_percent` of `segment_size`), then the
    /// segment can be reclaimed.
    async fn compact_head(&self) -> Result<u64, QueueError> {
        let (head, keys) = {
            let st = self.sh.st.borrow();
            if st.maintaining {
                return Ok(0);
            }
            let Some((&head, _)) = st.segs.iter().next() else {
                return Ok(0);
            };
            if head == st.cur_seg {
                return Ok(0);
            }
            let live = st.index.live_in(head);
            if live.msgs == 0
                || live.bytes * 100
                    > self.sh.cfg.segment_size * u64::from(self.sh.cfg.compact_percent)
            {
                return Ok(0);
            }
            let keys: Vec<u64> = st
                .index
                .messages
                .iter()
                .filter(|(_, e)| e.seg == head)
                .map(|(&k, _)| k)
                .collect();
            if keys.iter().any(|k| st.busy.contains_key(k)) {
                // An outcome is in flight; try again next time.
                return Ok(0);
            }
            (head, keys)
        };
        let _g = MaintainGuard::new(&self.sh);
        let _c = CompactGuard::new(&self.sh, &keys);
        let file = Rc::clone(&self.sh.st.borrow().segs[&head].file);
        let mut moved = Vec::with_capacity(keys.len());
        let mut resvs = Vec::with_capacity(keys.len());
        for &key in &keys {
            let entry = match self.sh.st.borrow().index.messages.get(&key) {
                Some(e) => e.clone(),
                None => continue,
            };
            let path = self.seg_path(head);
            let (r, old) = file
                .read_exact_at(
                    Vec::with_capacity(entry.len as usize),
                    u64::from(entry.offset),
                )
                .await;
            r.map_err(|e| QueueError::io("read", &path, e))?;
            if !matches!(format::parse_at(&old, 0), format::Parsed::Record { .. }) {
                return Err(QueueError::Corrupt {
                    path,
                    offset: u64::from(entry.offset),
                    reason: "record to compact no longer verifies",
                });
            }
            let body = match &entry.body {
                BodyLoc::Inline { start, len } => {
                    BodyRef::Inline(&old[*start as usize..(*start + *len) as usize])
                }
                BodyLoc::Spilled { name, len, crc } => BodyRef::Spilled {
                    name,
                    len: *len,
                    crc: *crc,
                },
            };
            let mut rec = encode_message(key, &entry.envelope, &entry.rcpts, &body);
            let body_len = entry.body.len() as usize;
            let unpadded = rec.len();
            finish_record(&mut rec);
            let resv = self.reserve(rec.len() as u64).await?;
            let new_loc = (resv.seg, resv.pos as u32, unpadded as u32);
            self.write_record(&resv, rec).await?;
            resvs.push(resv);
            moved.push((key, new_loc, body_len));
        }
        for r in &resvs {
            self.wait_written_before(r.seg, r.pos).await;
        }
        self.wait_durable().await?;
        if resvs
            .iter()
            .any(|r| self.sh.st.borrow().sealed.contains(&r.seg))
        {
            return Err(QueueError::io(
                "fdatasync",
                &self.sh.seg_dir,
                io::Error::other("segment sealed after a failed flush"),
            ));
        }
        drop(resvs);
        let n = moved.len() as u64;
        {
            let mut st = self.sh.st.borrow_mut();
            for (key, (seg, offset, len), body_len) in moved {
                if let Some(mut e) = st.index.messages.get(&key).cloned() {
                    e.seg = seg;
                    e.offset = offset;
                    e.len = len;
                    if let BodyLoc::Inline { start, .. } = &mut e.body {
                        *start = len - body_len as u32;
                    }
                    st.index.insert(key, e);
                }
            }
            st.stats.compacted += n;
        }
        Ok(n)
    }
}

fn push_dirty(st: &mut State, f: Rc<File>) {
    if !st.dirty.iter().any(|d| Rc::ptr_eq(d, &f)) {
        st.dirty.push(f);
    }
}

/// Space reserved in a segment; while it lives the segment is not deleted.
struct Reservation {
    sh: Rc<Shared>,
    seg: u32,
    pos: u64,
    file: Rc<File>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(sf) = self.sh.st.borrow_mut().segs.get_mut(&self.seg) {
            sf.pending -= 1;
            if sf.unwritten.remove(&self.pos) {
                self.sh.written.notify_waiters();
            }
        }
    }
}

/// Ends a roll even if the rolling task is cancelled.
struct RollGuard<'a> {
    sh: &'a Rc<Shared>,
}

impl Drop for RollGuard<'_> {
    fn drop(&mut self) {
        self.sh.st.borrow_mut().rolling = false;
        self.sh.rolled.notify_waiters();
    }
}

struct MaintainGuard<'a> {
    sh: &'a Rc<Shared>,
}

impl<'a> MaintainGuard<'a> {
    fn new(sh: &'a Rc<Shared>) -> Self {
        sh.st.borrow_mut().maintaining = true;
        MaintainGuard { sh }
    }
}

impl Drop for MaintainGuard<'_> {
    fn drop(&mut self) {
        self.sh.st.borrow_mut().maintaining = false;
    }
}

struct BusyGuard<'a> {
    sh: &'a Rc<Shared>,
    key: u64,
}

impl<'a> BusyGuard<'a> {
    fn new(sh: &'a Rc<Shared>, key: u64) -> Self {
        *sh.st.borrow_mut().busy.entry(key).or_default() += 1;
        BusyGuard { sh, key }
    }
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.sh.st.borrow_mut();
        if let Some(n) = st.busy.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                st.busy.remove(&self.key);
            }
        }
    }
}

struct CompactGuard<'a> {
    sh: &'a Rc<Shared>,
    keys: &'a [u64],
}

impl<'a> CompactGuard<'a> {
    fn new(sh: &'a Rc<Shared>, keys: &'a [u64]) -> Self {
        sh.st.borrow_mut().compacting.extend(keys.iter().copied());
        CompactGuard { sh, keys }
    }
}

impl Drop for CompactGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.sh.st.borrow_mut();
        for k in self.keys {
            st.compacting.remove(k);
        }
        drop(st);
        self.sh.compacted.notify_waiters();
    }
}

struct Spill {
    file: Rc<File>,
    path: PathBuf,
    name: String,
    /// Bytes already written to the file.
    written: u64,
}

/// One message being received. Chunks are buffered in memory up to the
/// spill threshold, then streamed to `big/<name>`. Dropping it (or
/// [`MessageWriter::abort`]) removes the spill file: an aborted transaction
/// leaves nothing behind. A commit that fails after its record was written
/// leaves the file to the next recovery (the record may have reached the
/// disk anyway), which deletes it if no record names it.
pub struct MessageWriter {
    q: Queue,
    buf: Vec<u8>,
    len: u64,
    crc: u32,
    spill: Option<Spill>,
}

impl MessageWriter {
    /// Appends a chunk of the message (header and body as they will be
    /// delivered, CRLF line ends, dot-unstuffed).
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), QueueError> {
        self.crc = crc32c::crc32c_append(self.crc, chunk);
        self.len += chunk.len() as u64;
        self.buf.extend_from_slice(chunk);
        if self.spill.is_none() && self.buf.len() > self.q.sh.cfg.spill_threshold {
            self.open_spill().await?;
        }
        if self.spill.is_some() && self.buf.len() >= SPILL_WRITE {
            self.flush_spill().await?;
        }
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    async fn open_spill(&mut self) -> Result<(), QueueError> {
        let big = self.q.sh.big_dir.clone();
        loop {
            let nonce = {
                let mut st = self.q.sh.st.borrow_mut();
                st.spill_nonce = st.spill_nonce.wrapping_add(1);
                st.spill_nonce
            };
            let name = format!("{nonce:016x}");
            let path = big.join(&name);
            match File::open(&path, &rw_options(true)).await {
                Ok(f) => {
                    self.spill = Some(Spill {
                        file: Rc::new(f),
                        path,
                        name,
                        written: 0,
                    });
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(QueueError::io("create", &path, e)),
            }
        }
    }

    async fn flush_spill(&mut self) -> Result<(), QueueError> {
        let Some(sp) = &mut self.spill else {
            return Ok(());
        };
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let n = buf.len() as u64;
        let (r, mut buf) = sp.file.write_all_at(buf, sp.written).await;
        if let Err(e) = r {
            let e = QueueError::io("write", &sp.path, e);
            note_failure(&mut self.q.sh.st.borrow_mut(), e.to_string());
            return Err(e);
        }
        sp.written += n;
        buf.clear();
        self.buf = buf;
        Ok(())
    }

    /// Commits the message: returns its id only once the message (record,
    /// spill file and any new directory entries) is on stable storage. Each
    /// recipient starts Pending, due at `envelope.arrival`.
    pub async fn commit(mut self, envelope: Envelope) -> Result<MessageId, QueueError> {
        if envelope.recipients.is_empty() {
            return Err(QueueError::NoRecipients);
        }
        self.flush_spill().await?;
        let q = self.q.clone();
        if let Some(sp) = &self.spill {
            // Body before record (FORMAT.md): the spill file and its
            // directory entry are durable before any record names them, so
            // a record that survives a crash always finds its whole body.
            {
                let mut st = q.sh.st.borrow_mut();
                push_dirty(&mut st, Rc::clone(&sp.file));
                st.dirty_big_dir = true;
            }
            q.wait_durable().await?;
        }
        let rcpts = vec![RecipientStatus::new(envelope.arrival); envelope.recipients.len()];
        let body = match &self.spill {
            Some(sp) => BodyRef::Spilled {
                name: &sp.name,
                len: self.len,
                crc: self.crc,
            },
            None => BodyRef::Inline(&self.buf),
        };
        let mut rec = encode_message(0, &envelope, &rcpts, &body);
        if rec.len() - REC_HEADER_LEN > MAX_PAYLOAD {
            return Err(QueueError::EnvelopeTooLarge);
        }
        let body_loc = match &self.spill {
            Some(sp) => BodyLoc::Spilled {
                name: sp.name.clone(),
                len: self.len,
                crc: self.crc,
            },
            None => BodyLoc::Inline {
                start: (rec.len() - self.buf.len()) as u32,
                len: self.buf.len() as u32,
            },
        };
        let unpadded = rec.len() as u32;
        let resv = q.reserve(padded_len(&rec) as u64).await?;
        let key = (u64::from(resv.seg) << 32) | resv.pos;
        patch_key(&mut rec, key);
        finish_record(&mut rec);
        // From the write on, the record may reach the disk even if this
        // commit fails (a flush that fails may have written it): the spill
        // file it names must stay, or recovery would find a record without
        // its body (simulation seed 5). If no record survives, recovery
        // deletes the file as an orphan.
        let spilled = self.spill.take().is_some();
        q.write_record(&resv, rec).await?;
        q.wait_durable_in(resv.seg, resv.pos).await?;
        {
            let mut st = q.sh.st.borrow_mut();
            for i in 0..envelope.recipients.len() {
                st.schedule.insert((envelope.arrival, key, i as u32));
            }
            st.index.insert(
                key,
                Entry {
                    envelope: Rc::new(envelope),
                    rcpts,
                    seg: resv.seg,
                    offset: resv.pos as u32,
                    len: unpadded,
                    body: body_loc,
                },
            );
            st.stats.commits += 1;
            if spilled {
                st.stats.spilled += 1;
            }
        }
        drop(resv);
        q.sh.arrivals.notify_one();
        Ok(MessageId::from_key(q.sh.cfg.queue_no, key))
    }

    /// Abandons the message; the spill file, if any, is removed.
    pub async fn abort(self) {
        drop(self);
    }
}

impl Drop for MessageWriter {
    fn drop(&mut self) {
        if let Some(sp) = self.spill.take() {
            // Best effort; recovery removes any spill file no record names.
            let _ = sio::remove_file_now(&sp.path);
        }
    }
}

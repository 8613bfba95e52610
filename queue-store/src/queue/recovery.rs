//! Opening a queue: create its directories, replay every segment (torn
//! tails truncated), check every spilled body, rebuild the index and the
//! schedule, and quarantine messages whose body cannot be read whole.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io;
use std::path::Path;
use std::rc::Rc;
use std::time::{Instant, UNIX_EPOCH};

use shard::io::{self as sio, sync_dir, File, OpenOptions};
use tokio::sync::Notify;

use crate::error::QueueError;
use crate::format::{align_up, segment_file_name, BodyLoc, SEG_HEADER_LEN};
use crate::index::{scan_segment, Index};
use crate::state::{RecipientOutcome, RecipientState};
use crate::{MessageId, QueueConfig};

use super::operator_hold::read_hold_file;
use super::{
    rw_options, write_durable, Queue, RecoveryReport, SegFile, Shared, State, QUARANTINE_DIR,
};

impl Queue {
    /// Opens (creating if needed) the queue in `config.dir`, replays every
    /// segment, truncates torn tails, removes orphan spill files and
    /// rebuilds the index and schedule.
    pub async fn open(config: QueueConfig) -> Result<(Queue, RecoveryReport), QueueError> {
        config.validate()?;
        let started = Instant::now();
        let seg_dir = config.dir.join("seg");
        let big_dir = config.dir.join("big");
        make_dirs(&config.dir, &seg_dir, &big_dir).await?;

        let mut report = RecoveryReport::default();
        let Replayed {
            index,
            segs,
            last_end,
        } = replay_segments(&seg_dir, &mut report).await?;
        report.orphan_outcomes = index.orphan_outcomes;
        let damaged = check_spill_files(&big_dir, &index, &mut report).await?;
        let st = rebuild_state(&config, index, segs, &damaged, &mut report).await;

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
        q.open_append_segment(last, last_end).await?;
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

    /// Appends to the last segment (`last`, whose valid part ends at
    /// `last_end`) while it has room; else starts the next one, durable
    /// (file and directory entry) before anything is written to it.
    async fn open_append_segment(
        &self,
        last: Option<u32>,
        last_end: u64,
    ) -> Result<(), QueueError> {
        match last {
            Some(n) if last_end < self.sh.cfg.segment_size => {
                let mut st = self.sh.st.borrow_mut();
                st.cur_seg = n;
                st.write_pos = align_up(last_end as usize) as u64;
            }
            _ => {
                let next = last.map_or(1, |n| n + 1);
                let file = self.create_segment(next).await?;
                file.sync_data()
                    .await
                    .map_err(|e| QueueError::io("fdatasync", self.seg_path(next), e))?;
                sync_dir(&self.sh.seg_dir)
                    .await
                    .map_err(|e| QueueError::io("fsync dir", &self.sh.seg_dir, e))?;
                let mut st = self.sh.st.borrow_mut();
                st.segs.insert(next, SegFile::new(file));
                st.cur_seg = next;
                st.write_pos = SEG_HEADER_LEN as u64;
            }
        }
        Ok(())
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

/// Creates the queue directory and its `seg/` and `big/` when missing,
/// each new entry durable (the parent directory fsynced too).
async fn make_dirs(dir: &Path, seg_dir: &Path, big_dir: &Path) -> Result<(), QueueError> {
    let mut created = false;
    for d in [dir, seg_dir, big_dir] {
        if !sio::is_dir(d) {
            sio::create_dir_all(d).map_err(|e| QueueError::io("mkdir", d, e))?;
            created = true;
        }
    }
    if created {
        for d in [dir, seg_dir, big_dir] {
            sync_dir(d)
                .await
                .map_err(|e| QueueError::io("fsync dir", d, e))?;
        }
        if let Some(parent) = dir.parent() {
            sync_dir(parent)
                .await
                .map_err(|e| QueueError::io("fsync dir", parent, e))?;
        }
    }
    Ok(())
}

/// What replaying the segments rebuilt.
struct Replayed {
    index: Index,
    segs: BTreeMap<u32, SegFile>,
    /// End of the valid part of the last segment.
    last_end: u64,
}

/// Reads every segment into the index: a torn tail is truncated (and
/// flushed), a segment without even a header (its creation was torn) is
/// deleted.
async fn replay_segments(
    seg_dir: &Path,
    report: &mut RecoveryReport,
) -> Result<Replayed, QueueError> {
    let nums = crate::segment_numbers(seg_dir)?;
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
        sync_dir(seg_dir)
            .await
            .map_err(|e| QueueError::io("fsync dir", seg_dir, e))?;
    }
    Ok(Replayed {
        index,
        segs,
        last_end,
    })
}

/// Spill files: finds messages whose body is missing or does not verify
/// (returned sorted, with the reason, for quarantine) and deletes files no
/// live message references.
async fn check_spill_files(
    big_dir: &Path,
    index: &Index,
    report: &mut RecoveryReport,
) -> Result<Vec<(u64, String)>, QueueError> {
    let mut on_disk = BTreeSet::new();
    let names = sio::read_dir(big_dir).map_err(|e| QueueError::io("readdir", big_dir, e))?;
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
    for name in on_disk.difference(&referenced) {
        let p = big_dir.join(name);
        if sio::remove_file(&p).await.is_ok() {
            report.orphan_spill_files += 1;
        }
    }
    Ok(damaged)
}

/// The in-memory state of a replayed queue: the operator-hold set from
/// `<queue>/hold`, and every pending recipient of a message neither frozen
/// nor `damaged` in the schedule.
async fn rebuild_state(
    config: &QueueConfig,
    index: Index,
    segs: BTreeMap<u32, SegFile>,
    damaged: &[(u64, String)],
    report: &mut RecoveryReport,
) -> State {
    let damaged_keys: HashSet<u64> = damaged.iter().map(|d| d.0).collect();
    let mut st = State {
        index,
        segs,
        spill_nonce: sio::system_time()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
        ..State::default()
    };
    st.frozen = read_hold_file(&config.dir)
        .await
        .into_iter()
        .filter(|id| id.queue == config.queue_no && st.index.messages.contains_key(&id.key()))
        .map(|id| id.key())
        .collect();
    // Sorted first: BTreeSet builds from a sorted sequence in one pass,
    // much cheaper than a million inserts.
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
    st
}

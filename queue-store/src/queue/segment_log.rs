//! The commit path: space reserved in the current segment (rolling to a new
//! one when full), records written at their reservation, and group sync
//! (one flush per dirty file per epoch, shared by every waiter).

use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use shard::io::{self as sio, sync_dir, File};

use crate::error::QueueError;
use crate::format::{segment_file_name, segment_header, SEG_HEADER_LEN};
use crate::Durability;

use super::health::note_failure;
use super::{now_secs, rw_options, Queue, SegFile, Shared, State};

/// Failed sync epochs remembered for waiters that have not looked yet.
const FAILED_EPOCHS_KEPT: usize = 64;

/// A failed group sync, kept for the waiters of its epoch.
pub(super) struct SyncFailure {
    op: &'static str,
    path: PathBuf,
    os: Option<i32>,
    kind: io::ErrorKind,
    msg: String,
}

impl SyncFailure {
    fn new(op: &'static str, path: &Path, e: io::Error) -> SyncFailure {
        SyncFailure {
            op,
            path: path.to_path_buf(),
            os: e.raw_os_error(),
            kind: e.kind(),
            msg: e.to_string(),
        }
    }

    fn to_error(&self) -> QueueError {
        let e = match self.os {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::new(self.kind, self.msg.clone()),
        };
        QueueError::io(self.op, self.path.clone(), e)
    }
}

impl Queue {
    pub(super) fn seg_path(&self, n: u32) -> PathBuf {
        self.sh.seg_dir.join(segment_file_name(n))
    }

    /// Creates segment `n` with its header written (not yet synced).
    pub(super) async fn create_segment(&self, n: u32) -> Result<Rc<File>, QueueError> {
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
    pub(super) async fn reserve(&self, len: u64) -> Result<Reservation, QueueError> {
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

    /// Queues a finished record for its reservation and marks the file for
    /// the next group sync, which writes it: the records of one epoch go
    /// out as one write per contiguous run, not one each (on ext4 every
    /// buffered write is handed to an io_uring worker, a wake-up and two
    /// context switches on the shard's CPU). Nothing waits on a record
    /// before its epoch's flush, so writing it later delays no reply.
    pub(super) fn write_record(&self, resv: &Reservation, rec: Vec<u8>) {
        let mut st = self.sh.st.borrow_mut();
        if let Some(sf) = st.segs.get_mut(&resv.seg) {
            sf.unwritten.remove(&resv.pos);
        }
        queue_write(&mut st, resv.seg, &resv.file, resv.pos, rec);
        push_dirty(&mut st, Rc::clone(&resv.file));
        drop(st);
        self.sh.written.notify_waiters();
    }

    /// Waits until everything written before this call is durable. Joins
    /// the next sync epoch: if a sync is running, it may have started before
    /// our write finished, so we wait for the one after it, which then
    /// covers every write finished meanwhile (group commit).
    pub(super) async fn wait_durable(&self) -> Result<(), QueueError> {
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
                    let writes = std::mem::take(&mut st.queued_writes);
                    let seg_dir = std::mem::take(&mut st.dirty_seg_dir);
                    let big_dir = std::mem::take(&mut st.dirty_big_dir);
                    // The sync runs as its own task so that a cancelled
                    // waiter cannot leave the epoch half done.
                    let q = self.clone();
                    tokio::task::spawn_local(async move {
                        q.run_sync(epoch, writes, files, seg_dir, big_dir).await;
                    });
                }
            }
            wait.await;
        }
    }

    /// Waits until every record reserved before offset `pos` of segment
    /// `seg` is written (or abandoned).
    ///
    /// Records are queued in the order their tasks get to it, and a group
    /// sync writes only what was queued when it started. Today a record is
    /// queued right after its reservation, with no await between, so this
    /// wait ends at once; it stays as the guard should an await ever come
    /// between the two. Were a record acknowledged while an earlier
    /// one's space was still empty, a power cut could keep the tail of the
    /// earlier record but not its header (sectors and pages reach the disk
    /// in any order); recovery, which cannot resynchronise inside damaged
    /// bytes, would then end the segment there and lose the acknowledged
    /// record after it (simulation seed 688).
    pub(super) async fn wait_written_before(&self, seg: u32, pos: u64) {
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
    pub(super) async fn wait_durable_in(&self, seg: u32, pos: u64) -> Result<(), QueueError> {
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

    async fn run_sync(
        &self,
        epoch: u64,
        writes: Vec<QueuedWrite>,
        files: Vec<Rc<File>>,
        seg_dir: bool,
        big_dir: bool,
    ) {
        let res = match self.write_queued(writes).await {
            Ok(()) => self.sync_all(&files, seg_dir, big_dir).await,
            Err(f) => Err(f),
        };
        let mut st = self.sh.st.borrow_mut();
        st.sync_done = epoch;
        st.sync_in_flight = false;
        st.stats.syncs += 1;
        if let Err(f) = res {
            if f.op == "write" {
                st.stats.write_errors += 1;
            } else {
                st.stats.sync_errors += 1;
            }
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

    /// Writes an epoch's queued records, in order, before its flush. A
    /// failed write fails the epoch like a failed flush: its segments are
    /// sealed (a torn record would end the segment's readable part at
    /// recovery) and the next reservation starts a new segment.
    async fn write_queued(&self, writes: Vec<QueuedWrite>) -> Result<(), SyncFailure> {
        for w in writes {
            let n = w.buf.len() as u64;
            let (r, _) = w.file.write_all_at(w.buf, w.pos).await;
            if let Err(e) = r {
                return Err(SyncFailure::new("write", &self.seg_path(w.seg), e));
            }
            let mut st = self.sh.st.borrow_mut();
            st.stats.bytes_written += n;
            st.stats.record_writes += 1;
        }
        Ok(())
    }

    async fn sync_all(
        &self,
        files: &[Rc<File>],
        seg_dir: bool,
        big_dir: bool,
    ) -> Result<(), SyncFailure> {
        let fail = SyncFailure::new;
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
}

/// A run of records waiting for the next group sync to write it.
pub(super) struct QueuedWrite {
    seg: u32,
    file: Rc<File>,
    pos: u64,
    buf: Vec<u8>,
}

/// Appends a record to the queued run it continues, or starts a run.
fn queue_write(st: &mut State, seg: u32, file: &Rc<File>, pos: u64, rec: Vec<u8>) {
    if let Some(last) = st.queued_writes.last_mut() {
        if last.seg == seg && last.pos + last.buf.len() as u64 == pos {
            last.buf.extend_from_slice(&rec);
            return;
        }
    }
    st.queued_writes.push(QueuedWrite {
        seg,
        file: Rc::clone(file),
        pos,
        buf: rec,
    });
}

pub(super) fn push_dirty(st: &mut State, f: Rc<File>) {
    if !st.dirty.iter().any(|d| Rc::ptr_eq(d, &f)) {
        st.dirty.push(f);
    }
}

/// Space reserved in a segment; while it lives the segment is not deleted.
pub(super) struct Reservation {
    sh: Rc<Shared>,
    pub(super) seg: u32,
    pub(super) pos: u64,
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

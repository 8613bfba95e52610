//! Reclaiming space: deleting the oldest segments once nothing in them is
//! live, and copying the few live messages of a sparse oldest segment
//! forward so that prefix keeps advancing.

use std::io;
use std::rc::Rc;

use shard::io::{self as sio, sync_dir};

use crate::error::QueueError;
use crate::format::{encode_message, finish_record, BodyLoc, BodyRef};

use super::{Queue, Shared};

impl Queue {
    /// Housekeeping the scheduler calls now and then: copies the live
    /// messages of a sparse oldest segment forward (compaction) and deletes
    /// segments that hold nothing live. Returns the number of messages moved.
    pub async fn maintain(&self) -> Result<u64, QueueError> {
        let moved = self.compact_head().await?;
        self.reclaim().await?;
        Ok(moved)
    }

    /// Deletes segments from the oldest while they hold no live message.
    ///
    /// Only a prefix is deleted: OUTCOME records for a message live in the
    /// segments after its MESSAGE record, so deleting a middle segment could
    /// lose the outcome that finished a message of an older, surviving
    /// segment (and resurrect it). Compaction moves the few live messages
    /// out of an old segment so the prefix keeps advancing.
    pub(super) async fn reclaim(&self) -> Result<(), QueueError> {
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
            let old = self
                .read_record(&file, head, &entry, "record to compact no longer verifies")
                .await?;
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
            self.write_record(&resv, rec);
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

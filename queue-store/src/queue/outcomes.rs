//! Recording delivery outcomes: one OUTCOME record per call, durable when
//! it returns; a message whose recipients are all final leaves the queue.

use std::io;
use std::rc::Rc;

use shard::io::{self as sio};

use crate::error::QueueError;
use crate::format::{encode_outcome, finish_record, BodyLoc, MAX_PAYLOAD, REC_HEADER_LEN};
use crate::state::{RecipientOutcome, RecipientState, RecipientStatus};
use crate::MessageId;

use super::health::note_failure;
use super::{Queue, Shared};

impl Queue {
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
            self.write_record(&resv, rec);
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

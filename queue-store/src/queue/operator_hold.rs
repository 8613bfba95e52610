//! Operator hold (`freeze` / `thaw`): whole messages kept out of the
//! schedule, persisted in `<queue>/hold`.

use std::path::Path;

use shard::io::{self as sio, sync_dir};

use crate::error::QueueError;
use crate::state::RecipientState;
use crate::MessageId;

use super::{write_durable, Queue};

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
pub(super) async fn read_hold_file(dir: &Path) -> Vec<MessageId> {
    sio::read(dir.join(HOLD_FILE))
        .await
        .map(|t| parse_hold_file(&t))
        .unwrap_or_default()
}

impl Queue {
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
}

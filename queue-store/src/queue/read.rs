//! Reading what a queue holds: envelopes, recipient states, message ids
//! and bodies (checksum verified).

use std::rc::Rc;

use shard::io::{File, OpenOptions};

use crate::error::QueueError;
use crate::format::{self, BodyLoc};
use crate::index::Entry;
use crate::state::RecipientStatus;
use crate::{Envelope, MessageId};

use super::Queue;

impl Queue {
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
                let mut rec = self
                    .read_record(
                        &file,
                        entry.seg,
                        &entry,
                        "message record no longer verifies",
                    )
                    .await?;
                let (s, l) = (*start as usize, *len as usize);
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

    /// The record of `entry`, read at its offset in `file` (segment `seg`)
    /// and checked to verify still; `reason` says, if not, what it was
    /// read for.
    pub(super) async fn read_record(
        &self,
        file: &File,
        seg: u32,
        entry: &Entry,
        reason: &'static str,
    ) -> Result<Vec<u8>, QueueError> {
        let path = self.seg_path(seg);
        let (r, rec) = file
            .read_exact_at(
                Vec::with_capacity(entry.len as usize),
                u64::from(entry.offset),
            )
            .await;
        r.map_err(|e| QueueError::io("read", &path, e))?;
        if !matches!(format::parse_at(&rec, 0), format::Parsed::Record { .. }) {
            return Err(QueueError::Corrupt {
                path,
                offset: u64::from(entry.offset),
                reason,
            });
        }
        Ok(rec)
    }
}

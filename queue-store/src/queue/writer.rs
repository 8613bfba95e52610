//! Receiving a message: chunks buffered, spilled to `big/` above the
//! threshold, committed as one MESSAGE record once the body is durable.

use std::io;
use std::path::PathBuf;
use std::rc::Rc;

use shard::io::{self as sio, File};

use crate::error::QueueError;
use crate::format::{
    encode_message, finish_record, padded_len, patch_key, BodyLoc, BodyRef, MAX_PAYLOAD,
    REC_HEADER_LEN,
};
use crate::index::Entry;
use crate::state::RecipientStatus;
use crate::{Envelope, MessageId};

use super::health::note_failure;
use super::segment_log::push_dirty;
use super::{rw_options, Queue};

/// Spill files are written in pieces of this size, so a body streamed in
/// many small SMTP chunks costs few write calls.
const SPILL_WRITE: usize = 256 * 1024;

impl Queue {
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
        // Once queued, the record may reach the disk even if this commit
        // fails (the next group sync writes it whoever waits): the spill
        // file it names must stay, or recovery would find a record without
        // its body (simulation seed 5). If no record survives, recovery
        // deletes the file as an orphan.
        let spilled = self.spill.take().is_some();
        q.write_record(&resv, rec);
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

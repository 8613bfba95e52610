//! Per-queue durable spool with group commit.
//!
//! What it does: stores accepted messages and the delivery state of each
//! recipient in an append-only log of segment files (`<queue>/seg/*.log`),
//! one [`Queue`] per directory, owned by one shard thread. A commit returns
//! only once the message is on stable storage; concurrent commits share one
//! `fdatasync` (group commit). Bodies above a threshold stream to spill
//! files (`<queue>/big/`). Recovery on open checks every record's structure
//! and CRC32C, truncates a torn tail and rebuilds the index and the retry
//! schedule. Dead segments are deleted, sparse old ones compacted. The byte
//! layout is in `FORMAT.md`; the recipient state machine is the table in
//! [`state`].
//!
//! On-demand delivery (ETRN/ATRN): [`Queue::hold`] keeps a due recipient
//! out of the schedule (memory only) until [`Queue::take_matching`] leases
//! it for a flush or [`Queue::unhold`] returns it.
//!
//! Queue tools: [`Queue::freeze`] / [`Queue::thaw`] put whole messages on
//! operator hold (durable, in `<queue>/hold`), [`Queue::take_where`] leases
//! recipients chosen by envelope (delete, bounce), [`Queue::retry_now`]
//! makes deferred recipients due at once (flush).
//!
//! What it does not do: decide *when* to retry (the caller passes
//! `next_attempt`), classify recipients, deliver, bounce, or parse mail. It
//! is not qmail's file layout (one file per message per state); it keeps
//! qmail's principles: one atomic step as the commit point (a record that
//! verifies), a simple internal format, "temporary" vs "permanent" errors.
//!
//! Delivery is **at-least-once**: an outcome is durable when
//! [`Queue::record_outcomes`] returns, so a crash between a delivery and its
//! outcome delivers that recipient again; a finished recipient is never
//! delivered again.
//!
//! # Usage (on a shard thread, inside `shard::io::run`)
//! ```no_run
//! # async fn f() -> Result<(), queue_store::QueueError> {
//! use queue_store::*;
//! let (q, report) = Queue::open(QueueConfig::new("/var/indimail/queue/queue1", 1)).await?;
//! let mut w = q.begin();
//! w.write(b"Subject: hi\r\n\r\nbody\r\n").await?;
//! let id = w.commit(Envelope::new("a@example.org", vec!["b@example.net".into()])).await?;
//! // 250 may be sent now.
//! for d in q.due(Envelope::now(), 100) {
//!     let body = q.read_message(&d.id).await?;
//!     # let _ = body;
//!     q.record_outcomes(&d.id, &[(d.rcpt, RecipientOutcome::Delivered { reply: "250 ok".into() })]).await?;
//! }
//! # let _ = (id, report); Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod error;
mod format;
mod index;
mod queue;
pub mod state;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::str::FromStr;

pub use error::QueueError;
pub use queue::{
    DueRecipient, Lane, LaneLimits, MessageWriter, Queue, QueueStats, RecoveryReport, StoreFailure,
    QUARANTINE_DIR, STORE_BACKOFF_MAX, STORE_BACKOFF_MIN,
};
pub use state::{RecipientOutcome, RecipientState, RecipientStatus, TransitionError};

/// How hard a commit pushes data to stable storage.
///
/// Whatever the mode, directory entries of new segment and spill files are
/// fsynced before anything in them is reported durable (ext4 here runs
/// without a journal), except in [`Durability::UnsafeNoSync`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `fdatasync(2)` of each written file per group commit (default).
    /// Writes the data and the metadata needed to read it back (file size);
    /// skips timestamps. Safe and the cheapest safe choice.
    #[default]
    Fdatasync,
    /// `fsync(2)`: also writes timestamps and other inode metadata. No
    /// extra safety for the queue (it never reads mtimes); for filesystems
    /// or policies that insist on it. Slightly slower.
    Fsync,
    /// **Unsafe for production**: no flush at all; a commit returns once
    /// the write reached the page cache, so a power cut or kernel crash
    /// loses acknowledged mail. For benchmarks that isolate CPU cost only.
    /// Never the default.
    UnsafeNoSync,
}

/// Configuration of one queue. Every field is documented with its default.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Queue directory (`<base>/queueN`); `seg/` and `big/` are created
    /// inside it.
    pub dir: PathBuf,
    /// Queue number (the N of `queueN`); part of every [`MessageId`].
    pub queue_no: u32,
    /// Flush mode (default [`Durability::Fdatasync`]).
    pub durability: Durability,
    /// Segment size at which the log rolls to a new file (default 64 MiB;
    /// 64 KiB ..= 4 GiB - 1). Larger segments mean fewer files and rarer
    /// deletes; smaller ones reclaim space sooner.
    pub segment_size: u64,
    /// Bodies larger than this go to a spill file instead of the record
    /// (default 256 KiB, at most 16 MiB). Spilled bodies cost one more file
    /// create and flush but keep segments compact.
    pub spill_threshold: usize,
    /// Compact the oldest segment when its live bytes are at most this
    /// percentage of `segment_size` (default 25). Higher reclaims space
    /// sooner at the cost of copying more.
    pub compact_percent: u8,
}

impl QueueConfig {
    /// Defaults for a queue in `dir` with number `queue_no`.
    pub fn new(dir: impl Into<PathBuf>, queue_no: u32) -> QueueConfig {
        QueueConfig {
            dir: dir.into(),
            queue_no,
            durability: Durability::default(),
            segment_size: 64 << 20,
            spill_threshold: 256 << 10,
            compact_percent: 25,
        }
    }

    fn validate(&self) -> Result<(), QueueError> {
        if !(64 << 10..u64::from(u32::MAX)).contains(&self.segment_size) {
            return Err(QueueError::Config(format!(
                "segment_size {} outside 64 KiB ..= 4 GiB - 1",
                self.segment_size
            )));
        }
        if self.spill_threshold > 16 << 20 {
            return Err(QueueError::Config(format!(
                "spill_threshold {} above 16 MiB",
                self.spill_threshold
            )));
        }
        if self.compact_percent > 100 {
            return Err(QueueError::Config(format!(
                "compact_percent {} above 100",
                self.compact_percent
            )));
        }
        Ok(())
    }
}

/// The envelope of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Envelope sender; empty for the null sender (bounces).
    pub sender: String,
    /// Recipients, in RCPT order; outcomes refer to them by index.
    pub recipients: Vec<String>,
    /// Arrival time (unix seconds); first attempt is due then.
    pub arrival: u64,
    /// SMTP client address, if the message came over the network.
    pub client_ip: Option<IpAddr>,
    /// HELO/EHLO argument.
    pub helo: String,
    /// Authenticated user (SMTP AUTH), if any.
    pub auth_user: Option<String>,
    /// Further name/value pairs for later features (envheaders `h`, qqeh
    /// `e` records of qmail-queue, quarantine ids ...). Opaque here.
    pub extra: Vec<(String, String)>,
}

impl Envelope {
    /// An envelope arriving now, with no client details.
    pub fn new(sender: impl Into<String>, recipients: Vec<String>) -> Envelope {
        Envelope {
            sender: sender.into(),
            recipients,
            arrival: Envelope::now(),
            client_ip: None,
            helo: String::new(),
            auth_user: None,
            extra: Vec::new(),
        }
    }

    /// Current unix time in seconds.
    pub fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// Identifies a message, stable across restarts and compaction.
///
/// It is where the message's first MESSAGE record was written: queue
/// number, segment number, byte offset. Segment numbers only grow and the
/// current segment is never deleted, so an id is never reused in a queue.
/// Rendered `<queue>-<segment>-<offset>` in decimal, e.g. `3-17-4096`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId {
    /// Queue number.
    pub queue: u32,
    /// Segment of the first MESSAGE record.
    pub segment: u32,
    /// Offset of that record.
    pub offset: u32,
}

impl MessageId {
    pub(crate) fn key(&self) -> u64 {
        (u64::from(self.segment) << 32) | u64::from(self.offset)
    }

    pub(crate) fn from_key(queue: u32, key: u64) -> MessageId {
        MessageId {
            queue,
            segment: (key >> 32) as u32,
            offset: key as u32,
        }
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.queue, self.segment, self.offset)
    }
}

/// A string that is not `<queue>-<segment>-<offset>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad message id `{0}` (expected <queue>-<segment>-<offset>)")]
pub struct BadMessageId(pub String);

impl FromStr for MessageId {
    type Err = BadMessageId;
    fn from_str(s: &str) -> Result<MessageId, BadMessageId> {
        let bad = || BadMessageId(s.to_string());
        let mut it = s.split('-');
        let mut next = || it.next().ok_or_else(bad)?.parse::<u32>().map_err(|_| bad());
        let id = MessageId {
            queue: next()?,
            segment: next()?,
            offset: next()?,
        };
        if s.split('-').count() != 3 {
            return Err(bad());
        }
        Ok(id)
    }
}

/// A live message as seen by [`scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMessage {
    /// Message id.
    pub id: MessageId,
    /// Envelope.
    pub envelope: Rc<Envelope>,
    /// Status of each recipient.
    pub recipients: Vec<RecipientStatus>,
    /// Body size in bytes.
    pub size: u64,
    /// Whether the body is in a spill file.
    pub spilled: bool,
    /// Whether the message is on operator hold ([`Queue::freeze`]).
    pub held: bool,
}

/// The numbers of the segment files in `seg_dir`, ascending (oldest first); other
/// files are ignored. Shared by recovery at open and by [`scan`].
pub(crate) fn segment_numbers(seg_dir: &Path) -> Result<Vec<u32>, QueueError> {
    let mut nums = Vec::new();
    let names = shard::io::read_dir(seg_dir).map_err(|e| QueueError::io("readdir", seg_dir, e))?;
    for name in names {
        if let Some(n) = name.to_str().and_then(format::parse_segment_file_name) {
            nums.push(n);
        }
    }
    nums.sort_unstable();
    Ok(nums)
}

/// Lists the live messages of a queue directory with plain std I/O and no
/// runtime, for CLI tools (`indimail queue list`). Read-only: works on a
/// running queue (a tail being written is seen as torn and ignored) or a
/// stopped one; never truncates or deletes anything. Oldest first.
pub fn scan(dir: &Path) -> Result<Vec<QueuedMessage>, QueueError> {
    scan_with_progress(dir, |_| {})
}

/// Total size in bytes of the segment files of a queue directory (what
/// [`scan`] reads), for progress reports; 0 when there are none.
pub fn segment_bytes(dir: &Path) -> u64 {
    let seg_dir = dir.join("seg");
    segment_numbers(&seg_dir).map_or(0, |nums| {
        nums.iter()
            .filter_map(|n| std::fs::metadata(seg_dir.join(format::segment_file_name(*n))).ok())
            .map(|m| m.len())
            .sum()
    })
}

/// [`scan`], calling `progress` with the size of each segment file once
/// it is read (the sizes add up to about [`segment_bytes`]).
pub fn scan_with_progress(
    dir: &Path,
    mut progress: impl FnMut(u64),
) -> Result<Vec<QueuedMessage>, QueueError> {
    let seg_dir = dir.join("seg");
    let nums = segment_numbers(&seg_dir)?;
    let mut index = index::Index::default();
    let mut queue_no = None;
    for n in nums {
        let path = seg_dir.join(format::segment_file_name(n));
        let buf = match std::fs::read(&path) {
            Ok(b) => b,
            // Deleted by the running queue between listing and reading.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(QueueError::io("read", &path, e)),
        };
        if queue_no.is_none() && format::check_segment_header(&buf).is_ok() {
            queue_no = Some(u32::from_le_bytes([buf[12], buf[13], buf[14], buf[15]]));
        }
        index::scan_segment(&buf, |off, len, d| index.apply(n, off, len, d));
        progress(buf.len() as u64);
    }
    let q = queue_no.unwrap_or(0);
    let held: std::collections::HashSet<MessageId> =
        queue::parse_hold_file(&std::fs::read(dir.join(queue::HOLD_FILE)).unwrap_or_default())
            .into_iter()
            .collect();
    let mut out: Vec<QueuedMessage> = index
        .messages
        .into_iter()
        .map(|(k, e)| QueuedMessage {
            id: MessageId::from_key(q, k),
            size: e.body.len(),
            spilled: matches!(e.body, format::BodyLoc::Spilled { .. }),
            held: held.contains(&MessageId::from_key(q, k)),
            envelope: e.envelope,
            recipients: e.rcpts,
        })
        .collect();
    out.sort_by_key(|m| m.id);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_text_round_trip() {
        let id = MessageId {
            queue: 3,
            segment: 17,
            offset: 4096,
        };
        assert_eq!(id.to_string(), "3-17-4096");
        assert_eq!("3-17-4096".parse::<MessageId>(), Ok(id));
        assert_eq!(MessageId::from_key(3, id.key()), id);
        for bad in ["", "3-17", "3-17-4096-1", "a-b-c", "3--1"] {
            assert!(bad.parse::<MessageId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn config_limits() {
        let mut c = QueueConfig::new("/tmp/x", 1);
        assert!(c.validate().is_ok());
        c.segment_size = 10;
        assert!(c.validate().is_err());
        let mut c = QueueConfig::new("/tmp/x", 1);
        c.spill_threshold = 17 << 20;
        assert!(c.validate().is_err());
    }
}

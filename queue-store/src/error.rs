//! Queue errors, each mapping to an SMTP reply class.

use std::io;
use std::path::PathBuf;

use crate::state::TransitionError;
use crate::MessageId;

/// What went wrong in the queue.
///
/// [`QueueError::is_temporary`] says whether the SMTP layer answers 4xx
/// (try later) or 5xx; [`QueueError::smtp_reply`] gives the code and
/// enhanced status to use. A failed write or flush is always temporary, so
/// a 250 is never sent for a message that is not on stable storage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The filesystem is full or over quota (ENOSPC, EDQUOT).
    #[error("queue storage full during {op} on {path}: {source}")]
    NoSpace {
        /// Operation that failed.
        op: &'static str,
        /// File or directory involved.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Any other I/O failure (including a failed fdatasync/fsync: the data
    /// must then be assumed lost).
    #[error("queue I/O error during {op} on {path}: {source}")]
    Io {
        /// Operation that failed.
        op: &'static str,
        /// File or directory involved.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Stored data failed its checksum or could not be decoded.
    #[error("corrupt queue data in {path} at offset {offset}: {reason}")]
    Corrupt {
        /// File involved.
        path: PathBuf,
        /// Byte offset.
        offset: u64,
        /// What was wrong.
        reason: &'static str,
    },
    /// No live message has this id (never existed, or all its recipients
    /// are final).
    #[error("no such message in queue: {0}")]
    UnknownMessage(MessageId),
    /// A recipient index beyond the envelope's recipient list.
    #[error("message {id} has no recipient #{index}")]
    NoSuchRecipient {
        /// Message.
        id: MessageId,
        /// Index asked for.
        index: usize,
    },
    /// An outcome for a recipient that is already final.
    #[error("message {id} recipient #{index}: {source}")]
    Transition {
        /// Message.
        id: MessageId,
        /// Recipient index.
        index: usize,
        /// The refused transition.
        source: TransitionError,
    },
    /// `commit` with an empty recipient list.
    #[error("envelope has no recipients")]
    NoRecipients,
    /// The envelope does not fit in one record (64 MiB).
    #[error("envelope too large for one queue record")]
    EnvelopeTooLarge,
    /// Bad configuration (e.g. a segment size out of range).
    #[error("queue configuration: {0}")]
    Config(String),
}

impl QueueError {
    /// Builds the I/O variant, classifying ENOSPC/EDQUOT as [`QueueError::NoSpace`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> QueueError {
        let path = path.into();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => QueueError::NoSpace { op, path, source },
            _ => QueueError::Io { op, path, source },
        }
    }

    /// Whether the client should retry later (4xx) rather than give up (5xx).
    pub fn is_temporary(&self) -> bool {
        match self {
            QueueError::NoSpace { .. }
            | QueueError::Io { .. }
            | QueueError::Corrupt { .. }
            | QueueError::Config(_) => true,
            QueueError::UnknownMessage(_)
            | QueueError::NoSuchRecipient { .. }
            | QueueError::Transition { .. }
            | QueueError::NoRecipients
            | QueueError::EnvelopeTooLarge => false,
        }
    }

    /// SMTP reply code and enhanced status code (RFC 3463) for this error
    /// when it ends an SMTP transaction.
    pub fn smtp_reply(&self) -> (u16, &'static str) {
        match self {
            // RFC 3463 4.3.1: mail system full.
            QueueError::NoSpace { .. } => (452, "4.3.1"),
            QueueError::Io { .. } | QueueError::Corrupt { .. } | QueueError::Config(_) => {
                (451, "4.3.0")
            }
            QueueError::EnvelopeTooLarge => (552, "5.3.4"),
            QueueError::NoRecipients => (554, "5.5.1"),
            QueueError::UnknownMessage(_)
            | QueueError::NoSuchRecipient { .. }
            | QueueError::Transition { .. } => (554, "5.3.0"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_full_is_temporary_452() {
        let e = QueueError::io("write", "/q", io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(matches!(e, QueueError::NoSpace { .. }));
        assert!(e.is_temporary());
        assert_eq!(e.smtp_reply(), (452, "4.3.1"));
        let e = QueueError::io("fdatasync", "/q", io::Error::from_raw_os_error(libc::EIO));
        assert!(e.is_temporary());
        assert_eq!(e.smtp_reply().0 / 100, 4);
        assert!(!QueueError::NoRecipients.is_temporary());
    }
}

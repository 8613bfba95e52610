//! Delivery of one message to local mailboxes and remote SMTP servers.
//!
//! What it does (spec sections 3 and 4.6-4.7):
//! - [`dotqmail`]: the dot-qmail line format and qmail-local's `.qmail-ext`
//!   file names (sans-I/O).
//! - [`local`]: qmail-local/vdelivermail for one recipient: Maildir writes
//!   (tmp → durable → rename into new → durable), mbox, `|program`
//!   lines, forwards, `Delivered-To` loop detection, Maildir++ quota
//!   ([`maildir`]), the `QMAILLOCAL` hook; concurrent deliveries share
//!   their flushes ([`dirflush`]: a `new/`'s fsync, or one `syncfs` for a
//!   whole file system).
//! - [`remote`]: qmail-remote for one destination domain: `smtproutes`
//!   ([`routes`]), MX resolution ([`dns`]), the per-destination backoff
//!   table ([`backoff`]), an SMTP client (the `smtp_proto::client` core
//!   driven over `shard::io::TcpStream` by [`transport`]) with PIPELINING,
//!   AUTH to relays that want it,
//!   opportunistic STARTTLS (the `tls` crate, as the server), connection reuse, and the
//!   `QMAILREMOTE` hook.
//! - [`bounce`]: RFC 3464 DSNs in qmail-send's QSBMF words, and the
//!   bounce / double-bounce / drop decision.
//! - [`schedule`]: qmail-send's retry formula, lifetimes and the per-shard
//!   concurrency accountant.
//!
//! What it does not do: read or write the queue, look users up, or inject
//! messages. Following qmail, the engine hands this crate a message (bytes
//! in queue form, LF line ends), an envelope and a resolved target, and
//! gets back one [`Outcome`] per recipient; forwards and bounces come back
//! as values for the engine to inject.
//!
//! Delivery is at-least-once: a crash after a Maildir rename but before the
//! engine records the outcome delivers the message again on retry, exactly
//! as qmail documents.
//!
//! # API summary
//! ```text
//! local::deliver(&LocalConfig, &LocalTarget, LocalEnvelope, &[u8]) -> LocalReport
//! remote::Remote::new(RemoteConfig, dns::Resolver) -> Remote          (one per shard)
//! remote::Remote::deliver(&self, &RemoteJob) -> Vec<Outcome>         (one per recipient)
//! bounce::decide(&BounceConfig, sender) -> BounceDecision
//! bounce::build(&BounceConfig, &BounceDecision, Original, &[FailedRecipient], now) -> Option<Bounce>
//! schedule::RetryPolicy::{next_retry, expired, finalize}; schedule::Accountant
//! ```

pub mod backoff;
pub mod bounce;
pub mod dirflush;
pub mod dns;
pub mod dotqmail;
pub mod local;
pub mod maildir;
pub mod program;
pub mod remote;
pub mod routes;
pub mod schedule;
pub mod transport;

/// The result of delivering to one recipient; the text is the reason or the
/// remote reply. Maps to qmail's report letters `K`/`Z`/`D`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered (qmail `K`): the recipient's copy is on stable storage or
    /// accepted by the next hop.
    Delivered(String),
    /// Temporary failure (qmail `Z`): keep the recipient queued and retry.
    Temporary(String),
    /// Permanent failure (qmail `D`): bounce.
    Permanent(String),
}

impl Outcome {
    /// qmail's report letter: `K`, `Z` or `D`.
    pub fn letter(&self) -> char {
        match self {
            Outcome::Delivered(_) => 'K',
            Outcome::Temporary(_) => 'Z',
            Outcome::Permanent(_) => 'D',
        }
    }

    /// The reason or reply text.
    pub fn text(&self) -> &str {
        match self {
            Outcome::Delivered(s) | Outcome::Temporary(s) | Outcome::Permanent(s) => s,
        }
    }

    /// Whether the recipient is done with (delivered or bounced).
    pub fn is_final(&self) -> bool {
        !matches!(self, Outcome::Temporary(_))
    }
}

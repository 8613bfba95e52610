//! The SMTP server of one shard (qmail-smtpd's role): it listens, admits each client
//! (`admission`: tcp.smtp, connection limits), drives the sans-I/O protocol core over the
//! shard's sockets (`session`), decides MAIL and RCPT (access policy, DNSBL, SPF, rates,
//! greylisting, CHECKRECIPIENT), authenticates, and spools each message into a queue the
//! shard owns before it answers 250. Its settings ([`settings`]) are read once and swapped
//! whole on reload.
//!
//! A message from socket to queue: `listener` → `admission` → `session` (events,
//! `mail_rcpt`, `auth`, `spool`, `commit`) → `scheduler::domainqueue::Spool` → the queue.
//! Delivery from there to the Maildir is the `scheduler` crate's job.

mod admission;
pub mod clientchecks;
mod dnscheck;
pub mod greylisting;
mod listener;
mod plugins;
mod scanners;
pub mod server;
pub mod service;
mod session;
pub mod settings;
pub mod tcprules;
pub mod userrates;

pub use greylisting::Greylisting;
pub use listener::accept_loop;
pub use server::{session_config, SmtpShard};
pub use service::Service;
pub use settings::{Rates, SmtpSettings};

//! The operator's commands: one job, the tools an operator runs beside the server: they
//! read and change its queues and files, and write reports or installation files; they
//! never serve mail.
//!
//! - [`tools`]: `indimail queue show|delete|bounce|hold|release|flush|shape`, the qmail
//!   names (`qmail-qread`, `qmail-qstat`, `qmail-rm`), `install-links`, `recipient-cdb`.
//! - [`queuelist`]: `indimail queue list|stat`.
//! - [`queuectl`]: queue control, both ends of one protocol: the tool side (on a running
//!   server through its control socket, or on a stopped server's queue files) and the
//!   shard side the server runs to answer it.
//! - [`qmailimport`]: `indimail import-qmail-queue`, a stopped qmail queue moved into ours.
//! - [`sendmail`]: sendmail-compatible injection.
//! - [`logsummary`]: `indimail log summary` (qmailanalog's `zoverall`).
//! - [`svctool`]: `indimail service install` (IndiMail's svctool): systemd and daemontools
//!   files, and the manual pages.
//! - [`manpages`]: `indimail man`: a page per command of the command line it is given, and
//!   `indimail-control(5)` from README.md's tables.
//! - [`progress`]: a progress bar on a terminal, a line every few seconds otherwise, for
//!   the tools that read a large queue.
//!
//! Imports point down: `queuelist` and `tools` use `queuectl`, `qmailimport` and
//! `queuelist` use `progress`, `svctool` uses `manpages`; nothing points back. The command
//! line itself (clap definitions) stays in the binary: pages are rendered from the
//! `clap::Command` the binary hands over.

pub mod logsummary;
pub mod manpages;
pub mod progress;
pub mod qmailimport;
pub mod queuectl;
pub mod queuelist;
pub mod sendmail;
pub mod svctool;
pub mod tools;

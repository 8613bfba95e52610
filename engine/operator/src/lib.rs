//! The operator's commands: one job, the tools an operator runs beside the server, which
//! read its files and write reports or installation files and never serve mail.
//!
//! - [`logsummary`]: `indimail log summary` (qmailanalog's `zoverall`).
//! - [`svctool`]: `indimail service install` (IndiMail's svctool): systemd and daemontools
//!   files, and the manual pages.
//! - [`manpages`]: `indimail man`: a page per command of the command line it is given, and
//!   `indimail-control(5)` from README.md's tables.
//! - [`progress`]: a progress bar on a terminal, a line every few seconds otherwise, for
//!   the tools that read a large queue.
//!
//! The command line itself (clap definitions) stays in the binary: pages are rendered from
//! the `clap::Command` the binary hands over.

pub mod logsummary;
pub mod manpages;
pub mod progress;
pub mod svctool;

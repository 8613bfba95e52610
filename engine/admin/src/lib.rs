//! The administration servers: one job, letting an operator run directory and queue
//! commands on this host from elsewhere, safely.
//!
//! - [`adminsrv`]: the HTTP/JSON endpoint over TLS (`indimail serve --admin`) and its client
//!   (`indimail admin`).
//! - [`indisrvr`]: IndiMail's indisrvr line protocol (`--indisrvr`, or `indimail indisrvr`).
//! - [`adminclient`]: IndiMail's adminclient, the line protocol's client.
//! - [`adminauth`]: what both servers share: `control/adminusers`, login, lock-out, limits
//!   on unauthenticated connections, the TLS accept loop and the child that runs a command.
//! - [`operations`]: what may be asked for: the HTTP whitelist, IndiMail's program
//!   whitelist, and the permission names both check.
//!
//! Imports point down that list and never back: the servers use `adminauth` and
//! `operations`; `adminauth` uses `operations`; `operations` uses nothing of the crate.
//! A command runs as a child process of the `indimail` binary, so nothing here links the
//! mail engine.

pub mod adminauth;
pub mod adminclient;
pub mod adminsrv;
pub mod indisrvr;
pub mod operations;

//! The ground every IndiMail service and tool stands on: qmail-style control files
//! ([`read_lines`], the one reader of `control/*` every crate uses, and [`ControlDir`] over
//! it), IndiMail's environment variables ([`env`]), and the one-line, qmail-style event log
//! ([`log!`]). It depends on no crate of the project.
//!
//! It reads files and variables; it starts nothing and knows no protocol.

mod dir;
pub mod env;
pub mod log;

pub use dir::{read_lines, read_values, split_lines, ControlDir, ControlError, DomainList};

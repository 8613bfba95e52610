//! The ground every IndiMail service and tool stands on: qmail-style control files
//! ([`ControlDir`], the one reader of `control/*`), IndiMail's environment variables
//! ([`env`]), where an installation's state lives ([`Paths`]), and the one-line,
//! qmail-style event log ([`log!`]).
//!
//! It reads files and variables; it starts nothing and knows no protocol.

mod dir;
pub mod env;
pub mod log;
mod paths;

pub use dir::{ControlDir, ControlError, DomainList};
pub use paths::Paths;

//! Message processing at queue time (IndiMail's qmail-queue line
//! processing, spec 1.7-1.11) and the mail-authentication and duplicate
//! checks of spec section 9.
//!
//! * [`headers`]: a sans-I/O processor that sees the header block once as
//!   the message streams into the queue (lines may be split across chunks
//!   and folded) and applies `removeheaders`, `envheaders` and `logheaders`.
//! * [`QueueRules`]: those header rules plus `quarantine`, `extraqueue` and
//!   `NULLQUEUE`, read from the control directory and the environment.
//! * [`dkim`]: signing with keys kept as IndiMail keeps them
//!   (`control/domainkeys/<domain>/<selector>`), key generation, and
//!   verification producing `Authentication-Results:`.
//! * [`dups`]: the duplicate eliminator (`ELIMINATE_DUPS`).
//! * [`scan`]: virus scanning with clamd (INSTREAM), sans I/O.
//! * [`autoreply`]: the vacation autoresponder of local users (RFC 3834).

pub mod autoreply;
pub mod dkim;
pub mod dups;
pub mod headers;
mod rules;
pub mod scan;

pub use headers::{HeaderProcessor, HeaderRules};
pub use rules::{Processed, QueueRules};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A control file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A control file line is malformed.
    #[error("{path}:{line}: {problem}")]
    Syntax {
        /// The file.
        path: std::path::PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// A DKIM key could not be used or made.
    #[error("dkim key {path}: {problem}")]
    Key {
        /// The key file.
        path: std::path::PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// Signing failed.
    #[error("dkim signing failed: {0}")]
    Sign(String),
}

/// Reads a control file's meaningful lines (trimmed, without blank lines
/// and `#` comments), with their 1-based numbers; `None` when missing.
pub(crate) fn control_lines(path: &std::path::Path) -> Result<Option<Vec<(usize, String)>>, Error> {
    control::read_values(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

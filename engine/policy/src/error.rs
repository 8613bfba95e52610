//! Load-time errors, each naming the file and (where it applies) the line.

use std::fmt;
use std::path::PathBuf;

/// One problem found while loading the control files. [`crate::Policy::load`] collects every
/// one of them instead of stopping at the first, so an operator can fix a directory in one pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    /// The control file the problem is in.
    pub file: PathBuf,
    /// 1-based line number within `file`, when the problem is a line.
    pub line: Option<usize>,
    /// What is wrong.
    pub kind: PolicyErrorKind,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.kind),
            None => write!(f, "{}: {}", self.file.display(), self.kind),
        }
    }
}

/// The kinds of load-time problems.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyErrorKind {
    /// The file exists but could not be read (permissions, I/O error, a directory...).
    #[error("cannot read: {0}")]
    Io(String),
    /// A regular expression (QREGEX mode, `bodycheck`) does not compile.
    #[error("bad regular expression {pattern:?}: {reason}")]
    Regex {
        /// The pattern as written in the file.
        pattern: String,
        /// The compiler's complaint.
        reason: String,
    },
    /// A line does not have the shape the file's format requires.
    #[error("malformed line {text:?}: {reason}")]
    Syntax {
        /// The offending line.
        text: String,
        /// What was expected.
        reason: &'static str,
    },
    /// An integer control (`qregex`) does not hold an integer.
    #[error("not an integer: {0:?}")]
    Number(String),
}

impl PolicyError {
    pub(crate) fn new(
        file: impl Into<PathBuf>,
        line: Option<usize>,
        kind: PolicyErrorKind,
    ) -> Self {
        PolicyError {
            file: file.into(),
            line,
            kind,
        }
    }
}

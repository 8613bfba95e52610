//! Errors of the directory, each one either temporary (retry later: 4xx, exit 111) or
//! permanent (the request itself is wrong: 5xx, exit 1/100).

use std::path::PathBuf;

/// Everything that can go wrong in a directory lookup or an admin change.
///
/// `Clone + PartialEq` so that single-flight waiters can share the leader's error and tests can
/// assert on it; wrapped library errors are kept as their message for that reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LookupError {
    /// The database could not be reached, answered with an error, or was too slow.
    /// Always temporary: a caller must never turn it into a permanent answer.
    #[error("directory unavailable: {0}")]
    Unavailable(String),
    /// A configuration file is wrong (file and line named).
    #[error("{}:{line}: {reason}", file.display())]
    Config {
        /// The file holding the bad line.
        file: PathBuf,
        /// 1-based line number (0 when the whole file is at fault).
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A file or directory operation failed.
    #[error("{}: {reason}", path.display())]
    Io {
        /// The path that was being worked on.
        path: PathBuf,
        /// The operating system's message.
        reason: String,
    },
    /// The address is not of the form `user@domain` or holds forbidden characters.
    #[error("invalid address: {0}")]
    InvalidAddress(String),
    /// The domain name is empty, too long or holds forbidden characters.
    #[error("invalid domain name: {0}")]
    InvalidDomain(String),
    /// A row in the database does not parse (names the table and what is wrong).
    #[error("corrupt directory data: {0}")]
    Corrupt(String),
    /// `user add` of an address that exists (active or inactive).
    #[error("user already exists: {0}")]
    UserExists(String),
    /// The user does not exist.
    #[error("user not found: {0}")]
    UserNotFound(String),
    /// `domain add` of a domain that exists.
    #[error("domain already exists: {0}")]
    DomainExists(String),
    /// The domain is not a virtual domain of this directory.
    #[error("domain not found: {0}")]
    DomainNotFound(String),
    /// The password, or the string stored for it, does not fit `pw_passwd` (char(128)).
    #[error("password too long (at most {max} bytes)")]
    PasswordTooLong {
        /// Largest accepted length.
        max: usize,
    },
    /// The password is empty or holds a NUL, newline or colon-free violation.
    #[error("invalid password: {0}")]
    InvalidPassword(String),
    /// A value does not fit the column it goes to.
    #[error("{field} too long (at most {max} bytes)")]
    FieldTooLong {
        /// Column name.
        field: &'static str,
        /// Column width.
        max: usize,
    },
    /// A quota string that is neither `NOQUOTA` nor `<bytes>[KMG][,<count>]`.
    #[error("invalid quota: {0}")]
    InvalidQuota(String),
    /// An unknown password scheme name or number.
    #[error("unknown password hash method: {0}")]
    UnknownHash(String),
    /// Hashing failed (bad salt or parameters).
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// The alias line to add exists already.
    #[error("alias line already exists for {0}")]
    AliasExists(String),
    /// No alias (or no such alias line) for the address.
    #[error("alias not found: {0}")]
    AliasNotFound(String),
    /// An alias domain collides with a real domain or alias.
    #[error("alias domain already exists: {0}")]
    AliasDomainExists(String),
    /// A hostcntrl/host_table entry is missing.
    #[error("host entry not found: {0}")]
    HostNotFound(String),
    /// A hostcntrl entry exists already.
    #[error("host entry already exists: {0}")]
    HostExists(String),
    /// A host id still has users placed on it (`cluster del-host` without `--force`).
    #[error("host {0} still has {1} hostcntrl entries; move them first")]
    HostInUse(String, u64),
    /// No such `atrn_map` row (vatrn -d / -u).
    #[error("ATRN map not found: {0}")]
    AtrnMapNotFound(String),
    /// The `atrn_map` row exists already (vatrn -i).
    #[error("ATRN map already exists: {0}")]
    AtrnMapExists(String),
    /// The domain has no `vlimits` row (vlimit -d).
    #[error("no limits set for domain: {0}")]
    LimitsNotFound(String),
    /// A rename onto a name that is taken, or a change that cannot be made as asked.
    #[error("{0}")]
    Refused(String),
}

impl LookupError {
    /// True when retrying later may succeed (4xx reply, exit 111).
    pub fn is_temporary(&self) -> bool {
        matches!(self, LookupError::Unavailable(_) | LookupError::Io { .. })
    }

    pub(crate) fn io(path: impl Into<PathBuf>, err: std::io::Error) -> LookupError {
        LookupError::Io {
            path: path.into(),
            reason: err.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_problem() {
        assert_eq!(
            LookupError::UserExists("a@b".into()).to_string(),
            "user already exists: a@b"
        );
        assert_eq!(
            LookupError::DomainNotFound("b".into()).to_string(),
            "domain not found: b"
        );
        assert_eq!(
            LookupError::PasswordTooLong { max: 128 }.to_string(),
            "password too long (at most 128 bytes)"
        );
        assert!(LookupError::Unavailable("x".into()).is_temporary());
        assert!(!LookupError::UserNotFound("x".into()).is_temporary());
    }
}

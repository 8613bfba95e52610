//! The directory's data types: addresses, users, flags, quotas, statuses and their SMTP
//! replies, mail stores and domain limits.

use std::fmt;
use std::path::PathBuf;
use std::rc::Rc;

use crate::LookupError;

/// Width of `pw_name` (char(40)).
pub const MAX_USER_LEN: usize = 40;
/// Width of `pw_domain` (char(67)).
pub const MAX_DOMAIN_LEN: usize = 67;
pub use crate::password::MAX_PASSWD_LEN;
/// Width of `pw_gecos` (char(48)).
pub const MAX_GECOS_LEN: usize = 48;
/// Width of `pw_dir` (char(156)).
pub(crate) const MAX_DIR_LEN: usize = 156;
/// Width of `valias_line` (char(190)).
pub(crate) const MAX_VALIAS_LEN: usize = 190;

/// A lower-cased, validated `user@domain`.
///
/// IndiMail lower-cases addresses before every query; doing it once here keeps the MySQL
/// (case-insensitive collation) and SQLite (binary collation) backends answering alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    user: String,
    domain: String,
}

impl Address {
    /// Parse `user@domain`; the domain part is required.
    pub fn parse(email: &str) -> Result<Address, LookupError> {
        let email = email.trim();
        let (user, domain) = email
            .rsplit_once('@')
            .ok_or_else(|| LookupError::InvalidAddress(email.to_string()))?;
        Address::new(user, domain).map_err(|e| match e {
            LookupError::InvalidDomain(_) => LookupError::InvalidAddress(email.to_string()),
            other => other,
        })
    }

    /// Build from parts, validating and lower-casing both.
    pub fn new(user: &str, domain: &str) -> Result<Address, LookupError> {
        let user = user.to_ascii_lowercase();
        let bad = |c: char| c.is_control() || c.is_whitespace() || matches!(c, ':' | '/' | '@');
        if user.is_empty() || user.contains(bad) || user.starts_with('.') {
            return Err(LookupError::InvalidAddress(format!("{user}@{domain}")));
        }
        if user.len() > MAX_USER_LEN {
            return Err(LookupError::FieldTooLong {
                field: "user name",
                max: MAX_USER_LEN,
            });
        }
        let domain = normalize_domain(domain)?;
        Ok(Address { user, domain })
    }

    /// The local part.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The domain part.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Same user in another domain (alias domain resolution).
    pub fn with_domain(&self, domain: &str) -> Address {
        Address {
            user: self.user.clone(),
            domain: domain.to_string(),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.user, self.domain)
    }
}

/// Validate and lower-case a domain name (letters, digits, `-`, `.`; at most 67 bytes).
pub fn normalize_domain(domain: &str) -> Result<String, LookupError> {
    let d = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.len() <= MAX_DOMAIN_LEN
        && !d.starts_with(['.', '-'])
        && !d.contains("..")
        && d.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if ok {
        Ok(d)
    } else {
        Err(LookupError::InvalidDomain(domain.to_string()))
    }
}

/// The `<bucket>` directory of spec 4.3, from the user's first letter.
pub fn bucket(user: &str) -> &'static str {
    match user.chars().next().map(|c| c.to_ascii_lowercase()) {
        Some('a'..='e') => "A2E",
        Some('f'..='k') => "F2K",
        Some('l'..='p') => "L2P",
        Some('q'..='s') => "Q2S",
        _ => "T2Zsym",
    }
}

/// The `pw_gid` flag bits (spec 4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct UserFlags(pub u32);

impl UserFlags {
    /// Cannot change password.
    pub const NO_PASSWD_CHNG: u32 = 0x01;
    /// POP3 denied.
    pub const NO_POP: u32 = 0x02;
    /// Webmail denied.
    pub const NO_WEBMAIL: u32 = 0x04;
    /// IMAP denied.
    pub const NO_IMAP: u32 = 0x08;
    /// Bounce incoming mail (set by delivery when over quota).
    pub const BOUNCE_MAIL: u32 = 0x10;
    /// May authenticate but not relay (checkpassword exits 3).
    pub const NO_RELAY: u32 = 0x20;
    /// Dial-up denied.
    pub const NO_DIALUP: u32 = 0x40;
    /// Domain administrator.
    pub const QA_ADMIN: u32 = 0x80;
    /// SMTP denied.
    pub const NO_SMTP: u32 = 0x100;
    /// Site-defined bit 0.
    pub const V_USER0: u32 = 0x200;
    /// Site-defined bit 1.
    pub const V_USER1: u32 = 0x400;
    /// Site-defined bit 2.
    pub const V_USER2: u32 = 0x800;
    /// Site-defined bit 3.
    pub const V_USER3: u32 = 0x1000;
    /// Ignore vlimits.
    pub const V_OVERRIDE: u32 = 0x2000;

    /// Names accepted by `user mod --set/--clear`, with their bits.
    pub const NAMES: [(&'static str, u32); 14] = [
        ("no-passwd-change", Self::NO_PASSWD_CHNG),
        ("no-pop", Self::NO_POP),
        ("no-webmail", Self::NO_WEBMAIL),
        ("no-imap", Self::NO_IMAP),
        ("bounce-mail", Self::BOUNCE_MAIL),
        ("no-relay", Self::NO_RELAY),
        ("no-dialup", Self::NO_DIALUP),
        ("admin", Self::QA_ADMIN),
        ("no-smtp", Self::NO_SMTP),
        ("user0", Self::V_USER0),
        ("user1", Self::V_USER1),
        ("user2", Self::V_USER2),
        ("user3", Self::V_USER3),
        ("override", Self::V_OVERRIDE),
    ];

    /// True when every bit of `bit` is set.
    pub fn has(self, bit: u32) -> bool {
        self.0 & bit == bit
    }

    /// Bit for a flag name of [`UserFlags::NAMES`].
    pub fn by_name(name: &str) -> Option<u32> {
        Self::NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, b)| *b)
    }
}

impl fmt::Display for UserFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Self::NAMES
            .iter()
            .filter(|(_, b)| self.has(*b))
            .map(|(n, _)| *n)
            .collect();
        if names.is_empty() {
            write!(f, "none")
        } else {
            write!(f, "{}", names.join(","))
        }
    }
}

/// A mailbox quota (the `pw_shell` column, spec 4.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quota {
    /// `NOQUOTA`.
    Unlimited,
    /// A size limit in bytes and an optional message-count limit.
    Limit {
        /// Bytes.
        bytes: u64,
        /// Messages, if limited.
        count: Option<u64>,
    },
}

impl Quota {
    /// Parse `NOQUOTA`, `<n>[K|M|G]`, `<n>,<count>`, or the Maildir++ `<n>S,<c>C` form.
    pub fn parse(s: &str) -> Result<Quota, LookupError> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("NOQUOTA") {
            return Ok(Quota::Unlimited);
        }
        let bad = || LookupError::InvalidQuota(s.to_string());
        let (size, count) = match t.split_once(',') {
            Some((a, b)) => (a, Some(b)),
            None => (t, None),
        };
        let size = size.trim().trim_end_matches(['S', 's']);
        let (digits, mult) = match size.as_bytes().last() {
            Some(b'K' | b'k') => (&size[..size.len() - 1], 1024u64),
            Some(b'M' | b'm') => (&size[..size.len() - 1], 1024 * 1024),
            Some(b'G' | b'g') => (&size[..size.len() - 1], 1024 * 1024 * 1024),
            _ => (size, 1),
        };
        let bytes = digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(mult))
            .ok_or_else(bad)?;
        let count = match count {
            Some(c) => Some(
                c.trim()
                    .trim_end_matches(['C', 'c'])
                    .parse::<u64>()
                    .map_err(|_| bad())?,
            ),
            None => None,
        };
        Ok(Quota::Limit { bytes, count })
    }

    /// The column form: `NOQUOTA`, `<bytes>` or `<bytes>,<count>`.
    pub fn to_column(self) -> String {
        match self {
            Quota::Unlimited => "NOQUOTA".to_string(),
            Quota::Limit { bytes, count: None } => bytes.to_string(),
            Quota::Limit {
                bytes,
                count: Some(c),
            } => format!("{bytes},{c}"),
        }
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Quota::Unlimited => write!(f, "NOQUOTA"),
            Quota::Limit { bytes, count: None } => write!(f, "{bytes}S"),
            Quota::Limit {
                bytes,
                count: Some(c),
            } => write!(f, "{bytes}S,{c}C"),
        }
    }
}

/// One row of `indimail` (active) or `indibak` (inactive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// `pw_name`: the local part.
    pub name: String,
    /// `pw_domain`.
    pub domain: String,
    /// `pw_passwd`: crypt string or `{CRAM}clear,crypt`.
    pub passwd: String,
    /// `pw_uid`: cluster sync state (1 normal).
    pub uid: i64,
    /// `pw_gid`: flag bits.
    pub flags: UserFlags,
    /// `pw_gecos`.
    pub gecos: String,
    /// `pw_dir`: the home directory (Maildir is `dir/Maildir/`).
    pub dir: PathBuf,
    /// `pw_shell` parsed (an unparsable value reads as unlimited, as IndiMail's parse_quota
    /// treats garbage; the raw string is kept in `quota_raw`).
    pub quota: Quota,
    /// `pw_shell` as stored.
    pub quota_raw: String,
    /// `scram` column, when set.
    pub scram: Option<String>,
    /// True when the row is in `indimail`, false when in `indibak`.
    pub active: bool,
}

impl User {
    /// `user@domain`.
    pub fn email(&self) -> String {
        format!("{}@{}", self.name, self.domain)
    }

    /// The Maildir (`pw_dir/Maildir/`).
    pub fn maildir(&self) -> PathBuf {
        self.dir.join("Maildir")
    }

    /// The clear-text password kept for CRAM (`{CRAM}clear,crypt`), if any.
    pub fn cram_secret(&self) -> Option<&str> {
        crate::password::cram_secret(&self.passwd)
    }
}

/// Answer to "does this recipient exist?" (inlookup USER_QUERY, spec 5.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserStatus {
    /// Active mailbox (status 0).
    Active(Rc<User>),
    /// Mailbox exists but is inactive (in `indibak`; status 2).
    Inactive(Rc<User>),
    /// Mailbox exists and bounces mail because it is over quota (BOUNCE_MAIL flag; status 3).
    OverQuota(Rc<User>),
    /// No mailbox and no alias (status 1).
    NoSuchUser,
    /// No mailbox, but valias lines exist (status 4).
    AliasOnly,
    /// The domain is not a virtual domain of this directory (the caller decides: `locals`,
    /// passwd, or no check).
    NotVirtualDomain,
    /// No mailbox and no alias, but the domain's catch-all (`.qmail-default`) takes the
    /// mail ([`Directory::recipient_status`](crate::Directory::recipient_status)).
    CatchAll(crate::catchall::Handler),
}

/// An SMTP reply chosen by the directory: code, RFC 3463 enhanced status, text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmtpReply {
    /// Three-digit reply code.
    pub code: u16,
    /// Enhanced status code (RFC 3463).
    pub enhanced: &'static str,
    /// Human-readable text.
    pub text: &'static str,
}

impl SmtpReply {
    /// `451 4.3.0`: the directory could not answer (never a permanent reply then).
    pub const TEMPFAIL: SmtpReply = SmtpReply {
        code: 451,
        enhanced: "4.3.0",
        text: "temporary failure looking up recipient, try again later",
    };
}

impl UserStatus {
    /// The RCPT reply for CHECKRECIPIENT (spec 2.5 step 9), or `None` to accept.
    pub fn smtp_reply(&self) -> Option<SmtpReply> {
        match self {
            UserStatus::Active(_)
            | UserStatus::AliasOnly
            | UserStatus::CatchAll(_)
            | UserStatus::NotVirtualDomain => None,
            UserStatus::NoSuchUser => Some(SmtpReply {
                code: 550,
                enhanced: "5.1.1",
                text: "sorry, no mailbox here by that name",
            }),
            UserStatus::Inactive(_) => Some(SmtpReply {
                code: 550,
                enhanced: "5.2.1",
                text: "sorry, this mailbox is inactive",
            }),
            UserStatus::OverQuota(_) => Some(SmtpReply {
                code: 552,
                enhanced: "5.2.2",
                text: "sorry, mailbox is over quota",
            }),
        }
    }

    /// The RCPT reply for a lookup that failed: always temporary.
    pub fn smtp_reply_for_error(_err: &LookupError) -> SmtpReply {
        SmtpReply::TEMPFAIL
    }

    /// inlookup's USER_QUERY status number (0 ok, 1 none, 2 inactive, 3 over quota, 4 alias).
    pub fn inlookup_code(&self) -> i32 {
        match self {
            UserStatus::Active(_) => 0,
            UserStatus::NoSuchUser | UserStatus::NotVirtualDomain => 1,
            UserStatus::Inactive(_) => 2,
            UserStatus::OverQuota(_) => 3,
            UserStatus::AliasOnly | UserStatus::CatchAll(_) => 4,
        }
    }
}

/// Outcome of a password check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthResult {
    /// Password good and the account may log in.
    Ok(Rc<User>),
    /// No such user (or not a virtual domain).
    NoSuchUser,
    /// User exists but the password does not match.
    BadPassword,
    /// Password good but the account is inactive (vchkpass refuses unless ALLOW_INACTIVE).
    Inactive(Rc<User>),
}

impl AuthResult {
    /// checkpassword exit code: 0 ok, 3 ok but NO_RELAY, 1 failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            AuthResult::Ok(u) if u.flags.has(UserFlags::NO_RELAY) => 3,
            AuthResult::Ok(_) => 0,
            _ => 1,
        }
    }
}

/// Where a user's mail lives in a cluster (hostcntrl → host_table → smtp_port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailStore {
    /// The user's (real) domain.
    pub domain: String,
    /// `hostcntrl.host` (the host id).
    pub host_id: String,
    /// `host_table.ipaddr`.
    pub ip: String,
    /// `smtp_port.port`, default 25.
    pub port: u16,
}

impl fmt::Display for MailStore {
    /// The HOST_QUERY reply form `domain:ip:port`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.domain, self.ip, self.port)
    }
}

/// A `lastauth` row (spec 4.2): the last time a user authenticated for one service
/// (`pop3`, `imap`, `webm`, ... and the admin markers `add`, `pass`, `ACTI`, `INAC`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastAuth {
    /// The service (`lastauth.service`, at most 10 characters).
    pub service: String,
    /// `lastauth.remote_ip`.
    pub remote_ip: String,
    /// `lastauth.timestamp` as Unix seconds.
    pub time: i64,
}

/// A `vlimits` row (domain limits). −1 means "no limit" as in IndiMail.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Limits {
    /// Domain name.
    pub domain: String,
    /// Unix time the domain expires, −1 never.
    pub domain_expiry: i64,
    /// Unix time passwords expire, −1 never.
    pub passwd_expiry: i64,
    /// Max mailboxes.
    pub maxpopaccounts: i64,
    /// Max aliases.
    pub maxaliases: i64,
    /// Max forwards.
    pub maxforwards: i64,
    /// Max autoresponders.
    pub maxautoresponders: i64,
    /// Max mailing lists.
    pub maxmailinglists: i64,
    /// Domain disk quota (bytes).
    pub diskquota: i64,
    /// Domain message-count quota.
    pub maxmsgcount: i64,
    /// Default user quota (bytes).
    pub defaultquota: i64,
    /// Default user message-count quota.
    pub defaultmaxmsgcount: i64,
    /// POP disabled for the domain.
    pub disable_pop: bool,
    /// IMAP disabled.
    pub disable_imap: bool,
    /// Dial-up disabled.
    pub disable_dialup: bool,
    /// Password changing disabled.
    pub disable_passwordchanging: bool,
    /// Webmail disabled.
    pub disable_webmail: bool,
    /// Relaying disabled.
    pub disable_relay: bool,
    /// SMTP disabled.
    pub disable_smtp: bool,
    /// Permission bits for non-postmaster admins (create 1, modify 2, delete 4): accounts.
    pub perm_account: i64,
    /// ... aliases.
    pub perm_alias: i64,
    /// ... forwards.
    pub perm_forward: i64,
    /// ... autoresponders.
    pub perm_autoresponder: i64,
    /// ... mailing lists.
    pub perm_maillist: i64,
    /// ... quotas.
    pub perm_quota: i64,
    /// ... the default quota.
    pub perm_defaultquota: i64,
}

impl Limits {
    /// The limits of a domain without a `vlimits` row: the column defaults (counts and
    /// expiries −1, quotas 0 = none, nothing disabled).
    pub fn defaults(domain: &str) -> Limits {
        Limits {
            domain: domain.to_string(),
            domain_expiry: -1,
            passwd_expiry: -1,
            maxpopaccounts: -1,
            maxaliases: -1,
            maxforwards: -1,
            maxautoresponders: -1,
            maxmailinglists: -1,
            ..Limits::default()
        }
    }

    /// True when the domain (`domain_expiry`) or its passwords (`passwd_expiry`) expired by
    /// `now` (unix seconds): vchkpass then refuses every login of the domain. −1 and 0: never.
    pub fn expired(&self, now: i64) -> bool {
        (self.domain_expiry > 0 && now >= self.domain_expiry)
            || (self.passwd_expiry > 0 && now >= self.passwd_expiry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_lowercases_and_validates() {
        let a = Address::parse("Manny@Example.COM").unwrap();
        assert_eq!(a.to_string(), "manny@example.com");
        assert!(Address::parse("nobody").is_err());
        assert!(Address::parse("@example.com").is_err());
        assert!(Address::parse("a b@example.com").is_err());
        assert!(Address::parse("a@exa mple.com").is_err());
        assert!(Address::parse("a:b@example.com").is_err());
        assert!(Address::parse(&format!("{}@x.org", "a".repeat(41))).is_err());
    }

    #[test]
    fn buckets_follow_spec() {
        assert_eq!(bucket("manny"), "L2P");
        assert_eq!(bucket("alice"), "A2E");
        assert_eq!(bucket("Frank"), "F2K");
        assert_eq!(bucket("sam"), "Q2S");
        assert_eq!(bucket("zed"), "T2Zsym");
        assert_eq!(bucket("0day"), "T2Zsym");
    }

    #[test]
    fn quota_forms() {
        assert_eq!(Quota::parse("NOQUOTA").unwrap(), Quota::Unlimited);
        assert_eq!(
            Quota::parse("40000,2000").unwrap(),
            Quota::Limit {
                bytes: 40000,
                count: Some(2000)
            }
        );
        assert_eq!(
            Quota::parse("5M").unwrap(),
            Quota::Limit {
                bytes: 5 * 1024 * 1024,
                count: None
            }
        );
        assert_eq!(
            Quota::parse("100S,5C").unwrap(),
            Quota::Limit {
                bytes: 100,
                count: Some(5)
            }
        );
        assert!(Quota::parse("lots").is_err());
        assert!(Quota::parse("99999999999999999999G").is_err());
        assert_eq!(
            Quota::parse("40000,2000").unwrap().to_column(),
            "40000,2000"
        );
    }

    #[test]
    fn smtp_replies() {
        assert_eq!(
            UserStatus::NoSuchUser.smtp_reply().unwrap().enhanced,
            "5.1.1"
        );
        assert_eq!(UserStatus::AliasOnly.smtp_reply(), None);
        let e = LookupError::Unavailable("down".into());
        assert_eq!(UserStatus::smtp_reply_for_error(&e).code, 451);
    }

    #[test]
    fn flag_names_roundtrip() {
        assert_eq!(UserFlags::by_name("no-relay"), Some(UserFlags::NO_RELAY));
        assert_eq!(
            UserFlags(UserFlags::NO_POP | UserFlags::NO_IMAP).to_string(),
            "no-pop,no-imap"
        );
    }
}

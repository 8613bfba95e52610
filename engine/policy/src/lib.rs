//! SMTP access policy for indimail-rs: IndiMail's control files, greylisting and rate limits,
//! as a sans-I/O library.
//!
//! What it does:
//! * [`Policy`] reads an IndiMail control directory once ([`Policy::load`]) into an immutable
//!   snapshot and answers the HELO, connect, MAIL FROM and RCPT TO questions qmail-smtpd asks,
//!   in its order and with its replies (plus RFC 3463 enhanced codes): `badhelo`
//!   (+`ENFORCE_FQDN_HELO`), `badip`, `badhost`, `from.envrules`, `hostaccess`, `blackholedsender` /
//!   `blackholedpatterns`, `badmailfrom` / `badmailpatterns`, `relaymailfrom`, relay-probe
//!   addresses, `goodrcptto` / `goodrcptpatterns`, `badrcptto` / `badrcptpatterns`,
//!   `accesslist`, `blackholedrcpt` / `blackholedrcptpatterns`, `chkrcptdomains`,
//!   `auth.envrules`, `domainqueue`, the RECIPIENTS extension (`recipients`: cdb and PAVM
//!   lookups for CHECKRECIPIENT=2|3, [`Recipients`]); and [`BodyScanner`] applies `bodycheck` while a message
//!   streams. File names, line formats and the environment overrides (`BADMAILFROM`,
//!   `QREGEX`, ...) are IndiMail's, so an existing control directory works unchanged.
//! * [`greylist`]: RFC 6647 greylisting state for one shard (injected clock, bounded, saved
//!   atomically), and the qmail-greyd UDP wire format ([`greylist::udp`]).
//! * [`rate`]: token buckets per client IP / authenticated user.
//! * [`dnsbl`] and [`spf`]: DNSBL query names and replies, SPF levels (`spfbehavior`) and the
//!   `Received-SPF` header; the driver does the DNS.
//!
//! What it does not do: any network or DNS I/O, timers or threads. Files are read only by
//! [`Policy::load`] and [`greylist::Greylist::save`] / [`greylist::Greylist::load`]. The
//! driver owns `rcpthosts`, relaying, CHECKRECIPIENT lookups, SPF, DNS checks, tarpitting and
//! the UDP socket to qmail-greyd. A list file's compiled `<name>.cdb` (qmail-cdb) is read when
//! the text file is missing; a `<name>.sql` variant (`server:user:password:database:table`) adds
//! the rows of that table's `email` column, fetched at load through the driver's
//! [`SqlFetch`] ([`Policy::load_with_sql`]). `QREGEX` cannot be switched per sender by `from.envrules` (file-name and
//! `PARANOID`/`DOMAIN_MASQUERADE`/`BOUNCEMAIL` switches can).
//!
//! Matching, as in IndiMail: list entries are `addr` or `@domain` (O(1) hash lookups),
//! wildcard patterns (`*`, `?`, `[...]`) or, when `QREGEX`/`control/qregex` is non-zero,
//! extended regular expressions; `!` negates a line in the `*patterns` files. All matching is
//! case-insensitive.
//!
//! ```no_run
//! use policy::{Conn, Policy, Verdict};
//! let p = Policy::load("/etc/indimail/control".as_ref(), &|k| std::env::var(k).ok()).unwrap();
//! let c = Conn { ip: "192.0.2.1".parse().unwrap(), relay_client: false, authenticated: None, helo: "mx.example" };
//! let m = p.check_mail(&c, "someone@example.com");
//! if let Verdict::Reject { code, enhanced, text, rule } = &m.verdict { /* reply, log rule */ }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod accesslist;
mod addrlist;
mod bodycheck;
mod control;
pub mod dnsbl;
mod envrules;
mod error;
pub mod greylist;
mod hostaccess;
mod pattern;
mod policy;
pub mod rate;
mod recipients;
pub mod spf;
mod wildmat;

use std::fmt;
use std::net::IpAddr;

pub use bodycheck::{BodyScanner, MAX_FIELD, MAX_LINE};
pub use control::SqlFetch;
pub use envrules::{merge as merge_env, EnvAssign};
pub use error::{PolicyError, PolicyErrorKind};
pub use policy::Policy;
pub use recipients::{run_pavm, ProgramRunner, Recipients, RecipientsAnswer};

/// What the policy knows about the client connection.
#[derive(Debug, Clone, Copy)]
pub struct Conn<'a> {
    /// Client address (IPv4-mapped IPv6 is treated as IPv4).
    pub ip: IpAddr,
    /// The client may relay already (RELAYCLIENT from tcprules, relayclients, SMTP AUTH).
    pub relay_client: bool,
    /// Authenticated user, if any.
    pub authenticated: Option<&'a str>,
    /// The HELO/EHLO argument.
    pub helo: &'a str,
}

/// A decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on.
    Accept,
    /// Refuse with this reply.
    Reject {
        /// SMTP reply code (4xx temporary, 5xx permanent).
        code: u16,
        /// RFC 3463 enhanced status code.
        enhanced: (u8, u16, u16),
        /// Reply text (without code or enhanced code).
        text: String,
        /// The rule that decided, as `file:line` (or a variable name), for the log.
        rule: String,
    },
    /// Accept, but discard the message silently (NULLQUEUE).
    Blackhole {
        /// The rule that decided, as `file:line`.
        rule: String,
    },
}

impl Verdict {
    /// True for [`Verdict::Accept`].
    pub fn is_accept(&self) -> bool {
        matches!(self, Verdict::Accept)
    }
}

impl fmt::Display for Verdict {
    /// The reply line without CRLF (`553 5.7.1 sorry, ...`), or `accept` / `blackhole`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept => f.write_str("accept"),
            Verdict::Reject {
                code,
                enhanced: (a, b, c),
                text,
                ..
            } => write!(f, "{code} {a}.{b}.{c} {text}"),
            Verdict::Blackhole { .. } => f.write_str("blackhole"),
        }
    }
}

/// The answer to MAIL FROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailVerdict {
    /// Accept / reject / blackhole.
    pub verdict: Verdict,
    /// Environment for this transaction only, from `from.envrules` (later lines already
    /// merged in): `Some(value)` sets, `None` unsets. DATABYTES, RELAYCLIENT, NODNSCHECK,
    /// NULLQUEUE, QUEUEDIR, ... The driver applies what it understands.
    pub env: Vec<EnvAssign>,
    /// `relaymailfrom` matched: treat the client as a relay client for this transaction.
    pub relay: bool,
}

/// IPv4-mapped IPv6 addresses as IPv4, everything else unchanged (tcpserver's TCPREMOTEIP).
pub(crate) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests;

//! Reading mail: IndiMail's IMAP and POP3 proxies (`proxyimap`, `proxypop3`, spec 6) and a
//! POP3 server on Maildir for the default (non-clustered) installation.
//!
//! What it does:
//! * [`imap_login`] and [`pop3_login`] — sans-I/O cores of the not-authenticated states
//!   (bytes in, events out; lines and literals capped), tested split at every byte.
//! * [`serve_imap_proxy`] / [`serve_pop3_proxy`] — accept loops on a shard: answer the
//!   login dialogue locally, verify the password against the [`lookup::Directory`] (unknown
//!   users and bad passwords never reach a mailstore), refuse `NO_IMAP` / `NO_POP` accounts
//!   and domains whose `vlimits` disable the service, find the user's mailstore
//!   (`hostcntrl` → `host_table`, port from [`ProxyConfig::imap_port`] / `DESTPORT`; else the
//!   configured default backend), log in there as `user@domain:clientip` (spec 6; without
//!   `:clientip` under `LEGACY_SERVER`), hide the mailstore's greeting and login reply, answer
//!   the client itself and then relay bytes both ways until either side closes or the
//!   session is idle for [`ProxyConfig::idle_timeout`]. Successful logins insert the
//!   POP/IMAP-before-SMTP relay row (spec 4.9) and the user's `lastauth` row (service
//!   `imap` or `pop3`), in a task of their own so the login does not wait for the writes.
//! * [`serve_pop3`] — RFC 1939 POP3 (with CAPA, UIDL, TOP, USER/PASS, AUTH PLAIN, RFC 2449 /
//!   3206 response codes) on `pw_dir/Maildir`: new mail moved to `cur/` on login, CRLF and
//!   dot-stuffing on the wire, DELE applied only after a clean QUIT, one session per mailbox.
//!   The POP3 proxy also serves a user this way when the user has no mailstore and no
//!   default backend is configured (spec 6: "mailstore is a local interface → local login").
//! * [`serve_poppass`] / [`serve_poppasss`] — poppassd (IndiMail's `qmail-poppass.106`):
//!   users change their own password ([`poppass`] is the protocol core). The old password is
//!   checked as a POP3 login is, `NO_PASSWD_CHNG` accounts and domains whose `vlimits`
//!   disable password changing are refused, the new one is stored by
//!   [`lookup::Directory::set_password`]. Clear-text passwords follow the POP3 rule
//!   ([`ProxyConfig::plaintext_auth`]).
//!
//! TLS (when [`ProxyContext::tls`] holds the server certificate): `STARTTLS` (IMAP) and
//! `STLS` (POP3) in all three servers, implicit TLS through [`serve_imaps_proxy`],
//! [`serve_pop3s_proxy`] and [`serve_pop3s`]. Plaintext pipelined after the upgrade command
//! is dropped. The proxies' client side uses their own full-duplex TLS session
//! (`duplex_tls`, rustls under a `RefCell`), because the relay reads both ways at once and
//! `tls::TlsStream` needs `&mut` for each read and write. The connection to the mailstore
//! is plain text (spec 6), as the original proxies do.
//!
//! What it does not do: TLS towards the mailstore, an IMAP server, SASL mechanisms other
//! than PLAIN, auto-provisioning of unknown users (`AUTOADDUSERS`), or locking a mailbox
//! against other processes (the POP3 lock is per `indimail` process, across all its shards).
//!
//! The directory is reached through a [`DirectorySource`], so a server can start while the
//! database is down: logins are then answered `NO [UNAVAILABLE]` / `-ERR [SYS/TEMP]` until
//! it can be opened.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod backend;
mod conn;
mod duplex_tls;
pub mod imap_login;
mod imap_proxy;
mod login;
mod login_driver;
mod maildir;
pub mod pop3_login;
mod pop3_proxy;
mod pop3_server;
pub mod poppass;
mod poppass_server;
mod relay;
mod sasl;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

pub use imap_proxy::{serve_imap_proxy, serve_imaps_proxy};
pub use login::LoginEvent;
pub use maildir::{dot_stuff, TopCut};
pub use pop3_proxy::{serve_pop3_proxy, serve_pop3s_proxy};
pub use pop3_server::{serve_pop3, serve_pop3s};
pub use poppass_server::{serve_poppass, serve_poppasss};
pub use sasl::PlainError;

/// Where the servers get the shard's directory: already open, or opened on demand (the
/// engine's per-shard handle, which reopens after a failure).
pub trait DirectorySource {
    /// The open directory, or why it cannot be had now (always temporary: logins are
    /// answered `NO [UNAVAILABLE]` / `-ERR [SYS/TEMP]`).
    fn directory(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<Rc<lookup::Directory>, String>> + '_>>;
}

/// An open directory is always available.
impl DirectorySource for Rc<lookup::Directory> {
    fn directory(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<Rc<lookup::Directory>, String>> + '_>> {
        let d = Rc::clone(self);
        Box::pin(async move { Ok(d) })
    }
}

/// What the proxies and the POP3 server need on a shard.
pub struct ProxyContext {
    /// The shard's directory.
    pub directory: Rc<dyn DirectorySource>,
    /// Settings.
    pub config: ProxyConfig,
    /// The server certificate (`servercert.pem`): with it the POP3 server offers `STLS`
    /// and [`serve_pop3s`] works. `None`: plain text only.
    pub tls: Option<Rc<tls::CertStore>>,
}

/// Settings of the proxies and the POP3 server. [`ProxyConfig::from_env`] reads IndiMail's
/// variables; [`Default`] gives the spec's defaults.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// IMAP port on the mailstores (`DESTPORT=imap:<port>`, installer 143).
    pub imap_port: u16,
    /// POP3 port on the mailstores (`DESTPORT=pop3:<port>`, installer 110).
    pub pop3_port: u16,
    /// IMAP server for users without a `hostcntrl` entry (`IMAP_BACKEND=addr:port`). When
    /// unset such logins are answered `NO [UNAVAILABLE]`.
    pub default_imap_backend: Option<SocketAddr>,
    /// POP3 server for users without a `hostcntrl` entry (`POP3_BACKEND=addr:port`). When
    /// unset the POP3 proxy serves them from their Maildir itself.
    pub default_pop3_backend: Option<SocketAddr>,
    /// Log in to the mailstore as `user@domain` instead of `user@domain:clientip`
    /// (`LEGACY_SERVER`).
    pub legacy_server: bool,
    /// Domain appended to a login without `@` (`DEFAULT_DOMAIN`).
    pub default_domain: Option<String>,
    /// Failed logins before disconnecting (`BADLOGINS`, default 5).
    pub max_bad_logins: u32,
    /// Longest wait for a command before login, and for each mailstore reply during the
    /// mailstore login (spec 6: 60 s alarm).
    pub command_timeout: Duration,
    /// Disconnect a logged-in session after this long without traffic in either direction
    /// (`DATA_TIMEOUT`, code default 1800 s). The IMAP proxy says
    /// `* BYE Disconnected for inactivity.` first. Also the POP3 server's autologout timer.
    pub idle_timeout: Duration,
    /// Longest wait to connect to a mailstore.
    pub connect_timeout: Duration,
    /// Insert the POP/IMAP-before-SMTP relay row on each successful login (spec 4.9).
    pub record_relay: bool,
    /// Write the user's `lastauth` row (service `imap` / `pop3`) on each successful login.
    pub record_lastauth: bool,
    /// Write `LOGIN`/`LOGOUT` lines to standard error (spec 6 log format).
    pub log: bool,
    /// Client networks that may log in with a clear-text password on a connection that is
    /// not encrypted (`PLAINTEXT_AUTH_NETS`, default none). Everyone else must use TLS
    /// first (implicit, `STARTTLS` or `STLS`), as Dovecot's `disable_plaintext_auth` does:
    /// before TLS the IMAP capabilities say `LOGINDISABLED` without `AUTH=PLAIN` and a login
    /// is answered `NO [PRIVACYREQUIRED]` (RFC 5530); POP3 `CAPA` lists neither `USER` nor
    /// `SASL PLAIN` and `USER`/`AUTH` are answered `-ERR [AUTH]` (RFC 2449, RFC 3206).
    pub plaintext_auth: Vec<Network>,
    /// The host named in greetings (poppassd's `200 <host> poppassd hello`); the server
    /// sets it from `control/me`.
    pub hostname: String,
}

/// An IP network: an address and how many leading bits must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    bits: u8,
}

impl Network {
    /// Whether `ip` is in the network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (a, b, len) = match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                (u128::from(u32::from(a)), u128::from(u32::from(b)), 32)
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
            _ => return false,
        };
        let shift = len - u32::from(self.bits);
        shift >= len || a >> shift == b >> shift
    }
}

impl std::str::FromStr for Network {
    type Err = ();

    /// `ADDR` or `ADDR/BITS`, IPv4 or IPv6.
    fn from_str(s: &str) -> Result<Network, ()> {
        let (a, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b.parse::<u8>().map_err(|_| ())?)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| ())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        if bits > max {
            return Err(());
        }
        Ok(Network { addr, bits })
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            imap_port: 143,
            pop3_port: 110,
            default_imap_backend: None,
            default_pop3_backend: None,
            legacy_server: false,
            default_domain: None,
            max_bad_logins: 5,
            command_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(1800),
            connect_timeout: Duration::from_secs(30),
            record_relay: true,
            record_lastauth: true,
            log: true,
            plaintext_auth: Vec::new(),
            hostname: "localhost".to_string(),
        }
    }
}

/// A variable that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("${name}: {reason}: {value}")]
pub struct ConfigError {
    /// The variable.
    pub name: &'static str,
    /// Its value.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl ProxyConfig {
    /// Defaults overridden by `DESTPORT` (`imap:<port>` or `pop3:<port>`; one process serving
    /// both proxies may give both, separated by a comma: `imap:1143,pop3:1110`), `IMAP_BACKEND`,
    /// `POP3_BACKEND`, `LEGACY_SERVER`, `DEFAULT_DOMAIN`, `BADLOGINS`, `DATA_TIMEOUT`
    /// (seconds), `PLAINTEXT_AUTH_NETS` (networks separated by commas or spaces, each
    /// `ADDR` or `ADDR/BITS`, e.g. `127.0.0.1,::1,10.1.0.0/16`). Every bad variable is
    /// reported.
    pub fn from_env() -> Result<ProxyConfig, Vec<ConfigError>> {
        Self::from_vars(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// [`ProxyConfig::from_env`] over any variable source.
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<ProxyConfig, Vec<ConfigError>> {
        let mut c = ProxyConfig::default();
        let mut errs = Vec::new();
        let mut bad = |name, value: &str, reason| {
            errs.push(ConfigError {
                name,
                value: value.to_string(),
                reason,
            })
        };
        if let Some(d) = var("DESTPORT") {
            for item in d.split(',').map(str::trim) {
                match item.split_once(':').map(|(s, p)| (s, p.parse::<u16>())) {
                    Some(("imap", Ok(p))) => c.imap_port = p,
                    Some(("pop3", Ok(p))) => c.pop3_port = p,
                    _ => {
                        bad("DESTPORT", &d, "expected imap:<port> or pop3:<port>");
                        break;
                    }
                }
            }
        }
        for (name, slot) in [
            ("IMAP_BACKEND", &mut c.default_imap_backend),
            ("POP3_BACKEND", &mut c.default_pop3_backend),
        ] {
            if let Some(v) = var(name) {
                match v.parse() {
                    Ok(a) => *slot = Some(a),
                    Err(_) => bad(name, &v, "expected ADDR:PORT"),
                }
            }
        }
        c.legacy_server = var("LEGACY_SERVER").is_some();
        c.default_domain = var("DEFAULT_DOMAIN");
        if let Some(v) = var("BADLOGINS") {
            match v.parse() {
                Ok(n) if n > 0 => c.max_bad_logins = n,
                _ => bad("BADLOGINS", &v, "expected a positive number"),
            }
        }
        if let Some(v) = var("DATA_TIMEOUT") {
            match v.parse::<u64>() {
                Ok(n) if n > 0 => c.idle_timeout = Duration::from_secs(n),
                _ => bad("DATA_TIMEOUT", &v, "expected a positive number of seconds"),
            }
        }
        if let Some(v) = var("PLAINTEXT_AUTH_NETS") {
            for n in v.split([',', ' ']).filter(|n| !n.is_empty()) {
                match n.parse() {
                    Ok(net) => c.plaintext_auth.push(net),
                    Err(()) => {
                        bad("PLAINTEXT_AUTH_NETS", &v, "expected ADDR or ADDR/BITS, ...");
                        break;
                    }
                }
            }
        }
        if errs.is_empty() {
            Ok(c)
        } else {
            Err(errs)
        }
    }

    /// Whether a client at `ip` may send a clear-text password without TLS.
    pub fn plaintext_allowed(&self, ip: IpAddr) -> bool {
        self.plaintext_auth.iter().any(|n| n.contains(ip))
    }

    fn imap_login(&self, peer: IpAddr) -> imap_login::ImapLoginConfig {
        imap_login::ImapLoginConfig {
            max_bad_logins: self.max_bad_logins,
            command_timeout: self.command_timeout,
            plaintext_without_tls: self.plaintext_allowed(peer),
            ..imap_login::ImapLoginConfig::default()
        }
    }

    fn pop3_login(&self, peer: IpAddr) -> pop3_login::Pop3LoginConfig {
        pop3_login::Pop3LoginConfig {
            max_bad_logins: self.max_bad_logins,
            command_timeout: self.command_timeout,
            plaintext_without_tls: self.plaintext_allowed(peer),
            ..pop3_login::Pop3LoginConfig::default()
        }
    }
}

/// Why a login is refused, as the drivers tell the login cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Unknown user, wrong password or inactive account (counts as a bad login).
    AuthFailed,
    /// The account or its domain may not use this service (`NO_IMAP`/`NO_POP`, vlimits;
    /// counts as a bad login).
    Disabled,
    /// The mailstore could not be reached or failed.
    Unavailable,
    /// The directory could not answer (temporary).
    TempFail,
    /// The mailbox is in use by another session (POP3, RFC 2449 `IN-USE`).
    InUse,
}

/// The service a login is for (flag and vlimits checks, log lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    Imap,
    Pop3,
    /// Password changes (poppassd).
    Poppass,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::Imap => "proxyimap",
            Service::Pop3 => "proxypop3",
            Service::Poppass => "poppassd",
        }
    }

    /// `lastauth.service` (spec 4.2).
    fn lastauth(self) -> &'static str {
        match self {
            Service::Imap => "imap",
            Service::Pop3 => "pop3",
            Service::Poppass => "pass",
        }
    }
}

/// Verify a login against the directory and check the account may use `service`.
pub(crate) async fn authorize(
    ctx: &ProxyContext,
    user: &str,
    password: &str,
    service: Service,
) -> Result<Rc<lookup::User>, Refusal> {
    let email = match (user.contains('@'), &ctx.config.default_domain) {
        (false, Some(d)) => format!("{user}@{d}"),
        _ => user.to_string(),
    };
    if lookup::Address::parse(&email).is_err() {
        return Err(Refusal::AuthFailed);
    }
    let dir = directory(ctx, service).await?;
    let u = match dir.check_password(&email, password).await {
        Ok(lookup::AuthResult::Ok(u)) => u,
        Ok(_) => return Err(Refusal::AuthFailed),
        Err(e) if e.is_temporary() => return Err(Refusal::TempFail),
        Err(_) => return Err(Refusal::AuthFailed),
    };
    let (flag, limit): (u32, fn(&lookup::Limits) -> bool) = match service {
        Service::Imap => (lookup::UserFlags::NO_IMAP, |l| l.disable_imap),
        Service::Pop3 => (lookup::UserFlags::NO_POP, |l| l.disable_pop),
        Service::Poppass => (lookup::UserFlags::NO_PASSWD_CHNG, |l| {
            l.disable_passwordchanging
        }),
    };
    if u.flags.has(flag) {
        return Err(Refusal::Disabled);
    }
    if !u.flags.has(lookup::UserFlags::V_OVERRIDE) {
        match dir.limits(&u.domain).await {
            Ok(Some(l)) if limit(&l) || l.expired(lookup::unix_now()) => {
                return Err(Refusal::Disabled)
            }
            Ok(_) => {}
            Err(e) if e.is_temporary() => return Err(Refusal::TempFail),
            Err(_) => {}
        }
    }
    Ok(u)
}

/// The mailstore of `user`: its `host_table` IP with the service's port, else the default
/// backend. `Ok(None)`: no mailstore and no default.
pub(crate) async fn mailstore(
    ctx: &ProxyContext,
    user: &lookup::User,
    service: Service,
) -> Result<Option<SocketAddr>, Refusal> {
    let (port, default) = match service {
        Service::Imap => (ctx.config.imap_port, ctx.config.default_imap_backend),
        Service::Pop3 => (ctx.config.pop3_port, ctx.config.default_pop3_backend),
        Service::Poppass => return Ok(None),
    };
    match directory(ctx, service).await?.host_of(&user.email()).await {
        Ok(Some(ms)) => match ms.ip.parse::<IpAddr>() {
            Ok(ip) => Ok(Some(SocketAddr::new(ip, port))),
            Err(_) => Err(Refusal::Unavailable),
        },
        Ok(None) => Ok(default),
        Err(e) if e.is_temporary() => Err(Refusal::TempFail),
        Err(_) => Err(Refusal::Unavailable),
    }
}

/// The directory, or [`Refusal::TempFail`] (logged) when it cannot be opened now.
async fn directory(ctx: &ProxyContext, service: Service) -> Result<Rc<lookup::Directory>, Refusal> {
    ctx.directory.directory().await.map_err(|e| {
        log_line(
            ctx,
            format_args!("{}: WARN: directory unavailable: {e}", service.name()),
        );
        Refusal::TempFail
    })
}

/// After a successful login: the relay row (POP/IMAP-before-SMTP) and the `lastauth` row,
/// written by a task of their own (the session does not wait for the database; a failure
/// is logged), and the log line.
pub(crate) async fn logged_in(
    ctx: &ProxyContext,
    user: &lookup::User,
    peer: SocketAddr,
    service: Service,
    mailstore: &str,
) {
    let (relay, lastauth) = (ctx.config.record_relay, ctx.config.record_lastauth);
    if relay || lastauth {
        let source = Rc::clone(&ctx.directory);
        let user = user.clone();
        let log = ctx.config.log;
        tokio::task::spawn_local(async move {
            let dir = match source.directory().await {
                Ok(d) => d,
                Err(e) => {
                    let text = format!("relay/lastauth rows not recorded: {e}");
                    return warn(log, service, &text);
                }
            };
            if relay {
                if let Err(e) = dir.record_relay(&user.email(), peer.ip()).await {
                    warn(log, service, &format!("relay row not recorded: {e}"));
                }
            }
            if lastauth {
                if let Err(e) = dir
                    .record_lastauth(&user, service.lastauth(), peer.ip())
                    .await
                {
                    warn(log, service, &format!("lastauth row not recorded: {e}"));
                }
            }
            // A login clears BOUNCE_MAIL (spec 4.7: the user can now free
            // space); still over quota, the next delivery sets it again.
            if user.flags.has(lookup::UserFlags::BOUNCE_MAIL) {
                if let Err(e) = dir.set_bounce_flag(&user.email(), false).await {
                    warn(log, service, &format!("BOUNCE_MAIL not cleared: {e}"));
                }
            }
        });
    }
    log_line(
        ctx,
        format_args!(
            "{}: INFO: LOGIN user={}, ip=[{}], mailstore=[{mailstore}]",
            service.name(),
            user.email(),
            peer.ip()
        ),
    );
}

fn warn(log: bool, service: Service, text: &str) {
    if log {
        control::log::line(format_args!("{}: WARN: {text}", service.name()));
    }
}

/// One log line on standard error, written whole (`<unix>.<micros> <text>`).
pub(crate) fn log_line(ctx: &ProxyContext, args: std::fmt::Arguments<'_>) {
    if ctx.config.log {
        control::log::line(args);
    }
}

/// The accept loop shared by every front end: one `spawn_local` task per connection, running
/// the front end's `session` (with `implicit_tls` for the TLS-first ports), until `stop`
/// resolves. Sessions already running are left to finish.
pub(crate) async fn accept_loop<F, Fut>(
    listener: shard::io::TcpListener,
    ctx: Rc<ProxyContext>,
    stop: impl Future<Output = ()>,
    name: &'static str,
    implicit_tls: bool,
    session: F,
) where
    F: Fn(shard::io::TcpStream, SocketAddr, Rc<ProxyContext>, bool) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            r = listener.accept() => match r {
                Ok((s, peer)) => {
                    // TCP_NODELAY is inherited from the listener (shard::io::bind_reuseport).
                    tokio::task::spawn_local(session(s, peer, Rc::clone(&ctx), implicit_tls));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the listener stays.
                    log_line(&ctx, format_args!("{name}: WARN: accept failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Helpers of the login cores' tests.
#[cfg(test)]
pub(crate) mod testing {
    /// What one call of a core's `feed` gave.
    pub(crate) enum Fed<E> {
        /// Read more.
        More,
        /// A reply; keep feeding.
        Reply(Vec<u8>),
        /// An event for the driver: stop here.
        Stop(E),
    }

    /// Feeds `input` `step` bytes at a time (as a socket might deliver it) through `feed`;
    /// returns the replies, the first event for the driver, and how many bytes were left.
    pub(crate) fn feed_in_steps<E>(
        input: &[u8],
        step: usize,
        mut feed: impl FnMut(&[u8]) -> (usize, Fed<E>),
    ) -> (Vec<u8>, Option<E>, usize) {
        let mut out = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut pos = 0;
        loop {
            let end = (pos + step).min(input.len());
            pending.extend_from_slice(&input[pos..end]);
            pos = end;
            loop {
                let (n, ev) = feed(&pending);
                pending.drain(..n);
                match ev {
                    Fed::More => break,
                    Fed::Reply(r) => out.extend_from_slice(&r),
                    Fed::Stop(e) => return (out, Some(e), input.len() - pos + pending.len()),
                }
            }
            if pos >= input.len() {
                return (out, None, pending.len());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_vars() {
        let vars = |k: &str| {
            match k {
                "DESTPORT" => Some("imap:1143"),
                "POP3_BACKEND" => Some("127.0.0.1:1110"),
                "LEGACY_SERVER" => Some("1"),
                "DATA_TIMEOUT" => Some("30"),
                _ => None,
            }
            .map(str::to_string)
        };
        let c = ProxyConfig::from_vars(vars).unwrap();
        assert_eq!(c.imap_port, 1143);
        assert_eq!(c.pop3_port, 110);
        assert_eq!(
            c.default_pop3_backend,
            Some("127.0.0.1:1110".parse().unwrap())
        );
        assert!(c.legacy_server);
        assert_eq!(c.idle_timeout, Duration::from_secs(30));
        let bad = |k: &str| {
            match k {
                "DESTPORT" => Some("smtp:25"),
                "BADLOGINS" => Some("x"),
                _ => None,
            }
            .map(str::to_string)
        };
        let both = |k: &str| (k == "DESTPORT").then(|| "imap:1143, pop3:1110".to_string());
        let c = ProxyConfig::from_vars(both).unwrap();
        assert_eq!((c.imap_port, c.pop3_port), (1143, 1110));
        let e = ProxyConfig::from_vars(bad).unwrap_err();
        assert_eq!(e.len(), 2);
        assert!(e[0].to_string().starts_with("$DESTPORT:"), "{}", e[0]);
        let nets = |k: &str| {
            (k == "PLAINTEXT_AUTH_NETS").then(|| "127.0.0.1, 10.1.0.0/16 ::1".to_string())
        };
        let c = ProxyConfig::from_vars(nets).unwrap();
        let ok = |ip: &str| c.plaintext_allowed(ip.parse().unwrap());
        assert!(ok("127.0.0.1") && ok("10.1.200.3") && ok("::1") && ok("::ffff:10.1.0.9"));
        assert!(!ok("127.0.0.2") && !ok("10.2.0.1") && !ok("::2"));
        assert!(!ProxyConfig::default().plaintext_allowed("127.0.0.1".parse().unwrap()));
        let all = |k: &str| (k == "PLAINTEXT_AUTH_NETS").then(|| "0.0.0.0/0".to_string());
        let c = ProxyConfig::from_vars(all).unwrap();
        assert!(c.plaintext_allowed("192.0.2.1".parse().unwrap()));
        let bad = |k: &str| (k == "PLAINTEXT_AUTH_NETS").then(|| "10.0.0.0/33".to_string());
        assert_eq!(ProxyConfig::from_vars(bad).unwrap_err().len(), 1);
    }
}

//! The per-shard directory handle: the query API the SMTP server, delivery and proxies use,
//! answered through the shard's [`Cache`].
//!
//! Staleness after an admin change made through this crate (which bumps `dir_changes`):
//! at most [`DirectoryConfig::change_poll`] plus one in-flight query, because each shard reads
//! the counter at most once per interval and invalidates everything when it moved. Changes
//! written to the tables by other tools (the original IndiMail C tools) are seen when the
//! entry's TTL runs out ([`crate::CachePolicy::positive_ttl`] / `negative_ttl`).
//!
//! With [`RefreshMode::Background`] (the default, for shards) stale-entry refreshes and the
//! change poll run as `spawn_local` tasks, so the handle must be used inside a
//! `tokio::task::LocalSet` — `shard::io::run` and `tokio_uring::start` provide one.
//! [`RefreshMode::Inline`] does that work in the caller instead (CLI tools, deterministic
//! tests).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::rc::Rc;

use tokio::sync::Notify;

use crate::cache::{Cache, CacheStats, Clock, Lookup, SystemClock, Ticket};
use crate::catchall::Handler;
use crate::config::DirectoryConfig;
use crate::db::Db;
use crate::home_memo::HomeMemo;
use crate::model::{
    normalize_domain, Address, AuthResult, LastAuth, Limits, MailStore, User, UserFlags, UserStatus,
};
use crate::sql::params;
use crate::{password, queries, LookupError};

/// Where background work runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshMode {
    /// Refreshes and change polls run as `spawn_local` tasks (needs a `LocalSet`).
    Background,
    /// Refreshes and change polls run in the calling future.
    Inline,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    User(String, String),
    Domain(String),
    Aliases(String, String),
    Host(String, String),
    Limits(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum UserEntry {
    Active(Rc<User>),
    Inactive(Rc<User>),
    AliasOnly,
    Missing,
}

/// A user's directory entry as it crosses from the shard that owns it (see [`UserHome`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedUser {
    /// In `indimail`.
    Active(User),
    /// In `indibak`.
    Inactive(User),
    /// No mailbox, but aliases exist.
    AliasOnly,
    /// Neither.
    Missing,
}

impl From<&UserEntry> for SharedUser {
    fn from(e: &UserEntry) -> SharedUser {
        match e {
            UserEntry::Active(u) => SharedUser::Active((**u).clone()),
            UserEntry::Inactive(u) => SharedUser::Inactive((**u).clone()),
            UserEntry::AliasOnly => SharedUser::AliasOnly,
            UserEntry::Missing => SharedUser::Missing,
        }
    }
}

impl From<SharedUser> for UserEntry {
    fn from(e: SharedUser) -> UserEntry {
        match e {
            SharedUser::Active(u) => UserEntry::Active(Rc::new(u)),
            SharedUser::Inactive(u) => UserEntry::Inactive(Rc::new(u)),
            SharedUser::AliasOnly => UserEntry::AliasOnly,
            SharedUser::Missing => UserEntry::Missing,
        }
    }
}

/// The future of a question to a user's home shard.
pub type HomeAnswer =
    std::pin::Pin<Box<dyn std::future::Future<Output = Option<Result<SharedUser, LookupError>>>>>;

/// Where user entries live when several shards share one directory: each user has a home
/// shard whose cache alone holds the entry (so the database is asked once per user and TTL
/// however many shards there are); the others ask it. Implemented by the server over its
/// shard mesh.
pub trait UserHome {
    /// `None` when this shard is the home of `user@domain` (look it up here); else the
    /// home shard's answer, which is itself `None` when the home cannot be reached (then
    /// this shard looks the user up itself rather than fail).
    fn ask(&self, user: &str, domain: &str) -> Option<HomeAnswer>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    User(UserEntry),
    Domain(Option<Rc<str>>),
    Aliases(Rc<[String]>),
    Host(Option<Rc<MailStore>>),
    Limits(Option<Rc<Limits>>),
}

impl Value {
    fn is_negative(&self) -> bool {
        match self {
            Value::User(u) => *u == UserEntry::Missing,
            Value::Domain(d) => d.is_none(),
            Value::Aliases(a) => a.is_empty(),
            Value::Host(h) => h.is_none(),
            Value::Limits(l) => l.is_none(),
        }
    }
}

#[derive(Default)]
struct Flight {
    done: Notify,
    result: RefCell<Option<Result<Value, LookupError>>>,
}

struct Inner {
    db: Db,
    cfg: DirectoryConfig,
    clock: Rc<dyn Clock>,
    mode: RefreshMode,
    cache: RefCell<Cache<Key, Value>>,
    flights: RefCell<HashMap<Key, Rc<Flight>>>,
    changes: Cell<Option<i64>>,
    last_poll: Cell<Option<u64>>,
    polling: Cell<bool>,
    home: RefCell<Option<Rc<dyn UserHome>>>,
    /// The home shards' recent answers.
    home_memo: HomeMemo<UserEntry>,
    /// User records fetched from the database by this shard (first fetches and refreshes).
    user_fetches: Cell<u64>,
}

/// Ends a flight even when the fetching future is dropped (a cancelled SMTP command): the
/// waiters are woken and, finding no result, retry.
struct FlightGuard {
    inner: Rc<Inner>,
    key: Key,
    flight: Rc<Flight>,
    armed: bool,
}

impl FlightGuard {
    fn finish(mut self, r: Result<Value, LookupError>) {
        *self.flight.result.borrow_mut() = Some(r);
        self.armed = false;
        self.release();
    }

    fn release(&self) {
        self.inner.flights.borrow_mut().remove(&self.key);
        self.flight.done.notify_waiters();
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if self.armed {
            self.inner.cache.borrow_mut().abort(&self.key);
            self.release();
        }
    }
}

/// Where mail for an address of a virtual domain goes ([`Directory::destination`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A user's mailbox; `ext` is what followed `user-` in the address (empty when the
    /// address named the user itself).
    User {
        /// The user.
        user: Rc<User>,
        /// The extension.
        ext: String,
    },
    /// valias lines (dot-qmail syntax).
    Aliases {
        /// The lines.
        lines: Vec<String>,
        /// The extension, as for `User`.
        ext: String,
    },
    /// No mailbox and no alias: the domain's unknown-user handler.
    CatchAll(Handler),
}

/// IndiMail consults a domain's vlimits only when its directory holds `.domain_limits` or
/// `DOMAIN_LIMITS` is set (vadduser, vchkpass, the proxies): a row alone changes nothing.
pub(crate) fn limits_in_force(domain_dir: &std::path::Path) -> bool {
    std::env::var_os("DOMAIN_LIMITS").is_some() || domain_dir.join(".domain_limits").exists()
}

/// A lookup of a local part the table cannot hold (too long, odd characters) finds nothing
/// rather than failing: such an address may still reach the domain's catch-all.
fn table_ok<T>(r: Result<T, LookupError>) -> Result<Option<T>, LookupError> {
    match r {
        Err(LookupError::InvalidAddress(_) | LookupError::FieldTooLong { .. }) => Ok(None),
        other => other.map(Some),
    }
}

/// The user an extension address belongs to: the local part before its first `-`
/// (vdelivermail with `QMAIL_EXT`), when extensions are on and there is one.
fn extension_user(local: &str, extensions: bool) -> Option<&str> {
    if !extensions {
        return None;
    }
    local
        .split_once('-')
        .map(|(u, _)| u)
        .filter(|u| !u.is_empty())
}

/// A shard's handle on the directory. `!Send`: one per shard.
pub struct Directory {
    inner: Rc<Inner>,
}

impl Directory {
    /// Open with the configuration of `home` (see [`DirectoryConfig::from_home`]).
    pub async fn open_home(home: &Path) -> Result<Directory, LookupError> {
        Directory::open(DirectoryConfig::from_home(home)?).await
    }

    /// Open with the system clock and background refresh.
    pub async fn open(cfg: DirectoryConfig) -> Result<Directory, LookupError> {
        Directory::open_with(
            cfg,
            Rc::new(SystemClock::default()),
            RefreshMode::Background,
        )
        .await
    }

    /// Open with an injected clock and refresh mode. Fails (temporarily) when the database
    /// cannot be reached; creates missing tables.
    pub async fn open_with(
        cfg: DirectoryConfig,
        clock: Rc<dyn Clock>,
        mode: RefreshMode,
    ) -> Result<Directory, LookupError> {
        let db = Db::open(&cfg, crate::mysql::Reads::Replica).await?;
        let changes = db.changes().await?;
        let inner = Rc::new(Inner {
            cache: RefCell::new(Cache::new(cfg.cache)),
            last_poll: Cell::new(Some(clock.now_ms())),
            db,
            cfg,
            clock,
            mode,
            flights: RefCell::new(HashMap::new()),
            changes: Cell::new(Some(changes)),
            polling: Cell::new(false),
            home: RefCell::new(None),
            home_memo: HomeMemo::new(),
            user_fetches: Cell::new(0),
        });
        Ok(Directory { inner })
    }

    /// The configuration in force.
    pub fn config(&self) -> &DirectoryConfig {
        &self.inner.cfg
    }

    /// CHECKRECIPIENT's question: does `email` exist, and in what state?
    /// Errors are temporary ([`crate::SmtpReply::TEMPFAIL`]); never answer 5xx on them.
    pub async fn user_status(&self, email: &str) -> Result<UserStatus, LookupError> {
        let addr = Address::parse(email)?;
        let Some(real) = self.real_domain(addr.domain()).await? else {
            return Ok(UserStatus::NotVirtualDomain);
        };
        Ok(match self.user_entry(addr.user(), &real).await? {
            UserEntry::Active(u) if u.flags.has(UserFlags::BOUNCE_MAIL) => UserStatus::OverQuota(u),
            UserEntry::Active(u) => UserStatus::Active(u),
            UserEntry::Inactive(u) => UserStatus::Inactive(u),
            UserEntry::AliasOnly => UserStatus::AliasOnly,
            UserEntry::Missing => UserStatus::NoSuchUser,
        })
    }

    /// Is `domain` (after alias-domain resolution) a virtual domain of this directory?
    pub async fn is_virtual_domain(&self, domain: &str) -> Result<bool, LookupError> {
        Ok(self.real_domain(domain).await?.is_some())
    }

    /// The real domain of `domain` (itself, or the target of an alias domain), or `None` when
    /// it is not a virtual domain.
    pub async fn real_domain(&self, domain: &str) -> Result<Option<String>, LookupError> {
        let d = normalize_domain(domain)?;
        match Inner::get(&self.inner, Key::Domain(d)).await? {
            Value::Domain(d) => Ok(d.map(|d| d.to_string())),
            _ => Err(LookupError::Corrupt("cache kind mismatch".into())),
        }
    }

    /// The user record (active or inactive), or `None`.
    pub async fn user(&self, email: &str) -> Result<Option<Rc<User>>, LookupError> {
        let addr = Address::parse(email)?;
        let Some(real) = self.real_domain(addr.domain()).await? else {
            return Ok(None);
        };
        Ok(match self.user_entry(addr.user(), &real).await? {
            UserEntry::Active(u) | UserEntry::Inactive(u) => Some(u),
            _ => None,
        })
    }

    async fn user_entry(&self, user: &str, domain: &str) -> Result<UserEntry, LookupError> {
        let home = self.inner.home.borrow().clone();
        if let Some(home) = home {
            let (memo, clock) = (&self.inner.home_memo, &self.inner.clock);
            if let Some(e) = memo.get(clock.now_ms(), user, domain) {
                return Ok(e);
            }
            let asked = memo.generation();
            if let Some(answer) = home.ask(user, domain) {
                if let Some(r) = answer.await {
                    let r = r.map(UserEntry::from);
                    if let Ok(e) = &r {
                        memo.put(asked, clock.now_ms(), user, domain, e.clone());
                    }
                    return r;
                }
            }
        }
        self.user_entry_here(user, domain).await
    }

    /// Routes user lookups to their home shards (see [`UserHome`]).
    pub fn set_user_home(&self, home: Rc<dyn UserHome>) {
        *self.inner.home.borrow_mut() = Some(home);
    }

    /// The entry of `user@domain` (domain already resolved to a real one) from this shard's
    /// cache or the database: what a home shard answers the others.
    pub async fn shared_user(&self, user: &str, domain: &str) -> Result<SharedUser, LookupError> {
        self.user_entry_here(user, domain)
            .await
            .map(|e| SharedUser::from(&e))
    }

    async fn user_entry_here(&self, user: &str, domain: &str) -> Result<UserEntry, LookupError> {
        match Inner::get(&self.inner, Key::User(user.into(), domain.into())).await? {
            Value::User(u) => Ok(u),
            _ => Err(LookupError::Corrupt("cache kind mismatch".into())),
        }
    }

    /// Check a LOGIN/PLAIN password. The hash runs on the blocking pool (it costs
    /// milliseconds of CPU that must not stall the shard).
    pub async fn check_password(
        &self,
        email: &str,
        password: &str,
    ) -> Result<AuthResult, LookupError> {
        let Some(user) = self.user(email).await? else {
            return Ok(AuthResult::NoSuchUser);
        };
        let stored = user.passwd.clone();
        let clear = password.to_string();
        let ok = tokio::task::spawn_blocking(move || password::verify(&stored, &clear))
            .await
            .map_err(|e| LookupError::Unavailable(format!("password check failed: {e}")))?;
        Ok(match (ok, user.active) {
            (false, _) => AuthResult::BadPassword,
            (true, true) => AuthResult::Ok(user),
            (true, false) => AuthResult::Inactive(user),
        })
    }

    /// The clear text kept for CRAM-MD5 (`{CRAM}` form), if the user has one.
    pub async fn cram_secret(&self, email: &str) -> Result<Option<String>, LookupError> {
        Ok(self
            .user(email)
            .await?
            .and_then(|u| u.cram_secret().map(str::to_string)))
    }

    /// The `scram` column (`{SCRAM-SHA-256}iter,salt,storedkey,serverkey[...]`), if set.
    pub async fn scram_secret(&self, email: &str) -> Result<Option<String>, LookupError> {
        Ok(self.user(email).await?.and_then(|u| u.scram.clone()))
    }

    /// valias lines of `email` (after alias-domain resolution).
    pub async fn aliases(&self, email: &str) -> Result<Vec<String>, LookupError> {
        let addr = Address::parse(email)?;
        let domain = self
            .real_domain(addr.domain())
            .await?
            .unwrap_or_else(|| addr.domain().to_string());
        match Inner::get(&self.inner, Key::Aliases(addr.user().into(), domain)).await? {
            Value::Aliases(a) => Ok(a.to_vec()),
            _ => Err(LookupError::Corrupt("cache kind mismatch".into())),
        }
    }

    /// The unknown-user handler of `domain` (after alias-domain resolution): the last
    /// argument of vdelivermail in its `.qmail-default` (spec 4.6); `None` when it is not a
    /// virtual domain. No file bounces (IndiMail's default). A file that cannot be read or
    /// parsed is an error naming it, which callers treat as temporary.
    pub async fn catch_all(&self, domain: &str) -> Result<Option<Handler>, LookupError> {
        let Some(real) = self.real_domain(domain).await? else {
            return Ok(None);
        };
        let path = self
            .inner
            .cfg
            .domains_dir
            .join(&real)
            .join(".qmail-default");
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                Handler::parse(&text)
                    .map(Some)
                    .map_err(|(line, reason)| LookupError::Config {
                        file: path,
                        line,
                        reason,
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some(Handler::Bounce)),
            Err(e) => Err(LookupError::io(&path, e)),
        }
    }

    /// The lines of the domain directory's `.qmail-<local>` (qmail-local's name: `.` in the
    /// local part becomes `:`), when it exists and holds any. A local part that could leave
    /// the directory (`/`, a leading `.`), is empty or is `default` is never looked up; an
    /// unreadable file is an error naming it (temporary for callers).
    async fn domain_dot_qmail(
        &self,
        domain: &str,
        local: &str,
    ) -> Result<Option<(Vec<String>, String)>, LookupError> {
        // `default` is the catch-all's own file (see `catch_all`).
        if local.is_empty()
            || local.contains('/')
            || local.starts_with('.')
            || local.eq_ignore_ascii_case("default")
        {
            return Ok(None);
        }
        let Some(real) = self.real_domain(domain).await? else {
            return Ok(None);
        };
        let dir = self.inner.cfg.domains_dir.join(&real);
        let local = local.to_ascii_lowercase().replace('.', ":");
        // qmail-local's order: `.qmail-a-b-c`, then `.qmail-a-b-default` (DEFAULT `c`), then
        // `.qmail-a-default` (DEFAULT `b-c`); `.qmail-default` is the catch-all's.
        let mut names = vec![(format!(".qmail-{local}"), String::new())];
        let mut cut = local.len();
        while let Some(i) = local[..cut].rfind('-') {
            if i > 0 {
                names.push((
                    format!(".qmail-{}-default", &local[..i]),
                    local[i + 1..].replace(':', "."),
                ));
            }
            cut = i;
        }
        for (name, ext) in names {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let lines: Vec<String> = text
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(str::to_string)
                        .collect();
                    return Ok((!lines.is_empty()).then_some((lines, ext)));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(LookupError::io(&path, e)),
            }
        }
        Ok(None)
    }

    /// CHECKRECIPIENT's question with vdelivermail's answers: [`Directory::user_status`] (an
    /// active mailbox is Active), else AliasOnly when the domain holds `.qmail-<local>`; then,
    /// for an address with no mailbox or alias, the user before the first `-` when
    /// `extensions` is on (`QMAIL_EXT`: `user-ext@domain` is `user`'s), then the domain's
    /// catch-all ([`UserStatus::CatchAll`] when its handler accepts the mail). A local part
    /// the table cannot hold (too long, odd characters) has no mailbox of its own but may
    /// still reach the catch-all.
    pub async fn recipient_status(
        &self,
        email: &str,
        extensions: bool,
    ) -> Result<UserStatus, LookupError> {
        let (local, domain) = email
            .trim()
            .rsplit_once('@')
            .ok_or_else(|| LookupError::InvalidAddress(email.to_string()))?;
        // Active needs no `.qmail-<local>` lookup: AliasOnly would be accepted alike, and
        // delivery reads that file anyway (`destination`). One file lookup fewer per RCPT.
        let status = table_ok(self.user_status(email).await);
        if let Ok(Some(active @ UserStatus::Active(_))) = status {
            return Ok(active);
        }
        if self.domain_dot_qmail(domain, local).await?.is_some() {
            return Ok(UserStatus::AliasOnly);
        }
        let status = status?.unwrap_or(UserStatus::NoSuchUser);
        if status != UserStatus::NoSuchUser {
            return Ok(status);
        }
        if let Some(user) = extension_user(local, extensions) {
            match table_ok(self.user_status(&format!("{user}@{domain}")).await)? {
                None | Some(UserStatus::NoSuchUser) => {}
                Some(other) => return Ok(other),
            }
        }
        Ok(match self.catch_all(domain).await? {
            Some(h) if h.accepts() => UserStatus::CatchAll(h),
            _ => UserStatus::NoSuchUser,
        })
    }

    /// Where mail for `email` goes, in vdelivermail's order (spec 4.6): the user's mailbox;
    /// with `extensions` (`QMAIL_EXT`), the mailbox of the user before the first `-`; the
    /// address's valias lines, then those of that user; else the domain's catch-all.
    /// `None` when the domain is not a virtual domain.
    pub async fn destination(
        &self,
        email: &str,
        extensions: bool,
    ) -> Result<Option<Destination>, LookupError> {
        let (local, domain) = email
            .trim()
            .rsplit_once('@')
            .ok_or_else(|| LookupError::InvalidAddress(email.to_string()))?;
        if self.real_domain(domain).await?.is_none() {
            return Ok(None);
        }
        let local = local.to_ascii_lowercase();
        // qmail-local reads the domain's `.qmail-<local>` before anything else
        // (vpopmail and IndiMail installations keep aliases and forwards there).
        if let Some((lines, ext)) = self.domain_dot_qmail(domain, &local).await? {
            return Ok(Some(Destination::Aliases { lines, ext }));
        }
        let ext_user = extension_user(&local, extensions);
        let mut candidates = vec![(local.as_str(), "")];
        if let Some(u) = ext_user {
            candidates.push((u, &local[u.len() + 1..]));
        }
        for (user, ext) in &candidates {
            // Only active mailboxes: vdelivermail reads the `indimail` table, so an inactive
            // user's mail (in `indibak`) goes on to the aliases and the catch-all.
            if let Some(UserStatus::Active(u) | UserStatus::OverQuota(u)) =
                table_ok(self.user_status(&format!("{user}@{domain}")).await)?
            {
                return Ok(Some(Destination::User {
                    user: u,
                    ext: ext.to_string(),
                }));
            }
        }
        for (user, ext) in &candidates {
            if let Some(lines) = table_ok(self.aliases(&format!("{user}@{domain}")).await)? {
                if !lines.is_empty() {
                    return Ok(Some(Destination::Aliases {
                        lines,
                        ext: ext.to_string(),
                    }));
                }
            }
        }
        Ok(self.catch_all(domain).await?.map(Destination::CatchAll))
    }

    /// The mail store holding `email` in a cluster (hostcntrl → host_table → smtp_port), or
    /// `None` when the domain is not clustered.
    pub async fn host_of(&self, email: &str) -> Result<Option<MailStore>, LookupError> {
        let addr = Address::parse(email)?;
        let domain = self
            .real_domain(addr.domain())
            .await?
            .unwrap_or_else(|| addr.domain().to_string());
        match Inner::get(&self.inner, Key::Host(addr.user().into(), domain)).await? {
            Value::Host(h) => Ok(h.map(|h| (*h).clone())),
            _ => Err(LookupError::Corrupt("cache kind mismatch".into())),
        }
    }

    /// POP/IMAP-before-SMTP: may `ip` relay (a relay row within `RELAY_CLEAR_MINUTES`)?
    /// Not cached: rows appear on every POP/IMAP login and must count at once.
    pub async fn relay_allowed(&self, ip: IpAddr) -> Result<bool, LookupError> {
        let window = i64::try_from(self.inner.cfg.relay_window.as_secs()).unwrap_or(i64::MAX);
        let since = self.inner.clock.unix_seconds().saturating_sub(window);
        queries::relay_allowed(&self.inner.db, &ip.to_string(), since).await
    }

    /// Set or clear the BOUNCE_MAIL flag of an active user: delivery sets it when the
    /// mailbox is over quota (RCPT then answers 552 5.2.2, server-wide once the other
    /// shards see the change), a login clears it. Returns whether a row changed.
    pub async fn set_bounce_flag(&self, email: &str, on: bool) -> Result<bool, LookupError> {
        let addr = Address::parse(email)?;
        let Some(real) = self.real_domain(addr.domain()).await? else {
            return Ok(false);
        };
        let bit = i64::from(UserFlags::BOUNCE_MAIL);
        let sql = if on {
            "UPDATE indimail SET pw_gid = pw_gid | ? WHERE pw_name = ? AND pw_domain = ? AND (pw_gid & ?) = 0"
        } else {
            "UPDATE indimail SET pw_gid = pw_gid & ~? WHERE pw_name = ? AND pw_domain = ? AND (pw_gid & ?) <> 0"
        };
        let changed = self
            .inner
            .db
            .on(real.as_str())
            .exec(sql, params![bit, addr.user(), real.as_str(), bit])
            .await?;
        if changed == 0 {
            return Ok(false);
        }
        self.changed().await?;
        Ok(true)
    }

    /// A user's own password change (poppassd): `new` hashed with the configured method as
    /// `user passwd` does, keeping the user's CRAM/SCRAM forms
    /// ([`password::changed_secrets`]); the change counter is bumped so every shard drops
    /// its cached record. Policy checks (`NO_PASSWD_CHNG`, inactive accounts, the old
    /// password) are the caller's. Returns whether a row changed (`false`: no such user).
    /// An unacceptable password (empty, too long, line breaks) is
    /// [`LookupError::InvalidPassword`] / [`LookupError::PasswordTooLong`].
    pub async fn set_password(&self, email: &str, new: &str) -> Result<bool, LookupError> {
        let addr = Address::parse(email)?;
        let Some(real) = self.real_domain(addr.domain()).await? else {
            return Ok(false);
        };
        // The row as stored now, not the cached copy (its CRAM/SCRAM forms decide ours).
        let Some(user) = queries::user(&self.inner.db, addr.user(), &real).await? else {
            return Ok(false);
        };
        let method = self.inner.cfg.hash_method;
        let (old, old_scram, clear) = (user.passwd.clone(), user.scram.clone(), new.to_string());
        let (stored, scram) = tokio::task::spawn_blocking(move || {
            password::changed_secrets(method, &old, old_scram.as_deref(), &clear)
        })
        .await
        .map_err(|e| LookupError::Unavailable(format!("password hashing failed: {e}")))??;
        let changed = queries::set_password(
            &self.inner.db,
            user.active,
            &user.name,
            &user.domain,
            &stored,
            scram.as_deref(),
        )
        .await?;
        if changed == 0 {
            return Ok(false);
        }
        self.changed().await?;
        Ok(true)
    }

    /// After a write of this handle: every shard's cache is told (the change counter) and
    /// this one's is dropped at once.
    async fn changed(&self) -> Result<(), LookupError> {
        self.inner.db.bump_changes().await?;
        self.inner.cache.borrow_mut().invalidate_all();
        self.inner.home_memo.clear();
        Ok(())
    }

    /// Record a successful POP/IMAP login from `ip` (what IndiMail's auth modules insert).
    pub async fn record_relay(&self, email: &str, ip: IpAddr) -> Result<(), LookupError> {
        let addr = Address::parse(email)?;
        let now = self.inner.clock.unix_seconds();
        self.inner
            .db
            .exec(
                "REPLACE INTO relay (email, ipaddr, timestamp) VALUES (?, ?, ?)",
                params![addr.to_string(), ip.to_string(), now],
            )
            .await
            .map(|_| ())
    }

    /// Record that `user` authenticated for `service` (`pop3`, `imap`, `webm`, at most 10
    /// characters) from `ip`: the `lastauth` row IndiMail's login tasks write (spec 6, "run
    /// login tasks"), one per user and service, replaced on each login. Not cached.
    pub async fn record_lastauth(
        &self,
        user: &User,
        service: &str,
        ip: IpAddr,
    ) -> Result<(), LookupError> {
        if service.is_empty() || service.len() > 10 {
            return Err(LookupError::FieldTooLong {
                field: "lastauth.service",
                max: 10,
            });
        }
        let now = self.inner.clock.unix_seconds();
        // The time comes from the directory's clock (not the database's), in the column's
        // native type: FROM_UNIXTIME and UNIX_TIMESTAMP agree in any session time zone, and
        // SQLite's `unixepoch` text is UTC like its CURRENT_TIMESTAMP.
        let ts = match self.inner.db.dialect() {
            crate::Dialect::Mysql => "FROM_UNIXTIME(?)",
            crate::Dialect::Sqlite => "datetime(?, 'unixepoch')",
        };
        self.inner
            .db
            .on(user.domain.as_str()).exec(
                &format!(
                    "REPLACE INTO lastauth (user, domain, service, remote_ip, quota, gecos, timestamp) \
                     VALUES (?, ?, ?, ?, 0, ?, {ts})"
                ),
                params![
                    &user.name,
                    &user.domain,
                    service,
                    ip.to_string(),
                    &user.gecos,
                    now
                ],
            )
            .await
            .map(|_| ())
    }

    /// The `lastauth` rows of `email` (one per service), oldest first. Not cached.
    pub async fn lastauth(&self, email: &str) -> Result<Vec<LastAuth>, LookupError> {
        let addr = Address::parse(email)?;
        let domain = self
            .real_domain(addr.domain())
            .await?
            .unwrap_or_else(|| addr.domain().to_string());
        let ts = match self.inner.db.dialect() {
            crate::Dialect::Mysql => "UNIX_TIMESTAMP(timestamp)",
            crate::Dialect::Sqlite => "CAST(strftime('%s', timestamp) AS INTEGER)",
        };
        Ok(self
            .inner
            .db
            .on(&domain)
            .query(
                &format!(
                    "SELECT service, remote_ip, {ts} FROM lastauth WHERE user = ? AND domain = ? \
                     ORDER BY 3, service"
                ),
                params![addr.user(), domain],
            )
            .await?
            .iter()
            .map(|r| LastAuth {
                service: r.text(0),
                remote_ip: r.text(1),
                time: r.int(2),
            })
            .collect())
    }

    /// The domains `email` may turn with ATRN (RFC 2645, IndiMail's ODMR): its `atrn_map`
    /// rows (`vatrn -i`). A `domain_list` may hold several domains separated by commas.
    /// Lower-cased, sorted, without duplicates. Not cached: asked once per ATRN, and
    /// a change must count at once.
    pub async fn atrn_domains(&self, email: &str) -> Result<Vec<String>, LookupError> {
        let addr = Address::parse(email)?;
        queries::atrn_domains(&self.inner.db, addr.user(), addr.domain()).await
    }

    /// The domain's `vlimits` row (domain or `user@domain`), after alias resolution, when
    /// limits are in force for it: `.domain_limits` in its directory (`domain mod --limits 1`,
    /// vmoddomain `-l 1`) or `DOMAIN_LIMITS` set, as in IndiMail. `None` otherwise.
    pub async fn limits(&self, domain_or_email: &str) -> Result<Option<Rc<Limits>>, LookupError> {
        let d = match domain_or_email.rsplit_once('@') {
            Some((_, d)) => d,
            None => domain_or_email,
        };
        let d = normalize_domain(d)?;
        let d = self.real_domain(&d).await?.unwrap_or(d);
        match Inner::get(&self.inner, Key::Limits(d)).await? {
            Value::Limits(l) => Ok(l),
            _ => Err(LookupError::Corrupt("cache kind mismatch".into())),
        }
    }

    /// Read the change counter now; invalidate the cache if it moved. Returns whether it did.
    pub async fn sync_changes(&self) -> Result<bool, LookupError> {
        self.inner.last_poll.set(Some(self.inner.clock.now_ms()));
        Inner::apply_changes(&self.inner).await
    }

    /// User records this shard fetched from the database (with user homes set, only for
    /// the users this shard is home to).
    pub fn user_queries(&self) -> u64 {
        self.inner.user_fetches.get()
    }

    /// Cache counters of this shard's directory (answers reused from a home shard count
    /// as hits).
    pub fn cache_stats(&self) -> CacheStats {
        let mut stats = self.inner.cache.borrow().stats();
        stats.hits += self.inner.home_memo.hits();
        stats
    }

    /// Drop every cached answer (inlookup's SIGHUP).
    pub fn clear_cache(&self) {
        self.inner.cache.borrow_mut().clear();
        self.inner.home_memo.clear();
    }

    /// Close database connections.
    pub async fn close(self) {
        if let Ok(inner) = Rc::try_unwrap(self.inner) {
            inner.db.close().await;
        }
    }
}

impl Inner {
    async fn get(this: &Rc<Inner>, key: Key) -> Result<Value, LookupError> {
        Inner::maybe_poll(this).await;
        loop {
            let now = this.clock.now_ms();
            let step = this.cache.borrow_mut().lookup(&key, now);
            match step {
                Lookup::Fresh(v) | Lookup::Stale(v, None) => return Ok(v),
                Lookup::Stale(v, Some(ticket)) => match this.mode {
                    RefreshMode::Background => {
                        let inner = Rc::clone(this);
                        let guard = Inner::start_flight(this, key.clone());
                        tokio::task::spawn_local(async move {
                            let _ = Inner::run_flight(&inner, guard, ticket, Some(v)).await;
                        });
                        // The value was cloned into the refresh task; answer from the flight's
                        // fallback path below by looking up again (still stale, no ticket).
                        continue;
                    }
                    RefreshMode::Inline => {
                        let guard = Inner::start_flight(this, key);
                        return Inner::run_flight(this, guard, ticket, Some(v)).await;
                    }
                },
                Lookup::Wait => {
                    let flight = this.flights.borrow().get(&key).cloned();
                    let Some(flight) = flight else {
                        // In flight in the policy but no handle: cannot happen; retry.
                        this.cache.borrow_mut().abort(&key);
                        continue;
                    };
                    let notified = flight.done.notified();
                    if let Some(r) = flight.result.borrow().clone() {
                        return r;
                    }
                    notified.await;
                    let r = flight.result.borrow().clone();
                    if let Some(r) = r {
                        return r;
                    }
                    // The leader was cancelled: try again (perhaps as the new leader).
                }
                Lookup::Fetch(ticket, fallback) => {
                    let guard = Inner::start_flight(this, key);
                    return Inner::run_flight(this, guard, ticket, fallback).await;
                }
            }
        }
    }

    fn start_flight(this: &Rc<Inner>, key: Key) -> FlightGuard {
        if matches!(key, Key::User(..)) {
            this.user_fetches.set(this.user_fetches.get() + 1);
        }
        let flight = Rc::new(Flight::default());
        this.flights
            .borrow_mut()
            .insert(key.clone(), Rc::clone(&flight));
        FlightGuard {
            inner: Rc::clone(this),
            key,
            flight,
            armed: true,
        }
    }

    async fn run_flight(
        this: &Rc<Inner>,
        guard: FlightGuard,
        ticket: Ticket,
        fallback: Option<Value>,
    ) -> Result<Value, LookupError> {
        let r = Inner::fetch(this, &guard.key).await;
        let r = match r {
            Ok(v) => {
                let neg = v.is_negative();
                this.cache.borrow_mut().complete(
                    guard.key.clone(),
                    ticket,
                    v.clone(),
                    neg,
                    this.clock.now_ms(),
                );
                Ok(v)
            }
            Err(e) => {
                let mut cache = this.cache.borrow_mut();
                cache.abort(&guard.key);
                match fallback {
                    Some(v) if e.is_temporary() => {
                        cache.note_fallback();
                        Ok(v)
                    }
                    _ => Err(e),
                }
            }
        };
        guard.finish(r.clone());
        r
    }

    async fn fetch(this: &Rc<Inner>, key: &Key) -> Result<Value, LookupError> {
        let db = &this.db;
        Ok(match key {
            Key::Domain(d) => Value::Domain(queries::real_domain(db, d).await?.map(Rc::from)),
            Key::User(u, d) => Value::User(match queries::user(db, u, d).await? {
                Some(user) if user.active => UserEntry::Active(Rc::new(user)),
                Some(user) => UserEntry::Inactive(Rc::new(user)),
                None if !queries::aliases(db, u, d).await?.is_empty() => UserEntry::AliasOnly,
                None => UserEntry::Missing,
            }),
            Key::Aliases(u, d) => Value::Aliases(queries::aliases(db, u, d).await?.into()),
            Key::Host(u, d) => Value::Host(queries::host_of(db, u, d).await?.map(Rc::new)),
            Key::Limits(d) if limits_in_force(&this.cfg.domains_dir.join(d)) => {
                Value::Limits(queries::limits(db, d).await?.map(Rc::new))
            }
            Key::Limits(_) => Value::Limits(None),
        })
    }

    async fn maybe_poll(this: &Rc<Inner>) {
        let now = this.clock.now_ms();
        let interval = u64::try_from(this.cfg.change_poll.as_millis()).unwrap_or(u64::MAX);
        let due = match this.last_poll.get() {
            Some(last) => now.saturating_sub(last) >= interval,
            None => true,
        };
        if !due || this.polling.get() {
            return;
        }
        this.last_poll.set(Some(now));
        match this.mode {
            RefreshMode::Inline => {
                let _ = Inner::apply_changes(this).await;
            }
            RefreshMode::Background => {
                let inner = Rc::clone(this);
                tokio::task::spawn_local(async move {
                    let _ = Inner::apply_changes(&inner).await;
                });
            }
        }
    }

    /// Read the counter; when it moved, invalidate. A failed read changes nothing (the cache
    /// keeps answering; see the module docs on outages).
    async fn apply_changes(this: &Rc<Inner>) -> Result<bool, LookupError> {
        this.polling.set(true);
        let r = this.db.changes().await;
        this.polling.set(false);
        let c = r?;
        if this.changes.get() == Some(c) {
            return Ok(false);
        }
        this.changes.set(Some(c));
        this.cache.borrow_mut().invalidate_all();
        this.home_memo.clear();
        Ok(true)
    }
}

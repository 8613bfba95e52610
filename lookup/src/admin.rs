//! Admin changes (vadddomain, vadduser, vpasswd, vmoduser, valias, hostcntrl, ...): each
//! writes the tables, the files IndiMail keeps beside them (domain dir, Maildir, control
//! files), then bumps the change counter so every shard's cache notices.
//!
//! Concurrent admin commands are not serialized against each other beyond what the database
//! does per statement (IndiMail's tools behave the same way).

use crate::catchall::{qmail_default_line, Handler};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::DirectoryConfig;
use crate::db::Db;
use crate::model::{
    bucket, normalize_domain, Address, Limits, MailStore, Quota, User, UserFlags, MAX_DIR_LEN,
    MAX_GECOS_LEN, MAX_VALIAS_LEN,
};
use crate::password::{self, HashMethod};
use crate::sql::params;
use crate::{queries, LookupError};

/// Users per directory level before hashing into subdirectories (spec 4.3).
pub const DEFAULT_USERS_PER_LEVEL: u64 = 100;
/// rcpthosts holds this many lines before new domains go to morercpthosts (vadddomain).
pub const RCPTHOSTS_MAX: usize = 50;
/// IndiMail's shipped hard quota (500 MiB).
pub const DEFAULT_HARD_QUOTA: u64 = 524_288_000;

const HASH_ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Options of `domain add`.
#[derive(Debug, Clone, Default)]
pub struct DomainOptions {
    /// `-l`: users per directory level (default 100).
    pub users_per_level: Option<u64>,
    /// `-B`: mailbox base for this domain (default `BASE_PATH`).
    pub base_path: Option<PathBuf>,
}

/// What `domain info` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInfo {
    /// Domain name.
    pub name: String,
    /// Its config dir (`<home>/domains/<domain>`).
    pub dir: PathBuf,
    /// Mailbox base.
    pub base_path: PathBuf,
    /// Users (active + inactive).
    pub users: u64,
    /// Users per level.
    pub users_per_level: u64,
    /// Alias domains pointing here.
    pub aliases: Vec<String>,
}

/// Options of `user add`.
#[derive(Debug, Clone, Default)]
pub struct UserOptions {
    /// `-q`.
    pub quota: Option<Quota>,
    /// `-c`.
    pub gecos: Option<String>,
    /// `-h`.
    pub hash: Option<HashMethod>,
    /// `-e`: store the given string verbatim (already encrypted).
    pub encrypted: bool,
    /// `-C`: keep the clear text for CRAM.
    pub cram: bool,
    /// `-m SCRAM-SHA-256`: also store a SCRAM secret.
    pub scram: Option<ScramOptions>,
    /// `-i`: create inactive (in `indibak`).
    pub inactive: bool,
    /// `-B`: mailbox base.
    pub base_path: Option<PathBuf>,
}

/// Options of a password change.
#[derive(Debug, Clone, Default)]
pub struct PasswordOptions {
    /// `-h`.
    pub hash: Option<HashMethod>,
    /// `-e`.
    pub encrypted: bool,
    /// `-C`.
    pub cram: bool,
    /// `-m SCRAM-SHA-256`: also store a SCRAM secret. Without it a password change clears the
    /// `scram` column, since a secret derived from the old password would still log in.
    pub scram: Option<ScramOptions>,
}

/// `-m SCRAM-SHA-256` (IndiMail's `vadduser`/`vpasswd`/`vmoduser`): store a SCRAM-SHA-256
/// secret ([`password::scram_sha256`]) in the `scram` column beside `pw_passwd`, for SMTP
/// AUTH SCRAM-SHA-256. Needs the clear-text password (not with `-e`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScramOptions {
    /// `-S`: the salt (these bytes); 16 random bytes when `None`.
    pub salt: Option<String>,
    /// `-I`: iteration count; [`password::SCRAM_DEFAULT_ITERATIONS`] when `None`.
    pub iterations: Option<u32>,
}

/// Changes of `user mod` (unset fields are left alone).
#[derive(Debug, Clone, Default)]
pub struct UserChange {
    /// New gecos.
    pub gecos: Option<String>,
    /// New quota.
    pub quota: Option<Quota>,
    /// Flag bits to set.
    pub set_flags: u32,
    /// Flag bits to clear.
    pub clear_flags: u32,
    /// Clear every flag first (`-x`).
    pub reset_flags: bool,
    /// Move between active and inactive (`-n`).
    pub toggle_active: bool,
    /// New password.
    pub password: Option<(String, PasswordOptions)>,
}

/// A hostcntrl row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    /// `pw_name` (`*` = domain default).
    pub user: String,
    /// `pw_domain`.
    pub domain: String,
    /// `host` (host id).
    pub host: String,
}

/// A cluster host: its `host_table` row, its `smtp_port` rows and how many `hostcntrl`
/// entries place users on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterHost {
    /// Host id.
    pub host: String,
    /// `host_table.ipaddr`.
    pub ip: String,
    /// `smtp_port` rows: (domain, src_host, port).
    pub ports: Vec<(String, String, u16)>,
    /// `hostcntrl` rows naming this host.
    pub users: u64,
}

/// The admin side of the directory: uncached, one database handle.
pub struct Admin {
    pub(crate) db: Db,
    cfg: DirectoryConfig,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LookupError + '_ {
    move |e| LookupError::io(path, e)
}

/// Rewrite a control file atomically (temp file, fsync, rename, fsync dir).
fn rewrite_lines(path: &Path, lines: &[String]) -> Result<(), LookupError> {
    let mut text = Vec::new();
    for l in lines {
        text.extend_from_slice(l.as_bytes());
        text.push(b'\n');
    }
    rewrite_file(path, &text)
}

/// Replace a file atomically and durably (temp file, fsync, rename, fsync dir).
pub(crate) fn rewrite_file(path: &Path, bytes: &[u8]) -> Result<(), LookupError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tmp = path.with_extension("tmp-indimail-rs");
    {
        let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// vmoduser `-l`: installs `message` as the mailbox's vacation reply
/// (`<home>/.vacation.msg`, owned like the home so delivery can read it) or,
/// with `None`, removes it and the record of senders already answered.
pub(crate) fn set_vacation(home: &Path, message: Option<&[u8]>) -> Result<(), LookupError> {
    let path = home.join(".vacation.msg");
    match message {
        Some(m) => {
            rewrite_file(&path, m)?;
            let md = std::fs::metadata(home).map_err(io_err(home))?;
            use std::os::unix::fs::MetadataExt;
            std::os::unix::fs::chown(&path, Some(md.uid()), Some(md.gid())).map_err(io_err(&path))
        }
        None => {
            for p in [path, home.join(".vacation.dir")] {
                let r = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                match r {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(LookupError::io(&p, e)),
                }
            }
            Ok(())
        }
    }
}

fn read_lines(path: &Path) -> Result<Vec<String>, LookupError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(LookupError::io(path, e)),
    }
}

fn read_value(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The `<hashdir>` for the `n`-th user (0-based) of a domain: none for the first
/// `per_level` users, then one directory per `per_level` users named from the 62-character
/// alphabet, one to three levels deep (`x`, `x/y`, `x/y/z`).
pub fn hash_dir(n: u64, per_level: u64) -> Option<String> {
    let per_level = per_level.max(1);
    let slot = n / per_level;
    if slot == 0 {
        return None;
    }
    let mut k = slot - 1;
    let a = |i: u64| HASH_ALPHABET[(i % 62) as usize] as char;
    if k < 62 {
        return Some(a(k).to_string());
    }
    k -= 62;
    if k < 62 * 62 {
        return Some(format!("{}/{}", a(k / 62), a(k)));
    }
    k -= 62 * 62;
    Some(format!("{}/{}/{}", a(k / 3844), a(k / 62), a(k)))
}

fn make_maildir(home: &Path) -> Result<(), LookupError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let maildir = home.join("Maildir");
    // New directories take the owner of the nearest one that exists: an
    // admin command run as root inside a home the server's (unprivileged)
    // user owns must not leave it mailboxes it cannot write (IndiMail's
    // tools chown to the indimail user the same way).
    let mut created = Vec::new();
    let mut owner = None;
    for a in maildir.ancestors() {
        match std::fs::metadata(a) {
            Ok(m) => {
                owner = Some((m.uid(), m.gid()));
                break;
            }
            Err(_) => created.push(a.to_path_buf()),
        }
    }
    for sub in ["cur", "new", "tmp"] {
        let p = maildir.join(sub);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&p)
            .map_err(io_err(&p))?;
    }
    if let Some((uid, gid)) = owner {
        created.extend(["cur", "new", "tmp"].map(|s| maildir.join(s)));
        for p in &created {
            let differs = std::fs::metadata(p).is_ok_and(|m| m.uid() != uid || m.gid() != gid);
            if differs {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(io_err(p))?;
            }
        }
    }
    // Make the new directory entries durable (admin answered "done").
    for p in [maildir.as_path(), home, home.parent().unwrap_or(home)] {
        std::fs::File::open(p)
            .and_then(|d| d.sync_all())
            .map_err(io_err(p))?;
    }
    Ok(())
}

fn check_gecos(g: &str) -> Result<(), LookupError> {
    if g.len() > MAX_GECOS_LEN {
        return Err(LookupError::FieldTooLong {
            field: "gecos",
            max: MAX_GECOS_LEN,
        });
    }
    Ok(())
}

impl Admin {
    /// Open the store of `cfg` (creating missing tables).
    pub async fn open(cfg: DirectoryConfig) -> Result<Admin, LookupError> {
        let db = Db::open(&cfg, crate::mysql::Reads::Master).await?;
        Ok(Admin { db, cfg })
    }

    /// The configuration in force.
    pub fn config(&self) -> &DirectoryConfig {
        &self.cfg
    }

    /// Close the connection.
    pub async fn close(self) {
        self.db.close().await;
    }

    fn domain_dir(&self, domain: &str) -> PathBuf {
        self.cfg.domains_dir.join(domain)
    }

    fn domain_base(&self, domain: &str) -> PathBuf {
        read_value(&self.domain_dir(domain).join(".base_path"))
            .map(PathBuf::from)
            .unwrap_or_else(|| self.cfg.base_path.clone())
    }

    fn users_per_level(&self, domain: &str) -> u64 {
        read_value(&self.domain_dir(domain).join(".users_per_level"))
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(DEFAULT_USERS_PER_LEVEL)
    }

    async fn require_domain(&self, domain: &str) -> Result<String, LookupError> {
        let d = normalize_domain(domain)?;
        if queries::domain_exists(&self.db, &d).await? {
            Ok(d)
        } else {
            Err(LookupError::DomainNotFound(d))
        }
    }

    fn add_control(&self, domain: &str, target: &str) -> Result<(), LookupError> {
        let ctl = &self.cfg.control_dir;
        let rcpt = ctl.join("rcpthosts");
        let more = ctl.join("morercpthosts");
        let mut r = read_lines(&rcpt)?;
        let mut m = read_lines(&more)?;
        if !r.iter().chain(m.iter()).any(|l| l == domain) {
            if r.len() < RCPTHOSTS_MAX {
                r.push(domain.to_string());
                rewrite_lines(&rcpt, &r)?;
            } else {
                m.push(domain.to_string());
                rewrite_lines(&more, &m)?;
            }
        }
        let vd = ctl.join("virtualdomains");
        let mut v = read_lines(&vd)?;
        let prefix = format!("{domain}:");
        v.retain(|l| !l.starts_with(&prefix));
        v.push(format!("{domain}:{target}"));
        rewrite_lines(&vd, &v)
    }

    fn remove_control(&self, domain: &str) -> Result<(), LookupError> {
        let ctl = &self.cfg.control_dir;
        for name in ["rcpthosts", "morercpthosts"] {
            let p = ctl.join(name);
            let mut l = read_lines(&p)?;
            let before = l.len();
            l.retain(|x| x != domain);
            if l.len() != before {
                rewrite_lines(&p, &l)?;
            }
        }
        let vd = ctl.join("virtualdomains");
        let mut v = read_lines(&vd)?;
        let prefix = format!("{domain}:");
        let before = v.len();
        v.retain(|l| !l.starts_with(&prefix));
        if v.len() != before {
            rewrite_lines(&vd, &v)?;
        }
        Ok(())
    }

    /// vadddomain: domain dir with `.qmail-default`, `dir_control` row, rcpthosts /
    /// morercpthosts and virtualdomains entries.
    pub async fn domain_add(
        &self,
        domain: &str,
        opts: &DomainOptions,
    ) -> Result<DomainInfo, LookupError> {
        let d = normalize_domain(domain)?;
        if queries::domain_exists(&self.db, &d).await? {
            return Err(LookupError::DomainExists(d));
        }
        if !self
            .db
            .query("SELECT alias FROM aliasdomain WHERE alias = ?", params![&d])
            .await?
            .is_empty()
        {
            return Err(LookupError::AliasDomainExists(d));
        }
        let dir = self.domain_dir(&d);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let write = |name: &str, content: String| -> Result<(), LookupError> {
            let p = dir.join(name);
            std::fs::write(&p, content).map_err(io_err(&p))
        };
        write(
            ".qmail-default",
            qmail_default_line("bounce-no-mailbox") + "\n",
        )?;
        if let Some(n) = opts.users_per_level {
            write(".users_per_level", format!("{}\n", n.max(1)))?;
        }
        if let Some(b) = &opts.base_path {
            write(".base_path", format!("{}\n", b.display()))?;
        }
        self.db
            .on(&d)
            .exec(
                "INSERT INTO dir_control (domain, the_dir) VALUES (?, ?)",
                params![&d, ""],
            )
            .await?;
        self.add_control(&d, &d)?;
        self.db.bump_changes().await?;
        self.domain_info(&d).await
    }

    /// vaddaliasdomain: `alias` delivers to the users of `real`.
    pub async fn alias_domain_add(&self, alias: &str, real: &str) -> Result<(), LookupError> {
        let a = normalize_domain(alias)?;
        let r = self.require_domain(real).await?;
        if queries::domain_exists(&self.db, &a).await? {
            return Err(LookupError::DomainExists(a));
        }
        if !self
            .db
            .query("SELECT alias FROM aliasdomain WHERE alias = ?", params![&a])
            .await?
            .is_empty()
        {
            return Err(LookupError::AliasDomainExists(a));
        }
        self.db
            .exec(
                "INSERT INTO aliasdomain (alias, domain) VALUES (?, ?)",
                params![&a, &r],
            )
            .await?;
        self.add_control(&a, &r)?;
        self.db.bump_changes().await
    }

    /// vdeldomain: every user, alias, limit, host row and alias domain of the domain, its
    /// mailboxes, its config dir and its control-file lines.
    pub async fn domain_del(&self, domain: &str) -> Result<(), LookupError> {
        let d = normalize_domain(domain)?;
        if !queries::domain_exists(&self.db, &d).await? {
            // Deleting an alias domain by name is allowed too.
            let n = self
                .db
                .exec("DELETE FROM aliasdomain WHERE alias = ?", params![&d])
                .await?;
            if n == 0 {
                return Err(LookupError::DomainNotFound(d));
            }
            self.remove_control(&d)?;
            return self.db.bump_changes().await;
        }
        let base = self.domain_base(&d);
        for sql in [
            "DELETE FROM indimail WHERE pw_domain = ?",
            "DELETE FROM indibak WHERE pw_domain = ?",
            "DELETE FROM valias WHERE domain = ?",
            "DELETE FROM hostcntrl WHERE pw_domain = ?",
            "DELETE FROM smtp_port WHERE domain = ?",
            "DELETE FROM lastauth WHERE domain = ?",
            "DELETE FROM userquota WHERE domain = ?",
            "DELETE FROM vlimits WHERE domain = ?",
            "DELETE FROM dir_control WHERE domain = ?",
        ] {
            self.db.on(&d).exec(sql, params![&d]).await?;
        }
        let aliases: Vec<String> = self
            .db
            .query(
                "SELECT alias FROM aliasdomain WHERE domain = ?",
                params![&d],
            )
            .await?
            .iter()
            .map(|r| r.text(0))
            .collect();
        self.db
            .exec("DELETE FROM aliasdomain WHERE domain = ?", params![&d])
            .await?;
        for a in &aliases {
            self.remove_control(a)?;
        }
        self.remove_control(&d)?;
        for b in ["A2E", "F2K", "L2P", "Q2S", "T2Zsym"] {
            let p = base.join(b).join(&d);
            match std::fs::remove_dir_all(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(LookupError::io(p, e)),
            }
        }
        let dir = self.domain_dir(&d);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LookupError::io(dir, e)),
        }
        self.db.bump_changes().await
    }

    /// Virtual domains, sorted.
    pub async fn domain_list(&self) -> Result<Vec<String>, LookupError> {
        let mut domains: Vec<String> = self
            .db
            .query_everywhere("SELECT domain FROM dir_control ORDER BY domain", vec![])
            .await?
            .iter()
            .map(|r| r.text(0))
            .collect();
        if self.db.routes_domains() {
            domains.sort();
            domains.dedup();
        }
        Ok(domains)
    }

    /// vdominfo.
    pub async fn domain_info(&self, domain: &str) -> Result<DomainInfo, LookupError> {
        let d = self.require_domain(domain).await?;
        let mut users = 0u64;
        for t in ["indimail", "indibak"] {
            let rows = self
                .db
                .on(&d)
                .query(
                    &format!("SELECT COUNT(*) FROM {t} WHERE pw_domain = ?"),
                    params![&d],
                )
                .await?;
            users += rows
                .first()
                .map(|r| u64::try_from(r.int(0)).unwrap_or(0))
                .unwrap_or(0);
        }
        let aliases = self
            .db
            .query(
                "SELECT alias FROM aliasdomain WHERE domain = ? ORDER BY alias",
                params![&d],
            )
            .await?
            .iter()
            .map(|r| r.text(0))
            .collect();
        Ok(DomainInfo {
            dir: self.domain_dir(&d),
            base_path: self.domain_base(&d),
            users,
            users_per_level: self.users_per_level(&d),
            aliases,
            name: d,
        })
    }

    /// `pw_passwd` and `scram` column values for a new password.
    fn stored_secrets(
        &self,
        password: &str,
        hash: Option<HashMethod>,
        encrypted: bool,
        cram: bool,
        scram: Option<&ScramOptions>,
    ) -> Result<(String, Option<String>), LookupError> {
        let scram = match scram {
            None => None,
            Some(_) if encrypted => {
                return Err(LookupError::InvalidPassword(
                    "a SCRAM secret needs the clear-text password (not an encrypted one)".into(),
                ))
            }
            Some(o) => Some(password::scram_sha256(
                password,
                o.salt.as_deref().map(str::as_bytes),
                o.iterations.unwrap_or(password::SCRAM_DEFAULT_ITERATIONS),
            )?),
        };
        Ok((
            self.stored_password(password, hash, encrypted, cram)?,
            scram,
        ))
    }

    fn stored_password(
        &self,
        password: &str,
        hash: Option<HashMethod>,
        encrypted: bool,
        cram: bool,
    ) -> Result<String, LookupError> {
        if encrypted {
            if password.len() > crate::model::MAX_PASSWD_LEN {
                return Err(LookupError::PasswordTooLong {
                    max: crate::model::MAX_PASSWD_LEN,
                });
            }
            if password.is_empty() || password.contains(['\0', '\n']) {
                return Err(LookupError::InvalidPassword("bad encrypted string".into()));
            }
            return Ok(password.to_string());
        }
        password::stored_form(hash.unwrap_or(self.cfg.hash_method), password, cram)
    }

    /// The domain's vlimits row when limits are in force for it (`.domain_limits`,
    /// `DOMAIN_LIMITS`), as vadduser and valias consult it.
    async fn limits_in_force(&self, domain: &str) -> Result<Option<Limits>, LookupError> {
        if crate::directory::limits_in_force(&self.domain_dir(domain)) {
            queries::limits(&self.db, domain).await
        } else {
            Ok(None)
        }
    }

    async fn count(&self, sql: &str, domain: &str) -> Result<i64, LookupError> {
        let rows = self.db.on(domain).query(sql, params![domain]).await?;
        Ok(rows.first().map(|r| r.int(0)).unwrap_or(0))
    }

    async fn default_quota(&self, domain: &str) -> Result<Quota, LookupError> {
        if let Some(l) = self.limits_in_force(domain).await? {
            if l.defaultquota > 0 {
                return Ok(Quota::Limit {
                    bytes: u64::try_from(l.defaultquota).unwrap_or(0),
                    count: (l.defaultmaxmsgcount > 0)
                        .then(|| u64::try_from(l.defaultmaxmsgcount).unwrap_or(0)),
                });
            }
        }
        if let Ok(q) = std::env::var("HARD_QUOTA") {
            if !q.is_empty() {
                return Quota::parse(&q);
            }
        }
        Ok(Quota::Limit {
            bytes: DEFAULT_HARD_QUOTA,
            count: None,
        })
    }

    /// vadduser: row in `indimail` (or `indibak` with `inactive`), home directory with
    /// `Maildir/{cur,new,tmp}`, `dir_control` count, `lastauth` "add" row.
    pub async fn user_add(
        &self,
        email: &str,
        password: &str,
        opts: &UserOptions,
    ) -> Result<User, LookupError> {
        let addr = Address::parse(email)?;
        let domain = self.require_domain(addr.domain()).await?;
        let addr = addr.with_domain(&domain);
        if queries::user(&self.db, addr.user(), &domain)
            .await?
            .is_some()
        {
            return Err(LookupError::UserExists(addr.to_string()));
        }
        if let Some(l) = self.limits_in_force(&domain).await? {
            if l.maxpopaccounts >= 0 {
                let mut n = 0;
                for t in ["indimail", "indibak"] {
                    n += self
                        .count(
                            &format!("SELECT COUNT(*) FROM {t} WHERE pw_domain = ?"),
                            &domain,
                        )
                        .await?;
                }
                if n >= l.maxpopaccounts {
                    return Err(LookupError::Refused(format!(
                        "{domain} has reached its limit of {} mailboxes (vlimit -P)",
                        l.maxpopaccounts
                    )));
                }
            }
        }
        let gecos = opts
            .gecos
            .clone()
            .unwrap_or_else(|| addr.user().to_string());
        check_gecos(&gecos)?;
        let (stored, scram) = self.stored_secrets(
            password,
            opts.hash,
            opts.encrypted,
            opts.cram,
            opts.scram.as_ref(),
        )?;
        let quota = match opts.quota {
            Some(q) => q,
            None => self.default_quota(&domain).await?,
        };
        let cur_users = self
            .db
            .on(&domain)
            .query(
                "SELECT cur_users FROM dir_control WHERE domain = ?",
                params![&domain],
            )
            .await?
            .first()
            .map(|r| u64::try_from(r.int(0)).unwrap_or(0))
            .unwrap_or(0);
        let base = opts
            .base_path
            .clone()
            .unwrap_or_else(|| self.domain_base(&domain));
        let mut dir = base.join(bucket(addr.user())).join(&domain);
        if let Some(h) = hash_dir(cur_users, self.users_per_level(&domain)) {
            dir = dir.join(h);
        }
        let dir = dir.join(addr.user());
        let dir_s = dir.to_string_lossy().into_owned();
        if dir_s.len() > MAX_DIR_LEN {
            return Err(LookupError::FieldTooLong {
                field: "home directory",
                max: MAX_DIR_LEN,
            });
        }
        let existed = dir.exists();
        make_maildir(&dir)?;
        let table = if opts.inactive { "indibak" } else { "indimail" };
        let insert = self
            .db
            .on(&domain).exec(
                &format!(
                    "INSERT INTO {table} (pw_name, pw_domain, pw_passwd, pw_uid, pw_gid, pw_gecos, pw_dir, pw_shell, scram) \
                     VALUES (?, ?, ?, 1, 0, ?, ?, ?, ?)"
                ),
                params![addr.user(), &domain, &stored, &gecos, &dir_s, quota.to_column(), scram],
            )
            .await;
        if let Err(e) = insert {
            if !existed {
                let _ = std::fs::remove_dir_all(&dir);
            }
            return Err(e);
        }
        self.db
            .on(&domain)
            .exec(
                "UPDATE dir_control SET cur_users = cur_users + 1 WHERE domain = ?",
                params![&domain],
            )
            .await?;
        self.lastauth(addr.user(), &domain, "add", &gecos).await?;
        self.db.bump_changes().await?;
        self.user_info(&addr.to_string()).await
    }

    async fn lastauth(
        &self,
        user: &str,
        domain: &str,
        service: &str,
        gecos: &str,
    ) -> Result<(), LookupError> {
        self.db
            .on(domain).exec(
                "REPLACE INTO lastauth (user, domain, service, remote_ip, quota, gecos) VALUES (?, ?, ?, ?, 0, ?)",
                params![user, domain, service, "127.0.0.1", gecos],
            )
            .await
            .map(|_| ())
    }

    async fn find_user(&self, email: &str) -> Result<(Address, User), LookupError> {
        let addr = Address::parse(email)?;
        let domain = queries::real_domain(&self.db, addr.domain())
            .await?
            .ok_or_else(|| LookupError::DomainNotFound(addr.domain().to_string()))?;
        let addr = addr.with_domain(&domain);
        match queries::user(&self.db, addr.user(), &domain).await? {
            Some(u) => Ok((addr, u)),
            None => Err(LookupError::UserNotFound(addr.to_string())),
        }
    }

    /// vuserinfo.
    pub async fn user_info(&self, email: &str) -> Result<User, LookupError> {
        self.find_user(email).await.map(|(_, u)| u)
    }

    /// vdeluser: rows (user, aliases, hostcntrl, lastauth, userquota) and home directory.
    pub async fn user_del(&self, email: &str) -> Result<(), LookupError> {
        let (addr, user) = self.find_user(email).await?;
        let (u, d) = (addr.user(), addr.domain());
        for sql in [
            "DELETE FROM indimail WHERE pw_name = ? AND pw_domain = ?",
            "DELETE FROM indibak WHERE pw_name = ? AND pw_domain = ?",
            "DELETE FROM valias WHERE alias = ? AND domain = ?",
            "DELETE FROM hostcntrl WHERE pw_name = ? AND pw_domain = ?",
            "DELETE FROM lastauth WHERE user = ? AND domain = ?",
            "DELETE FROM userquota WHERE user = ? AND domain = ?",
        ] {
            self.db.on(d).exec(sql, params![u, d]).await?;
        }
        self.db
            .on(d).exec(
                "UPDATE dir_control SET cur_users = cur_users - 1 WHERE domain = ? AND cur_users > 0",
                params![d],
            )
            .await?;
        // Only remove a home that lies under a mailbox base we manage: pw_dir comes from the
        // database and must not make us delete arbitrary paths.
        if user.dir.components().count() > 2 && user.dir.ends_with(u) {
            match std::fs::remove_dir_all(&user.dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(LookupError::io(&user.dir, e)),
            }
        }
        self.db.bump_changes().await
    }

    /// vpasswd.
    pub async fn user_passwd(
        &self,
        email: &str,
        password: &str,
        opts: PasswordOptions,
    ) -> Result<(), LookupError> {
        let (addr, user) = self.find_user(email).await?;
        let (stored, scram) = self.stored_secrets(
            password,
            opts.hash,
            opts.encrypted,
            opts.cram,
            opts.scram.as_ref(),
        )?;
        queries::set_password(
            &self.db,
            user.active,
            addr.user(),
            addr.domain(),
            &stored,
            scram.as_deref(),
        )
        .await?;
        self.lastauth(addr.user(), addr.domain(), "pass", &user.gecos)
            .await?;
        self.db.bump_changes().await
    }

    /// vsetuserquota.
    pub async fn set_quota(&self, email: &str, quota: Quota) -> Result<(), LookupError> {
        self.user_mod(
            email,
            &UserChange {
                quota: Some(quota),
                ..UserChange::default()
            },
        )
        .await
        .map(|_| ())
    }

    /// vmoduser.
    pub async fn user_mod(&self, email: &str, change: &UserChange) -> Result<User, LookupError> {
        let (addr, user) = self.find_user(email).await?;
        let (u, d) = (addr.user(), addr.domain());
        let mut table = if user.active { "indimail" } else { "indibak" };
        if change.toggle_active {
            let other = if user.active { "indibak" } else { "indimail" };
            self.db
                .on(d).exec(
                    &format!(
                        "INSERT INTO {other} (pw_name, pw_domain, pw_passwd, pw_uid, pw_gid, pw_gecos, pw_dir, pw_shell, scram) \
                         SELECT pw_name, pw_domain, pw_passwd, pw_uid, pw_gid, pw_gecos, pw_dir, pw_shell, scram \
                         FROM {table} WHERE pw_name = ? AND pw_domain = ?"
                    ),
                    params![u, d],
                )
                .await?;
            self.db
                .on(d)
                .exec(
                    &format!("DELETE FROM {table} WHERE pw_name = ? AND pw_domain = ?"),
                    params![u, d],
                )
                .await?;
            let service = if user.active { "INAC" } else { "ACTI" };
            self.lastauth(u, d, service, &user.gecos).await?;
            table = other;
        }
        if let Some(g) = &change.gecos {
            check_gecos(g)?;
            self.db
                .on(d)
                .exec(
                    &format!("UPDATE {table} SET pw_gecos = ? WHERE pw_name = ? AND pw_domain = ?"),
                    params![g, u, d],
                )
                .await?;
        }
        if let Some(q) = change.quota {
            self.db
                .on(d)
                .exec(
                    &format!("UPDATE {table} SET pw_shell = ? WHERE pw_name = ? AND pw_domain = ?"),
                    params![q.to_column(), u, d],
                )
                .await?;
        }
        if change.reset_flags || change.set_flags != 0 || change.clear_flags != 0 {
            let base = if change.reset_flags { 0 } else { user.flags.0 };
            let flags = (base | change.set_flags) & !change.clear_flags;
            self.db
                .on(d)
                .exec(
                    &format!("UPDATE {table} SET pw_gid = ? WHERE pw_name = ? AND pw_domain = ?"),
                    params![flags, u, d],
                )
                .await?;
        }
        if let Some((pw, opts)) = &change.password {
            let (stored, scram) = self.stored_secrets(
                pw,
                opts.hash,
                opts.encrypted,
                opts.cram,
                opts.scram.as_ref(),
            )?;
            self.db
                .on(d).exec(
                    &format!(
                        "UPDATE {table} SET pw_passwd = ?, scram = ? WHERE pw_name = ? AND pw_domain = ?"
                    ),
                    params![&stored, scram, u, d],
                )
                .await?;
        }
        self.db.bump_changes().await?;
        self.user_info(&addr.to_string()).await
    }

    /// A page of users ordered by (domain, name), after `after`; for streaming listings.
    pub async fn user_page(
        &self,
        domain: Option<&str>,
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> Result<Vec<User>, LookupError> {
        let d = match domain {
            Some(d) => Some(self.require_domain(d).await?),
            None => None,
        };
        let (ad, an) = after.unwrap_or(("", ""));
        let mut out = Vec::new();
        // Active and inactive users are merged by key so pages stay ordered.
        for (table, active) in [("indimail", true), ("indibak", false)] {
            let (filter, p) = match &d {
                Some(d) => ("pw_domain = ? AND pw_name > ?", params![d.as_str(), an]),
                None => (
                    "(pw_domain > ? OR (pw_domain = ? AND pw_name > ?))",
                    params![ad, ad, an],
                ),
            };
            let sql = format!(
                "SELECT {} FROM {table} WHERE {filter} ORDER BY pw_domain, pw_name LIMIT {limit}",
                queries::USER_COLUMNS
            );
            let rows = match &d {
                Some(d) => self.db.on(d).query(&sql, p).await?,
                None => self.db.query_everywhere(&sql, p).await?,
            };
            out.extend(rows.iter().map(|r| queries::user_from_row(r, active)));
        }
        out.sort_by(|a, b| (&a.domain, &a.name).cmp(&(&b.domain, &b.name)));
        out.truncate(limit as usize);
        Ok(out)
    }

    /// valias -i: add an alias line for `email` (the domain must be virtual).
    pub async fn alias_add(&self, email: &str, line: &str) -> Result<(), LookupError> {
        let addr = Address::parse(email)?;
        let d = self.require_domain(addr.domain()).await?;
        let line = line.trim();
        if line.is_empty() || line.contains(['\n', '\0']) {
            return Err(LookupError::InvalidAddress(line.to_string()));
        }
        if line.len() > MAX_VALIAS_LEN {
            return Err(LookupError::FieldTooLong {
                field: "alias line",
                max: MAX_VALIAS_LEN,
            });
        }
        if queries::aliases(&self.db, addr.user(), &d)
            .await?
            .iter()
            .any(|l| l == line)
        {
            return Err(LookupError::AliasExists(addr.to_string()));
        }
        if let Some(l) = self
            .limits_in_force(&d)
            .await?
            .filter(|l| l.maxaliases >= 0)
        {
            let new_alias = queries::aliases(&self.db, addr.user(), &d)
                .await?
                .is_empty();
            let n = self
                .count(
                    "SELECT COUNT(DISTINCT alias) FROM valias WHERE domain = ?",
                    &d,
                )
                .await?;
            if new_alias && n >= l.maxaliases {
                return Err(LookupError::Refused(format!(
                    "{d} has reached its limit of {} aliases (vlimit -A)",
                    l.maxaliases
                )));
            }
        }
        self.db
            .on(&d)
            .exec(
                "INSERT INTO valias (alias, domain, valias_line) VALUES (?, ?, ?)",
                params![addr.user(), &d, line],
            )
            .await?;
        self.db.bump_changes().await
    }

    /// valias -d: delete one line, or all lines with `None`.
    pub async fn alias_del(&self, email: &str, line: Option<&str>) -> Result<(), LookupError> {
        let addr = Address::parse(email)?;
        let d = self.require_domain(addr.domain()).await?;
        let n = match line {
            Some(l) => {
                self.db
                    .on(&d)
                    .exec(
                        "DELETE FROM valias WHERE alias = ? AND domain = ? AND valias_line = ?",
                        params![addr.user(), &d, l.trim()],
                    )
                    .await?
            }
            None => {
                self.db
                    .on(&d)
                    .exec(
                        "DELETE FROM valias WHERE alias = ? AND domain = ?",
                        params![addr.user(), &d],
                    )
                    .await?
            }
        };
        if n == 0 {
            return Err(LookupError::AliasNotFound(addr.to_string()));
        }
        self.db.bump_changes().await
    }

    /// valias -s: `(address, line)` pairs of one address or of a whole domain.
    pub async fn alias_list(
        &self,
        email_or_domain: &str,
    ) -> Result<Vec<(String, String)>, LookupError> {
        let rows = match email_or_domain.rsplit_once('@') {
            Some(_) => {
                let addr = Address::parse(email_or_domain)?;
                let d = self.require_domain(addr.domain()).await?;
                self.db
                    .on(&d).query(
                        "SELECT alias, domain, valias_line FROM valias WHERE alias = ? AND domain = ? ORDER BY valias_line",
                        params![addr.user(), &d],
                    )
                    .await?
            }
            None => {
                let d = self.require_domain(email_or_domain).await?;
                self.db
                    .on(&d).query(
                        "SELECT alias, domain, valias_line FROM valias WHERE domain = ? ORDER BY alias, valias_line",
                        params![&d],
                    )
                    .await?
            }
        };
        Ok(rows
            .iter()
            .map(|r| (format!("{}@{}", r.text(0), r.text(1)), r.text(2)))
            .collect())
    }

    fn host_key(&self, email: &str) -> Result<(String, String), LookupError> {
        // `*@domain` is the domain default row.
        match email.rsplit_once('@') {
            Some(("*", d)) => Ok(("*".to_string(), normalize_domain(d)?)),
            _ => {
                let a = Address::parse(email)?;
                Ok((a.user().to_string(), a.domain().to_string()))
            }
        }
    }

    /// hostcntrl -i: place `email` (or `*@domain`) on `host`.
    pub async fn hostcntrl_add(&self, email: &str, host: &str) -> Result<(), LookupError> {
        let (u, d) = self.host_key(email)?;
        let exists = !self
            .db
            .query(
                "SELECT host FROM hostcntrl WHERE pw_name = ? AND pw_domain = ?",
                params![&u, &d],
            )
            .await?
            .is_empty();
        if exists {
            return Err(LookupError::HostExists(format!("{u}@{d}")));
        }
        self.db
            .exec(
                "INSERT INTO hostcntrl (pw_name, pw_domain, pw_passwd, host) VALUES (?, ?, ?, ?)",
                params![&u, &d, "", host],
            )
            .await?;
        self.db.bump_changes().await
    }

    /// hostcntrl -m: move to another host.
    pub async fn hostcntrl_mod(&self, email: &str, host: &str) -> Result<(), LookupError> {
        let (u, d) = self.host_key(email)?;
        let n = self
            .db
            .exec(
                "UPDATE hostcntrl SET host = ? WHERE pw_name = ? AND pw_domain = ?",
                params![host, &u, &d],
            )
            .await?;
        // MySQL counts changed rows, not matched ones: a move to the same host is 0.
        let found = n > 0
            || !self
                .db
                .query(
                    "SELECT host FROM hostcntrl WHERE pw_name = ? AND pw_domain = ?",
                    params![&u, &d],
                )
                .await?
                .is_empty();
        if !found {
            return Err(LookupError::HostNotFound(format!("{u}@{d}")));
        }
        self.db.bump_changes().await
    }

    /// hostcntrl -d.
    pub async fn hostcntrl_del(&self, email: &str) -> Result<(), LookupError> {
        let (u, d) = self.host_key(email)?;
        let n = self
            .db
            .exec(
                "DELETE FROM hostcntrl WHERE pw_name = ? AND pw_domain = ?",
                params![&u, &d],
            )
            .await?;
        if n == 0 {
            return Err(LookupError::HostNotFound(format!("{u}@{d}")));
        }
        self.db.bump_changes().await
    }

    /// hostcntrl -s/-l: rows, of one domain or all.
    pub async fn hostcntrl_list(
        &self,
        domain: Option<&str>,
    ) -> Result<Vec<HostEntry>, LookupError> {
        let rows = match domain {
            Some(d) => {
                self.db
                    .query(
                        "SELECT pw_name, pw_domain, host FROM hostcntrl WHERE pw_domain = ? ORDER BY pw_name",
                        params![normalize_domain(d)?],
                    )
                    .await?
            }
            None => {
                self.db
                    .query(
                        "SELECT pw_name, pw_domain, host FROM hostcntrl ORDER BY pw_domain, pw_name",
                        vec![],
                    )
                    .await?
            }
        };
        Ok(rows
            .iter()
            .map(|r| HostEntry {
                user: r.text(0),
                domain: r.text(1),
                host: r.text(2),
            })
            .collect())
    }

    /// vhostid -i: map a host id to an IP (host_table).
    pub async fn host_set(&self, host: &str, ip: std::net::IpAddr) -> Result<(), LookupError> {
        self.db
            .exec(
                "REPLACE INTO host_table (host, ipaddr) VALUES (?, ?)",
                params![host, ip.to_string()],
            )
            .await?;
        self.db.bump_changes().await
    }

    /// vhostid -d.
    pub async fn host_del(&self, host: &str) -> Result<(), LookupError> {
        let n = self
            .db
            .exec("DELETE FROM host_table WHERE host = ?", params![host])
            .await?;
        if n == 0 {
            return Err(LookupError::HostNotFound(host.to_string()));
        }
        self.db.bump_changes().await
    }

    /// The hosts of the cluster (`host_table`), with their SMTP ports and user counts, by
    /// host id. Host ids named only by `hostcntrl` or `smtp_port` (no address yet) are
    /// listed too, with an empty address.
    pub async fn cluster_hosts(&self) -> Result<Vec<ClusterHost>, LookupError> {
        use std::collections::BTreeMap;
        fn host(hosts: &mut BTreeMap<String, ClusterHost>, h: String) -> &mut ClusterHost {
            hosts.entry(h.clone()).or_insert_with(|| ClusterHost {
                host: h,
                ip: String::new(),
                ports: Vec::new(),
                users: 0,
            })
        }
        let mut hosts = BTreeMap::new();
        for r in self
            .db
            .query("SELECT host, ipaddr FROM host_table", vec![])
            .await?
        {
            host(&mut hosts, r.text(0)).ip = r.text(1);
        }
        for r in self
            .db
            .query(
                "SELECT host, domain, src_host, port FROM smtp_port ORDER BY domain, src_host",
                vec![],
            )
            .await?
        {
            let port = u16::try_from(r.int(3)).unwrap_or(0);
            host(&mut hosts, r.text(0))
                .ports
                .push((r.text(1), r.text(2), port));
        }
        for r in self
            .db
            .query("SELECT host, COUNT(*) FROM hostcntrl GROUP BY host", vec![])
            .await?
        {
            host(&mut hosts, r.text(0)).users = u64::try_from(r.int(1)).unwrap_or(0);
        }
        Ok(hosts.into_values().collect())
    }

    /// Remove a host from the cluster: its `smtp_port` rows and its `host_table` row.
    /// Refused while `hostcntrl` still places users on it, unless `force` (their mail would
    /// then defer: the relay cannot resolve the host).
    pub async fn cluster_host_del(&self, host: &str, force: bool) -> Result<(), LookupError> {
        let users = self
            .db
            .query(
                "SELECT COUNT(*) FROM hostcntrl WHERE host = ?",
                params![host],
            )
            .await?
            .first()
            .map(|r| u64::try_from(r.int(0)).unwrap_or(0))
            .unwrap_or(0);
        if users > 0 && !force {
            return Err(LookupError::HostInUse(host.to_string(), users));
        }
        let ports = self
            .db
            .exec("DELETE FROM smtp_port WHERE host = ?", params![host])
            .await?;
        let rows = self
            .db
            .exec("DELETE FROM host_table WHERE host = ?", params![host])
            .await?;
        if ports + rows == 0 {
            return Err(LookupError::HostNotFound(host.to_string()));
        }
        self.db.bump_changes().await
    }

    /// Place `email` (or `*@domain`) on `host`, adding or changing its `hostcntrl` row
    /// (hostcntrl -i or -m). The host must be in `host_table`, so that mail and logins
    /// never follow a row to nowhere. Returns the previous host, if any.
    pub async fn cluster_move(
        &self,
        email: &str,
        host: &str,
    ) -> Result<Option<String>, LookupError> {
        let known = !self
            .db
            .query(
                "SELECT ipaddr FROM host_table WHERE host = ?",
                params![host],
            )
            .await?
            .is_empty();
        if !known {
            return Err(LookupError::HostNotFound(host.to_string()));
        }
        let (u, d) = self.host_key(email)?;
        let before = self
            .db
            .query(
                "SELECT host FROM hostcntrl WHERE pw_name = ? AND pw_domain = ?",
                params![&u, &d],
            )
            .await?
            .first()
            .map(|r| r.text(0));
        match &before {
            Some(h) if h == host => {}
            Some(_) => self.hostcntrl_mod(email, host).await?,
            None => self.hostcntrl_add(email, host).await?,
        }
        Ok(before)
    }

    /// Where mail and logins for `email` go (HOST_QUERY, uncached): the mailstore from
    /// hostcntrl → host_table → smtp_port, or `None` when no row places the user.
    pub async fn mailstore_of(&self, email: &str) -> Result<Option<MailStore>, LookupError> {
        let a = Address::parse(email)?;
        queries::host_of(&self.db, a.user(), a.domain()).await
    }

    /// vsmtp -i/-u: SMTP port of `host` for `domain` (`src_host` `*` = any sender).
    pub async fn smtp_port_set(
        &self,
        domain: &str,
        host: &str,
        src_host: &str,
        port: u16,
    ) -> Result<(), LookupError> {
        let d = normalize_domain(domain)?;
        self.db
            .exec(
                "REPLACE INTO smtp_port (host, src_host, domain, port) VALUES (?, ?, ?, ?)",
                params![host, src_host, &d, i64::from(port)],
            )
            .await?;
        self.db.bump_changes().await
    }

    /// vsmtp -d: remove the SMTP port row of `host` for `domain` and `src_host`.
    pub async fn smtp_port_del(
        &self,
        domain: &str,
        host: &str,
        src_host: &str,
    ) -> Result<(), LookupError> {
        let d = normalize_domain(domain)?;
        let n = self
            .db
            .exec(
                "DELETE FROM smtp_port WHERE domain = ? AND host = ? AND src_host = ?",
                params![&d, host, src_host],
            )
            .await?;
        if n == 0 {
            return Err(LookupError::HostNotFound(format!(
                "{host}@{d} ({src_host})"
            )));
        }
        self.db.bump_changes().await
    }

    /// vlimit: set a domain's limits row.
    pub async fn limits_set(&self, limits: &Limits) -> Result<(), LookupError> {
        let d = self.require_domain(&limits.domain).await?;
        let b = |v: bool| i64::from(v);
        self.db
            .on(&d).exec(
                "REPLACE INTO vlimits (domain, domain_expiry, passwd_expiry, maxpopaccounts, maxaliases, \
                 maxforwards, maxautoresponders, maxmailinglists, diskquota, maxmsgcount, defaultquota, \
                 defaultmaxmsgcount, disable_pop, disable_imap, disable_dialup, disable_passwordchanging, \
                 disable_webmail, disable_relay, disable_smtp, perm_account, perm_alias, perm_forward, \
                 perm_autoresponder, perm_maillist, perm_quota, perm_defaultquota) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                params![
                    &d,
                    limits.domain_expiry,
                    limits.passwd_expiry,
                    limits.maxpopaccounts,
                    limits.maxaliases,
                    limits.maxforwards,
                    limits.maxautoresponders,
                    limits.maxmailinglists,
                    limits.diskquota,
                    limits.maxmsgcount,
                    limits.defaultquota,
                    limits.defaultmaxmsgcount,
                    b(limits.disable_pop),
                    b(limits.disable_imap),
                    b(limits.disable_dialup),
                    b(limits.disable_passwordchanging),
                    b(limits.disable_webmail),
                    b(limits.disable_relay),
                    b(limits.disable_smtp),
                    limits.perm_account,
                    limits.perm_alias,
                    limits.perm_forward,
                    limits.perm_autoresponder,
                    limits.perm_maillist,
                    limits.perm_quota,
                    limits.perm_defaultquota
                ],
            )
            .await?;
        self.db.bump_changes().await
    }

    /// vatrn -i: `email` may turn `domain` with ATRN (an `atrn_map` row).
    pub async fn atrn_add(&self, email: &str, domain: &str) -> Result<(), LookupError> {
        let a = Address::parse(email)?;
        let d = normalize_domain(domain)?;
        if d.len() > 67 {
            return Err(LookupError::FieldTooLong {
                field: "atrn_map.domain_list",
                max: 67,
            });
        }
        let exists = !self
            .db
            .on(a.domain()).query(
                "SELECT domain_list FROM atrn_map WHERE pw_name = ? AND pw_domain = ? AND domain_list = ?",
                params![a.user(), a.domain(), &d],
            )
            .await?
            .is_empty();
        if exists {
            return Err(LookupError::AtrnMapExists(format!("{a} {d}")));
        }
        self.db
            .on(a.domain())
            .exec(
                "INSERT INTO atrn_map (pw_name, pw_domain, domain_list) VALUES (?, ?, ?)",
                params![a.user(), a.domain(), &d],
            )
            .await?;
        self.db.bump_changes().await
    }

    /// vatrn -d: remove one domain of `email`, or all of them when `domain` is `None`.
    pub async fn atrn_del(&self, email: &str, domain: Option<&str>) -> Result<(), LookupError> {
        let a = Address::parse(email)?;
        let n = match domain {
            Some(d) => {
                let d = normalize_domain(d)?;
                self.db
                    .on(a.domain()).exec(
                        "DELETE FROM atrn_map WHERE pw_name = ? AND pw_domain = ? AND domain_list = ?",
                        params![a.user(), a.domain(), &d],
                    )
                    .await?
            }
            None => {
                self.db
                    .on(a.domain())
                    .exec(
                        "DELETE FROM atrn_map WHERE pw_name = ? AND pw_domain = ?",
                        params![a.user(), a.domain()],
                    )
                    .await?
            }
        };
        if n == 0 {
            return Err(LookupError::AtrnMapNotFound(match domain {
                Some(d) => format!("{a} {d}"),
                None => a.to_string(),
            }));
        }
        self.db.bump_changes().await
    }

    /// vatrn -u old -i new: replace one domain of `email`.
    pub async fn atrn_update(&self, email: &str, old: &str, new: &str) -> Result<(), LookupError> {
        self.atrn_del(email, Some(old)).await?;
        self.atrn_add(email, new).await
    }

    /// vatrn -s: `(user@domain, domain)` rows of one address, or all, sorted.
    pub async fn atrn_list(
        &self,
        email: Option<&str>,
    ) -> Result<Vec<(String, String)>, LookupError> {
        let rows = match email {
            Some(e) => {
                let a = Address::parse(e)?;
                self.db
                    .on(a.domain())
                    .query(
                        "SELECT pw_name, pw_domain, domain_list FROM atrn_map \
                         WHERE pw_name = ? AND pw_domain = ? ORDER BY domain_list",
                        params![a.user(), a.domain()],
                    )
                    .await?
            }
            None => {
                self.db
                    .query_everywhere(
                        "SELECT pw_name, pw_domain, domain_list FROM atrn_map \
                         ORDER BY pw_domain, pw_name, domain_list",
                        vec![],
                    )
                    .await?
            }
        };
        let mut maps: Vec<(String, String, String)> = rows
            .iter()
            .map(|r| (r.text(1), r.text(0), r.text(2)))
            .collect();
        if self.db.routes_domains() {
            maps.sort();
        }
        Ok(maps
            .into_iter()
            .map(|(domain, name, list)| (format!("{name}@{domain}"), list))
            .collect())
    }

    /// Set or clear the BOUNCE_MAIL flag (delivery does this when a mailbox goes over quota
    /// and the user frees space).
    pub async fn set_bounce_flag(&self, email: &str, on: bool) -> Result<(), LookupError> {
        let (set, clear) = if on {
            (UserFlags::BOUNCE_MAIL, 0)
        } else {
            (0, UserFlags::BOUNCE_MAIL)
        };
        self.user_mod(
            email,
            &UserChange {
                set_flags: set,
                clear_flags: clear,
                ..UserChange::default()
            },
        )
        .await
        .map(|_| ())
    }
}

/// Changes of `domain mod` (vmoddomain); unset fields are left alone.
#[derive(Debug, Clone, Default)]
pub struct DomainChange {
    /// `-l 1|0`: the domain's limits are (not) in force (`.domain_limits` in its dir).
    pub limits: Option<bool>,
    /// `-h`: what vdelivermail does with mail for unknown users (`.qmail-default`).
    pub handler: Option<String>,
}

/// What `domain mod` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSettings {
    /// Domain name.
    pub name: String,
    /// `.domain_limits` exists.
    pub limits: bool,
    /// vdelivermail's instruction for unknown users.
    pub handler: String,
}

/// A user `user expire` found: address and last authentication (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleUser {
    /// user@domain
    pub email: String,
    /// Newest `lastauth` row of any service (`add` counts: new users are not stale).
    pub last: i64,
}

/// Now as Unix seconds (admin commands use the system clock).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The unknown-user instruction in a `.qmail-default` (see [`crate::catchall`]).
fn handler_of(qmail_default: &str) -> String {
    match Handler::parse(qmail_default) {
        Ok(h) => h.instruction(),
        Err((line, e)) => format!("unreadable (line {line}: {e})"),
    }
}

fn check_handler(h: &str) -> Result<(), LookupError> {
    Handler::parse_instruction(h)
        .map(|_| ())
        .map_err(LookupError::Refused)
}

fn rename_path(from: &Path, to: &Path) -> Result<(), LookupError> {
    if to.exists() {
        return Err(LookupError::Refused(format!(
            "{} exists already",
            to.display()
        )));
    }
    if let Some(p) = to.parent() {
        std::fs::create_dir_all(p).map_err(io_err(p))?;
    }
    std::fs::rename(from, to).map_err(io_err(from))
}

/// `dir` with its `<bucket>/<old>` component pair renamed to `<bucket>/<new>` (spec 4.3),
/// and the directory pair that has to move; `None` when the path is not of that form.
fn renamed_domain_dir(dir: &Path, old: &str, new: &str) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let parts: Vec<_> = dir.components().collect();
    let i = (1..parts.len()).find(|&i| {
        parts[i].as_os_str() == old
            && ["A2E", "F2K", "L2P", "Q2S", "T2Zsym"]
                .iter()
                .any(|b| parts[i - 1].as_os_str() == *b)
    })?;
    let from: PathBuf = parts[..=i].iter().collect();
    let to = from.with_file_name(new);
    let rest: PathBuf = parts[i + 1..].iter().collect();
    Some((to.join(rest), from, to))
}

impl Admin {
    /// vlimit -s: the domain's `vlimits` row, `None` when it has none (defaults apply).
    pub async fn limits_get(&self, domain: &str) -> Result<Option<Limits>, LookupError> {
        let d = self.require_domain(domain).await?;
        queries::limits(&self.db, &d).await
    }

    /// vlimit -d: remove the domain's `vlimits` row (back to the defaults).
    pub async fn limits_del(&self, domain: &str) -> Result<(), LookupError> {
        let d = self.require_domain(domain).await?;
        let n = self
            .db
            .on(&d)
            .exec("DELETE FROM vlimits WHERE domain = ?", params![&d])
            .await?;
        if n == 0 {
            return Err(LookupError::LimitsNotFound(d));
        }
        self.db.bump_changes().await
    }

    /// The home a new user `user` of `domain` gets (spec 4.3), as `user add` computes it.
    async fn new_home(&self, user: &str, domain: &str) -> Result<PathBuf, LookupError> {
        let cur_users = self
            .db
            .on(domain)
            .query(
                "SELECT cur_users FROM dir_control WHERE domain = ?",
                params![domain],
            )
            .await?
            .first()
            .map(|r| u64::try_from(r.int(0)).unwrap_or(0))
            .unwrap_or(0);
        let mut dir = self.domain_base(domain).join(bucket(user)).join(domain);
        if let Some(h) = hash_dir(cur_users, self.users_per_level(domain)) {
            dir = dir.join(h);
        }
        let dir = dir.join(user);
        if dir.to_string_lossy().len() > MAX_DIR_LEN {
            return Err(LookupError::FieldTooLong {
                field: "home directory",
                max: MAX_DIR_LEN,
            });
        }
        Ok(dir)
    }

    /// vrenameuser: the user gets the new name (and domain), keeping password, SCRAM secret,
    /// flags, gecos, quota and active state; the home directory moves to where a new user
    /// of that name would live; alias, hostcntrl, lastauth and userquota rows follow.
    pub async fn user_rename(&self, old: &str, new: &str) -> Result<User, LookupError> {
        let (oa, user) = self.find_user(old).await?;
        let na = Address::parse(new)?;
        // An alias domain stands for its real domain, as in `user add`'s lookups.
        let nd = queries::real_domain(&self.db, na.domain())
            .await?
            .ok_or_else(|| LookupError::DomainNotFound(na.domain().to_string()))?;
        let na = na.with_domain(&nd);
        if na == oa {
            return Err(LookupError::Refused(format!("{oa} is already its name")));
        }
        if !self.db.same_server(oa.domain(), &nd) {
            return Err(LookupError::Refused(format!(
                "{oa} and {na} are kept on different database servers (control/mcdinfo)"
            )));
        }
        if queries::user(&self.db, na.user(), &nd).await?.is_some() {
            return Err(LookupError::UserExists(na.to_string()));
        }
        let new_dir = self.new_home(na.user(), &nd).await?;
        // Move the mailbox first: if that fails nothing has changed yet.
        let moved = user.dir.exists();
        if moved {
            rename_path(&user.dir, &new_dir)?;
        } else {
            make_maildir(&new_dir)?;
        }
        let table = if user.active { "indimail" } else { "indibak" };
        let (ou, od, nu) = (oa.user(), oa.domain(), na.user());
        let dir_s = new_dir.to_string_lossy().into_owned();
        let r = self
            .db
            .on(od).exec(
                &format!(
                    "UPDATE {table} SET pw_name = ?, pw_domain = ?, pw_dir = ? WHERE pw_name = ? AND pw_domain = ?"
                ),
                params![nu, &nd, &dir_s, ou, od],
            )
            .await;
        if let Err(e) = r {
            if moved {
                let _ = std::fs::rename(&new_dir, &user.dir);
            }
            return Err(e);
        }
        for (t, uc, dc) in [
            ("valias", "alias", "domain"),
            ("hostcntrl", "pw_name", "pw_domain"),
            ("lastauth", "user", "domain"),
            ("userquota", "user", "domain"),
            ("atrn_map", "pw_name", "pw_domain"),
        ] {
            self.db
                .on(od)
                .exec(
                    &format!("UPDATE {t} SET {uc} = ?, {dc} = ? WHERE {uc} = ? AND {dc} = ?"),
                    params![nu, &nd, ou, od],
                )
                .await?;
        }
        if od != nd {
            self.db
                .on(od).exec(
                    "UPDATE dir_control SET cur_users = cur_users - 1 WHERE domain = ? AND cur_users > 0",
                    params![od],
                )
                .await?;
            self.db
                .on(&nd)
                .exec(
                    "UPDATE dir_control SET cur_users = cur_users + 1 WHERE domain = ?",
                    params![&nd],
                )
                .await?;
        }
        self.db.bump_changes().await?;
        self.user_info(&na.to_string()).await
    }

    /// vrenamedomain: every row of the domain, its users' homes (`<bucket>/<old>` becomes
    /// `<bucket>/<new>`), its config dir and its control-file lines take the new name; alias
    /// domains follow.
    pub async fn domain_rename(&self, old: &str, new: &str) -> Result<DomainInfo, LookupError> {
        let od = self.require_domain(old).await?;
        let nd = normalize_domain(new)?;
        if !self.db.same_server(&od, &nd) {
            return Err(LookupError::Refused(format!(
                "{od} and {nd} are kept on different database servers: give {nd} the same \
                 server in control/mcdinfo (dbinfo -i) first"
            )));
        }
        if queries::domain_exists(&self.db, &nd).await? {
            return Err(LookupError::DomainExists(nd));
        }
        if !self
            .db
            .query(
                "SELECT alias FROM aliasdomain WHERE alias = ?",
                params![&nd],
            )
            .await?
            .is_empty()
        {
            return Err(LookupError::AliasDomainExists(nd));
        }
        let new_cfg = self.domain_dir(&nd);
        if new_cfg.exists() {
            return Err(LookupError::Refused(format!(
                "{} exists already",
                new_cfg.display()
            )));
        }
        // Homes to move, and each user's new pw_dir.
        let mut moves: Vec<(PathBuf, PathBuf)> = Vec::new();
        let mut dirs: Vec<(&str, String, String)> = Vec::new();
        for table in ["indimail", "indibak"] {
            let rows = self
                .db
                .on(&od)
                .query(
                    &format!("SELECT pw_name, pw_dir FROM {table} WHERE pw_domain = ?"),
                    params![&od],
                )
                .await?;
            for r in &rows {
                let dir = PathBuf::from(r.text(1));
                if let Some((nd_dir, from, to)) = renamed_domain_dir(&dir, &od, &nd) {
                    if !moves.iter().any(|(f, _)| f == &from) {
                        moves.push((from, to));
                    }
                    dirs.push((table, r.text(0), nd_dir.to_string_lossy().into_owned()));
                }
            }
        }
        for (_, to) in &moves {
            if to.exists() {
                return Err(LookupError::Refused(format!(
                    "{} exists already",
                    to.display()
                )));
            }
        }
        for (t, c) in [
            ("indimail", "pw_domain"),
            ("indibak", "pw_domain"),
            ("valias", "domain"),
            ("hostcntrl", "pw_domain"),
            ("smtp_port", "domain"),
            ("lastauth", "domain"),
            ("userquota", "domain"),
            ("vlimits", "domain"),
            ("dir_control", "domain"),
            ("aliasdomain", "domain"),
            ("atrn_map", "pw_domain"),
        ] {
            self.db
                .on(&od)
                .exec(
                    &format!("UPDATE {t} SET {c} = ? WHERE {c} = ?"),
                    params![&nd, &od],
                )
                .await?;
        }
        for (table, name, dir) in &dirs {
            self.db
                .on(&od)
                .exec(
                    &format!("UPDATE {table} SET pw_dir = ? WHERE pw_name = ? AND pw_domain = ?"),
                    params![dir, name, &nd],
                )
                .await?;
        }
        for (from, to) in &moves {
            if from.exists() {
                rename_path(from, to)?;
            }
        }
        let old_cfg = self.domain_dir(&od);
        if old_cfg.exists() {
            rename_path(&old_cfg, &new_cfg)?;
        }
        self.remove_control(&od)?;
        self.add_control(&nd, &nd)?;
        let aliases: Vec<String> = self
            .db
            .query(
                "SELECT alias FROM aliasdomain WHERE domain = ?",
                params![&nd],
            )
            .await?
            .iter()
            .map(|r| r.text(0))
            .collect();
        for a in &aliases {
            self.add_control(a, &nd)?;
        }
        self.db.bump_changes().await?;
        self.domain_info(&nd).await
    }

    /// vmoddomain: apply `change` and report the domain's settings.
    pub async fn domain_mod(
        &self,
        domain: &str,
        change: &DomainChange,
    ) -> Result<DomainSettings, LookupError> {
        let d = self.require_domain(domain).await?;
        let dir = self.domain_dir(&d);
        let marker = dir.join(".domain_limits");
        match change.limits {
            Some(true) => std::fs::write(&marker, "").map_err(io_err(&marker))?,
            Some(false) => match std::fs::remove_file(&marker) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(LookupError::io(&marker, e))
                }
                _ => {}
            },
            None => {}
        }
        let qd = dir.join(".qmail-default");
        if let Some(h) = &change.handler {
            check_handler(h)?;
            rewrite_lines(&qd, &[qmail_default_line(h)])?;
        }
        if change.limits.is_some() || change.handler.is_some() {
            self.db.bump_changes().await?;
        }
        Ok(DomainSettings {
            limits: marker.exists(),
            handler: handler_of(&std::fs::read_to_string(&qd).unwrap_or_default()),
            name: d,
        })
    }

    /// vdeloldusers: users (of `domain`, or all) whose newest `lastauth` row is older than
    /// `before` (Unix seconds), oldest first. postmaster is never listed; users without any
    /// `lastauth` row are not either (their age is unknown).
    pub async fn stale_users(
        &self,
        domain: Option<&str>,
        before: i64,
    ) -> Result<Vec<StaleUser>, LookupError> {
        let d = match domain {
            Some(d) => Some(self.require_domain(d).await?),
            None => None,
        };
        let ts = match self.db.dialect() {
            crate::Dialect::Mysql => "UNIX_TIMESTAMP(MAX(timestamp))",
            crate::Dialect::Sqlite => "CAST(strftime('%s', MAX(timestamp)) AS INTEGER)",
        };
        let (filter, p) = match &d {
            Some(d) => ("WHERE domain = ?", params![d.as_str()]),
            None => ("", vec![]),
        };
        let sql = format!("SELECT user, domain, {ts} FROM lastauth {filter} GROUP BY user, domain");
        let rows = match &d {
            Some(d) => self.db.on(d).query(&sql, p).await?,
            None => self.db.query_everywhere(&sql, p).await?,
        };
        let mut out = Vec::new();
        for r in &rows {
            let (u, dom, last) = (r.text(0), r.text(1), r.int(2));
            if last >= before || u == "postmaster" {
                continue;
            }
            if queries::user(&self.db, &u, &dom).await?.is_some() {
                out.push(StaleUser {
                    email: format!("{u}@{dom}"),
                    last,
                });
            }
        }
        out.sort_by(|a, b| (a.last, &a.email).cmp(&(b.last, &b.email)));
        Ok(out)
    }

    /// clearopensmtp: delete `relay` rows older than `before` (Unix seconds); how many.
    pub async fn relay_clear(&self, before: i64) -> Result<u64, LookupError> {
        let n = self
            .db
            .exec("DELETE FROM relay WHERE timestamp < ?", params![before])
            .await?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_dirs_rename() {
        let (dir, from, to) =
            renamed_domain_dir(Path::new("/m/L2P/old.org/0/manny"), "old.org", "new.org").unwrap();
        assert_eq!(dir, Path::new("/m/L2P/new.org/0/manny"));
        assert_eq!(from, Path::new("/m/L2P/old.org"));
        assert_eq!(to, Path::new("/m/L2P/new.org"));
        assert!(renamed_domain_dir(Path::new("/m/x/old.org/u"), "old.org", "n").is_none());
        assert!(check_handler("bounce-no-mailbox").is_ok());
        assert!(check_handler("a@b.org").is_ok());
        assert!(check_handler("b.org:10.0.0.1:25").is_ok());
        assert!(check_handler("rm -rf").is_err());
        assert_eq!(handler_of("| /usr/sbin/vdelivermail '' delete\n"), "delete");
    }

    #[test]
    fn hash_dirs_fill_levels() {
        assert_eq!(hash_dir(0, 100), None);
        assert_eq!(hash_dir(99, 100), None);
        assert_eq!(hash_dir(100, 100).as_deref(), Some("0"));
        assert_eq!(hash_dir(199, 100).as_deref(), Some("0"));
        assert_eq!(hash_dir(200, 100).as_deref(), Some("1"));
        assert_eq!(hash_dir(62 * 100, 100).as_deref(), Some("z"));
        assert_eq!(hash_dir(63 * 100, 100).as_deref(), Some("0/0"));
        assert_eq!(hash_dir(64 * 100, 100).as_deref(), Some("0/1"));
        assert_eq!(hash_dir((63 + 3844) * 100, 100).as_deref(), Some("0/0/0"));
        assert_eq!(hash_dir(5, 1).as_deref(), Some("4"));
    }
}

//! Mailboxes: vadduser, vdeluser, vpasswd, vmoduser, vuserinfo, vsetuserquota, vrenameuser,
//! vdeloldusers, and the over-quota flag.

use std::path::PathBuf;

use super::files::{hash_dir, make_maildir, rename_path};
use super::{Admin, DEFAULT_HARD_QUOTA};
use crate::model::{bucket, Address, Quota, User, UserFlags, MAX_DIR_LEN, MAX_GECOS_LEN};
use crate::password;
use crate::password::HashMethod;
use crate::queries;
use crate::sql::params;
use crate::LookupError;

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

impl UserOptions {
    /// The options that say how the password is stored.
    fn password_options(&self) -> PasswordOptions {
        PasswordOptions {
            hash: self.hash,
            encrypted: self.encrypted,
            cram: self.cram,
            scram: self.scram.clone(),
        }
    }
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

/// A user `user expire` found: address and last authentication (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleUser {
    /// user@domain
    pub email: String,
    /// Newest `lastauth` row of any service (`add` counts: new users are not stale).
    pub last: i64,
}

pub(super) fn check_gecos(g: &str) -> Result<(), LookupError> {
    if g.len() > MAX_GECOS_LEN {
        return Err(LookupError::FieldTooLong {
            field: "gecos",
            max: MAX_GECOS_LEN,
        });
    }
    Ok(())
}

impl Admin {
    /// `pw_passwd` and `scram` column values for a new password.
    pub(super) fn stored_secrets(
        &self,
        password: &str,
        opts: &PasswordOptions,
    ) -> Result<(String, Option<String>), LookupError> {
        let (hash, encrypted, cram) = (opts.hash, opts.encrypted, opts.cram);
        let scram = opts.scram.as_ref();
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

    pub(super) fn stored_password(
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

    pub(super) async fn default_quota(&self, domain: &str) -> Result<Quota, LookupError> {
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
        let (stored, scram) = self.stored_secrets(password, &opts.password_options())?;
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
        self.count_user(&domain, true).await?;
        self.lastauth(addr.user(), &domain, "add", &gecos).await?;
        self.db.bump_changes().await?;
        self.user_info(&addr.to_string()).await
    }

    pub(super) async fn lastauth(
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
        self.count_user(d, false).await?;
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
        let (stored, scram) = self.stored_secrets(password, &opts)?;
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
            let (stored, scram) = self.stored_secrets(pw, opts)?;
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

    /// One user more (`added`) or less in the domain's `dir_control` count (never below 0).
    async fn count_user(&self, domain: &str, added: bool) -> Result<(), LookupError> {
        let sql = if added {
            "UPDATE dir_control SET cur_users = cur_users + 1 WHERE domain = ?"
        } else {
            "UPDATE dir_control SET cur_users = cur_users - 1 WHERE domain = ? AND cur_users > 0"
        };
        self.db
            .on(domain)
            .exec(sql, params![domain])
            .await
            .map(|_| ())
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

    /// The home a new user `user` of `domain` gets (spec 4.3), as `user add` computes it.
    pub(super) async fn new_home(&self, user: &str, domain: &str) -> Result<PathBuf, LookupError> {
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
            self.count_user(od, false).await?;
            self.count_user(&nd, true).await?;
        }
        self.db.bump_changes().await?;
        self.user_info(&na.to_string()).await
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

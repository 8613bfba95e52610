//! Admin changes (vadddomain, vadduser, vpasswd, vmoduser, valias, hostcntrl, ...): each
//! writes the tables, the files IndiMail keeps beside them (domain dir, Maildir, control
//! files), then bumps the change counter so every shard's cache notices.
//!
//! Concurrent admin commands are not serialized against each other beyond what the database
//! does per statement (IndiMail's tools behave the same way).
//!
//! One file per family of commands: `domain`, `user`, `alias`, `cluster` (hostcntrl,
//! host_table, smtp_port), `limits`, `atrn`; `files` holds the file work they share. The
//! MCD file's commands (`dbinfo`) are in `dbinfo`.

use std::path::PathBuf;

use crate::config::DirectoryConfig;
use crate::db::Db;
use crate::model::{normalize_domain, Address, User};
use crate::queries;
use crate::sql::params;
use crate::LookupError;
use files::read_value;

mod alias;
mod atrn;
mod cluster;
mod dbinfo;
mod domain;
mod files;
mod limits;
mod user;

pub use cluster::{ClusterHost, HostEntry};
pub use dbinfo::McdChange;
pub use domain::{DomainChange, DomainInfo, DomainOptions, DomainSettings};
pub use files::hash_dir;
pub(crate) use files::set_vacation;
pub use user::{PasswordOptions, ScramOptions, StaleUser, UserChange, UserOptions};

/// Users per directory level before hashing into subdirectories (spec 4.3).
pub const DEFAULT_USERS_PER_LEVEL: u64 = 100;

/// rcpthosts holds this many lines before new domains go to morercpthosts (vadddomain).
pub const RCPTHOSTS_MAX: usize = 50;

/// IndiMail's shipped hard quota (500 MiB).
pub const DEFAULT_HARD_QUOTA: u64 = 524_288_000;

/// The admin side of the directory: uncached, one database handle.
pub struct Admin {
    pub(crate) db: Db,
    cfg: DirectoryConfig,
}

/// Now as Unix seconds (admin commands use the system clock).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
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

    async fn count(&self, sql: &str, domain: &str) -> Result<i64, LookupError> {
        let rows = self.db.on(domain).query(sql, params![domain]).await?;
        Ok(rows.first().map(|r| r.int(0)).unwrap_or(0))
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

    /// clearopensmtp: delete `relay` rows older than `before` (Unix seconds); how many.
    pub async fn relay_clear(&self, before: i64) -> Result<u64, LookupError> {
        let n = self
            .db
            .exec("DELETE FROM relay WHERE timestamp < ?", params![before])
            .await?;
        Ok(n)
    }
}

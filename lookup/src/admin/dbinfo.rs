//! IndiMail's `dbinfo` tool: the records of an MCD file ([`crate::mcdinfo`]) and their copy in
//! the `dbinfo` table (on the clusterinfo server when `host.cntrl` names one, else in the
//! directory's database). Each change rewrites the table's rows for the file, then the file
//! (atomically), so a failure leaves the file as it was.
//!
//! A change is read by the processes that open the directory after it (each command, and
//! `serve` when restarted): the routing is loaded once per process, as IndiMail's daemons
//! load the MCD file at start (and on INT).

use std::path::Path;

use super::files::rewrite_file;
use super::Admin;
use crate::mcdinfo::{self, McdRecord};
use crate::sql::params;
use crate::LookupError;

/// What `dbinfo -u` changes in a record; `None` keeps the value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct McdChange {
    /// Clustered flag (`-c`).
    pub distributed: Option<bool>,
    /// Database server (`-S`).
    pub server: Option<String>,
    /// Port (`-p`).
    pub port: Option<u16>,
    /// use_ssl (`-o`).
    pub use_ssl: Option<bool>,
    /// Database (`-D`).
    pub database: Option<String>,
    /// User (`-U`).
    pub user: Option<String>,
    /// Password (`-P`).
    pub password: Option<String>,
}

/// The MCD file's records (none when it does not exist).
fn read_mcd_file(file: &Path) -> Result<Vec<McdRecord>, LookupError> {
    match std::fs::read_to_string(file) {
        Ok(text) => mcdinfo::parse(&text, file),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(LookupError::io(file, e)),
    }
}

fn key(domain: &str, mdahost: &str) -> String {
    format!("{domain} on {mdahost}")
}

impl Admin {
    /// `dbinfo -i`: add a record; refused when the file has one for the same domain and
    /// mailstore, or when a non-clustered domain would get a second record.
    pub async fn dbinfo_insert(&self, file: &Path, rec: McdRecord) -> Result<(), LookupError> {
        let mut records = read_mcd_file(file)?;
        let rec = McdRecord {
            domain: crate::normalize_domain(&rec.domain)?,
            ..rec
        };
        if records
            .iter()
            .any(|r| r.domain == rec.domain && r.mdahost == rec.mdahost)
        {
            return Err(LookupError::Refused(format!(
                "dbinfo entry exists: {}",
                key(&rec.domain, &rec.mdahost)
            )));
        }
        if let Some(other) = records
            .iter()
            .find(|r| r.domain == rec.domain && !(r.distributed && rec.distributed))
        {
            return Err(LookupError::Refused(format!(
                "{} is not clustered and has its entry already ({}): use -u, or -c on both",
                rec.domain,
                key(&other.domain, &other.mdahost)
            )));
        }
        records.push(rec);
        self.dbinfo_store(file, &records).await
    }

    /// `dbinfo -u`: change the record of `domain` on `mdahost`.
    pub async fn dbinfo_update(
        &self,
        file: &Path,
        domain: &str,
        mdahost: &str,
        change: &McdChange,
    ) -> Result<(), LookupError> {
        let domain = crate::normalize_domain(domain)?;
        let mut records = read_mcd_file(file)?;
        let Some(r) = records
            .iter_mut()
            .find(|r| r.domain == domain && r.mdahost == mdahost)
        else {
            return Err(LookupError::Refused(format!(
                "no dbinfo entry for {}",
                key(&domain, mdahost)
            )));
        };
        let c = change.clone();
        r.distributed = c.distributed.unwrap_or(r.distributed);
        r.server = c.server.unwrap_or_else(|| r.server.clone());
        r.port = c.port.unwrap_or(r.port);
        r.use_ssl = c.use_ssl.unwrap_or(r.use_ssl);
        r.database = c.database.unwrap_or_else(|| r.database.clone());
        r.user = c.user.unwrap_or_else(|| r.user.clone());
        r.password = c.password.unwrap_or_else(|| r.password.clone());
        self.dbinfo_store(file, &records).await
    }

    /// `dbinfo -r`: remove the record of `domain` on `mdahost`.
    pub async fn dbinfo_remove(
        &self,
        file: &Path,
        domain: &str,
        mdahost: &str,
    ) -> Result<(), LookupError> {
        let domain = crate::normalize_domain(domain)?;
        let mut records = read_mcd_file(file)?;
        let before = records.len();
        records.retain(|r| !(r.domain == domain && r.mdahost == mdahost));
        if records.len() == before {
            return Err(LookupError::Refused(format!(
                "no dbinfo entry for {}",
                key(&domain, mdahost)
            )));
        }
        self.dbinfo_store(file, &records).await
    }

    /// `dbinfo -s`: the records, from the file, else (no file here yet) from the table's
    /// rows for it, filtered by domain and mailstore when given.
    pub async fn dbinfo_show(
        &self,
        file: &Path,
        domain: Option<&str>,
        mdahost: Option<&str>,
    ) -> Result<Vec<McdRecord>, LookupError> {
        let mut records = read_mcd_file(file)?;
        if records.is_empty() && !file.exists() {
            records = self.dbinfo_rows(file).await?;
        }
        let domain = domain.map(crate::normalize_domain).transpose()?;
        records.retain(|r| {
            domain.as_ref().is_none_or(|d| &r.domain == d) && mdahost.is_none_or(|m| r.mdahost == m)
        });
        Ok(records)
    }

    /// The `dbinfo` rows of `file`.
    async fn dbinfo_rows(&self, file: &Path) -> Result<Vec<McdRecord>, LookupError> {
        let rows = self
            .db
            .query(
                "SELECT domain, distributed, server, mdahost, port, use_ssl, dbname, user, passwd \
                 FROM dbinfo WHERE filename = ? ORDER BY domain, mdahost",
                params![file.to_string_lossy().into_owned()],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| McdRecord {
                domain: r.text(0),
                distributed: r.int(1) != 0,
                server: r.text(2),
                mdahost: r.text(3),
                port: u16::try_from(r.int(4)).unwrap_or(3306),
                use_ssl: r.int(5) != 0,
                database: r.text(6),
                user: r.text(7),
                password: r.text(8),
            })
            .collect())
    }

    /// The table's rows for `file` become `records`, then the file does.
    async fn dbinfo_store(&self, file: &Path, records: &[McdRecord]) -> Result<(), LookupError> {
        let name = file.to_string_lossy().into_owned();
        self.db
            .exec("DELETE FROM dbinfo WHERE filename = ?", params![&name])
            .await?;
        for r in records {
            self.db
                .exec(
                    "INSERT INTO dbinfo (filename, domain, distributed, server, mdahost, port, \
                     use_ssl, dbname, user, passwd) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    params![
                        &name,
                        &r.domain,
                        i64::from(r.distributed),
                        &r.server,
                        &r.mdahost,
                        i64::from(r.port),
                        i64::from(r.use_ssl),
                        &r.database,
                        &r.user,
                        &r.password
                    ],
                )
                .await?;
        }
        rewrite_file(file, mcdinfo::render(records).as_bytes())?;
        // It holds the databases' passwords.
        crate::fsmode::restrict_mode(file, 0o640).map_err(|e| LookupError::io(file, e))?;
        self.db.bump_changes().await
    }
}

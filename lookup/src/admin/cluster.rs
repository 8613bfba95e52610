//! Cluster placement: hostcntrl (which host holds a user), host_table (the hosts) and
//! smtp_port (their SMTP ports); hostcntrl, vhostid, vsmtp and `indimail cluster`.

use super::Admin;
use crate::model::{normalize_domain, Address, MailStore};
use crate::queries;
use crate::sql::params;
use crate::LookupError;

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

impl Admin {
    pub(super) fn host_key(&self, email: &str) -> Result<(String, String), LookupError> {
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
        if queries::hostcntrl_host(&self.db, &u, &d).await?.is_some() {
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
        let found = n > 0 || queries::hostcntrl_host(&self.db, &u, &d).await?.is_some();
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
        let before = queries::hostcntrl_host(&self.db, &u, &d).await?;
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
}

//! IndiMail's `.sql` list variants (`badmailfrom.sql`, `badrcptto.sql`, ...; the spec's
//! "cdb/sql capable" lists): a control file `server:user:password:database:table` naming a
//! MySQL table whose `email` column holds more entries of the list. As IndiMail's sqlmatch
//! does, a missing table is created (`email char(64)` primary key and a `timestamp`).
//!
//! `server` is a host name or address (port 3306), `host;port`, or a unix socket path (from
//! `/`). IndiMail asks the table on every lookup; this server reads it whole when the policy
//! loads and refreshes it periodically (the engine decides when), so no RCPT waits on MySQL.

use std::path::PathBuf;
use std::time::Duration;

use mysql_async::prelude::Queryable;

/// Where a `.sql` list variant points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlList {
    host: String,
    port: u16,
    socket: Option<PathBuf>,
    user: String,
    password: String,
    database: String,
    table: String,
}

impl SqlList {
    /// Parses `server:user:password:database:table` (the first line that is not a comment).
    pub fn parse(text: &str) -> Result<SqlList, String> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or("empty: expected server:user:password:database:table")?;
        let f: Vec<&str> = line.splitn(5, ':').collect();
        let [server, user, password, database, table] = f[..] else {
            return Err(format!(
                "{line:?}: expected server:user:password:database:table"
            ));
        };
        let ident = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
        };
        if !ident(database) || !ident(table) {
            return Err(format!(
                "{line:?}: database and table must be plain names (letters, digits, _ and $)"
            ));
        }
        let (host, port, socket) = if server.starts_with('/') {
            ("localhost".to_string(), 3306, Some(PathBuf::from(server)))
        } else {
            match server.split_once(';') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| format!("{server:?}: bad port"))?,
                    None,
                ),
                None => (server.to_string(), 3306, None),
            }
        };
        Ok(SqlList {
            host: if host.is_empty() {
                "localhost".into()
            } else {
                host
            },
            port,
            socket,
            user: user.to_string(),
            password: password.to_string(),
            database: database.to_string(),
            table: table.to_string(),
        })
    }

    /// Every entry of the table (creating it when missing), lower-cased. Blocking: runs its own
    /// small runtime, for the thread that (re)loads the policy. `timeout` bounds the whole
    /// exchange (IndiMail's `MYSQL_TIMEOUT`).
    pub fn fetch_blocking(&self, timeout: Duration) -> Result<Vec<String>, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        rt.block_on(async {
            match tokio::time::timeout(timeout, self.fetch()).await {
                Ok(r) => r.map_err(|e| format!("{}: {e}", self.where_())),
                Err(_) => Err(format!("{}: no answer in {timeout:?}", self.where_())),
            }
        })
    }

    fn where_(&self) -> String {
        match &self.socket {
            Some(s) => format!("{} table {}", s.display(), self.table),
            None => format!("{}:{} table {}", self.host, self.port, self.table),
        }
    }

    async fn fetch(&self) -> Result<Vec<String>, mysql_async::Error> {
        let mut b = mysql_async::OptsBuilder::default()
            .ip_or_hostname(self.host.clone())
            .user(Some(self.user.clone()))
            .pass(Some(self.password.clone()))
            .db_name(Some(self.database.clone()));
        b = match &self.socket {
            Some(s) => b.socket(Some(s.to_string_lossy().into_owned())),
            None => b.tcp_port(self.port).prefer_socket(false),
        };
        let mut conn = mysql_async::Conn::new(b).await?;
        conn.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS {} (email char(64) NOT NULL, timestamp TIMESTAMP \
             DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP NOT NULL, \
             PRIMARY KEY (email), INDEX timestamp (timestamp))",
            self.table
        ))
        .await?;
        let rows: Vec<String> = conn
            .query(format!("SELECT email FROM {}", self.table))
            .await?;
        let _ = conn.disconnect().await;
        Ok(rows
            .into_iter()
            .map(|r| r.trim().to_ascii_lowercase())
            .filter(|r| !r.is_empty())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let s = SqlList::parse("# list\ndb.example:u:p:indimail:badmailfrom\n").unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.socket.is_none()),
            ("db.example", 3306, true)
        );
        let s = SqlList::parse("10.0.0.1;3307:u:p:d:t").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("10.0.0.1", 3307));
        let s = SqlList::parse("/run/mysqld/mysqld.sock:u:pa:ss:d:t");
        assert!(s.is_err(), "a password with ':' shifts the fields: {s:?}");
        let s = SqlList::parse("/run/mysqld/mysqld.sock:u::d:t").unwrap();
        assert_eq!(
            s.socket.as_deref(),
            Some(std::path::Path::new("/run/mysqld/mysqld.sock"))
        );
        assert!(SqlList::parse("h:u:p:d:t; DROP TABLE x").is_err());
        assert!(SqlList::parse("h:u:p:d").is_err());
        assert!(SqlList::parse("").is_err());
    }
}

//! The two stores behind one small interface: positional `?` parameters, rows of
//! [`SqlValue`]. Every query the directory runs is plain SQL both MySQL and SQLite accept,
//! so the logic above is written once.
//!
//! SQLite runs on tokio's blocking pool (`spawn_blocking`) with one connection per
//! [`Db`] (so one per shard): a query can block on a cold page read or on the write lock an
//! admin command holds (busy timeout), and neither may stall a shard's event loop. The
//! connection sits behind a `Mutex` only because the blocking closure must be `Send`; it is
//! never shared across shards, so the lock is uncontended apart from one shard's own
//! overlapping queries.
//!
//! MySQL goes through [`crate::mysql`]: one pool per server and process (not per shard),
//! reads from the local replica with fall-back to the master, writes to the master.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{BackendConfig, DirectoryConfig};
use crate::mysql::{MysqlDb, Reads};
use crate::schema::{self, Dialect};
use crate::sql::{params, Row, SqlValue};
use crate::LookupError;

/// The store, the clusterinfo database when `host.cntrl` names one, and the database
/// servers the MCD file names for some domains.
pub(crate) struct Db {
    store: Store,
    cntrl: Option<MysqlDb>,
    /// (domain, its server): the domains `control/mcdinfo` routes away from the store.
    routed: Vec<(String, MysqlDb)>,
}

/// Where one domain's statements go: its MCD server, else the store (clusterinfo tables
/// always go to the clusterinfo server). Obtained with [`Db::on`].
pub(crate) struct Route<'a> {
    db: &'a Db,
    server: Option<&'a MysqlDb>,
}

impl Route<'_> {
    /// Run a query returning rows.
    pub(crate) async fn query(
        &self,
        sql: &str,
        params: Vec<SqlValue>,
    ) -> Result<Vec<Row>, LookupError> {
        match self.server.filter(|_| !names_cluster_table(sql)) {
            Some(s) => s.query(sql, params).await,
            None => self.db.query(sql, params).await,
        }
    }

    /// Run a statement; returns the number of rows changed.
    pub(crate) async fn exec(&self, sql: &str, params: Vec<SqlValue>) -> Result<u64, LookupError> {
        match self.server.filter(|_| !names_cluster_table(sql)) {
            Some(s) => s.exec(sql, params).await,
            None => self.db.exec(sql, params).await,
        }
    }
}

enum Store {
    Sqlite(SqliteDb),
    Mysql(MysqlDb),
}

/// The tables IndiMail keeps in the central clusterinfo database (`host.cntrl`, spec 4.1):
/// placement of users on hosts, the hosts, their SMTP ports, the MCD records, the admin
/// accounts and the alias domains. Every statement naming one of them goes there (each of
/// our statements names one table, so none ever joins across the two databases).
const CLUSTER_TABLES: [&str; 6] = [
    "hostcntrl",
    "host_table",
    "smtp_port",
    "dbinfo",
    "mgmtaccess",
    "aliasdomain",
];

/// Does `sql` name a clusterinfo table? (Whole identifiers only: `smtp_port` the table,
/// not a column that merely contains the word.)
fn names_cluster_table(sql: &str) -> bool {
    sql.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '`'))
        .map(|w| w.trim_matches('`'))
        .any(|w| CLUSTER_TABLES.iter().any(|t| w.eq_ignore_ascii_case(t)))
}

pub(crate) struct SqliteDb {
    conn: Arc<Mutex<rusqlite::Connection>>,
    timeout: Duration,
}

fn unavailable(e: impl std::fmt::Display) -> LookupError {
    LookupError::Unavailable(e.to_string())
}

impl Db {
    /// Open (creating the SQLite file, the MySQL database and missing tables as needed).
    /// `reads` says which MySQL server reads try first when `host.master` names a master
    /// beside the local replica. With the master down, a replica is opened as it is (its
    /// tables came from the master; it must not be written).
    pub(crate) async fn open(cfg: &DirectoryConfig, reads: Reads) -> Result<Db, LookupError> {
        let timeout = cfg.query_timeout;
        let conns = cfg.mysql_connections;
        let store = match &cfg.backend {
            BackendConfig::Sqlite(path) => Store::Sqlite(SqliteDb::open(path, timeout).await?),
            BackendConfig::Mysql(local) => Store::Mysql(
                MysqlDb::open("mysql", local, cfg.master.as_ref(), reads, conns, timeout).await?,
            ),
        };
        let cntrl = match &cfg.cntrl {
            Some(c) => Some(MysqlDb::open("cntrl", c, None, reads, conns, timeout).await?),
            None => None,
        };
        let mut routed = Vec::new();
        for rec in &cfg.domain_servers {
            // A routed server that is down must not keep the other domains from opening:
            // its domain answers "temporary failure" until it is back.
            let server = rec.mysql();
            let db = match MysqlDb::open("dbinfo", &server, None, reads, conns, timeout).await {
                Ok(db) => {
                    ensure_tables(&db).await?;
                    db
                }
                Err(e) if e.is_temporary() => MysqlDb::unopened("dbinfo", &server, conns, timeout)?,
                Err(e) => return Err(e),
            };
            routed.push((rec.domain.clone(), db));
        }
        let db = Db {
            store,
            cntrl,
            routed,
        };
        if let Store::Mysql(m) = &db.store {
            if m.master_down() {
                return Ok(db);
            }
        }
        db.ensure_schema().await?;
        Ok(db)
    }

    /// Where `domain`'s statements go.
    pub(crate) fn on(&self, domain: &str) -> Route<'_> {
        Route {
            db: self,
            server: self
                .routed
                .iter()
                .find(|(d, _)| d.eq_ignore_ascii_case(domain))
                .map(|(_, s)| s),
        }
    }

    /// Does the MCD file send some domain to a server of its own? (Listings then merge
    /// rows from several servers and sort them here.)
    pub(crate) fn routes_domains(&self) -> bool {
        !self.routed.is_empty()
    }

    /// Are `a`'s and `b`'s rows kept in the same database?
    pub(crate) fn same_server(&self, a: &str, b: &str) -> bool {
        match (self.on(a).server, self.on(b).server) {
            (None, None) => true,
            (Some(x), Some(y)) => std::ptr::eq(x, y) || x.same_pool(y),
            _ => false,
        }
    }

    /// A query run on the store and on every routed server (listings of all domains),
    /// rows in that order. A routed server that is down is left out, so one database
    /// outage does not hide every other domain.
    pub(crate) async fn query_everywhere(
        &self,
        sql: &str,
        params: Vec<SqlValue>,
    ) -> Result<Vec<Row>, LookupError> {
        let mut rows = self.query(sql, params.clone()).await?;
        for (_, s) in &self.routed {
            match s.query(sql, params.clone()).await {
                Ok(r) => rows.extend(r),
                Err(e) if e.is_temporary() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(rows)
    }

    /// A read that must see the master when there is one (the schema's own rows).
    async fn query_master(
        &self,
        sql: &str,
        params: Vec<SqlValue>,
    ) -> Result<Vec<Row>, LookupError> {
        match &self.store {
            Store::Mysql(m) => m.query_with(Reads::Master, sql, params).await,
            Store::Sqlite(_) => self.query(sql, params).await,
        }
    }

    pub(crate) fn dialect(&self) -> Dialect {
        match &self.store {
            Store::Sqlite(_) => Dialect::Sqlite,
            Store::Mysql(_) => Dialect::Mysql,
        }
    }

    async fn ensure_schema(&self) -> Result<(), LookupError> {
        for stmt in schema::create_statements(self.dialect()) {
            self.exec(&stmt, vec![]).await?;
        }
        if self
            .query_master("SELECT counter FROM dir_changes WHERE id = 1", vec![])
            .await?
            .is_empty()
        {
            // Two openers may race here; the loser's duplicate-key error is harmless.
            let _ = self
                .exec(
                    "INSERT INTO dir_changes (id, counter) VALUES (1, 0)",
                    vec![],
                )
                .await;
        }
        if self
            .query_master(
                "SELECT id FROM ischema WHERE comment = ?",
                params![schema::SCHEMA_COMMENT],
            )
            .await?
            .is_empty()
        {
            self.exec(
                "INSERT INTO ischema (comment) VALUES (?)",
                params![schema::SCHEMA_COMMENT],
            )
            .await?;
        }
        Ok(())
    }

    /// Run a query returning rows (on the store: for a domain's rows use [`Db::on`]).
    pub(crate) async fn query(
        &self,
        sql: &str,
        params: Vec<SqlValue>,
    ) -> Result<Vec<Row>, LookupError> {
        if let Some(c) = self.cntrl.as_ref().filter(|_| names_cluster_table(sql)) {
            return c.query(sql, params).await;
        }
        match &self.store {
            Store::Sqlite(s) => s.run(sql, params, true).await.map(|(rows, _)| rows),
            Store::Mysql(m) => m.query(sql, params).await,
        }
    }

    /// Run a statement; returns the number of rows changed.
    pub(crate) async fn exec(&self, sql: &str, params: Vec<SqlValue>) -> Result<u64, LookupError> {
        if let Some(c) = self.cntrl.as_ref().filter(|_| names_cluster_table(sql)) {
            return c.exec(sql, params).await;
        }
        match &self.store {
            Store::Sqlite(s) => s.run(sql, params, false).await.map(|(_, n)| n),
            Store::Mysql(m) => m.exec(sql, params).await,
        }
    }

    /// Increment the change counter (after every admin write).
    pub(crate) async fn bump_changes(&self) -> Result<(), LookupError> {
        self.exec(
            "UPDATE dir_changes SET counter = counter + 1 WHERE id = 1",
            vec![],
        )
        .await
        .map(|_| ())
    }

    /// Current change counter.
    pub(crate) async fn changes(&self) -> Result<i64, LookupError> {
        Ok(self
            .query("SELECT counter FROM dir_changes WHERE id = 1", vec![])
            .await?
            .first()
            .map(|r| r.int(0))
            .unwrap_or(0))
    }

    /// Let go of the connections (MySQL's pool thread closes them, sending COM_QUIT, when
    /// the process's last handle on the server is gone).
    pub(crate) async fn close(self) {}
}

/// The directory's own tables (not the clusterinfo ones) on a domain's MCD server.
async fn ensure_tables(db: &MysqlDb) -> Result<(), LookupError> {
    for stmt in schema::create_statements(Dialect::Mysql) {
        if !names_cluster_table(&stmt) {
            db.exec(&stmt, vec![]).await?;
        }
    }
    Ok(())
}

impl SqliteDb {
    async fn open(path: &Path, timeout: Duration) -> Result<SqliteDb, LookupError> {
        let path: PathBuf = path.to_path_buf();
        let conn = tokio::task::spawn_blocking(move || -> Result<_, LookupError> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| LookupError::io(dir, e))?;
            }
            // Password hashes: owner-only from the start, and fixed if found looser. SQLite
            // gives its -wal and -shm files the database file's mode; older ones are fixed too.
            // A reader that is not the owner (EPERM) cannot fix them: not its business.
            let mode = crate::fsmode::SECRET_FILE_MODE;
            let mine = |r: std::io::Result<()>, p: &Path| match r {
                Err(e) if e.kind() != std::io::ErrorKind::PermissionDenied => {
                    Err(LookupError::io(p, e))
                }
                _ => Ok(()),
            };
            mine(crate::fsmode::create_restricted(&path, mode), &path)?;
            for side in ["-wal", "-shm"] {
                let mut p = path.clone().into_os_string();
                p.push(side);
                let p = PathBuf::from(p);
                mine(crate::fsmode::restrict_mode(&p, mode).map(|_| ()), &p)?;
            }
            let c = rusqlite::Connection::open(&path).map_err(|e| LookupError::Io {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            // WAL: readers (shards) never block on the admin writer; FULL sync: an admin
            // change reported done survives a crash.
            c.busy_timeout(Duration::from_secs(5))
                .map_err(unavailable)?;
            c.pragma_update(None, "journal_mode", "WAL")
                .map_err(unavailable)?;
            c.pragma_update(None, "synchronous", "FULL")
                .map_err(unavailable)?;
            Ok(c)
        })
        .await
        .map_err(unavailable)??;
        Ok(SqliteDb {
            conn: Arc::new(Mutex::new(conn)),
            timeout,
        })
    }

    async fn run(
        &self,
        sql: &str,
        params: Vec<SqlValue>,
        want_rows: bool,
    ) -> Result<(Vec<Row>, u64), LookupError> {
        let conn = Arc::clone(&self.conn);
        let sql = sql.to_string();
        let job = tokio::task::spawn_blocking(move || -> Result<(Vec<Row>, u64), LookupError> {
            let c = conn
                .lock()
                .map_err(|_| unavailable("sqlite connection poisoned"))?;
            let mut st = c.prepare_cached(&sql).map_err(unavailable)?;
            let values = params.into_iter().map(|v| match v {
                SqlValue::Null => rusqlite::types::Value::Null,
                SqlValue::Int(n) => rusqlite::types::Value::Integer(n),
                SqlValue::Text(s) => rusqlite::types::Value::Text(s),
            });
            if !want_rows {
                let n = st
                    .execute(rusqlite::params_from_iter(values))
                    .map_err(unavailable)?;
                return Ok((Vec::new(), n as u64));
            }
            let ncol = st.column_count();
            let mut rows = st
                .query(rusqlite::params_from_iter(values))
                .map_err(unavailable)?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(unavailable)? {
                let mut row = Vec::with_capacity(ncol);
                for i in 0..ncol {
                    row.push(match r.get_ref(i).map_err(unavailable)? {
                        rusqlite::types::ValueRef::Null => SqlValue::Null,
                        rusqlite::types::ValueRef::Integer(n) => SqlValue::Int(n),
                        rusqlite::types::ValueRef::Real(f) => SqlValue::Int(f as i64),
                        rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                            SqlValue::Text(String::from_utf8_lossy(t).into_owned())
                        }
                    });
                }
                out.push(Row(row));
            }
            Ok((out, 0))
        });
        match tokio::time::timeout(self.timeout, job).await {
            Ok(joined) => joined.map_err(unavailable)?,
            Err(_) => Err(LookupError::Unavailable(format!(
                "sqlite query timed out after {:?}",
                self.timeout
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::names_cluster_table;

    #[test]
    fn cluster_tables_by_whole_name() {
        assert!(names_cluster_table(
            "SELECT host FROM hostcntrl WHERE pw_name = ?"
        ));
        assert!(names_cluster_table(
            "DELETE FROM smtp_port WHERE domain = ?"
        ));
        assert!(names_cluster_table(
            "CREATE TABLE IF NOT EXISTS `aliasdomain` (alias char(64))"
        ));
        assert!(!names_cluster_table("SELECT pw_name FROM indimail"));
        assert!(!names_cluster_table("SELECT my_smtp_port_x FROM t"));
    }
}

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
//! MySQL uses a small `mysql_async` pool per shard; it runs on the shard's own
//! single-threaded runtime.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::config::{BackendConfig, MysqlConfig};
use crate::schema::{self, Dialect};
use crate::LookupError;

/// One SQL value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SqlValue {
    Null,
    Int(i64),
    Text(String),
}

impl From<&str> for SqlValue {
    fn from(s: &str) -> Self {
        SqlValue::Text(s.to_string())
    }
}
impl From<String> for SqlValue {
    fn from(s: String) -> Self {
        SqlValue::Text(s)
    }
}
impl From<&String> for SqlValue {
    fn from(s: &String) -> Self {
        SqlValue::Text(s.clone())
    }
}
impl From<Option<String>> for SqlValue {
    fn from(s: Option<String>) -> Self {
        s.map_or(SqlValue::Null, SqlValue::Text)
    }
}
impl From<&Option<String>> for SqlValue {
    fn from(s: &Option<String>) -> Self {
        s.clone().into()
    }
}
impl From<i64> for SqlValue {
    fn from(n: i64) -> Self {
        SqlValue::Int(n)
    }
}
impl From<u32> for SqlValue {
    fn from(n: u32) -> Self {
        SqlValue::Int(i64::from(n))
    }
}
impl From<i32> for SqlValue {
    fn from(n: i32) -> Self {
        SqlValue::Int(i64::from(n))
    }
}

/// Build a parameter vector: `params![a, b]`.
macro_rules! params {
    ($($v:expr),* $(,)?) => { vec![$($crate::db::SqlValue::from($v)),*] };
}
pub(crate) use params;

/// One result row.
#[derive(Debug, Clone)]
pub(crate) struct Row(Vec<SqlValue>);

impl Row {
    pub(crate) fn text(&self, i: usize) -> String {
        match self.0.get(i) {
            Some(SqlValue::Text(s)) => s.clone(),
            Some(SqlValue::Int(n)) => n.to_string(),
            _ => String::new(),
        }
    }

    pub(crate) fn opt_text(&self, i: usize) -> Option<String> {
        match self.0.get(i) {
            Some(SqlValue::Text(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        }
    }

    pub(crate) fn int(&self, i: usize) -> i64 {
        match self.0.get(i) {
            Some(SqlValue::Int(n)) => *n,
            Some(SqlValue::Text(s)) => s.trim().parse().unwrap_or(0),
            _ => 0,
        }
    }
}

/// The store.
pub(crate) enum Db {
    Sqlite(SqliteDb),
    Mysql(MysqlDb),
}

pub(crate) struct SqliteDb {
    conn: Arc<Mutex<rusqlite::Connection>>,
    timeout: Duration,
}

pub(crate) struct MysqlDb {
    pool: mysql_async::Pool,
    timeout: Duration,
}

fn unavailable(e: impl std::fmt::Display) -> LookupError {
    LookupError::Unavailable(e.to_string())
}

impl Db {
    /// Open (creating the SQLite file, the MySQL database and missing tables as needed).
    pub(crate) async fn open(
        backend: &BackendConfig,
        timeout: Duration,
        pool_max: usize,
    ) -> Result<Db, LookupError> {
        let db = match backend {
            BackendConfig::Sqlite(path) => Db::Sqlite(SqliteDb::open(path, timeout).await?),
            BackendConfig::Mysql(cfg) => Db::Mysql(MysqlDb::open(cfg, timeout, pool_max).await?),
        };
        db.ensure_schema().await?;
        Ok(db)
    }

    pub(crate) fn dialect(&self) -> Dialect {
        match self {
            Db::Sqlite(_) => Dialect::Sqlite,
            Db::Mysql(_) => Dialect::Mysql,
        }
    }

    async fn ensure_schema(&self) -> Result<(), LookupError> {
        for stmt in schema::create_statements(self.dialect()) {
            self.exec(&stmt, vec![]).await?;
        }
        if self
            .query("SELECT counter FROM dir_changes WHERE id = 1", vec![])
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
            .query(
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

    /// Run a query returning rows.
    pub(crate) async fn query(
        &self,
        sql: &str,
        params: Vec<SqlValue>,
    ) -> Result<Vec<Row>, LookupError> {
        match self {
            Db::Sqlite(s) => s.run(sql, params, true).await.map(|(rows, _)| rows),
            Db::Mysql(m) => m.query(sql, params).await,
        }
    }

    /// Run a statement; returns the number of rows changed.
    pub(crate) async fn exec(&self, sql: &str, params: Vec<SqlValue>) -> Result<u64, LookupError> {
        match self {
            Db::Sqlite(s) => s.run(sql, params, false).await.map(|(_, n)| n),
            Db::Mysql(m) => m.exec(sql, params).await,
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

    /// Close connections cleanly (MySQL sends COM_QUIT).
    pub(crate) async fn close(self) {
        if let Db::Mysql(m) = self {
            let _ = m.pool.disconnect().await;
        }
    }
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

fn to_mysql(params: Vec<SqlValue>) -> mysql_async::Params {
    if params.is_empty() {
        return mysql_async::Params::Empty;
    }
    mysql_async::Params::Positional(
        params
            .into_iter()
            .map(|v| match v {
                SqlValue::Null => mysql_async::Value::NULL,
                SqlValue::Int(n) => mysql_async::Value::Int(n),
                SqlValue::Text(s) => mysql_async::Value::Bytes(s.into_bytes()),
            })
            .collect(),
    )
}

fn from_mysql(v: mysql_async::Value) -> SqlValue {
    use mysql_async::Value as V;
    match v {
        V::NULL => SqlValue::Null,
        V::Bytes(b) => SqlValue::Text(String::from_utf8_lossy(&b).into_owned()),
        V::Int(n) => SqlValue::Int(n),
        V::UInt(n) => SqlValue::Int(i64::try_from(n).unwrap_or(i64::MAX)),
        V::Float(f) => SqlValue::Int(f as i64),
        V::Double(f) => SqlValue::Int(f as i64),
        V::Date(y, mo, d, h, mi, s, _) => {
            SqlValue::Text(format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}"))
        }
        V::Time(neg, d, h, mi, s, _) => SqlValue::Text(format!(
            "{}{}:{mi:02}:{s:02}",
            if neg { "-" } else { "" },
            u64::from(d) * 24 + u64::from(h)
        )),
    }
}

impl MysqlDb {
    fn opts(cfg: &MysqlConfig, db: bool, pool_max: usize) -> mysql_async::Opts {
        // Keep connections: with no idle minimum, an inactive TTL of 0 and a
        // reset on every return, each lookup paid a TCP connect, a session
        // setup and a fresh PREPARE (measured: ~4 statements per lookup).
        // We keep no session state, so no reset is needed either.
        let constraints = mysql_async::PoolConstraints::new(1, pool_max.max(1)).unwrap_or_default();
        let mut b = mysql_async::OptsBuilder::default()
            .ip_or_hostname(cfg.host.clone())
            .user(Some(cfg.user.clone()))
            .pass(Some(cfg.password.clone()))
            .db_name(db.then(|| cfg.database.clone()))
            .pool_opts(
                mysql_async::PoolOpts::default()
                    .with_constraints(constraints)
                    .with_inactive_connection_ttl(std::time::Duration::from_secs(60))
                    .with_reset_connection(false),
            )
            .tcp_nodelay(true);
        b = match &cfg.socket {
            Some(s) => b.socket(Some(s.to_string_lossy().into_owned())),
            None => b.tcp_port(cfg.port).prefer_socket(false),
        };
        b.into()
    }

    async fn open(
        cfg: &MysqlConfig,
        timeout: Duration,
        pool_max: usize,
    ) -> Result<MysqlDb, LookupError> {
        let db = MysqlDb {
            pool: mysql_async::Pool::new(Self::opts(cfg, true, pool_max)),
            timeout,
        };
        match db.query("SELECT 1", vec![]).await {
            Ok(_) => Ok(db),
            Err(LookupError::Unavailable(msg)) if msg.contains("1049") => {
                // ER_BAD_DB_ERROR: create the database, as IndiMail's installer would.
                let fut = async {
                    let mut c = mysql_async::Conn::new(Self::opts(cfg, false, 1)).await?;
                    c.query_drop(format!(
                        "CREATE DATABASE IF NOT EXISTS `{}`",
                        cfg.database.replace('`', "")
                    ))
                    .await?;
                    c.disconnect().await
                };
                tokio::time::timeout(timeout, fut)
                    .await
                    .map_err(unavailable)?
                    .map_err(unavailable)?;
                db.query("SELECT 1", vec![]).await?;
                Ok(db)
            }
            Err(e) => Err(e),
        }
    }

    async fn query(&self, sql: &str, params: Vec<SqlValue>) -> Result<Vec<Row>, LookupError> {
        let fut = async {
            let mut c = self.pool.get_conn().await?;
            let rows: Vec<mysql_async::Row> = c.exec(sql, to_mysql(params)).await?;
            Ok::<_, mysql_async::Error>(rows)
        };
        let rows = tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| {
                LookupError::Unavailable(format!("mysql query timed out after {:?}", self.timeout))
            })?
            .map_err(unavailable)?;
        Ok(rows
            .into_iter()
            .map(|r| Row(r.unwrap().into_iter().map(from_mysql).collect()))
            .collect())
    }

    async fn exec(&self, sql: &str, params: Vec<SqlValue>) -> Result<u64, LookupError> {
        let fut = async {
            let mut c = self.pool.get_conn().await?;
            if params.is_empty() {
                c.query_drop(sql).await?;
            } else {
                c.exec_drop(sql, to_mysql(params)).await?;
            }
            Ok::<_, mysql_async::Error>(c.affected_rows())
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| {
                LookupError::Unavailable(format!("mysql query timed out after {:?}", self.timeout))
            })?
            .map_err(unavailable)
    }
}

//! MySQL/MariaDB behind the directory: the servers of a clustered setup (spec 4.1) and the
//! one pool per server that bounds connections per host.
//!
//! **Servers.** `host.mysql` names the local database; with `host.master` too, the local one
//! is a replica: lookups go to it first and fall back to the master when it cannot be reached,
//! admin reads go to the master first and fall back to the replica, and every write goes to
//! the master alone. A write while the master is down fails with
//! [`LookupError::Unavailable`] naming the master (temporary: 451/454, CLI exit 111); a
//! replica must never be written, or replication would stop on the conflict.
//!
//! **Back-off.** A server that failed to answer (connection refused, timeout, or a
//! connection lost and no fresh one to be had) is skipped for [`DOWN_FOR`], doubled after
//! each failed retry up to [`DOWN_MAX`]: queries in that time go straight to the other
//! server, or fail at once when there is none, rather than each waiting for the dead one
//! again. When the time is up one query alone probes it (the others keep skipping it until
//! that one has its answer), so a server that hangs costs one query a timeout per period, not
//! every query. An answer clears the mark. SQL errors (the server answered) are returned as
//! they are and mark nothing.
//!
//! **Connections per host.** Each shard used to open its own pool, so connections grew with
//! cores. Now one process keeps one pool per server (keyed by the server's address, user and
//! database), of at most [`crate::DirectoryConfig::mysql_connections`] connections, run on a
//! thread of its own (a current-thread tokio runtime; the shards' io_uring runtimes cannot
//! drive each other's sockets). Shards hand it queries over a bounded channel and await the
//! answer; only cache misses travel, so the hop is cheap beside the query. This is
//! inlookup's bounded set of preforked connections (spec 5.1) and Postfix's proxymap, inside
//! the process. A full queue (the database far behind) answers "temporary failure" at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use tokio::sync::{mpsc, oneshot};

use crate::config::MysqlConfig;
use crate::sql::{Row, SqlValue};
use crate::LookupError;

/// How long a server that failed to answer is left alone (the first time).
pub(crate) const DOWN_FOR: Duration = Duration::from_secs(2);

/// The longest it is left alone after repeated failures.
pub(crate) const DOWN_MAX: Duration = Duration::from_secs(30);

/// Queries waiting for a connection, per server, before callers are told to come back later.
const QUEUE_DEPTH: usize = 4096;

/// What a failed query was.
#[derive(Debug)]
struct Failure {
    /// The server is up (it answered with an SQL error, or a fresh connection works).
    server_up: bool,
    msg: String,
}

struct Job {
    sql: String,
    params: Vec<SqlValue>,
    want_rows: bool,
    reply: oneshot::Sender<Result<(Vec<Row>, u64), Failure>>,
}

/// The process's pool for one server: a thread owning a `mysql_async` pool.
struct PoolService {
    tx: mpsc::Sender<Job>,
    /// Whether the server is taken for down (shared by every shard).
    health: Mutex<Health>,
    /// How long a probe may take before another query may probe instead (the query
    /// timeout, plus a margin).
    probe_limit: Duration,
}

/// A server's back-off state.
#[derive(Default)]
struct Health {
    /// Skipped until then.
    down_until: Option<Instant>,
    /// Failures in a row (the back-off doubles with each).
    failures: u32,
    /// A query is probing the server since then.
    probe_since: Option<Instant>,
    last_error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    host: String,
    port: u16,
    socket: Option<std::path::PathBuf>,
    user: String,
    password: String,
    database: String,
    max: usize,
}

fn pools() -> &'static Mutex<HashMap<PoolKey, Weak<PoolService>>> {
    static POOLS: OnceLock<Mutex<HashMap<PoolKey, Weak<PoolService>>>> = OnceLock::new();
    POOLS.get_or_init(|| Mutex::new(HashMap::new()))
}

fn opts(cfg: &MysqlConfig, db: bool, pool_max: usize) -> mysql_async::Opts {
    // Keep connections: with no idle minimum, an inactive TTL of 0 and a reset on every
    // return, each lookup paid a TCP connect, a session setup and a fresh PREPARE (measured:
    // ~4 statements per lookup). We keep no session state, so no reset is needed either.
    let constraints = mysql_async::PoolConstraints::new(1, pool_max.max(1)).unwrap_or_default();
    let mut b = mysql_async::OptsBuilder::default()
        .ip_or_hostname(cfg.host.clone())
        .user(Some(cfg.user.clone()))
        .pass(Some(cfg.password.clone()))
        .db_name(db.then(|| cfg.database.clone()))
        .pool_opts(
            mysql_async::PoolOpts::default()
                .with_constraints(constraints)
                .with_inactive_connection_ttl(Duration::from_secs(60))
                .with_reset_connection(false),
        )
        .tcp_nodelay(true);
    b = match &cfg.socket {
        Some(s) => b.socket(Some(s.to_string_lossy().into_owned())),
        None => b.tcp_port(cfg.port).prefer_socket(false),
    };
    b.into()
}

fn failure(e: mysql_async::Error) -> Failure {
    Failure {
        server_up: matches!(e, mysql_async::Error::Server(_)),
        msg: e.to_string(),
    }
}

/// The thread's pool, replaced whole when a connection breaks: a server that went away
/// leaves every idle connection dead, and `mysql_async` does not test them before use.
struct Shared {
    opts: mysql_async::Opts,
    current: Mutex<(u64, mysql_async::Pool)>,
}

impl Shared {
    fn current(&self) -> (u64, mysql_async::Pool) {
        let c = self.current.lock().unwrap_or_else(|e| e.into_inner());
        (c.0, c.1.clone())
    }

    /// Drop generation `gen` (if still current) for a fresh pool.
    fn reset(&self, gen: u64) {
        let mut c = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if c.0 == gen {
            let old = std::mem::replace(&mut c.1, mysql_async::Pool::new(self.opts.clone()));
            c.0 += 1;
            tokio::spawn(async move {
                let _ = old.disconnect().await;
            });
        }
    }
}

async fn attempt(
    pool: &mysql_async::Pool,
    sql: &str,
    params: Vec<SqlValue>,
    want_rows: bool,
) -> Result<(Vec<Row>, u64), Failure> {
    let mut c = pool.get_conn().await.map_err(failure)?;
    if want_rows {
        let rows: Vec<mysql_async::Row> = c.exec(sql, to_mysql(params)).await.map_err(failure)?;
        let rows = rows
            .into_iter()
            .map(|r| Row(r.unwrap().into_iter().map(from_mysql).collect()))
            .collect();
        return Ok((rows, 0));
    }
    if params.is_empty() {
        c.query_drop(sql).await.map_err(failure)?;
    } else {
        c.exec_drop(sql, to_mysql(params)).await.map_err(failure)?;
    }
    Ok((Vec::new(), c.affected_rows()))
}

/// One query. A connection that breaks makes the whole pool fresh; a read is then tried
/// once more (it may run twice without harm), a write is not (it may have been applied):
/// its caller gets the failure, and the server is only taken for down when a fresh
/// connection cannot be made either.
async fn run_job(shared: Arc<Shared>, job: Job, timeout: Duration) {
    let fut = async {
        let (gen, pool) = shared.current();
        let first = attempt(&pool, &job.sql, job.params.clone(), job.want_rows).await;
        let f = match first {
            Err(f) if !f.server_up => f,
            other => return other,
        };
        shared.reset(gen);
        let (_, pool) = shared.current();
        if job.want_rows {
            return attempt(&pool, &job.sql, job.params, true).await;
        }
        let up = match pool.get_conn().await {
            Ok(mut c) => c.ping().await.is_ok(),
            Err(_) => false,
        };
        Err(Failure {
            server_up: up,
            msg: f.msg,
        })
    };
    let r = match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(Failure {
            server_up: false,
            msg: format!("query timed out after {timeout:?}"),
        }),
    };
    let _ = job.reply.send(r);
}

impl PoolService {
    /// The process's pool for `cfg` (started on first use, stopped when the last handle goes).
    fn get(cfg: &MysqlConfig, max: usize, timeout: Duration) -> Result<Arc<PoolService>, String> {
        let key = PoolKey {
            host: cfg.host.clone(),
            port: cfg.port,
            socket: cfg.socket.clone(),
            user: cfg.user.clone(),
            password: cfg.password.clone(),
            database: cfg.database.clone(),
            max,
        };
        let mut map = pools().lock().map_err(|_| "mysql pool registry poisoned")?;
        if let Some(p) = map.get(&key).and_then(Weak::upgrade) {
            return Ok(p);
        }
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE_DEPTH);
        let pool_opts = opts(cfg, true, max);
        std::thread::Builder::new()
            .name(format!("mysql {}", label(cfg)))
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    let shared = Arc::new(Shared {
                        current: Mutex::new((0, mysql_async::Pool::new(pool_opts.clone()))),
                        opts: pool_opts,
                    });
                    while let Some(job) = rx.recv().await {
                        tokio::spawn(run_job(Arc::clone(&shared), job, timeout));
                    }
                    let _ = shared.current().1.disconnect().await;
                });
            })
            .map_err(|e| format!("cannot start the mysql pool thread: {e}"))?;
        let p = Arc::new(PoolService {
            tx,
            health: Mutex::new(Health::default()),
            probe_limit: timeout + Duration::from_secs(1),
        });
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(key, Arc::downgrade(&p));
        Ok(p)
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Taken for down now: in its back-off, or past it with another query probing it.
    fn is_down(&self) -> bool {
        let h = self.health();
        let now = Instant::now();
        match (h.down_until, h.probe_since) {
            (None, _) => false,
            (Some(t), _) if now < t => true,
            (Some(_), Some(p)) => now < p + self.probe_limit,
            (Some(_), None) => false,
        }
    }

    /// May this query use the server? Past the back-off, the first query to ask becomes the
    /// probe.
    fn try_use(&self) -> bool {
        if self.is_down() {
            return false;
        }
        let mut h = self.health();
        if h.down_until.is_some() {
            h.probe_since = Some(Instant::now());
        }
        true
    }

    fn mark_up(&self) {
        let mut h = self.health();
        if h.down_until.is_some() || h.failures > 0 {
            *h = Health::default();
        }
    }

    fn mark_down(&self, msg: &str) {
        let mut h = self.health();
        let back = DOWN_FOR
            .saturating_mul(1 << h.failures.min(4))
            .min(DOWN_MAX);
        h.failures = h.failures.saturating_add(1);
        h.down_until = Some(Instant::now() + back);
        h.probe_since = None;
        h.last_error = msg.to_string();
    }

    fn last_error(&self) -> String {
        self.health().last_error.clone()
    }

    async fn run(
        &self,
        sql: &str,
        params: Vec<SqlValue>,
        want_rows: bool,
    ) -> Result<(Vec<Row>, u64), Failure> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            sql: sql.to_string(),
            params,
            want_rows,
            reply,
        };
        self.tx.try_send(job).map_err(|e| Failure {
            server_up: false,
            msg: match e {
                mpsc::error::TrySendError::Full(_) => "too many queries waiting".into(),
                mpsc::error::TrySendError::Closed(_) => "pool thread stopped".into(),
            },
        })?;
        answer.await.unwrap_or_else(|_| {
            Err(Failure {
                server_up: false,
                msg: "pool thread stopped".into(),
            })
        })
    }
}

/// `host:port` or the socket, for messages.
fn label(cfg: &MysqlConfig) -> String {
    match &cfg.socket {
        Some(s) => format!("{}:{}", cfg.host, s.display()),
        None => format!("{}:{}", cfg.host, cfg.port),
    }
}

/// One database server as the directory sees it.
pub(crate) struct Server {
    /// What it is, for messages: `master 10.0.0.1:3306`.
    name: String,
    pool: Arc<PoolService>,
}

impl Server {
    fn new(
        role: &str,
        cfg: &MysqlConfig,
        max: usize,
        timeout: Duration,
    ) -> Result<Server, LookupError> {
        Ok(Server {
            name: format!("{role} {}", label(cfg)),
            pool: PoolService::get(cfg, max, timeout).map_err(LookupError::Unavailable)?,
        })
    }

    /// Run on this server; a failure to answer marks it down.
    async fn run(
        &self,
        sql: &str,
        params: Vec<SqlValue>,
        want_rows: bool,
    ) -> Result<(Vec<Row>, u64), Failure> {
        let r = self.pool.run(sql, params, want_rows).await;
        match &r {
            Err(f) if !f.server_up => self.pool.mark_down(&f.msg),
            _ => self.pool.mark_up(),
        }
        r
    }

    fn unavailable(&self, msg: &str) -> LookupError {
        LookupError::Unavailable(format!("{}: {msg}", self.name))
    }
}

/// Which server reads try first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reads {
    /// Lookups: the local replica, then the master.
    Replica,
    /// Admin commands (they read what they are about to change): the master, then the
    /// replica.
    Master,
}

/// The servers of one database (the directory's, or the clusterinfo one).
pub(crate) struct MysqlDb {
    master: Server,
    replica: Option<Server>,
    reads: Reads,
}

impl MysqlDb {
    /// Connect to `local` (and `master`, when the local server is a replica); creates the
    /// database on the master when missing. Succeeds when either server answers. `role`
    /// names a lone server in messages (`mysql`, `cntrl`).
    pub(crate) async fn open(
        role: &str,
        local: &MysqlConfig,
        master: Option<&MysqlConfig>,
        reads: Reads,
        max: usize,
        timeout: Duration,
    ) -> Result<MysqlDb, LookupError> {
        let db = match master {
            Some(m) => MysqlDb {
                master: Server::new("master", m, max, timeout)?,
                replica: Some(Server::new("replica", local, max, timeout)?),
                reads,
            },
            None => MysqlDb {
                master: Server::new(role, local, max, timeout)?,
                replica: None,
                reads,
            },
        };
        let master_cfg = master.unwrap_or(local);
        match db.master.run("SELECT 1", vec![], true).await {
            Err(f) if f.msg.contains("1049") => {
                // ER_BAD_DB_ERROR: create the database, as IndiMail's installer would.
                let fut = async {
                    let mut c = mysql_async::Conn::new(opts(master_cfg, false, 1)).await?;
                    c.query_drop(format!(
                        "CREATE DATABASE IF NOT EXISTS `{}`",
                        master_cfg.database.replace('`', "")
                    ))
                    .await?;
                    c.disconnect().await
                };
                tokio::time::timeout(timeout, fut)
                    .await
                    .map_err(|e| db.master.unavailable(&e.to_string()))?
                    .map_err(|e| db.master.unavailable(&e.to_string()))?;
            }
            Err(f) if db.replica.is_none() => return Err(db.master.unavailable(&f.msg)),
            _ => {}
        }
        db.query("SELECT 1", vec![]).await?;
        Ok(db)
    }

    /// A lone server, not contacted yet (it was down when the directory opened): its
    /// queries answer "temporary failure" until it is back.
    pub(crate) fn unopened(
        role: &str,
        cfg: &MysqlConfig,
        max: usize,
        timeout: Duration,
    ) -> Result<MysqlDb, LookupError> {
        Ok(MysqlDb {
            master: Server::new(role, cfg, max, timeout)?,
            replica: None,
            reads: Reads::Master,
        })
    }

    /// Do both reach the same database (one pool)?
    pub(crate) fn same_pool(&self, other: &MysqlDb) -> bool {
        Arc::ptr_eq(&self.master.pool, &other.master.pool)
    }

    /// Is the master there to be written? (Schema creation is skipped when it is not.)
    pub(crate) fn master_down(&self) -> bool {
        self.master.pool.is_down()
    }

    /// A read: the preferred server, else the other one (see the module docs).
    pub(crate) async fn query(
        &self,
        sql: &str,
        params: Vec<SqlValue>,
    ) -> Result<Vec<Row>, LookupError> {
        self.query_with(self.reads, sql, params).await
    }

    /// A read with the given preference.
    pub(crate) async fn query_with(
        &self,
        reads: Reads,
        sql: &str,
        params: Vec<SqlValue>,
    ) -> Result<Vec<Row>, LookupError> {
        let Some(replica) = &self.replica else {
            return self.on(&self.master, sql, params, true).await.map(|r| r.0);
        };
        let order = match reads {
            Reads::Replica => [replica, &self.master],
            Reads::Master => [&self.master, replica],
        };
        let mut errors = Vec::new();
        for s in order {
            if !s.pool.try_use() {
                errors.push(format!("{} down ({})", s.name, s.pool.last_error()));
                continue;
            }
            match s.run(sql, params.clone(), true).await {
                Ok((rows, _)) => return Ok(rows),
                Err(f) if f.server_up => return Err(s.unavailable(&f.msg)),
                Err(f) => errors.push(format!("{}: {}", s.name, f.msg)),
            }
        }
        Err(LookupError::Unavailable(errors.join("; ")))
    }

    /// A write: the master only.
    pub(crate) async fn exec(&self, sql: &str, params: Vec<SqlValue>) -> Result<u64, LookupError> {
        self.on(&self.master, sql, params, false).await.map(|r| r.1)
    }

    async fn on(
        &self,
        s: &Server,
        sql: &str,
        params: Vec<SqlValue>,
        want_rows: bool,
    ) -> Result<(Vec<Row>, u64), LookupError> {
        // With no other server to go to, a single server is tried every time, as before
        // replication existed (a restarted server answers at once).
        if self.replica.is_some() && !s.pool.try_use() {
            return Err(s.unavailable(&format!(
                "down, not retried yet after: {}",
                s.pool.last_error()
            )));
        }
        s.run(sql, params, want_rows)
            .await
            .map_err(|f| s.unavailable(&f.msg))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> Arc<PoolService> {
        // No server is needed: nothing here sends a query (the pool connects lazily).
        let cfg =
            MysqlConfig::parse("127.0.0.1:u:p:1\n", std::path::Path::new("host.mysql")).unwrap();
        PoolService::get(&cfg, 1, Duration::from_secs(4)).unwrap()
    }

    #[test]
    fn back_off_doubles_and_one_query_probes() {
        let p = service();
        assert!(p.try_use() && !p.is_down());
        p.mark_down("refused");
        assert!(p.is_down() && !p.try_use());
        let left = |p: &PoolService| p.health().down_until.unwrap() - Instant::now();
        assert!(left(&p) <= DOWN_FOR && left(&p) > DOWN_FOR / 2);
        // The back-off is over: the first query probes, the others still skip.
        p.health().down_until = Some(Instant::now());
        assert!(p.try_use(), "the probe");
        assert!(!p.try_use(), "not while the probe runs");
        // The probe failed: twice as long.
        p.mark_down("refused again");
        assert!(left(&p) > DOWN_FOR && left(&p) <= DOWN_FOR * 2);
        for _ in 0..10 {
            p.mark_down("still refused");
        }
        assert!(left(&p) <= DOWN_MAX && left(&p) > DOWN_MAX / 2);
        assert_eq!(p.last_error(), "still refused");
        // A probe that never reports back does not keep the server skipped for ever.
        p.health().down_until = Some(Instant::now());
        assert!(p.try_use());
        p.health().probe_since = Some(Instant::now() - p.probe_limit);
        assert!(p.try_use(), "an abandoned probe is replaced");
        // An answer clears everything.
        p.mark_up();
        assert!(!p.is_down() && p.health().failures == 0);
    }
}

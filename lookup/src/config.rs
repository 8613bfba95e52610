//! Where the directory lives and how to reach its database: the home layout decided for
//! indimail-rs, `control/host.mysql`, `host.master` and `host.cntrl` (spec 4.1) and the
//! environment variables IndiMail uses.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cache::CachePolicy;
use crate::mcdinfo::{self, McdRecord};
use crate::password::HashMethod;
use crate::LookupError;

/// How to reach MySQL/MariaDB (from `control/host.mysql`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MysqlConfig {
    /// Host name or IP.
    pub host: String,
    /// User (default `indimail`).
    pub user: String,
    /// Password (default `ssh-1.5-`, IndiMail's).
    pub password: String,
    /// Unix socket, when the fourth field is a path.
    pub socket: Option<PathBuf>,
    /// TCP port, when the fourth field is a number (default 3306).
    pub port: u16,
    /// `ssl` given (accepted for compatibility; this build connects without TLS and says so
    /// in [`MysqlConfig::parse`]'s error when required).
    pub ssl: bool,
    /// Database name (`indimail`).
    pub database: String,
}

impl MysqlConfig {
    /// Parse the first non-empty, non-comment line of a `host.mysql` file:
    /// `host` or `host:user:password:socket-or-port[:ssl|nossl]`.
    pub fn parse(text: &str, file: &Path) -> Result<MysqlConfig, LookupError> {
        let lines = control::split_lines(text.as_bytes());
        let (lineno, line) = lines
            .iter()
            .map(|(i, l)| (*i, l.trim()))
            .find(|(_, l)| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(|| LookupError::Config {
                file: file.to_path_buf(),
                line: 0,
                reason: "empty file".into(),
            })?;
        let bad = |reason: String| LookupError::Config {
            file: file.to_path_buf(),
            line: lineno,
            reason,
        };
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 5 {
            return Err(bad(format!("too many fields ({})", f.len())));
        }
        let field = |i: usize| f.get(i).copied().filter(|s| !s.is_empty());
        let mut cfg = MysqlConfig {
            host: field(0).unwrap_or("localhost").to_string(),
            user: field(1).unwrap_or("indimail").to_string(),
            password: f.get(2).copied().unwrap_or("ssh-1.5-").to_string(),
            socket: None,
            port: 3306,
            ssl: false,
            database: "indimail".to_string(),
        };
        if let Some(sp) = field(3) {
            if sp.starts_with('/') {
                cfg.socket = Some(PathBuf::from(sp));
            } else {
                cfg.port = sp
                    .parse()
                    .map_err(|_| bad(format!("bad port or socket: {sp}")))?;
            }
        }
        match field(4) {
            None | Some("nossl") => {}
            Some("ssl") => {
                return Err(bad(
                    "ssl requested but this build connects to MySQL without TLS; use a unix socket or nossl"
                        .into(),
                ))
            }
            Some(o) => return Err(bad(format!("expected ssl or nossl, got {o}"))),
        }
        Ok(cfg)
    }
}

impl McdRecord {
    /// How to reach this record's database.
    pub fn mysql(&self) -> MysqlConfig {
        MysqlConfig {
            host: self.server.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            socket: None,
            port: self.port,
            ssl: self.use_ssl,
            database: self.database.clone(),
        }
    }
}

/// Which store holds the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    /// The embedded SQLite file.
    Sqlite(PathBuf),
    /// A MySQL/MariaDB server.
    Mysql(MysqlConfig),
}

/// Everything the directory needs to open.
#[derive(Debug, Clone)]
pub struct DirectoryConfig {
    /// The indimail-rs home (`--home`).
    pub home: PathBuf,
    /// Control files (`<home>/control`, env `CONTROLDIR`).
    pub control_dir: PathBuf,
    /// Domain config dirs (`<home>/domains`).
    pub domains_dir: PathBuf,
    /// Mailbox base (`BASE_PATH`, default `<home>/mail`).
    pub base_path: PathBuf,
    /// The store.
    pub backend: BackendConfig,
    /// Cache tuning.
    pub cache: CachePolicy,
    /// How often each shard checks the change counter (worst-case staleness after an admin
    /// change made through this crate).
    pub change_poll: Duration,
    /// Longest wait for one database round trip before answering "temporary failure"
    /// (IndiMail's inquery uses 4 s FIFO timeouts).
    pub query_timeout: Duration,
    /// POP/IMAP-before-SMTP window (`RELAY_CLEAR_MINUTES`, default 60).
    pub relay_window: Duration,
    /// Default password scheme (`PASSWORD_HASH`, else `control/hash_method`, else SHA-256).
    pub hash_method: HashMethod,
    /// The master for writes (`control/host.mysql`'s database is then the local replica
    /// lookups prefer). `None`: `host.mysql` takes reads and writes.
    pub master: Option<MysqlConfig>,
    /// The clusterinfo server (`control/host.cntrl`): the tables `hostcntrl`, `host_table`,
    /// `smtp_port` and `aliasdomain` are read and written there. `None`: in the directory's
    /// own database.
    pub cntrl: Option<MysqlConfig>,
    /// Most MySQL connections one process keeps to each database server, whatever the
    /// number of shards (`control/mysqlconnections`, `MYSQL_CONNECTIONS`; default
    /// [`DEFAULT_MYSQL_CONNECTIONS`]). See `db.rs` for why one pool per process.
    pub mysql_connections: usize,
    /// The MCD file (`control/mcdinfo`, or `MCDFILE`: a name in the control directory or a
    /// path starting with `/` or `.`).
    pub mcdinfo: PathBuf,
    /// This host's names, matched against an MCD record's `mdahost`: `control/hostid`, then
    /// `control/me` (each when present).
    pub host_names: Vec<String>,
    /// Domains whose database is not `host.mysql`: each listed domain's MCD record for this
    /// host (see [`mcdinfo::route_for`]). Their directory queries and admin writes go to that
    /// server; every other domain stays on `host.mysql`/`host.master`.
    pub domain_servers: Vec<McdRecord>,
}

/// Default of [`DirectoryConfig::mysql_connections`]: inlookup's installer runs 5 instances,
/// each with its connection.
pub const DEFAULT_MYSQL_CONNECTIONS: usize = 5;

/// Read an optional `host.mysql`-style file (`host.master`, `host.cntrl`).
fn optional_mysql(file: &Path) -> Result<Option<MysqlConfig>, LookupError> {
    match std::fs::read(file) {
        Ok(bytes) => MysqlConfig::parse(&String::from_utf8_lossy(&bytes), file).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LookupError::io(file, e)),
    }
}

/// A connection count from a control file or variable: a number from 1 to 1000.
fn connections(text: &str, file: &Path) -> Result<usize, LookupError> {
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=1000).contains(&n) => Ok(n),
        _ => Err(LookupError::Config {
            file: file.to_path_buf(),
            line: 1,
            reason: format!(
                "expected a connection count from 1 to 1000, got {:?}",
                text.trim()
            ),
        }),
    }
}

impl DirectoryConfig {
    /// Resolve the configuration for `home`, reading `CONTROLDIR`, `BASE_PATH`,
    /// `RELAY_CLEAR_MINUTES`, `PASSWORD_HASH`, `control/host.mysql` and
    /// `control/hash_method`.
    pub fn from_home(home: &Path) -> Result<DirectoryConfig, LookupError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let control_dir = match env("CONTROLDIR") {
            Some(c) if c.starts_with('/') => PathBuf::from(c),
            Some(c) => home.join(c),
            None => home.join("control"),
        };
        let base_path = env("BASE_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join("mail"));
        let mut cfg = DirectoryConfig::with_paths(home, control_dir, base_path)?;
        if let Some(m) = env("RELAY_CLEAR_MINUTES") {
            let mins: u64 = m.parse().map_err(|_| LookupError::Config {
                file: PathBuf::from("$RELAY_CLEAR_MINUTES"),
                line: 0,
                reason: format!("not a number: {m}"),
            })?;
            cfg.relay_window = Duration::from_secs(mins * 60);
        }
        if let Some(h) = env("PASSWORD_HASH") {
            cfg.hash_method = HashMethod::parse(&h)?;
        }
        if let Some(n) = env("MYSQL_CONNECTIONS") {
            cfg.mysql_connections = connections(&n, Path::new("$MYSQL_CONNECTIONS"))?;
        }
        if let Some(f) = env("MCDFILE") {
            cfg.mcdinfo = mcd_path(&cfg.control_dir, &f);
            cfg.load_domain_servers()?;
        }
        Ok(cfg)
    }

    /// Like [`DirectoryConfig::from_home`] but with explicit paths and no environment.
    pub fn with_paths(
        home: &Path,
        control_dir: PathBuf,
        base_path: PathBuf,
    ) -> Result<DirectoryConfig, LookupError> {
        let host_mysql = control_dir.join("host.mysql");
        let master = optional_mysql(&control_dir.join("host.master"))?;
        let cntrl = optional_mysql(&control_dir.join("host.cntrl"))?;
        // host.master alone: the master is the only server (reads and writes).
        let (backend, master) = match (optional_mysql(&host_mysql)?, master) {
            (Some(local), master) => (BackendConfig::Mysql(local), master),
            (None, Some(master)) => (BackendConfig::Mysql(master), None),
            (None, None) => (
                BackendConfig::Sqlite(home.join("db").join("indimail.sqlite")),
                None,
            ),
        };
        if let (Some(_), BackendConfig::Sqlite(_)) = (&cntrl, &backend) {
            return Err(LookupError::Config {
                file: control_dir.join("host.cntrl"),
                line: 0,
                reason: "a clusterinfo database needs the directory in MySQL too (host.mysql)"
                    .into(),
            });
        }
        // Unreadable files keep the defaults, as before: these are tuning, not identity.
        let control = control::ControlDir::new(&control_dir);
        let first_line = |name: &str| control.string(name).ok().flatten();
        let conn_file = control_dir.join("mysqlconnections");
        let mysql_connections = match first_line("mysqlconnections") {
            Some(t) => connections(&t, &conn_file)?,
            None => DEFAULT_MYSQL_CONNECTIONS,
        };
        let hm_file = control_dir.join("hash_method");
        let hash_method = match first_line("hash_method") {
            Some(t) => HashMethod::parse(&t).map_err(|_| LookupError::Config {
                file: hm_file.clone(),
                line: 1,
                reason: format!("unknown hash method {t}"),
            })?,
            None => HashMethod::default(),
        };
        let host_names = ["hostid", "me"]
            .iter()
            .filter_map(|f| first_line(f))
            .collect();
        let mut cfg = DirectoryConfig {
            mcdinfo: control_dir.join(mcdinfo::MCDINFO_FILE),
            host_names,
            domain_servers: Vec::new(),
            home: home.to_path_buf(),
            domains_dir: home.join("domains"),
            control_dir,
            base_path,
            backend,
            cache: CachePolicy::default(),
            change_poll: Duration::from_secs(1),
            query_timeout: Duration::from_secs(4),
            relay_window: Duration::from_secs(60 * 60),
            hash_method,
            master,
            cntrl,
            mysql_connections,
        };
        cfg.load_domain_servers()?;
        Ok(cfg)
    }

    /// Read the MCD file (absent: no domain is routed) into [`Self::domain_servers`].
    fn load_domain_servers(&mut self) -> Result<(), LookupError> {
        let records = match std::fs::read_to_string(&self.mcdinfo) {
            Ok(text) => mcdinfo::parse(&text, &self.mcdinfo)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(LookupError::io(&self.mcdinfo, e)),
        };
        let mut domains: Vec<&str> = records.iter().map(|r| r.domain.as_str()).collect();
        domains.sort_unstable();
        domains.dedup();
        self.domain_servers = domains
            .iter()
            .filter_map(|d| mcdinfo::route_for(&records, d, &self.host_names))
            .cloned()
            .collect();
        if let Some(r) = self.domain_servers.iter().find(|r| r.use_ssl) {
            return Err(LookupError::Config {
                file: self.mcdinfo.clone(),
                line: 0,
                reason: format!(
                    "use_ssl 1 for {}: this build connects to MySQL without TLS; use 0",
                    r.domain
                ),
            });
        }
        if !self.domain_servers.is_empty() && matches!(self.backend, BackendConfig::Sqlite(_)) {
            return Err(LookupError::Config {
                file: self.mcdinfo.clone(),
                line: 0,
                reason: "routing domains to database servers needs the directory in MySQL too (host.mysql)"
                    .into(),
            });
        }
        Ok(())
    }

    /// The database server of `domain` when the MCD file routes it elsewhere.
    pub fn domain_server(&self, domain: &str) -> Option<&McdRecord> {
        self.domain_servers.iter().find(|r| r.domain == domain)
    }
}

/// `MCDFILE` as IndiMail resolves it: a path when it starts with `/` or `.`, else a name in
/// the control directory.
pub(crate) fn mcd_path(control_dir: &Path, name: &str) -> PathBuf {
    if name.starts_with('/') || name.starts_with('.') {
        PathBuf::from(name)
    } else {
        control_dir.join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_mysql_forms() {
        let p = Path::new("host.mysql");
        let c = MysqlConfig::parse("db.example\n", p).unwrap();
        assert_eq!(c.host, "db.example");
        assert_eq!(c.user, "indimail");
        assert_eq!(c.port, 3306);
        let c = MysqlConfig::parse("# c\n127.0.0.1:root:pw:3307\n", p).unwrap();
        assert_eq!(
            (c.user.as_str(), c.password.as_str(), c.port),
            ("root", "pw", 3307)
        );
        let c = MysqlConfig::parse("localhost:u:p:/run/my.sock:nossl", p).unwrap();
        assert_eq!(c.socket.as_deref(), Some(Path::new("/run/my.sock")));
        let e = MysqlConfig::parse("\nh:u:p:notaport", p).unwrap_err();
        assert!(e.to_string().starts_with("host.mysql:2:"), "{e}");
        assert!(MysqlConfig::parse("", p).is_err());
        assert!(MysqlConfig::parse("h:u:p:1:ssl", p).is_err());
    }

    #[test]
    fn mcdinfo_routes_this_hosts_domains() {
        let t = tempfile::tempdir().unwrap();
        let ctl = t.path().join("control");
        std::fs::create_dir_all(&ctl).unwrap();
        let open = || DirectoryConfig::with_paths(t.path(), ctl.clone(), t.path().join("mail"));
        let mcd = "domain a.example 1\nserver db1\nmdahost store1\n\n\
                   domain a.example 1\nserver db2\nmdahost store2\n\n\
                   domain b.example\nserver db3\nmdahost store9\n";
        std::fs::write(ctl.join("mcdinfo"), mcd).unwrap();
        let e = open().unwrap_err().to_string();
        assert!(e.contains("needs the directory in MySQL"), "{e}");
        std::fs::write(ctl.join("host.mysql"), "127.0.0.1\n").unwrap();
        std::fs::write(ctl.join("hostid"), "store2\n").unwrap();
        let c = open().unwrap();
        let server = |d: &str| c.domain_server(d).map(|r| r.server.clone());
        assert_eq!(server("a.example").as_deref(), Some("db2"));
        assert_eq!(server("b.example").as_deref(), Some("db3"));
        assert_eq!(server("c.example"), None);
        std::fs::write(
            ctl.join("mcdinfo"),
            "domain a.example\nserver db1\nmdahost m\nuse_ssl 1\n",
        )
        .unwrap();
        let e = open().unwrap_err().to_string();
        assert!(e.contains("without TLS"), "{e}");
        std::fs::write(ctl.join("mcdinfo"), "domain a.example\nserver db1\n").unwrap();
        let e = open().unwrap_err().to_string();
        assert!(
            e.contains("mcdinfo:1: domain a.example has no mdahost"),
            "{e}"
        );
    }

    #[test]
    fn sqlite_when_no_host_mysql() {
        let t = tempfile::tempdir().unwrap();
        let c =
            DirectoryConfig::with_paths(t.path(), t.path().join("control"), t.path().join("mail"))
                .unwrap();
        assert_eq!(
            c.backend,
            BackendConfig::Sqlite(t.path().join("db/indimail.sqlite"))
        );
        assert_eq!(c.mysql_connections, DEFAULT_MYSQL_CONNECTIONS);
    }

    #[test]
    fn master_replica_and_cntrl_files() {
        let t = tempfile::tempdir().unwrap();
        let ctl = t.path().join("control");
        std::fs::create_dir_all(&ctl).unwrap();
        let open = || DirectoryConfig::with_paths(t.path(), ctl.clone(), t.path().join("mail"));
        std::fs::write(ctl.join("host.master"), "10.0.0.1:u:p:3306\n").unwrap();
        let c = open().unwrap();
        assert!(matches!(&c.backend, BackendConfig::Mysql(m) if m.host == "10.0.0.1"));
        assert_eq!(c.master, None, "host.master alone is the only server");
        std::fs::write(ctl.join("host.mysql"), "127.0.0.1:u:p:3307\n").unwrap();
        std::fs::write(ctl.join("host.cntrl"), "10.0.0.9\n").unwrap();
        std::fs::write(ctl.join("mysqlconnections"), "2\n").unwrap();
        let c = open().unwrap();
        assert!(matches!(&c.backend, BackendConfig::Mysql(m) if m.port == 3307));
        assert_eq!(c.master.as_ref().map(|m| m.host.as_str()), Some("10.0.0.1"));
        assert_eq!(c.cntrl.as_ref().map(|m| m.host.as_str()), Some("10.0.0.9"));
        assert_eq!(c.mysql_connections, 2);
        std::fs::write(ctl.join("mysqlconnections"), "0\n").unwrap();
        let e = open().unwrap_err().to_string();
        assert!(e.contains("mysqlconnections:1:"), "{e}");
    }
}

//! A private MariaDB server for tests.
//!
//! `MariaDb::start()` runs `mariadbd` on a temporary data directory, a unix socket inside it
//! and an ephemeral loopback port, with `--skip-grant-tables` (any user, no password), its
//! error log in `<datadir>/error.log`. The system MariaDB on 3306 is never touched. The data
//! directory is initialised once per test process with `mariadb-install-db` and copied for
//! each server, so starting one costs about a second. The server is killed on drop, or
//! earlier with [`MariaDb::stop`] (to test outages), and started again on the same data and
//! port with [`MariaDb::restart`].
//!
//! [`MariaDb::start_primary`] and [`MariaDb::start_replica`] make a pair with binlog
//! replication (GTID, from the primary's first event), and [`MariaDb::sql`] runs a statement
//! with the `mariadb` client.
//!
//! When `mariadbd` is not installed this panics naming the Debian package `mariadb-server`:
//! a missing database must fail the suite, never skip it.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A running private server.
pub struct MariaDb {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Loopback TCP port.
    pub port: u16,
    /// Unix socket path.
    pub socket: PathBuf,
    /// Extra `mariadbd` arguments (binlog and server id of a replication pair).
    args: Vec<String>,
}

fn find(prog: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"])
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file());
    found
}

fn require(prog: &str) -> PathBuf {
    find(prog).unwrap_or_else(|| {
        panic!(
            "{prog} not found: the lookup tests need a real MariaDB; install the Debian package \
             `mariadb-server` (apt-get install -y mariadb-server)"
        )
    })
}

fn is_root() -> bool {
    std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || std::fs::read_to_string("/proc/self/status")
            .map(|s| {
                s.lines()
                    .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false)
}

/// The initialised data directory every server copies.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<tempfile::TempDir> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let install = require("mariadb-install-db");
            require("mariadbd");
            let t = tempfile::tempdir().expect("tempdir");
            let data = t.path().join("data");
            let mut cmd = Command::new(install);
            cmd.arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg("--skip-test-db")
                .arg("--auth-root-authentication-method=normal")
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            if is_root() {
                cmd.arg("--user=root");
            }
            let out = cmd.output().expect("run mariadb-install-db");
            assert!(
                out.status.success(),
                "mariadb-install-db failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            t
        })
        .path()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("ephemeral port")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read template") {
        let e = e.expect("entry");
        let dst = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).expect("copy");
        }
    }
}

impl MariaDb {
    /// Start a fresh server and wait until it accepts connections (60 s at most).
    pub fn start() -> MariaDb {
        MariaDb::start_with(&["--skip-log-bin"])
    }

    /// A replication primary: binary log on (row format), server id 1.
    pub fn start_primary() -> MariaDb {
        MariaDb::start_with(&["--log-bin=binlog", "--binlog-format=ROW", "--server-id=1"])
    }

    /// A replica of `primary` (server id 2), replicating every event of the primary's binary
    /// log by GTID, retrying each second while the primary is away. `read_only` is set as
    /// a production replica would have it (under `--skip-grant-tables` every user may still
    /// write, so a test must check for itself that the directory does not).
    pub fn start_replica(primary: &MariaDb) -> MariaDb {
        let replica = MariaDb::start_with(&[
            "--skip-log-bin",
            "--server-id=2",
            "--relay-log=relay",
            "--read-only=1",
        ]);
        replica.sql(&format!(
            "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='root', \
             MASTER_PASSWORD='', MASTER_CONNECT_RETRY=1, MASTER_USE_GTID=slave_pos; START SLAVE",
            primary.port
        ));
        replica
    }

    /// Wait until this replica has applied everything `primary` has written (60 s at most).
    pub fn wait_caught_up(&self, primary: &MariaDb) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let want = primary.sql("SELECT @@gtid_binlog_pos");
            let have = self.sql("SELECT @@gtid_slave_pos");
            if want.trim() == have.trim() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica not caught up after 60 s: primary at {want:?}, replica at {have:?}; {}",
                self.sql("SHOW SLAVE STATUS\\G")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Run SQL with the `mariadb` client over the socket; tab-separated rows, no header.
    pub fn sql(&self, sql: &str) -> String {
        let client = find("mariadb").unwrap_or_else(|| require("mysql"));
        let out = Command::new(client)
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-uroot", "-N", "-B", "-e", sql])
            .output()
            .expect("run the mariadb client");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Start a fresh server with extra `mariadbd` arguments.
    pub fn start_with(args: &[&str]) -> MariaDb {
        let template = template().join("data");
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        copy_dir(&template, &data);
        let socket = dir.path().join("mysqld.sock");
        let mut db = MariaDb {
            child: None,
            dir,
            port: free_port(),
            socket,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        db.spawn();
        db
    }

    /// Start the server again after [`MariaDb::stop`], on the same data and port (the end
    /// of an outage).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn spawn(&mut self) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("error.log");
        // Readiness is judged by the log's last start only.
        let _ = std::fs::remove_file(&log);
        let port = self.port;
        let mut cmd = Command::new(require("mariadbd"));
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", self.socket.display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--skip-grant-tables")
            .arg(format!(
                "--pid-file={}",
                self.dir.path().join("mysqld.pid").display()
            ))
            .arg(format!("--log-error={}", log.display()))
            .arg(format!("--tmpdir={}", self.dir.path().display()))
            .arg("--innodb-buffer-pool-size=16M")
            .args(&self.args)
            .arg("--max-connections=200")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if is_root() {
            cmd.arg("--user=root");
        }
        self.child = Some(cmd.spawn().expect("spawn mariadbd"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!(
                        "mariadbd exited with {status}; log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
            let ready = std::fs::read_to_string(&log)
                .map(|l| l.contains("ready for connections"))
                .unwrap_or(false);
            if ready
                && TcpStream::connect_timeout(
                    &SocketAddr::from(([127, 0, 0, 1], port)),
                    Duration::from_millis(200),
                )
                .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd not ready after 60 s; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The `control/host.mysql` line that reaches this server over TCP.
    pub fn host_mysql(&self) -> String {
        format!("127.0.0.1:root::{}\n", self.port)
    }

    /// Kill the server now (an outage, as abrupt as a crash).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The server's data directory (for inspection).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.stop();
    }
}

//! Shared test support: a private MariaDB and a temporary indimail home on either backend.

#![allow(dead_code)]

pub mod mariadb;

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use lookup::{Admin, CachePolicy, Clock, Directory, DirectoryConfig, ManualClock, RefreshMode};

/// Which store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The embedded SQLite file.
    Sqlite,
    /// A private MariaDB server.
    Mariadb,
}

/// A temporary home (control dir, db, domains, mail) wired to one backend.
pub struct TestEnv {
    pub home: tempfile::TempDir,
    pub db: Option<mariadb::MariaDb>,
    pub kind: Kind,
}

impl TestEnv {
    pub fn new(kind: Kind) -> TestEnv {
        let home = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(home.path().join("control")).expect("control dir");
        let db = match kind {
            Kind::Sqlite => None,
            Kind::Mariadb => {
                let db = mariadb::MariaDb::start();
                std::fs::write(home.path().join("control/host.mysql"), db.host_mysql())
                    .expect("host.mysql");
                Some(db)
            }
        };
        TestEnv { home, db, kind }
    }

    pub fn path(&self) -> &Path {
        self.home.path()
    }

    /// Configuration without reading the environment, with a short query timeout.
    pub fn config(&self) -> DirectoryConfig {
        let h = self.home.path();
        let mut c =
            DirectoryConfig::with_paths(h, h.join("control"), h.join("mail")).expect("config");
        c.query_timeout = Duration::from_secs(3);
        c.cache = CachePolicy {
            positive_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
            refresh_window: Duration::from_secs(30),
            max_stale: Duration::from_secs(3600),
            capacity: 1000,
        };
        c
    }

    pub async fn admin(&self) -> Admin {
        Admin::open(self.config()).await.expect("admin open")
    }

    /// The admin handle, with example.com added.
    pub async fn admin_with_domain(&self) -> Admin {
        let admin = self.admin().await;
        admin
            .domain_add("example.com", &lookup::DomainOptions::default())
            .await
            .unwrap();
        admin
    }

    pub async fn directory(&self, clock: Rc<ManualClock>, cfg: DirectoryConfig) -> Directory {
        let clock: Rc<dyn Clock> = clock;
        Directory::open_with(cfg, clock, RefreshMode::Inline)
            .await
            .expect("directory open")
    }

    pub fn maildir(&self, rel: &str) -> PathBuf {
        self.home.path().join("mail").join(rel)
    }
}

/// Run a test future on a single-threaded runtime inside a LocalSet (as a shard does).
pub fn run<F: std::future::Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, f)
}

/// Generate one `#[test]` per backend for each listed `fn name(kind: Kind)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $name() { super::$name(super::support::Kind::Sqlite) } )*
        }
        mod mariadb {
            $( #[test] fn $name() { super::$name(super::support::Kind::Mariadb) } )*
        }
    };
}

/// Run the admin tool `name` (IndiMail's program name) in-process on `home`: its exit code
/// and standard output.
pub fn program(home: &Path, name: &str, args: &[&str]) -> (i32, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut out = Vec::new();
    let code = lookup::cli::run_as_program(&format!("/usr/bin/{name}"), &args, home, &mut out)
        .expect("known program");
    (code, String::from_utf8(out).expect("utf-8 output"))
}

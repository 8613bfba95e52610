//! Shared test support: a temporary indimail home with users, the servers of this crate on
//! a shard runtime of either driver, a line client, and a private Dovecot.

#![allow(dead_code)]

pub mod dovecot;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use lookup::{Admin, DirectoryConfig, DomainOptions, UserChange, UserFlags, UserOptions};
use proxies::{ProxyConfig, ProxyContext};
use shard::io::Driver;

pub const DRIVERS: [Driver; 2] = [Driver::Uring, Driver::Epoll];

/// A temporary home with domain `example.com`: `amy` (password `secret`), `bob`
/// (`secret`, NO_IMAP and NO_POP).
pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Home {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("control")).expect("control");
        let home = Home { dir };
        let cfg = home.config();
        shard::io::run(Driver::Epoll, async move {
            let admin = Admin::open(cfg).await.expect("admin");
            admin
                .domain_add("example.com", &DomainOptions::default())
                .await
                .expect("domain");
            for u in ["amy@example.com", "bob@example.com"] {
                admin
                    .user_add(u, "secret", &UserOptions::default())
                    .await
                    .expect("user");
            }
            admin
                .user_mod(
                    "bob@example.com",
                    &UserChange {
                        set_flags: UserFlags::NO_IMAP | UserFlags::NO_POP,
                        ..UserChange::default()
                    },
                )
                .await
                .expect("flags");
            admin.close().await;
        });
        home
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config(&self) -> DirectoryConfig {
        let h = self.dir.path();
        DirectoryConfig::with_paths(h, h.join("control"), h.join("mail")).expect("config")
    }

    /// Run an admin change.
    pub fn admin<F, Fut>(&self, f: F)
    where
        F: FnOnce(Admin) -> Fut,
        Fut: std::future::Future<Output = Admin>,
    {
        let cfg = self.config();
        shard::io::run(Driver::Epoll, async move {
            let admin = Admin::open(cfg).await.expect("admin");
            f(admin).await.close().await;
        });
    }

    /// amy's Maildir.
    pub fn maildir(&self, email: &str) -> PathBuf {
        let cfg = self.config();
        let email = email.to_string();
        shard::io::run(Driver::Epoll, async move {
            let admin = Admin::open(cfg).await.expect("admin");
            let u = admin.user_info(&email).await.expect("user");
            admin.close().await;
            u.maildir()
        })
    }

    /// Is there a relay row for 127.0.0.1 (POP/IMAP-before-SMTP)?
    pub fn relay_allowed(&self) -> bool {
        let cfg = self.config();
        shard::io::run(Driver::Epoll, async move {
            let d = lookup::Directory::open(cfg).await.expect("dir");
            d.relay_allowed("127.0.0.1".parse().unwrap())
                .await
                .expect("relay")
        })
    }
}

impl Home {
    /// `email`'s `lastauth` rows as `(service, remote_ip)`, waiting up to 10 s for a row of
    /// `service` (the proxies write it from a task of its own after the login).
    pub fn lastauth(&self, email: &str, service: &str) -> Vec<(String, String)> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let cfg = self.config();
            let email = email.to_string();
            let rows = shard::io::run(Driver::Epoll, async move {
                let d = lookup::Directory::open(cfg).await.expect("dir");
                d.lastauth(&email).await.expect("lastauth")
            });
            let rows: Vec<(String, String)> =
                rows.into_iter().map(|r| (r.service, r.remote_ip)).collect();
            if rows.iter().any(|(s, _)| s == service) || std::time::Instant::now() > deadline {
                return rows;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    ImapProxy,
    Pop3Proxy,
    Pop3,
    /// The Maildir server with implicit TLS.
    Pop3s,
    /// The IMAP proxy with implicit TLS.
    ImapsProxy,
    /// The POP3 proxy with implicit TLS.
    Pop3sProxy,
}

/// One of our servers on its own shard thread; stopped and joined on drop.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn start(kind: Kind, driver: Driver, home: &Home, config: ProxyConfig) -> Server {
        Server::start_tls(kind, driver, home, config, None)
    }

    /// With `servercert.pem` from `cert_dir` (see [`self_signed`]).
    pub fn start_tls(
        kind: Kind,
        driver: Driver,
        home: &Home,
        config: ProxyConfig,
        cert_dir: Option<PathBuf>,
    ) -> Server {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let dcfg = home.config();
        let thread = std::thread::spawn(move || {
            shard::io::run(driver, async move {
                let directory = lookup::Directory::open(dcfg).await.expect("directory");
                let tls = cert_dir.map(|d| {
                    Rc::new(
                        tls::CertStore::load(
                            tls::CertPaths::in_dir(d),
                            tls::ServerOptions::default(),
                        )
                        .expect("cert store"),
                    )
                });
                let ctx = Rc::new(ProxyContext {
                    directory: Rc::new(Rc::new(directory)),
                    config,
                    tls,
                });
                let listener = shard::io::TcpListener::from_std(l).expect("listener");
                let stop = async {
                    let _ = rx.await;
                };
                match kind {
                    Kind::ImapProxy => proxies::serve_imap_proxy(listener, ctx, stop).await,
                    Kind::Pop3Proxy => proxies::serve_pop3_proxy(listener, ctx, stop).await,
                    Kind::Pop3 => proxies::serve_pop3(listener, ctx, stop).await,
                    Kind::Pop3s => proxies::serve_pop3s(listener, ctx, stop).await,
                    Kind::ImapsProxy => proxies::serve_imaps_proxy(listener, ctx, stop).await,
                    Kind::Pop3sProxy => proxies::serve_pop3s_proxy(listener, ctx, stop).await,
                }
            })
        });
        Server {
            addr,
            stop: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let r = t.join();
            if !std::thread::panicking() {
                r.expect("server thread panicked");
            }
        }
    }
}

/// A proxy configuration for tests: quiet, short timeouts.
pub fn config() -> ProxyConfig {
    ProxyConfig {
        log: false,
        command_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(5),
        // Clear-text logins from loopback without TLS (the default needs TLS first).
        plaintext_auth: vec!["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()],
        ..ProxyConfig::default()
    }
}

/// A blocking line client.
pub struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Client {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    pub fn send(&mut self, bytes: &str) {
        self.w.write_all(bytes.as_bytes()).expect("send");
    }

    /// One line with its CRLF.
    pub fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).expect("read line");
        l
    }

    /// Lines up to and including the one starting with `tag `.
    pub fn until_tagged(&mut self, tag: &str) -> String {
        let mut all = String::new();
        loop {
            let l = self.line();
            assert!(!l.is_empty(), "connection closed; got so far: {all}");
            all.push_str(&l);
            if l.starts_with(&format!("{tag} ")) {
                return all;
            }
        }
    }

    /// IMAP: send `tag cmd` and read up to the tagged reply.
    pub fn imap(&mut self, tag: &str, cmd: &str) -> String {
        self.send(&format!("{tag} {cmd}\r\n"));
        self.until_tagged(tag)
    }

    /// POP3: send a command, read one line.
    pub fn pop(&mut self, cmd: &str) -> String {
        self.send(&format!("{cmd}\r\n"));
        self.line()
    }

    /// POP3 multi-line body after a `+OK` line, up to `.` (raw, still stuffed).
    pub fn multiline(&mut self) -> String {
        let mut all = String::new();
        loop {
            let l = self.line();
            assert!(!l.is_empty(), "closed in multi-line: {all}");
            if l == ".\r\n" {
                return all;
            }
            all.push_str(&l);
        }
    }

    /// Everything until the server closes (lossy text).
    pub fn rest(&mut self) -> String {
        let mut v = Vec::new();
        self.r.read_to_end(&mut v).expect("server closes");
        String::from_utf8_lossy(&v).into_owned()
    }

    /// True when the server closed the connection (read returns 0).
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.r.read(&mut b), Ok(0) | Err(_))
    }
}

/// Writes a message into `maildir/new` (LF line ends, as delivery stores them), with the
/// usual `,S=` size in the name.
pub fn deliver(maildir: &Path, unique: &str, body: &str) -> PathBuf {
    std::fs::create_dir_all(maildir.join("new")).unwrap();
    std::fs::create_dir_all(maildir.join("cur")).unwrap();
    std::fs::create_dir_all(maildir.join("tmp")).unwrap();
    let p = maildir
        .join("new")
        .join(format!("{unique},S={}", body.len()));
    std::fs::write(&p, body).unwrap();
    p
}

/// A port nobody listens on (bound, then released).
pub fn dead_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A listener standing in for a mailstore that must never be contacted.
pub struct Sentinel(std::net::TcpListener);

impl Sentinel {
    pub fn new() -> Sentinel {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        Sentinel(l)
    }
    pub fn addr(&self) -> SocketAddr {
        self.0.local_addr().unwrap()
    }
    pub fn touched(&self) -> bool {
        self.0.accept().is_ok()
    }
}

/// A directory holding a self-signed `servercert.pem` for `localhost`.
pub fn self_signed() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    tls::create_self_signed(d.path(), "localhost").expect("self-signed cert");
    d
}

//! Test harness: runs the real `indimail` binary on a private home with
//! ephemeral loopback ports, and a small blocking SMTP client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const DRIVERS: [&str; 2] = ["uring", "epoll"];

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_indimail")
}

/// A running `indimail serve`.
pub struct Server {
    pub child: Option<Child>,
    pub home: PathBuf,
    pub smtp: SocketAddr,
    pub driver: String,
}

impl Server {
    /// Starts a server on `home` with one SMTP listener on an ephemeral
    /// port, accepting and queueing only (delivery off), so tests of the
    /// accept path can look at the queue.
    pub fn start(home: &Path, driver: &str) -> Server {
        Self::start_with(home, driver, &[("INDIMAIL_NO_DELIVERY", "1")])
    }

    /// Like `start`, with delivery on.
    pub fn start_delivering(home: &Path, driver: &str) -> Server {
        Self::start_with(home, driver, &[])
    }

    pub fn start_with(home: &Path, driver: &str, env: &[(&str, &str)]) -> Server {
        let listeners = [("smtp", SocketAddr::from(([127, 0, 0, 1], 0)))];
        Self::start_services(home, driver, &listeners, env).0
    }

    /// `indimail serve` with the given listeners (service name as in
    /// `--<service>`, address; port 0 = ephemeral); returns the server (its
    /// `smtp` field is the smtp listener, or port 0 when there is none) and
    /// every listener's address by service name.
    pub fn start_services(
        home: &Path,
        driver: &str,
        listeners: &[(&str, SocketAddr)],
        env: &[(&str, &str)],
    ) -> (Server, std::collections::HashMap<String, SocketAddr>) {
        Self::start_full(home, driver, listeners, &[], env)
    }

    /// Like `start_services`, with extra `serve` arguments (e.g. `--cpus 0`).
    pub fn start_full(
        home: &Path,
        driver: &str,
        listeners: &[(&str, SocketAddr)],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (Server, std::collections::HashMap<String, SocketAddr>) {
        std::fs::create_dir_all(home).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(home.join("serve.log"))
            .unwrap();
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--home"]).arg(home);
        for (svc, addr) in listeners {
            cmd.arg(format!("--{svc}")).arg(addr.to_string());
        }
        cmd.args(args);
        cmd.env("INDIMAIL_DRIVER", driver)
            // Tests run as root: stay root (serve refuses root without a
            // user to drop to, see privs.rs); a test may override.
            .env("INDIMAIL_ALLOW_ROOT", "1")
            .env_remove("QUEUEDIR")
            .env_remove("INDIMAIL_HOME")
            .stdout(Stdio::piped())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn indimail serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some((svc, a)) = line.split_once(" listening on ") {
                    if let Ok(a) = a.trim().parse::<SocketAddr>() {
                        let _ = tx.send((svc.to_string(), a));
                    }
                }
            }
        });
        let mut ports = std::collections::HashMap::new();
        while ports.len() < listeners.len() {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok((svc, a)) => {
                    ports.insert(svc, a);
                }
                Err(_) => {
                    let _ = child.kill();
                    let log = std::fs::read_to_string(home.join("serve.log")).unwrap_or_default();
                    panic!("server did not start; log:\n{log}");
                }
            }
        }
        let smtp = ports
            .get("smtp")
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let server = Server {
            child: Some(child),
            home: home.to_path_buf(),
            smtp,
            driver: driver.to_string(),
        };
        (server, ports)
    }

    /// SIGTERM and wait; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        self.sigterm();
        self.wait_exit()
    }

    /// SIGTERM only: the server starts stopping (its drain), the test goes on.
    pub fn sigterm(&self) {
        if let Some(child) = &self.child {
            // SAFETY: plain kill(2) on our child's pid.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
        }
    }

    /// Waits (up to 20 s) for a server told to stop; returns the exit status code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("server did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, no cleanup (crash test).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.join("serve.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes admin users (name, password, permissions) into `home`'s control/adminusers with
/// `indimail admin-users set`, each password in `home/<name>.pw`.
pub fn set_admin_users(home: &Path, admins: &[(&str, &str, &str)]) {
    for (name, pw, allow) in admins {
        let f = home.join(format!("{name}.pw"));
        std::fs::write(&f, format!("{pw}\n")).unwrap();
        let f = f.to_str().unwrap();
        let args = [
            "admin-users",
            "set",
            name,
            "--password-file",
            f,
            "--allow",
            allow,
        ];
        let (c, out, err) = indimail(home, &args);
        assert_eq!(c, 0, "admin-users set {name}: {out}{err}");
    }
}

/// Runs `indimail` with args on `home`; returns (status, stdout, stderr).
pub fn indimail(home: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .arg("--home")
        .arg(home)
        .env_remove("QUEUEDIR")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A blocking SMTP client for tests.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::over(TcpStream::connect(addr).unwrap())
    }

    /// A client connecting from the loopback address `from` (all of 127/8
    /// is lo, so each is a distinct client address for the server).
    pub fn connect_from(from: [u8; 4], addr: SocketAddr) -> Client {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::from((from, 0)).into()).unwrap();
        s.connect(&addr.into()).unwrap();
        Client::over(s.into())
    }

    fn over(stream: TcpStream) -> Client {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn from_stream(stream: TcpStream) -> Client {
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// Like `reply` but code 0 when the connection failed.
    pub fn try_reply(&mut self) -> (u16, String) {
        self.reply()
    }

    /// Like `cmd` but never panics: code 0 when the connection failed.
    pub fn try_cmd(&mut self, line: &str) -> (u16, String) {
        if self.try_send(format!("{line}\r\n").as_bytes()).is_err() {
            return (0, String::new());
        }
        self.reply()
    }

    pub fn try_send(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(data)
    }

    /// Reads one (possibly multi-line) reply; returns (code, full text).
    pub fn reply(&mut self) -> (u16, String) {
        let mut text = String::new();
        loop {
            let line = self.line();
            text.push_str(&line);
            text.push('\n');
            if line.len() < 4 || line.as_bytes()[3] == b' ' {
                let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                return (code, text);
            }
        }
    }

    fn line(&mut self) -> String {
        loop {
            if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let l = String::from_utf8_lossy(&self.buf[..p]).into_owned();
                self.buf.drain(..p + 2);
                return l;
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).unwrap_or(0);
            if n == 0 {
                let l = String::from_utf8_lossy(&self.buf).into_owned();
                self.buf.clear();
                return l;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub fn send(&mut self, data: &[u8]) {
        self.stream.write_all(data).unwrap();
    }

    /// Sends a command line and returns its reply code.
    pub fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Whether the server closed the connection.
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0) | Err(_))
    }
}

/// One whole transaction without pipelining; returns the final reply.
pub fn send_message(addr: SocketAddr, from: &str, rcpts: &[&str], body: &[u8]) -> (u16, String) {
    let mut c = Client::connect(addr);
    assert_eq!(c.reply().0, 220);
    assert_eq!(c.cmd("EHLO test.example").0, 250);
    let r = c.cmd(&format!("MAIL FROM:<{from}>"));
    if r.0 != 250 {
        return r;
    }
    for r in rcpts {
        let r = c.cmd(&format!("RCPT TO:<{r}>"));
        if r.0 != 250 {
            return r;
        }
    }
    let r = c.cmd("DATA");
    assert_eq!(r.0, 354, "{r:?}");
    c.send(body);
    let r = c.reply();
    c.cmd("QUIT");
    r
}

/// `indimail queue list` lines (messages), stderr ignored.
pub fn queue_list(home: &Path) -> Vec<String> {
    let (code, out, err) = indimail(home, &["queue", "list"]);
    assert_eq!(code, 0, "queue list failed: {err}");
    out.lines().map(str::to_string).collect()
}

/// Waits until `f` is true or panics after `secs`.
pub fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills a helper process (capture server, ...) however the test ends.
pub struct Peer(pub Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Peer {
    pub fn kill(&mut self) -> std::io::Result<()> {
        self.0.kill()
    }
}

/// Starts the aiosmtpd capture server (tests/peers/capture_smtpd.py) in
/// `mode` (`ok`, or a failure mode the script knows): (process, port,
/// directory the messages are written to).
pub fn capture(mode: &str) -> (Peer, u16, tempfile::TempDir) {
    start_capture(mode, None)
}

/// The capture server (mode `ok`) on a given `port` (e.g. one a test routes
/// to before the server exists).
pub fn capture_on(port: u16) -> (Peer, tempfile::TempDir) {
    let (peer, _, dir) = start_capture("ok", Some(port));
    (peer, dir)
}

fn start_capture(mode: &str, port: Option<u16>) -> (Peer, u16, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/capture_smtpd.py");
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(script)
        .arg(dir.path())
        .arg(mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(p) = port {
        cmd.env("PORT", p.to_string());
    }
    let child = cmd
        .spawn()
        .expect("python3 with aiosmtpd (Debian python3-aiosmtpd)");
    let mut child = Peer(child);
    let mut line = String::new();
    BufReader::new(child.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| {
            panic!("capture server did not start: {line:?} (is python3-aiosmtpd installed?)")
        });
    (child, port, dir)
}

/// Runs a Python client script (`python3 -c`); panics with its output and
/// `context` (e.g. the server log) unless it exits 0.
pub fn run_python(script: &str, context: &str) {
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}\n{context}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A loopback port nothing listens on (yet).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The messages the capture server received, as (envelope file, message)
/// in arrival order.
pub fn captured(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for n in 1.. {
        let eml = dir.join(format!("{n}.eml"));
        if !eml.exists() {
            break;
        }
        out.push((
            std::fs::read_to_string(dir.join(format!("{n}.env"))).unwrap(),
            std::fs::read_to_string(eml).unwrap(),
        ));
    }
    out
}

/// The Maildir of virtual user `email` (from `indimail user info`).
pub fn maildir_of(home: &Path, email: &str) -> PathBuf {
    let (c, out, e) = indimail(home, &["user", "info", email]);
    assert_eq!(c, 0, "{e}");
    let dir = out
        .lines()
        .find_map(|l| l.strip_prefix("dir: "))
        .expect("dir line");
    PathBuf::from(dir.trim()).join("Maildir")
}

/// Adds the virtual domain example.com and `users` in it (password
/// `pw12345`); returns their Maildirs.
pub fn setup_users(home: &Path, users: &[&str]) -> Vec<PathBuf> {
    let (c, _, e) = indimail(home, &["domain", "add", "example.com"]);
    assert_eq!(c, 0, "{e}");
    users
        .iter()
        .map(|u| {
            let email = format!("{u}@example.com");
            let (c, _, e) = indimail(home, &["user", "add", &email, "--password", "pw12345"]);
            assert_eq!(c, 0, "{e}");
            maildir_of(home, &email)
        })
        .collect()
}

/// Adds `user@example.com` (and the domain, if it is not there yet);
/// returns the Maildir.
pub fn add_user(home: &Path, user: &str) -> PathBuf {
    let (c, _, e) = indimail(home, &["domain", "add", "example.com"]);
    assert!(c == 0 || e.contains("exists"), "{e}");
    let email = format!("{user}@example.com");
    let (c, _, e) = indimail(home, &["user", "add", &email, "--password", "pw12345"]);
    assert_eq!(c, 0, "{e}");
    maildir_of(home, &email)
}

/// The files in a Maildir's `new/`, sorted.
pub fn maildir_files(maildir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(maildir.join("new"))
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    // In arrival order: `<sec>.I<ino>V<dev>M<usec>P...` names (the older
    // form `<sec>.M<usec>P...` too) do not sort by arrival as text (inode
    // numbers and microseconds are not zero-padded). Hexadecimal digits hold
    // no `M`, so the first `M` after the dot starts the microseconds.
    let when = |p: &PathBuf| {
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let (sec, rest) = name.split_once('.').unwrap_or((name.as_str(), ""));
        let sec: u64 = sec.parse().unwrap_or(0);
        let usec: u64 = rest
            .split_once('M')
            .and_then(|(_, r)| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|u| u.parse().ok())
            .unwrap_or(0);
        (sec, usec, name)
    };
    v.sort_by_key(when);
    v
}

/// One counter from the metrics endpoint (Prometheus text).
pub fn metric(addr: SocketAddr, name: &str) -> u64 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// 24 clients, each from its own loopback address (so spread over the
/// shards), check alice@ and Bob@example.com (250) and nobody@ (550).
pub fn rcpts_from_24_clients(s: &Server) {
    for i in 0..24u8 {
        let mut c = Client::connect_from([127, 0, 0, 10 + i], s.smtp);
        assert_eq!(c.reply().0, 220);
        c.cmd("EHLO client.example.org");
        assert_eq!(c.cmd("MAIL FROM:<someone@example.org>").0, 250);
        assert_eq!(c.cmd("RCPT TO:<alice@example.com>").0, 250);
        assert_eq!(c.cmd("RCPT TO:<Bob@example.com>").0, 250);
        let (code, text) = c.cmd("RCPT TO:<nobody@example.com>");
        assert_eq!(code, 550, "{text}");
        c.cmd("QUIT");
    }
}

/// `indimail serve` with `shards` unpinned shards (INDIMAIL_SHARDS), an SMTP
/// and a metrics listener, no delivery; returns the server and the metrics
/// address once every shard is up.
pub fn start_sharded_with_metrics(home: &Path, shards: &str) -> (Server, SocketAddr) {
    let lo = SocketAddr::from(([127, 0, 0, 1], 0));
    let (s, addrs) = Server::start_services(
        home,
        "uring",
        &[("smtp", lo), ("metrics", lo)],
        &[("INDIMAIL_SHARDS", shards), ("INDIMAIL_NO_DELIVERY", "1")],
    );
    let status = format!("status: {shards} shards");
    wait_until(10, &status, || s.log().contains(&status));
    (s, addrs["metrics"])
}

/// `control/smtproutes` sending `domain` to a local SMTP server on `port`
/// (a capture sink), as an operator routes a domain to a smarthost.
#[allow(dead_code)]
pub fn route_domain(home: &Path, domain: &str, port: u16) {
    let control = home.join("control");
    std::fs::create_dir_all(&control).unwrap();
    std::fs::write(
        control.join("smtproutes"),
        format!("{domain}:127.0.0.1:{port}\n"),
    )
    .unwrap();
}

//! Remote administration end to end: `indimail serve --admin` (TLS-only HTTP/JSON) and the
//! `indimail admin` client over a real socket. An allowed operation runs, one outside the
//! user's permissions is refused (403), a bad password is refused (401) and locks the user
//! out after `ADMIN_MAX_FAILURES` (429, even with the right password), every request is
//! logged with who made it (passwords masked), and plaintext HTTP gets no answer.

mod common;

use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn ok(home: &Path, args: &[&str]) -> String {
    let (c, out, err) = indimail(home, args);
    assert_eq!(c, 0, "indimail {args:?}: {out}{err}");
    out
}

/// `indimail admin --host ... ARGS`: (exit status, stdout, stderr).
fn remote(
    addr: SocketAddr,
    user: &str,
    pwfile: &Path,
    ca: Option<&Path>,
    args: &[&str],
) -> (i32, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(["admin", "--host", &addr.to_string(), "--user", user])
        .arg("--password-file")
        .arg(pwfile);
    if let Some(ca) = ca {
        cmd.arg("--ca").arg(ca);
    }
    let out = cmd.args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn admin_endpoint_permissions_lockout_and_log() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    std::fs::create_dir_all(home.join("control")).unwrap();
    ok(&home, &["domain", "add", "example.com"]);
    let cert = tls::create_self_signed(home.join("control"), "127.0.0.1").unwrap();
    let (alice_pw, bob_pw, wrong_pw) = (
        t.path().join("alice.pw"),
        t.path().join("bob.pw"),
        t.path().join("wrong.pw"),
    );
    std::fs::write(&alice_pw, "Alice-Secret-1\n").unwrap();
    std::fs::write(&bob_pw, "Bob-Secret-1\n").unwrap();
    std::fs::write(&wrong_pw, "not-it\n").unwrap();
    ok(
        &home,
        &[
            "admin-users",
            "set",
            "alice",
            "--password-file",
            alice_pw.to_str().unwrap(),
            "--allow",
            "user.*,domain.list,queue.stat,cluster.*",
        ],
    );
    ok(
        &home,
        &[
            "admin-users",
            "set",
            "bob",
            "--password-file",
            bob_pw.to_str().unwrap(),
            "--allow",
            "domain.list",
        ],
    );
    let (c, _, err) = indimail(
        &home,
        &[
            "admin-users",
            "set",
            "eve",
            "--password-file",
            bob_pw.to_str().unwrap(),
            "--allow",
            "serve.run",
        ],
    );
    assert_eq!(c, 1, "unknown operation refused: {err}");
    assert_eq!(
        ok(&home, &["admin-users", "list"]),
        "alice user.*,domain.list,queue.stat,cluster.*\nbob domain.list\n"
    );
    let users = std::fs::read_to_string(home.join("control/adminusers")).unwrap();
    assert!(!users.contains("Alice-Secret-1"), "hashed: {users}");

    // The server, with its admin endpoint.
    let log = std::fs::File::create(home.join("serve.log")).unwrap();
    let mut child = Command::new(bin())
        .args(["serve", "--home"])
        .arg(&home)
        .args(["--smtp", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env("ADMIN_MAX_FAILURES", "3")
        .env("INDIMAIL_ALLOW_ROOT", "1")
        .env_remove("QUEUEDIR")
        .env_remove("INDIMAIL_HOME")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    // Keep reading stdout to the end (the server must never write to a closed pipe).
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(a) = line.strip_prefix("admin listening on ") {
                let _ = tx.send(a.trim().parse::<SocketAddr>().unwrap());
            }
        }
    });
    let admin_addr = rx.recv_timeout(Duration::from_secs(30)).ok();
    let mut server = Server {
        child: Some(child),
        home: home.clone(),
        smtp: "127.0.0.1:0".parse().unwrap(),
        driver: "uring".into(),
    };
    let addr = admin_addr.expect("admin listening line");
    let ca = Some(cert.path.as_path());

    // Allowed: alice adds a user; it is in the directory.
    let (c, out, err) = remote(
        addr,
        "alice",
        &alice_pw,
        ca,
        &["user", "add", "ann@example.com", "--password", "Ann-Pw-123"],
    );
    assert_eq!(c, 0, "{out}{err}");
    assert!(out.contains("added user ann@example.com"), "{out}");
    assert!(ok(&home, &["user", "info", "ann@example.com"]).contains("name: ann@example.com"));
    let (c, out, _) = remote(addr, "alice", &alice_pw, ca, &["domain", "list"]);
    assert_eq!((c, out.as_str()), (0, "example.com\n"));
    let (c, out, err) = remote(addr, "alice", &alice_pw, ca, &["queue", "stat"]);
    assert_eq!(c, 0, "{out}{err}");
    // A command's own failure comes back as its exit status.
    let (c, _, err) = remote(
        addr,
        "alice",
        &alice_pw,
        ca,
        &["user", "info", "nobody@example.com"],
    );
    assert_eq!(c, 1, "{err}");

    // Forbidden: outside the user's operations, and outside the whitelist.
    let (c, _, err) = remote(
        addr,
        "bob",
        &bob_pw,
        ca,
        &["user", "add", "x@example.com", "--password", "Xx-123456"],
    );
    assert_eq!(c, 1);
    assert!(err.contains("403"), "{err}");
    let (c, _, err) = remote(
        addr,
        "alice",
        &alice_pw,
        ca,
        &["domain", "del", "example.com"],
    );
    assert!(c == 1 && err.contains("403"), "{err}");
    let (c, _, err) = remote(addr, "alice", &alice_pw, ca, &["queue", "delete", "--yes"]);
    assert!(c == 1 && err.contains("400"), "{err}");
    let (c, _, err) = remote(
        addr,
        "alice",
        &alice_pw,
        ca,
        &["domain", "list", "--home", "/"],
    );
    assert!(c == 1 && err.contains("400"), "{err}");
    assert!(ok(&home, &["domain", "list"]).contains("example.com"));

    // Bad passwords: 401, then locked out after 3, even with the right password.
    for _ in 0..3 {
        let (c, _, err) = remote(addr, "bob", &wrong_pw, ca, &["domain", "list"]);
        assert!(c == 1 && err.contains("401"), "{err}");
    }
    let (c, _, err) = remote(addr, "bob", &bob_pw, ca, &["domain", "list"]);
    assert!(c == 1 && err.contains("429"), "{err}");
    let (c, _, _) = remote(addr, "alice", &alice_pw, ca, &["domain", "list"]);
    assert_eq!(c, 0, "others are not locked out");

    // TLS only: the certificate must be trusted, and plaintext gets no HTTP answer.
    let (c, _, err) = remote(addr, "alice", &alice_pw, None, &["domain", "list"]);
    assert_eq!(c, 111, "untrusted certificate: {err}");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(b"POST /v1/run HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    assert!(!resp.starts_with(b"HTTP/"), "{resp:?}");

    // The log names who did what; passwords never appear.
    let log = server.log();
    assert!(
        log.contains(
            "indisrvr: run user=alice ip=127.0.0.1 op=user.add status=0 \
             args=\"user add ann@example.com --password ***\""
        ),
        "{log}"
    );
    assert!(
        log.contains("indisrvr: refused user=bob ip=127.0.0.1 op=user.add reason=not-permitted"),
        "{log}"
    );
    assert!(
        log.contains("reason=bad-login failures=3 locked-out"),
        "{log}"
    );
    assert!(
        log.contains("indisrvr: refused user=bob ip=127.0.0.1 reason=locked-out"),
        "{log}"
    );
    for secret in ["Ann-Pw-123", "Alice-Secret-1", "Bob-Secret-1", "not-it"] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
    assert_eq!(server.stop(), Some(0), "{}", server.log());
}

/// A home with one domain, a self-signed certificate for 127.0.0.1 and two admins: alice
/// (`*`, password `Alice-Secret-1`) and bob (`domain.list`, `Bob-Secret-1`). Returns the
/// certificate's path.
fn admin_home(home: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(home.join("control")).unwrap();
    ok(home, &["domain", "add", "example.com"]);
    let cert = tls::create_self_signed(home.join("control"), "127.0.0.1").unwrap();
    set_admin_users(
        home,
        &[
            ("alice", "Alice-Secret-1", "*"),
            ("bob", "Bob-Secret-1", "domain.list"),
        ],
    );
    cert.path
}

/// `indimail serve` with the admin endpoint; returns the server and the endpoint's address.
fn start_admin(home: &Path, env: &[(&str, &str)]) -> (Server, SocketAddr) {
    let lo = SocketAddr::from(([127, 0, 0, 1], 0));
    let (server, ports) =
        Server::start_services(home, "epoll", &[("smtp", lo), ("admin", lo)], env);
    let addr = ports["admin"];
    (server, addr)
}

/// A TCP connection to `to` from the loopback address `from` (Linux routes all of 127/8 to
/// lo, so each one is a distinct client address for the server).
fn connect_from(from: [u8; 4], to: SocketAddr) -> std::net::TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    s.connect(&to.into()).unwrap();
    let s: std::net::TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

type Tls = tls::rustls::StreamOwned<tls::rustls::ClientConnection, std::net::TcpStream>;

/// A TLS session to the endpoint from `from`, handshake done.
fn tls_from(from: [u8; 4], to: SocketAddr, ca: &Path) -> Tls {
    let config = tls::ClientTlsConfig::new(tls::ClientVerify::CaFile(ca.to_path_buf()))
        .build()
        .unwrap();
    let name = tls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = tls::rustls::ClientConnection::new(config, name).unwrap();
    let mut s = tls::rustls::StreamOwned::new(conn, connect_from(from, to));
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).unwrap();
    }
    s
}

/// Reads a response to the end: (status code, body); code 0 when the server closed or
/// reset the connection without one. Panics when the server keeps it open past the read
/// timeout (a connection that should have been closed).
fn response(s: &mut Tls) -> (u16, String) {
    let mut resp = Vec::new();
    match s.read_to_end(&mut resp) {
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            panic!("server kept the connection open: {e}")
        }
        Err(_) => {}
    }
    let text = String::from_utf8_lossy(&resp).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (code, body)
}

/// One `POST /v1/run` from the client address `from`: (status code, body).
fn run_from(
    from: [u8; 4],
    to: SocketAddr,
    ca: &Path,
    user: &str,
    password: &str,
    args: &[&str],
) -> (u16, String) {
    use base64::Engine as _;
    let mut s = tls_from(from, to, ca);
    let body = serde_json::json!({ "args": args }).to_string();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let req = format!(
        "POST /v1/run HTTP/1.1\r\nAuthorization: Basic {auth}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    s.flush().unwrap();
    response(&mut s)
}

#[test]
fn admin_endpoint_idle_and_trickling_clients_deny_no_one() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let ca = admin_home(&home);
    let (mut server, addr) = start_admin(&home, &[("ADMIN_REQUEST_TIMEOUT", "3")]);

    // More idle connections from one address than the endpoint has slots: only that
    // address's share is taken, the rest are closed at once.
    let mut idle: Vec<std::net::TcpStream> = (0..20)
        .map(|_| connect_from([127, 0, 0, 1], addr))
        .collect();
    let (code, body) = run_from(
        [127, 0, 0, 2],
        addr,
        &ca,
        "alice",
        "Alice-Secret-1",
        &["domain", "list"],
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("example.com"), "{body}");

    // A client trickling its request a byte at a time is cut off by the whole-request
    // deadline (3 s here), though no single read waits long.
    let started = std::time::Instant::now();
    let mut slow = tls_from([127, 0, 0, 4], addr, &ca);
    let head =
        b"POST /v1/run HTTP/1.1\r\nX-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    for b in head.iter().take(20) {
        if slow.write_all(&[*b]).and_then(|()| slow.flush()).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    slow.sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (code, _) = response(&mut slow);
    assert!(code == 408 || code == 0, "trickler answered {code}");
    assert!(started.elapsed() < Duration::from_secs(15));

    // The idle connections are all closed by now: the surplus at once, the share by the
    // deadline.
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        match s.read_to_end(&mut got) {
            Ok(_) => {}
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "idle connection still open"
            ),
        }
    }
    // And the endpoint still serves the address that tied it up.
    let (code, body) = run_from(
        [127, 0, 0, 1],
        addr,
        &ca,
        "alice",
        "Alice-Secret-1",
        &["domain", "list"],
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(server.stop(), Some(0), "{}", server.log());
}

#[test]
fn admin_lockout_is_per_user_and_address() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let ca = admin_home(&home);
    let (mut server, addr) = start_admin(&home, &[("ADMIN_MAX_FAILURES", "3")]);
    let list = ["domain", "list"];

    // A prober on 127.0.0.2 guesses bob's password until locked out...
    for _ in 0..3 {
        let (code, body) = run_from([127, 0, 0, 2], addr, &ca, "bob", "guess", &list);
        assert_eq!(code, 401, "{body}");
    }
    let (code, _) = run_from([127, 0, 0, 2], addr, &ca, "bob", "Bob-Secret-1", &list);
    assert_eq!(code, 429, "locked out from the prober's address");
    // ...but bob from his own address is not locked out.
    let (code, body) = run_from([127, 0, 0, 3], addr, &ca, "bob", "Bob-Secret-1", &list);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("example.com"), "{body}");
    // Unknown names are refused like bad passwords.
    let (code, _) = run_from([127, 0, 0, 3], addr, &ca, "mallory", "Bob-Secret-1", &list);
    assert_eq!(code, 401);

    let log = server.log();
    assert!(
        log.contains(
            "indisrvr: refused user=bob ip=127.0.0.2 reason=bad-login failures=3 locked-out"
        ),
        "{log}"
    );
    assert!(
        log.contains("indisrvr: refused user=bob ip=127.0.0.2 reason=locked-out"),
        "{log}"
    );
    assert!(
        log.contains("indisrvr: run user=bob ip=127.0.0.3 op=domain.list status=0"),
        "{log}"
    );
    assert_eq!(server.stop(), Some(0), "{}", server.log());
}

#[test]
fn init_makes_home_and_secrets_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let set =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    ok(&home, &["init"]);
    ok(&home, &["domain", "add", "example.com"]);
    let (db, cert, users) = (
        home.join("db/indimail.sqlite"),
        home.join("control/servercert.pem"),
        home.join("control/adminusers"),
    );
    let pw = t.path().join("pw");
    std::fs::write(&pw, "Alice-Secret-1\n").unwrap();
    ok(
        &home,
        &[
            "admin-users",
            "set",
            "alice",
            "--password-file",
            pw.to_str().unwrap(),
            "--allow",
            "*",
        ],
    );
    assert_eq!(mode(&home), 0o750, "home");
    assert_eq!(mode(&db), 0o600, "user store");
    assert_eq!(mode(&cert), 0o600, "certificate with its key");
    assert_eq!(mode(&users), 0o600, "admin users");

    // Found looser (an older release, a restore): opening the store fixes it...
    set(&db, 0o644);
    ok(&home, &["domain", "list"]);
    assert_eq!(mode(&db), 0o600, "store fixed on open");
    // ...and so does init, for the home and every secret.
    for (p, m) in [
        (&home, 0o755),
        (&db, 0o644),
        (&cert, 0o644),
        (&users, 0o644),
    ] {
        set(p, m);
    }
    ok(&home, &["init"]);
    assert_eq!(mode(&home), 0o750, "home fixed by init");
    for p in [&db, &cert, &users] {
        assert_eq!(mode(p), 0o600, "{} fixed by init", p.display());
    }
}

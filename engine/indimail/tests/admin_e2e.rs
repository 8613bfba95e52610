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

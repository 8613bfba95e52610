//! IndiMail's indisrvr line protocol end to end: `indimail serve --indisrvr` over TLS, driven
//! by the real `adminclient` (this binary under that name) and by an independent client
//! (Python's ssl module speaking the raw protocol). A domain and a user added remotely log in
//! over POP3; permissions, refused command lines (index, basename, tools not provided) and
//! the lock-out after bad passwords behave as on the HTTP endpoint; nothing refused runs.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

fn ok(home: &Path, args: &[&str]) -> String {
    let (c, out, err) = indimail(home, args);
    assert_eq!(c, 0, "indimail {args:?}: {out}{err}");
    out
}

/// A home with a self-signed certificate for 127.0.0.1 and admin users (name, password,
/// permissions); returns the certificate.
fn indisrvr_home(home: &Path, admins: &[(&str, &str, &str)]) -> PathBuf {
    std::fs::create_dir_all(home.join("control")).unwrap();
    let cert = tls::create_self_signed(home.join("control"), "127.0.0.1").unwrap();
    set_admin_users(home, admins);
    cert.path
}

/// `adminclient -h 127.0.0.1 -p PORT -u USER -P PASS -C CA -c COMMAND` run as `program`
/// (a path whose basename picks the dispatch): (exit status, stdout, stderr).
fn adminclient(
    program: &Path,
    addr: SocketAddr,
    ca: &Path,
    user: &str,
    pass: &str,
    command: &str,
) -> (i32, String, String) {
    let out = Command::new(program)
        .args(["-h", "127.0.0.1", "-p", &addr.port().to_string()])
        .args(["-u", user, "-P", pass, "-C"])
        .arg(ca)
        .args(["-c", command])
        .env_remove("INDIMAIL_HOME")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `example.com` with the user `ann@example.com` (password `Ann-Pw-123`), added locally.
fn add_ann(home: &Path) {
    ok(home, &["domain", "add", "example.com"]);
    let args = ["user", "add", "ann@example.com", "--password", "Ann-Pw-123"];
    ok(home, &args);
}

/// `indimail adminclient ... -c COMMAND` (the subcommand): (exit status, stdout).
fn adminclient_subcommand(
    addr: SocketAddr,
    ca: &Path,
    user: &str,
    pass: &str,
    command: &str,
) -> (Option<i32>, String) {
    let port = addr.port().to_string();
    let out = Command::new(bin())
        .args([
            "adminclient",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-u",
            user,
            "-P",
            pass,
            "-C",
        ])
        .arg(ca)
        .args(["-c", command])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `indimail adminclient ... -c "vuserinfo ann@example.com"` as `user` succeeds.
fn vuserinfo_ann(addr: SocketAddr, ca: &Path, user: &str, pass: &str) {
    let (c, text) = adminclient_subcommand(addr, ca, user, pass, "vuserinfo ann@example.com");
    assert_eq!(c, Some(0), "{text}");
    assert!(text.contains("ann@example.com"), "{text}");
}

/// A POP3 login with USER/PASS (the client is in PLAINTEXT_AUTH_NETS): the PASS reply.
fn pop3_login(addr: SocketAddr, user: &str, pass: &str) -> String {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let mut cmd = |text: &str, line: &mut String| {
        if !text.is_empty() {
            w.write_all(format!("{text}\r\n").as_bytes()).unwrap();
        }
        line.clear();
        r.read_line(line).unwrap();
        line.clone()
    };
    assert!(cmd("", &mut line).starts_with("+OK"), "{line}");
    assert!(
        cmd(&format!("USER {user}"), &mut line).starts_with("+OK"),
        "{line}"
    );
    let reply = cmd(&format!("PASS {pass}"), &mut line);
    if reply.starts_with("+OK") {
        assert!(cmd("STAT", &mut line).starts_with("+OK 0 0"), "{line}");
    }
    let _ = cmd("QUIT", &mut line);
    reply
}

#[test]
fn adminclient_adds_a_domain_and_a_user_who_logs_in_over_pop3() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let ca = indisrvr_home(
        &home,
        &[
            ("alice", "Alice-Secret-1", "domain.add,user.*"),
            ("bob", "Bob-Secret-1", "vuserinfo"),
        ],
    );
    let lo = SocketAddr::from(([127, 0, 0, 1], 0));
    let (mut server, ports) = Server::start_services(
        &home,
        "epoll",
        &[("smtp", lo), ("pop3", lo), ("indisrvr", lo)],
        &[
            ("ADMIN_MAX_FAILURES", "3"),
            ("PLAINTEXT_AUTH_NETS", "127.0.0.1"),
        ],
    );
    let addr = ports["indisrvr"];
    // IndiMail's program name, through a link, as scripts call it.
    let links = t.path().join("bin");
    std::fs::create_dir_all(&links).unwrap();
    let client = links.join("adminclient");
    std::os::unix::fs::symlink(bin(), &client).unwrap();
    let run = |(user, pass): (&str, &str), command: &str| {
        adminclient(&client, addr, &ca, user, pass, command)
    };

    let (c, out, err) = run(
        ("alice", "Alice-Secret-1"),
        "vadddomain example.com Pm-Secret-1",
    );
    assert_eq!(c, 0, "{out}{err}");
    assert!(ok(&home, &["domain", "list"]).contains("example.com"));
    // A path before the program and shell quoting, as IndiMail's makeargs takes them.
    let (c, out, err) = run(
        ("alice", "Alice-Secret-1"),
        "/usr/bin/vadduser 'ann@example.com' \"Ann-Pw-123\"",
    );
    assert_eq!(c, 0, "{out}{err}");
    assert!(
        pop3_login(ports["pop3"], "ann@example.com", "Ann-Pw-123").starts_with("+OK"),
        "{}",
        server.log()
    );

    // bob may run vuserinfo (named in his line), through `indimail adminclient` too.
    vuserinfo_ann(addr, &ca, "bob", "Bob-Secret-1");
    // ... and nothing else; a command's own failure is its status.
    let (c, out, _) = run(
        ("bob", "Bob-Secret-1"),
        "vadduser eve@example.com Eve-Pw-123",
    );
    assert!(
        c == 1 && out.contains("bob may not run vadduser"),
        "{c} {out}"
    );
    assert_ne!(indimail(&home, &["user", "info", "eve@example.com"]).0, 0);
    let (c, _, _) = run(("bob", "Bob-Secret-1"), "vuserinfo nobody@example.com");
    assert_ne!(c, 0);
    // A whitelisted tool this project does not have: a line, status 1, nothing run.
    let (c, out, _) = run(("alice", "Alice-Secret-1"), "vbulletin -s example.com");
    assert!(
        c == 1 && out.contains("vbulletin is not available on this server"),
        "{c} {out}"
    );
    // Outside the whitelist: the client refuses it before connecting.
    let (c, _, err) = run(("alice", "Alice-Secret-1"), "rm -rf /");
    assert!(
        c == 100 && err.contains("invalid or unauthorized command"),
        "{err}"
    );

    // Bad passwords: refused, then locked out after 3 even with the right one; others not.
    for _ in 0..3 {
        let (c, _, err) = run(("bob", "wrong"), "vuserinfo a@b");
        assert!(c == 1 && err.contains("bad user or password"), "{err}");
    }
    let (c, _, err) = run(("bob", "Bob-Secret-1"), "vuserinfo ann@example.com");
    assert!(c == 1 && err.contains("locked out"), "{err}");
    let (c, _, _) = run(("alice", "Alice-Secret-1"), "vuserinfo ann@example.com");
    assert_eq!(c, 0, "alice is not locked out");
    // TLS only: an untrusted certificate is refused by the client.
    let other = t.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let other_ca = tls::create_self_signed(&other, "127.0.0.1").unwrap().path;
    let (c, _, err) = adminclient(
        &client,
        addr,
        &ca.with_file_name("nonexistent.pem"),
        "alice",
        "Alice-Secret-1",
        "vuserinfo ann@example.com",
    );
    assert_eq!(c, 111, "{err}");
    let (c, _, err) = adminclient(
        &client,
        addr,
        &other_ca,
        "alice",
        "Alice-Secret-1",
        "vuserinfo ann@example.com",
    );
    assert_eq!(c, 111, "{err}");

    let log = server.log();
    for line in [
        "indisrvr: run user=alice ip=127.0.0.1 op=vadddomain index=20 status=0 argc=2",
        "indisrvr: run user=alice ip=127.0.0.1 op=vadduser index=0 status=0 argc=2",
        "indisrvr: refused user=bob ip=127.0.0.1 op=vadduser index=0 reason=not-permitted",
        "reason=bad-login failures=3 locked-out",
        "indisrvr: refused user=bob ip=127.0.0.1 reason=locked-out",
    ] {
        assert!(log.contains(line), "{line} not in\n{log}");
    }
    for secret in [
        "Ann-Pw-123",
        "Alice-Secret-1",
        "Bob-Secret-1",
        "Pm-Secret-1",
    ] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
    assert_eq!(server.stop(), Some(0), "{}", server.log());
}

#[test]
fn independent_client_speaks_the_raw_protocol() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let ca = indisrvr_home(&home, &[("alice", "Alice-Secret-1", "*")]);
    add_ann(&home);
    let lo = SocketAddr::from(([127, 0, 0, 1], 0));
    let (mut server, ports) =
        Server::start_services(&home, "uring", &[("smtp", lo), ("indisrvr", lo)], &[]);
    let script = format!(
        r#"
import socket, ssl
ctx = ssl.create_default_context(cafile={ca:?})

def session(user, pw, command, pipelined=False):
    raw = socket.create_connection(("127.0.0.1", {port}), timeout=20)
    s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    got = b""
    def until(tok):
        nonlocal got
        while tok not in got:
            d = s.recv(4096)
            if not d:
                raise SystemExit("closed waiting for %r: %r" % (tok, got))
            got += d
    if pipelined:
        s.sendall(b"%s\n%s\n%s\n\n" % (user, pw, command))
    else:
        until(b"Login: ")
        s.sendall(user + b"\n")
        until(b"Password: ")
        s.sendall(pw + b"\n")
        if command is not None:
            until(b"OK\n")
            s.sendall(command + b"\n")
            s.sendall(b"\n")
    try:
        while True:
            d = s.recv(4096)
            if not d:
                break
            got += d
    except (ssl.SSLEOFError, ConnectionResetError):
        pass
    s.close()
    return got.decode()

A, P = b"alice", b"Alice-Secret-1"
got = session(A, P, b"7 vuserinfo ann@example.com")
assert got.startswith("Login: Password: OK\n"), got
assert "ann@example.com" in got and got.endswith("RETURNSTATUS0\n"), got

got = session(A, P, b"99 vadduser x@example.com Xx-Pw-1234")
assert "indisrvr: no command at index 99\n" in got and got.endswith("RETURNSTATUS1\n"), got

got = session(A, P, b"2 vadduser zed@example.com Zed-Pw-123")
assert "does not match index 2 (vdeluser)" in got and got.endswith("RETURNSTATUS1\n"), got

got = session(A, P, b"0 vadduser 'unterminated@example.com Pw")
assert "unterminated" in got and got.endswith("RETURNSTATUS1\n"), got

got = session(A, b"not-it", None)
assert got == "Login: Password: indisrvr: bad user or password\n", got

# All at once, before any prompt: the server takes its lines in turn.
got = session(A, P, b"0 vadduser pat@example.com \"Pat Pw-123\"", pipelined=True)
assert got.startswith("Login: Password: OK\n") and got.endswith("RETURNSTATUS0\n"), got

# A user's own failure is its status.
got = session(A, P, b"7 vuserinfo nobody@example.com")
assert got.endswith("RETURNSTATUS1\n"), got
print("ok")
"#,
        ca = ca.to_str().unwrap(),
        port = ports["indisrvr"].port()
    );
    run_python(&script, &server.log());
    // Refused lines ran nothing; the pipelined one did (with its quoted password).
    for absent in [
        "x@example.com",
        "zed@example.com",
        "unterminated@example.com",
    ] {
        assert_ne!(indimail(&home, &["user", "info", absent]).0, 0, "{absent}");
    }
    assert!(ok(&home, &["user", "info", "pat@example.com"]).contains("pat@example.com"));
    let log = server.log();
    assert!(
        log.contains("indisrvr: run user=alice ip=127.0.0.1 op=vadduser index=0 status=0 argc=2"),
        "{log}"
    );
    assert_eq!(server.stop(), Some(0), "{log}");
}

/// `indimail indisrvr -i IP -p PORT -n CERT -T SECS` alone (IndiMail's command line, the
/// flags it has no use for accepted): it serves adminclient, and a client that never
/// speaks is closed at the `-T` deadline.
#[test]
fn standalone_indisrvr_with_indimail_flags() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let ca = indisrvr_home(&home, &[("alice", "Alice-Secret-1", "user.info")]);
    add_ann(&home);
    let log = std::fs::File::create(t.path().join("indisrvr.log")).unwrap();
    let mut child = Command::new(bin())
        .args(["indisrvr", "--home"])
        .arg(&home)
        .args([
            "-i",
            "127.0.0.1",
            "-p",
            "0",
            "-b",
            "40",
            "-T",
            "2",
            "-t",
            "5",
            "-n",
        ])
        .arg(&ca)
        .env_remove("INDIMAIL_HOME")
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr: SocketAddr = first
        .trim()
        .strip_prefix("indisrvr listening on ")
        .unwrap_or_else(|| panic!("{first}"))
        .parse()
        .unwrap();
    vuserinfo_ann(addr, &ca, "alice", "Alice-Secret-1");
    // A client that never speaks is closed at the 2 s deadline, not left open (a read
    // still waiting after 20 s fails the test).
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut sink = Vec::new();
    let r = std::io::Read::read_to_end(&mut idle, &mut sink);
    assert!(
        r.is_ok()
            || r.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{r:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(t.path().join("indisrvr.log")).unwrap();
    assert!(log.contains("options -b 40 accepted and ignored"), "{log}");
}

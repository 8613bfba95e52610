//! Secure submission with real clients: swaks (STARTTLS and implicit TLS,
//! AUTH PLAIN/LOGIN/CRAM-MD5), Python smtplib, openssl s_client; the
//! STARTTLS injection case; relaying with and without AUTH; NO_RELAY users;
//! submission without AUTH; SCRAM-SHA-256 against a client written here in
//! Python (its standard library has no SCRAM).

mod common;

use common::*;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

struct Tls {
    _home: tempfile::TempDir,
    server: Server,
    smtp: u16,
    submission: u16,
    smtps: u16,
}

fn port_of(log: &str, service: &str) -> u16 {
    log.lines()
        .find_map(|l| l.strip_prefix(&format!("{service} listening on ")))
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {service} listener"))
}

/// A server with smtp, submission and smtps listeners, domain example.com
/// with users alice (normal, CRAM secret kept) and norelay (NO_RELAY).
fn start(driver: &str) -> Tls {
    start_with_setup(driver, |_| {})
}

/// Like [`start`], running `setup` on the home before the server starts.
fn start_with_setup(driver: &str, setup: impl FnOnce(&Path)) -> Tls {
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    assert_eq!(indimail(home, &["domain", "add", "example.com"]).0, 0);
    let (c, _, e) = indimail(
        home,
        &[
            "user",
            "add",
            "alice@example.com",
            "--password",
            "Secret-1",
            "--cram",
        ],
    );
    assert_eq!(c, 0, "{e}");
    let (c, _, e) = indimail(
        home,
        &[
            "user",
            "add",
            "norelay@example.com",
            "--password",
            "Secret-2",
        ],
    );
    assert_eq!(c, 0, "{e}");
    let (c, _, e) = indimail(
        home,
        &["user", "mod", "norelay@example.com", "--set", "no-relay"],
    );
    assert_eq!(c, 0, "user mod: {e}");
    // Only loopback is in tcp.smtp with RELAYCLIENT by default: make the
    // test clients ordinary remote clients.
    std::fs::create_dir_all(home.join("tcp")).unwrap();
    std::fs::write(home.join("tcp/tcp.smtp"), ":allow\n").unwrap();
    setup(home);
    let server = start_listeners(home, driver);
    let log = server.stdout_lines.join("\n");
    Tls {
        smtp: port_of(&log, "smtp"),
        submission: port_of(&log, "submission"),
        smtps: port_of(&log, "smtps"),
        server: server.server,
        _home: h,
    }
}

struct Started {
    server: Server,
    stdout_lines: Vec<String>,
}

fn start_listeners(home: &Path, driver: &str) -> Started {
    // Server::start knows one listener; here all three are wanted, so run
    // the binary directly and read its ready lines.
    use std::io::BufRead;
    let log = std::fs::File::create(home.join("serve.log")).unwrap();
    let mut child = Command::new(bin())
        .args(["serve", "--home"])
        .arg(home)
        .env("INDIMAIL_ALLOW_ROOT", "1")
        .args([
            "--smtp",
            "127.0.0.1:0",
            "--submission",
            "127.0.0.1:0",
            "--smtps",
            "127.0.0.1:0",
        ])
        .env("INDIMAIL_DRIVER", driver)
        .env_remove("QUEUEDIR")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut lines = Vec::new();
    for line in std::io::BufReader::new(out).lines() {
        let line = line.unwrap();
        let done = line.starts_with("smtps listening on ");
        lines.push(line);
        if done {
            break;
        }
    }
    let smtp = format!("127.0.0.1:{}", port_of(&lines.join("\n"), "smtp"))
        .parse()
        .unwrap();
    Started {
        server: Server {
            child: Some(child),
            home: home.to_path_buf(),
            smtp,
            driver: driver.into(),
        },
        stdout_lines: lines,
    }
}

fn swaks(port: u16, args: &[&str]) -> (bool, String) {
    // swaks prompts for missing --from/--to: give defaults and no stdin.
    let mut all: Vec<&str> = args.to_vec();
    if !args.contains(&"--to") {
        all.extend(["--to", "alice@example.com"]);
    }
    if !args.contains(&"--from") {
        all.extend(["--from", "tester@remote.example"]);
    }
    let out = Command::new("/usr/bin/swaks")
        .args([
            "--server",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--timeout",
            "20",
        ])
        .args(&all)
        .stdin(Stdio::null())
        .output()
        .expect("swaks (Debian package swaks)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn swaks_starttls_and_implicit_tls_with_each_auth_mechanism() {
    for d in DRIVERS {
        let t = start(d);
        for mech in ["PLAIN", "LOGIN", "CRAM-MD5"] {
            let (ok, out) = swaks(
                t.submission,
                &[
                    "--tls",
                    "--auth",
                    mech,
                    "--auth-user",
                    "alice@example.com",
                    "--auth-password",
                    "Secret-1",
                ],
            );
            let _ = ok;
            assert!(out.contains("235 2.7.0"), "{d} {mech} submission:\n{out}");
            let (ok, out) = swaks(
                t.submission,
                &[
                    "--tls",
                    "--auth",
                    mech,
                    "--auth-user",
                    "alice@example.com",
                    "--auth-password",
                    "Secret-1",
                    "--from",
                    "alice@example.com",
                    "--to",
                    "friend@remote.example",
                ],
            );
            assert!(ok, "{d} {mech} relay after auth:\n{out}");
            let (ok, out) = swaks(
                t.smtps,
                &[
                    "--tls-on-connect",
                    "--auth",
                    mech,
                    "--auth-user",
                    "alice@example.com",
                    "--auth-password",
                    "Secret-1",
                    "--from",
                    "alice@example.com",
                    "--to",
                    "alice@example.com",
                ],
            );
            assert!(ok, "{d} {mech} smtps:\n{out}");
        }
        // A wrong password is refused with 535.
        let (ok, out) = swaks(
            t.submission,
            &[
                "--tls",
                "--auth",
                "PLAIN",
                "--auth-user",
                "alice@example.com",
                "--auth-password",
                "wrong",
            ],
        );
        assert!(!ok && out.contains("535 5.7.8"), "{out}");
        // The authenticated identity is in the Received: header.
        wait_until(20, "delivery to alice", || {
            let (_, info, _) = indimail(&t.server.home, &["user", "info", "alice@example.com"]);
            let dir = info
                .lines()
                .find_map(|l| l.strip_prefix("dir: "))
                .unwrap()
                .trim()
                .to_string();
            std::fs::read_dir(Path::new(&dir).join("Maildir/new"))
                .map(|r| r.count())
                .unwrap_or(0)
                >= 3
        });
        drop(t);
    }
}

#[test]
fn plain_auth_not_offered_without_tls_and_submission_needs_auth() {
    let t = start("uring");
    let mut c = Client::connect(format!("127.0.0.1:{}", t.submission).parse().unwrap());
    c.reply();
    let (_, ehlo) = c.cmd("EHLO x");
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(
        !ehlo.contains("PLAIN") && !ehlo.contains("LOGIN"),
        "clear-text mechanisms before TLS: {ehlo}"
    );
    let (code, text) = c.cmd("MAIL FROM:<alice@example.com>");
    assert_eq!(code, 530, "{text}");
    assert!(text.contains("5.7.0"), "{text}");
    assert_eq!(
        c.cmd("AUTH PLAIN AGFsaWNlQGV4YW1wbGUuY29tAFNlY3JldC0x").0 / 100,
        5
    );
    assert_eq!(c.cmd("AUTH BOGUS").0, 504);
    c.cmd("QUIT");
}

#[test]
fn relay_needs_auth_and_no_relay_users_cannot_relay() {
    let t = start("epoll");
    // No auth: relaying refused on the smtp port.
    let (ok, out) = swaks(
        t.smtp,
        &["--from", "x@remote.example", "--to", "y@elsewhere.example"],
    );
    assert!(!ok && out.contains("553 5.7.1"), "{out}");
    // NO_RELAY user: authenticates, may send to local users, not relay.
    let auth = [
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        "norelay@example.com",
        "--auth-password",
        "Secret-2",
    ];
    let mut args = auth.to_vec();
    args.extend([
        "--from",
        "norelay@example.com",
        "--to",
        "y@elsewhere.example",
    ]);
    let (ok, out) = swaks(t.smtp, &args);
    assert!(
        !ok && out.contains("235 2.7.0") && out.contains("553 5.7.1"),
        "{out}"
    );
    let mut args = auth.to_vec();
    args.extend(["--from", "norelay@example.com", "--to", "alice@example.com"]);
    let (ok, out) = swaks(t.smtp, &args);
    assert!(ok, "{out}");
    // Submission: the sender must be the authenticated user.
    let (ok, out) = swaks(
        t.submission,
        &[
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice@example.com",
            "--auth-password",
            "Secret-1",
            "--from",
            "ceo@example.com",
            "--to",
            "alice@example.com",
        ],
    );
    assert!(!ok && out.contains("553 5.7.1"), "{out}");
}

#[test]
fn starttls_injection_is_not_executed() {
    let t = start("uring");
    // Plain-text commands pipelined behind STARTTLS must be discarded.
    let mut c = Client::connect(format!("127.0.0.1:{}", t.smtp).parse().unwrap());
    c.reply();
    c.cmd("EHLO x");
    c.send(b"STARTTLS\r\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<alice@example.com>\r\n");
    let (code, _) = c.reply();
    assert_eq!(code, 220);
    // Finish the handshake with openssl and look at the first reply after
    // EHLO: a MAIL executed in plain text would leave a transaction open,
    // so a fresh MAIL would get 503.
    drop(c);
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-starttls",
            "smtp",
            "-connect",
            &format!("127.0.0.1:{}", t.smtp),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl");
    {
        let stdin = child.stdin.as_mut().unwrap();
        stdin
            .write_all(b"EHLO after\r\nMAIL FROM:<a@example.com>\r\nQUIT\r\n")
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("250 2.1.0"),
        "openssl s_client session:\n{text}"
    );

    // The injection itself, through a raw TLS client that sends the
    // injected bytes in the same packet as STARTTLS.
    let script = format!(
        r#"
import socket, ssl
s = socket.create_connection(("127.0.0.1", {port}))
f = s.makefile("rb")
f.readline()
s.sendall(b"EHLO x\r\n")
while True:
    l = f.readline()
    if l[3:4] == b" ": break
s.sendall(b"STARTTLS\r\nMAIL FROM:<evil@example.org>\r\n")
assert f.readline().startswith(b"220")
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
t = ctx.wrap_socket(s)
t.sendall(b"RCPT TO:<alice@example.com>\r\n")
r = t.recv(1000)
assert r.startswith(b"503"), r   # no MAIL was executed: RCPT is out of sequence
t.sendall(b"EHLO y\r\nMAIL FROM:<a@example.com>\r\n")
print("ok")
"#,
        port = t.smtp
    );
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn python_smtplib_starttls_login() {
    let t = start("epoll");
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
with smtplib.SMTP("127.0.0.1", {port}) as s:
    s.ehlo("py")
    s.starttls(context=ctx)
    s.ehlo("py")
    s.login("alice@example.com", "Secret-1")
    s.sendmail("alice@example.com", ["outside@remote.example"], "Subject: tls\r\n\r\nhi\r\n")
with smtplib.SMTP_SSL("127.0.0.1", {smtps}, context=ctx) as s:
    s.login("alice@example.com", "Secret-1")
    s.sendmail("alice@example.com", ["alice@example.com"], "Subject: tls2\r\n\r\nhi\r\n")
print("ok")
"#,
        port = t.submission,
        smtps = t.smtps
    );
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn garbage_instead_of_tls_handshake_does_not_hurt_the_shard() {
    let t = start("uring");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", t.smtps)).unwrap();
    s.write_all(b"EHLO this is not TLS\r\n").unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut b = [0u8; 64];
    let _ = std::io::Read::read(&mut s, &mut b);
    // The server still serves others.
    let (ok, out) = swaks(
        t.smtp,
        &["--from", "x@remote.example", "--to", "alice@example.com"],
    );
    assert!(ok, "{out}");
}

/// The client side of SCRAM-SHA-256 (RFC 5802, RFC 7677), written from the
/// RFC with Python's hashlib/hmac over smtplib's `docmd`: independent of the
/// server's Rust code. `scram(s, user, password)` returns the final reply;
/// it checks the server's signature when the proof was accepted.
const PY_SCRAM: &str = r#"
import base64, hashlib, hmac, os, smtplib, ssl, sys
b64 = lambda b: base64.b64encode(b).decode()
def scram(s, user, password):
    cnonce = b64(os.urandom(18))
    bare = "n=%s,r=%s" % (user.replace("=", "=3D").replace(",", "=2C"), cnonce)
    code, resp = s.docmd("AUTH", "SCRAM-SHA-256 " + b64(b"n,," + bare.encode()))
    if code != 334:
        return code, resp
    server_first = base64.b64decode(resp).decode()
    attrs = dict(a.split("=", 1) for a in server_first.split(","))
    assert attrs["r"].startswith(cnonce) and len(attrs["r"]) > len(cnonce), server_first
    assert int(attrs["i"]) >= 4096 and base64.b64decode(attrs["s"]), server_first
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    without_proof = "c=biws,r=" + attrs["r"]
    auth_message = ("%s,%s,%s" % (bare, server_first, without_proof)).encode()
    signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    code, resp = s.docmd(b64(("%s,p=%s" % (without_proof, b64(proof))).encode()))
    if code != 334:
        return code, resp
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    want = "v=" + b64(hmac.digest(server_key, auth_message, "sha256"))
    assert base64.b64decode(resp).decode() == want, "server signature"
    return s.docmd("")
"#;

fn python(script: &str) -> String {
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(format!("{PY_SCRAM}\n{script}"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    text
}

#[test]
fn scram_sha256_with_an_independent_client() {
    let t = start_with_setup("uring", |home| {
        // IndiMail's `vadduser -m SCRAM-SHA-256`: the secret goes into the
        // `scram` column beside the crypt password.
        let (c, out, e) = indimail(
            home,
            &[
                "user",
                "add",
                "sam@example.com",
                "--password",
                "Pencil-7",
                "-m",
                "SCRAM-SHA-256",
            ],
        );
        assert_eq!(c, 0, "{out}{e}");
        let (_, info, _) = indimail(home, &["user", "info", "sam@example.com"]);
        assert!(info.contains("scram: {SCRAM-SHA-256}4096,"), "{info}");
    });
    let script = format!(
        r#"
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
# Port 25 style, clear text: SCRAM sends no password, so it is offered
# where PLAIN and LOGIN are not.
with smtplib.SMTP("127.0.0.1", {smtp}) as s:
    s.ehlo("py")
    mechs = s.esmtp_features["auth"].split()
    assert "SCRAM-SHA-256" in mechs and "PLAIN" not in mechs, mechs
    code, resp = scram(s, "sam@example.com", "Pencil-7")
    assert code == 235, (code, resp)
    # Authenticated: relaying is allowed.
    s.sendmail("sam@example.com", ["friend@remote.example"], "Subject: scram relay\r\n\r\nhi\r\n")
# Wrong password, unknown user, a user without a SCRAM secret: all 535,
# and the exchange looks the same up to the end.
for user, pw in [("sam@example.com", "pencil-7"), ("ghost@example.com", "x"), ("alice@example.com", "Secret-1")]:
    with smtplib.SMTP("127.0.0.1", {smtp}) as s:
        s.ehlo("py")
        code, resp = scram(s, user, pw)
        assert code == 535 and b"5.7.8" in resp, (user, code, resp)
        # Not authenticated: no relaying.
        s.ehlo("py")
        code, resp = s.docmd("MAIL", "FROM:<sam@example.com>")
        assert code == 250, (code, resp)
        code, resp = s.docmd("RCPT", "TO:<friend@remote.example>")
        assert code == 553, (user, code, resp)
# Cancelled after client-first: 501.
with smtplib.SMTP("127.0.0.1", {smtp}) as s:
    s.ehlo("py")
    code, _ = s.docmd("AUTH", "SCRAM-SHA-256 " + b64(b"n,,n=sam@example.com,r=abc"))
    assert code == 334
    assert s.docmd("*")[0] == 501
# Submission over implicit TLS, to a local mailbox.
with smtplib.SMTP_SSL("127.0.0.1", {smtps}, context=ctx) as s:
    s.ehlo("py")
    code, resp = scram(s, "sam@example.com", "Pencil-7")
    assert code == 235, (code, resp)
    s.sendmail("sam@example.com", ["alice@example.com"], "Subject: scram local\r\n\r\nhi\r\n")
print("ok")
"#,
        smtp = t.smtp,
        smtps = t.smtps
    );
    assert!(python(&script).contains("ok"));
    // The log names the mechanism and never a secret.
    let log = std::fs::read_to_string(t.server.home.join("serve.log")).unwrap();
    assert!(
        log.contains("auth ok user=sam@example.com mech=SCRAM-SHA-256"),
        "{log}"
    );
    assert!(log.contains("auth failed user=ghost@example.com mech=SCRAM-SHA-256"));
    assert!(!log.contains("Pencil-7"));
    wait_until(20, "delivery to alice", || {
        let (_, info, _) = indimail(&t.server.home, &["user", "info", "alice@example.com"]);
        let dir = info
            .lines()
            .find_map(|l| l.strip_prefix("dir: "))
            .unwrap()
            .trim()
            .to_string();
        std::fs::read_dir(Path::new(&dir).join("Maildir/new"))
            .map(|r| r.count())
            .unwrap_or(0)
            >= 1
    });
}

#[test]
fn scram_can_be_disabled() {
    let h = tempfile::tempdir().unwrap();
    let server = Server::start_with(h.path(), "epoll", &[("DISABLE_SCRAM_SHA256", "1")]);
    let mut c = Client::connect(server.smtp);
    c.reply();
    let (_, ehlo) = c.cmd("EHLO x");
    assert!(
        ehlo.contains("CRAM-MD5") && !ehlo.contains("SCRAM"),
        "{ehlo}"
    );
    assert_eq!(c.cmd("AUTH SCRAM-SHA-256").0, 504);
    c.cmd("QUIT");
}

//! On-demand delivery over real sockets: mail for an `etrnhosts` domain is
//! held in the queue; ETRN (RFC 1985) delivers it to a Python aiosmtpd
//! capture server routed by `smtproutes`; ETRN is refused for unlisted
//! domains and not offered on submission; an ODMR session (RFC 2645) with a
//! scripted Python client (smtplib, then acting as the SMTP server on the
//! turned connection) receives the held mail of the domains its user may
//! turn (`atrnaccess`, `atrn_map`), with refusals for ATRN before AUTH and
//! for a domain the user may not turn.

mod common;

use common::*;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `indimail serve` with smtp, submission and odmr listeners.
struct Serve {
    child: Child,
    home: PathBuf,
    addrs: HashMap<String, SocketAddr>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    fn start(home: &Path, driver: &str, env: &[(&str, &str)]) -> Serve {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(home.join("serve.log"))
            .unwrap();
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--home"])
            .arg(home)
            .env("INDIMAIL_ALLOW_ROOT", "1")
            .args(["--smtp", "127.0.0.1:0"])
            .args(["--submission", "127.0.0.1:0"])
            .args(["--odmr", "127.0.0.1:0"])
            .env("INDIMAIL_DRIVER", driver)
            .env_remove("QUEUEDIR")
            .env_remove("INDIMAIL_HOME")
            .env_remove("ODMR")
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
                    let _ = tx.send((svc.to_string(), a.trim().parse::<SocketAddr>().unwrap()));
                }
            }
        });
        let mut addrs = HashMap::new();
        while addrs.len() < 3 {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok((svc, a)) => {
                    addrs.insert(svc, a);
                }
                Err(_) => {
                    let _ = child.kill();
                    let log = std::fs::read_to_string(home.join("serve.log")).unwrap_or_default();
                    panic!("server did not start; log:\n{log}");
                }
            }
        }
        Serve {
            child,
            home: home.to_path_buf(),
            addrs,
        }
    }

    fn addr(&self, svc: &str) -> SocketAddr {
        self.addrs[svc]
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.home.join("serve.log")).unwrap_or_default()
    }
}

fn write_control(home: &Path, files: &[(&str, String)]) {
    let control = home.join("control");
    std::fs::create_dir_all(&control).unwrap();
    for (name, text) in files {
        std::fs::write(control.join(name), text).unwrap();
    }
}

fn mail(addr: SocketAddr, from: &str, rcpts: &[&str], subject: &str) {
    let body = format!("Subject: {subject}\r\n\r\nheld mail\r\n.\r\n");
    let (code, text) = send_message(addr, from, rcpts, body.as_bytes());
    assert_eq!(code, 250, "{text}");
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

#[test]
fn etrn_delivers_held_domain_to_sink_both_drivers() {
    let (_cap, port, out) = capture("ok");
    for d in DRIVERS {
        let before = captured(out.path()).len();
        let h = tempfile::tempdir().unwrap();
        write_control(
            h.path(),
            &[
                ("etrnhosts", "# held for ETRN\nheld.example\n".into()),
                (
                    "smtproutes",
                    format!("held.example:127.0.0.1:{port}\nfree.example:127.0.0.1:{port}\n"),
                ),
            ],
        );
        let s = Serve::start(h.path(), d, &[]);
        let smtp = s.addr("smtp");
        mail(smtp, "bob@example.org", &["a@held.example"], "one");
        mail(
            smtp,
            "bob@example.org",
            &["b@held.example", "c@free.example"],
            "two",
        );
        // Mail for other domains goes out at once; the held domain's waits.
        wait_until(30, "free.example delivered", || {
            captured(out.path()).len() == before + 1
        });
        wait_until(20, "held recipients", || {
            count(&s.log(), " for ETRN/ATRN") == 2
        });
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(captured(out.path()).len(), before + 1);
        let (env, _) = captured(out.path()).pop().unwrap();
        assert_eq!(env, "bob@example.org\nc@free.example\n");
        let queued = queue_list(h.path());
        assert_eq!(queued.len(), 2, "{queued:?}");
        assert!(
            queued.iter().all(|l| l.contains("held.example>:pending")),
            "{queued:?}"
        );

        let mut c = Client::connect(smtp);
        assert_eq!(c.reply().0, 220);
        let (code, ehlo) = c.cmd("EHLO node.example");
        assert_eq!(code, 250);
        assert!(ehlo.contains("250-ETRN\n"), "{ehlo}");
        let (code, text) = c.cmd("ETRN");
        assert_eq!(code, 501, "{text}");
        let (code, text) = c.cmd("ETRN other.example");
        assert_eq!(code, 553, "{text}");
        assert!(
            text.starts_with("553 5.7.1 etrn service rejected for other.example"),
            "{text}"
        );
        let (code, text) = c.cmd("ETRN held.example");
        assert_eq!(code, 253, "{text}");
        assert!(
            text.starts_with("253 2.0.0 OK, 2 pending messages for node held.example started"),
            "{text}"
        );
        wait_until(30, "held mail flushed to the sink", || {
            captured(out.path()).len() == before + 3
        });
        let mut got: Vec<(String, String)> = captured(out.path())[before + 1..].to_vec();
        got.sort();
        assert_eq!(got[0].0, "bob@example.org\na@held.example\n");
        assert_eq!(got[1].0, "bob@example.org\nb@held.example\n");
        assert!(got[0].1.contains("Subject: one"), "{}", got[0].1);
        assert!(got[1].1.contains("Subject: two"), "{}", got[1].1);
        wait_until(20, "queue drained", || queue_list(h.path()).is_empty());
        // Nothing is left: a second flush finds no message, with either form.
        let (code, text) = c.cmd("ETRN held.example");
        assert_eq!(code, 251, "{text}");
        let (code, text) = c.cmd("ETRN @held.example");
        assert_eq!(code, 251, "{text}");
        c.cmd("QUIT");
        assert_eq!(captured(out.path()).len(), before + 3, "delivered once");

        // Submission (587): no ETRN.
        let mut c = Client::connect(s.addr("submission"));
        assert_eq!(c.reply().0, 220);
        let (code, ehlo) = c.cmd("EHLO node.example");
        assert_eq!(code, 250);
        assert!(!ehlo.contains("ETRN"), "{ehlo}");
        let (code, text) = c.cmd("ETRN held.example");
        assert_eq!(code, 502, "{text}");
        c.cmd("QUIT");
        let log = s.log();
        assert!(log.contains("etrn refused node=other.example"), "{log}");
        assert!(log.contains("etrn node=held.example"), "{log}");
    }
}

/// Runs the scripted ODMR client; returns its stdout lines.
fn odmr_client(odmr: SocketAddr, user: &str, pw: &str, domains: &str, reject: &str) -> Vec<String> {
    odmr_client_tls(odmr, user, pw, domains, reject, false)
}

fn odmr_client_tls(
    odmr: SocketAddr,
    user: &str,
    pw: &str,
    domains: &str,
    reject: &str,
    tls: bool,
) -> Vec<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/odmr_client.py");
    let out = Command::new("/usr/bin/python3")
        .env("ODMR_TLS", if tls { "1" } else { "0" })
        .arg(script)
        .arg(odmr.ip().to_string())
        .arg(odmr.port().to_string())
        .args([user, pw, domains, reject])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "odmr client failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().map(str::to_string).collect()
}

#[test]
fn odmr_session_receives_held_mail_of_permitted_domains() {
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    write_control(
        home,
        &[
            (
                "etrnhosts",
                "node.example\nnode2.example\nother.example\n".into(),
            ),
            // node2.example by the control file; node.example by atrn_map below.
            ("atrnaccess", "ann@example.com:node2.example\n".into()),
        ],
    );
    let (c, _, e) = indimail(home, &["domain", "add", "example.com"]);
    assert_eq!(c, 0, "{e}");
    let (c, _, e) = indimail(
        home,
        &["user", "add", "ann@example.com", "--password", "Secret-1"],
    );
    assert_eq!(c, 0, "{e}");
    let (c, out, e) = indimail(home, &["atrn", "add", "ann@example.com", "Node.Example"]);
    assert_eq!(c, 0, "{e}");
    assert!(out.contains("may turn node.example"), "{out}");
    let (_, list, _) = indimail(home, &["atrn", "list"]);
    assert_eq!(list, "ann@example.com node.example\n");
    let ann_maildir = maildir_of(home, "ann@example.com");

    let s = Serve::start(home, "uring", &[("SECURE_AUTH", "0")]);
    let smtp = s.addr("smtp");
    mail(
        smtp,
        "ann@example.com",
        &["x@node.example", "reject@node.example"],
        "first",
    );
    mail(smtp, "ann@example.com", &["y@node.example"], "second");
    mail(smtp, "ann@example.com", &["z@node2.example"], "third");
    mail(smtp, "ann@example.com", &["w@other.example"], "not hers");
    wait_until(20, "held recipients", || {
        count(&s.log(), " for ETRN/ATRN") == 5
    });

    // The ODMR EHLO, ATRN before AUTH (530), MAIL (502), AUTH PLAIN, then a
    // domain ann may not turn (553).
    let lines = odmr_client(
        s.addr("odmr"),
        "ann@example.com",
        "Secret-1",
        "node.example,other.example",
        "",
    );
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("ATRN 553 5.7.1 atrn service unavailable for other.example"),
        "{lines:?}"
    );
    // ATRN without an argument: every domain ann may turn.
    let lines = odmr_client(
        s.addr("odmr"),
        "ann@example.com",
        "Secret-1",
        "-",
        "reject@node.example",
    );
    assert!(
        lines[0].starts_with("ATRN 250 2.0.0 OK now reversing the connection"),
        "{lines:?}"
    );
    let mut msgs: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("MSG "))
        .collect();
    msgs.sort();
    assert_eq!(
        msgs,
        vec![
            "ann@example.com x@node.example first",
            "ann@example.com y@node.example second",
            "ann@example.com z@node2.example third",
        ],
        "{lines:?}"
    );
    assert_eq!(lines.last().map(String::as_str), Some("QUIT"), "{lines:?}");

    // The refused recipient bounced to ann; other.example's mail is still
    // held; everything else left the queue (never delivered twice).
    wait_until(20, "bounce to ann", || {
        std::fs::read_dir(ann_maildir.join("new"))
            .map(|r| r.count() == 1)
            .unwrap_or(false)
    });
    let bounce = std::fs::read_dir(ann_maildir.join("new"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = std::fs::read_to_string(bounce).unwrap();
    assert!(text.contains("reject@node.example"), "{text}");
    assert!(text.contains("550 5.1.1 no such user here"), "{text}");
    wait_until(20, "queue holds only other.example", || {
        let q = queue_list(home);
        q.len() == 1 && q[0].contains("<w@other.example>:pending")
    });

    // Under STARTTLS the turned session runs inside TLS.
    mail(smtp, "ann@example.com", &["v@node2.example"], "over tls");
    wait_until(20, "held", || count(&s.log(), " for ETRN/ATRN") == 6);
    let lines = odmr_client_tls(
        s.addr("odmr"),
        "ann@example.com",
        "Secret-1",
        "node2.example",
        "",
        true,
    );
    assert_eq!(
        lines[1..],
        ["MSG ann@example.com v@node2.example over tls", "QUIT"],
        "{lines:?}"
    );
    assert!(
        s.log().contains("odmr starttls ip=127.0.0.1"),
        "{}",
        s.log()
    );

    // Nothing waits any more for ann's domains.
    let lines = odmr_client(
        s.addr("odmr"),
        "ann@example.com",
        "Secret-1",
        "node.example",
        "",
    );
    assert!(
        lines[0].starts_with("ATRN 453 4.3.0 No message waiting"),
        "{lines:?}"
    );
    // ETRN is refused for a domain not in etrnhosts on the odmr port too.
    let mut c = Client::connect(s.addr("odmr"));
    assert_eq!(c.reply().0, 220);
    assert_eq!(c.cmd("EHLO node.example").0, 250);
    assert_eq!(c.cmd("ETRN example.com").0, 553);
    c.cmd("QUIT");
    let log = s.log();
    assert!(
        log.contains("atrn done user=ann@example.com domains=node2.example,node.example messages=3 delivered=3 deferred=0 failed=1"),
        "{log}"
    );
}

#[test]
fn atrn_needs_auth_and_is_only_on_odmr() {
    let h = tempfile::tempdir().unwrap();
    write_control(h.path(), &[("etrnhosts", "node.example\n".into())]);
    let s = Serve::start(h.path(), "epoll", &[("SECURE_AUTH", "0")]);
    // Port 25 style: no ATRN.
    let mut c = Client::connect(s.addr("smtp"));
    assert_eq!(c.reply().0, 220);
    let (_, ehlo) = c.cmd("EHLO node.example");
    assert!(!ehlo.contains("ATRN"), "{ehlo}");
    assert_eq!(c.cmd("ATRN node.example").0, 502);
    c.cmd("QUIT");
    // ODMR: AUTH and ATRN offered, ATRN refused without AUTH, mail refused.
    let mut c = Client::connect(s.addr("odmr"));
    assert_eq!(c.reply().0, 220);
    let (_, ehlo) = c.cmd("EHLO node.example");
    assert!(ehlo.contains("250-ATRN\n"), "{ehlo}");
    assert!(ehlo.contains("AUTH "), "{ehlo}");
    let (code, text) = c.cmd("ATRN node.example");
    assert_eq!(code, 530, "{text}");
    assert!(text.starts_with("530 5.7.0"), "{text}");
    assert_eq!(c.cmd("MAIL FROM:<a@b.example>").0, 502);
    assert_eq!(c.cmd("RCPT TO:<a@b.example>").0, 502);
    assert_eq!(c.cmd("DATA").0, 502);
    assert_eq!(c.cmd("QUIT").0, 221);
    drop(s);
    // `ODMR` set: ODMR mode on the smtp service too (never on submission).
    let s = Serve::start(h.path(), "epoll", &[("ODMR", "1")]);
    let mut c = Client::connect(s.addr("smtp"));
    assert_eq!(c.reply().0, 220);
    let (_, ehlo) = c.cmd("EHLO node.example");
    assert!(ehlo.contains("250-ATRN\n"), "{ehlo}");
    assert_eq!(c.cmd("MAIL FROM:<a@b.example>").0, 502);
    c.cmd("QUIT");
    let mut c = Client::connect(s.addr("submission"));
    assert_eq!(c.reply().0, 220);
    let (_, ehlo) = c.cmd("EHLO node.example");
    assert!(!ehlo.contains("ATRN"), "{ehlo}");
    c.cmd("QUIT");
}

#[test]
fn etrnhosts_reload_holds_and_releases_without_restart() {
    let (_cap, port, out) = capture("ok");
    let h = tempfile::tempdir().unwrap();
    write_control(
        h.path(),
        &[
            ("etrnhosts", "held.example\n".into()),
            (
                "smtproutes",
                format!("held.example:127.0.0.1:{port}\nlater.example:127.0.0.1:{port}\n"),
            ),
        ],
    );
    let s = Serve::start(h.path(), "uring", &[]);
    mail(
        s.addr("smtp"),
        "bob@example.org",
        &["a@held.example"],
        "held",
    );
    wait_until(20, "held", || count(&s.log(), " for ETRN/ATRN") == 1);
    // later.example becomes held and held.example is released, by editing
    // the file while the server runs.
    std::thread::sleep(Duration::from_millis(1100));
    write_control(h.path(), &[("etrnhosts", "later.example\n".into())]);
    wait_until(20, "reload", || s.log().contains("configuration reloaded"));
    wait_until(30, "released mail delivered", || {
        captured(out.path()).len() == 1
    });
    assert!(
        s.log()
            .contains("1 held recipients released (no longer in etrnhosts)"),
        "{}",
        s.log()
    );
    let (env, _) = captured(out.path()).pop().unwrap();
    assert_eq!(env, "bob@example.org\na@held.example\n");
    mail(
        s.addr("smtp"),
        "bob@example.org",
        &["b@later.example"],
        "now held",
    );
    wait_until(20, "held after reload", || {
        count(&s.log(), " for ETRN/ATRN") == 2
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(captured(out.path()).len(), 1);
    let mut c = Client::connect(s.addr("smtp"));
    assert_eq!(c.reply().0, 220);
    assert_eq!(c.cmd("EHLO node.example").0, 250);
    assert_eq!(c.cmd("ETRN held.example").0, 553);
    assert_eq!(c.cmd("ETRN later.example").0, 253);
    c.cmd("QUIT");
    wait_until(30, "flushed", || captured(out.path()).len() == 2);
}

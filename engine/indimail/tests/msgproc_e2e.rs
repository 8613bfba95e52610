//! Queue-time message processing end to end through `indimail serve`:
//! header rules (removeheaders, logheaders, envheaders exported to a
//! QMAILLOCAL program), extraqueue, quarantine, NULLQUEUE, the duplicate
//! eliminator, and DKIM signing of relayed mail checked by dkimpy.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const DRIVER: &str = DRIVERS[0];

fn setup_users(home: &Path, users: &[&str]) -> Vec<PathBuf> {
    let (c, _, e) = indimail(home, &["domain", "add", "example.com"]);
    assert_eq!(c, 0, "{e}");
    users
        .iter()
        .map(|u| {
            let addr = format!("{u}@example.com");
            let (c, _, e) = indimail(home, &["user", "add", &addr, "--password", "pw12345"]);
            assert_eq!(c, 0, "{e}");
            let (_, out, _) = indimail(home, &["user", "info", &addr]);
            let dir = out
                .lines()
                .find_map(|l| l.strip_prefix("dir: "))
                .expect("dir line");
            PathBuf::from(dir.trim()).join("Maildir")
        })
        .collect()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn control(home: &Path, files: &[(&str, &str)]) {
    let c = home.join("control");
    std::fs::create_dir_all(&c).unwrap();
    for (k, v) in files {
        std::fs::write(c.join(k), v).unwrap();
    }
}

#[test]
fn header_rules_envheaders_logheaders_and_extraqueue() {
    let h = tempfile::tempdir().unwrap();
    setup_users(h.path(), &["alice", "archive"]);
    control(
        h.path(),
        &[
            ("removeheaders", "X-Secret\nBcc\n"),
            ("logheaders", "Subject\n"),
            ("envheaders", "X-Ticket:20\nX-Long:3\n"),
            ("extraqueue", "archive@example.com\n"),
        ],
    );
    // QMAILLOCAL: a program run instead of local delivery, which records
    // its environment and the message it got.
    let out = tempfile::tempdir().unwrap();
    let script = out.path().join("qmaillocal.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nenv > {0}/env.$$\ncat > {0}/msg.$$\nexit 0\n",
            out.path().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let s = Server::start_with(
        h.path(),
        DRIVER,
        &[("QMAILLOCAL", script.to_str().unwrap())],
    );
    // The header block is sent in small pieces so header lines are split
    // across reads; X-Secret is folded.
    let mut c = Client::connect(s.smtp);
    c.reply();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<bob@example.org>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@example.com>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    let msg = b"From: bob@example.org\r\nX-Secret: top\r\n secret continued\r\nSubject: quarterly\r\n report\r\nX-Ticket: T-42\r\nX-Long: too long\r\nBcc: hidden@example.net\r\n\r\nX-Secret: stays in the body\r\nbody\r\n.\r\n";
    for piece in msg.chunks(7) {
        c.send(piece);
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let (code, text) = c.reply();
    assert_eq!(code, 250, "{text}");
    c.cmd("QUIT");
    wait_until(20, "two QMAILLOCAL runs", || {
        files(out.path())
            .iter()
            .filter(|p| p.to_string_lossy().contains("/msg."))
            .count()
            == 2
    });
    wait_until(10, "queue drained", || queue_list(h.path()).is_empty());
    let envs: Vec<String> = files(out.path())
        .iter()
        .filter(|p| p.to_string_lossy().contains("/env."))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert_eq!(envs.len(), 2);
    for e in &envs {
        assert!(e.lines().any(|l| l == "X_TICKET=T-42"), "{e}");
        assert!(!e.contains("X_LONG="), "over its maxlen: {e}");
    }
    for m in files(out.path())
        .iter()
        .filter(|p| p.to_string_lossy().contains("/msg."))
    {
        let m = std::fs::read_to_string(m).unwrap();
        assert!(!m.contains("X-Secret: top"), "{m}");
        assert!(!m.contains("secret continued"), "{m}");
        assert!(!m.contains("Bcc:"), "{m}");
        assert!(m.contains("\nSubject: quarterly\n report\n"), "{m}");
        assert!(m.contains("\n\nX-Secret: stays in the body\nbody\n"), "{m}");
    }
    let log = s.log();
    assert!(
        log.lines()
            .any(|l| l.contains(" headers msg ") && l.contains("Subject: quarterly report")),
        "{log}"
    );
}

#[test]
fn quarantine_replaces_recipients_and_nullqueue_stores_nothing() {
    let h = tempfile::tempdir().unwrap();
    let md = setup_users(h.path(), &["alice", "carol", "quarantine"]);
    control(h.path(), &[("quarantine", "quarantine@example.com\n")]);
    let s = Server::start_delivering(h.path(), DRIVER);
    let (code, text) = send_message(
        s.smtp,
        "bob@example.org",
        &["alice@example.com", "carol@example.com"],
        b"Subject: q\r\n\r\nbody\r\n.\r\n",
    );
    assert_eq!(code, 250, "{text}");
    wait_until(20, "quarantine delivery", || {
        files(&md[2].join("new")).len() == 1
    });
    let m = std::fs::read_to_string(&files(&md[2].join("new"))[0]).unwrap();
    assert!(
        m.contains(
            "\nX-Quarantine-ID: quarantine@example.com,alice@example.com,carol@example.com\n"
        ),
        "{m}"
    );
    wait_until(10, "queue drained", || queue_list(h.path()).is_empty());
    assert!(files(&md[0].join("new")).is_empty());
    assert!(files(&md[1].join("new")).is_empty());
    drop(s);

    // NULLQUEUE: accepted, nothing queued or delivered.
    let h = tempfile::tempdir().unwrap();
    let md = setup_users(h.path(), &["alice"]);
    let s = Server::start_with(h.path(), DRIVER, &[("NULLQUEUE", "1")]);
    let (code, text) = send_message(
        s.smtp,
        "bob@example.org",
        &["alice@example.com"],
        b"Subject: n\r\n\r\nbody\r\n.\r\n",
    );
    assert_eq!(code, 250, "{text}");
    assert!(queue_list(h.path()).is_empty());
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(files(&md[0].join("new")).is_empty());
    assert!(s.log().contains("(nothing stored)"), "{}", s.log());
}

#[test]
fn duplicate_eliminator_delivers_once() {
    let h = tempfile::tempdir().unwrap();
    let md = setup_users(h.path(), &["alice"]);
    let s = Server::start_with(h.path(), DRIVER, &[("ELIMINATE_DUPS", "1")]);
    for body in ["first copy", "second copy", "third copy"] {
        let id = if body == "third copy" {
            "<other@x>"
        } else {
            "<same@x>"
        };
        let msg = format!("Message-ID: {id}\r\nSubject: d\r\n\r\n{body}\r\n.\r\n");
        let (code, text) = send_message(
            s.smtp,
            "bob@example.org",
            &["alice@example.com"],
            msg.as_bytes(),
        );
        assert_eq!(code, 250, "{text}");
        wait_until(20, "delivered", || queue_list(h.path()).is_empty());
    }
    let got: Vec<String> = files(&md[0].join("new"))
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().any(|m| m.contains("first copy")));
    assert!(got.iter().any(|m| m.contains("third copy")));
    assert!(s.log().contains("is a duplicate (ELIMINATE_DUPS)"));
    assert!(md[0].join("dupmd5").exists());
}

/// Kills the capture server however the test ends.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn capture() -> (Peer, u16, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/capture_smtpd.py");
    let child = Command::new("/usr/bin/python3")
        .arg(script)
        .arg(dir.path())
        .arg("ok")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 with aiosmtpd");
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
        .unwrap_or_else(|| panic!("capture server did not start: {line:?}"));
    (child, port, dir)
}

#[test]
fn dkim_signed_relay_verified_by_dkimpy() {
    let (_cap, port, dir) = capture();
    let h = tempfile::tempdir().unwrap();
    control(
        h.path(),
        &[("smtproutes", &format!("remote.test:127.0.0.1:{port}\n"))],
    );
    // One RSA key (selector `default`, used by the default DKIMSIGN) and
    // one Ed25519 key for another domain, picked by a DKIMSIGN template.
    let (c, rsa_out, e) = indimail(h.path(), &["dkim", "keygen", "example.org"]);
    assert_eq!(c, 0, "{e}");
    assert!(
        rsa_out.starts_with("default._domainkey.example.org IN TXT \"v=DKIM1; k=rsa;"),
        "{rsa_out}"
    );
    let (c, ed_out, e) = indimail(
        h.path(),
        &[
            "dkim",
            "keygen",
            "example.net",
            "--selector",
            "default",
            "--type",
            "ed25519",
        ],
    );
    assert_eq!(c, 0, "{e}");
    assert!(ed_out.contains("k=ed25519"), "{ed_out}");
    assert!(h
        .path()
        .join("control/domainkeys/example.org/default")
        .exists());
    assert!(h
        .path()
        .join("control/domainkeys/example.org/default.pub")
        .exists());
    let record = |out: &str| {
        out.trim()
            .split_once("IN TXT \"")
            .map(|(_, r)| r.trim_end_matches('"').to_string())
            .unwrap()
    };
    let s = Server::start_delivering(h.path(), DRIVER);
    for (domain, out) in [("example.org", &rsa_out), ("example.net", &ed_out)] {
        let before = files(dir.path()).len();
        let msg = format!(
            "From: Sender <sender@{domain}>\r\nTo: x@remote.test\r\nSubject: signed\r\nMessage-ID: <{domain}@id>\r\n\r\nline one\r\n..dotted  \r\n\r\n\r\n.\r\n"
        );
        let (code, text) = send_message(
            s.smtp,
            &format!("sender@{domain}"),
            &["x@remote.test"],
            msg.as_bytes(),
        );
        assert_eq!(code, 250, "{text}");
        wait_until(30, "relay to capture", || {
            files(dir.path()).len() >= before + 2
        });
        let eml = files(dir.path())
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .find(|p| {
                std::fs::read_to_string(p)
                    .unwrap()
                    .contains(&format!("<{domain}@id>"))
            })
            .expect("captured");
        let text = std::fs::read_to_string(&eml).unwrap();
        assert!(text.starts_with("DKIM-Signature:"), "{text}");
        assert!(text.contains(&format!("d={domain}")), "{text}");
        let v = Command::new("/usr/bin/python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/peers/dkim_verify.py"
            ))
            .arg(&eml)
            .arg(format!("default._domainkey.{domain}"))
            .arg(record(out))
            .output()
            .expect("python3 with dkimpy (Debian python3-dkim)");
        assert!(
            v.status.success(),
            "dkimpy: {} {}\n{text}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
        // A tampered copy fails (the verifier really checks).
        let tampered = eml.with_extension("bad");
        std::fs::write(&tampered, text.replace("line one", "line 1")).unwrap();
        let v = Command::new("/usr/bin/python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/peers/dkim_verify.py"
            ))
            .arg(&tampered)
            .arg(format!("default._domainkey.{domain}"))
            .arg(record(out))
            .output()
            .unwrap();
        assert!(!v.status.success());
    }
    // Mail from a domain without a key leaves unsigned.
    let before = files(dir.path()).len();
    let (code, _) = send_message(
        s.smtp,
        "a@nokey.test",
        &["x@remote.test"],
        b"From: a@nokey.test\r\nMessage-ID: <nokey@id>\r\n\r\nb\r\n.\r\n",
    );
    assert_eq!(code, 250);
    wait_until(30, "relay to capture", || {
        files(dir.path()).len() >= before + 2
    });
    let unsigned = files(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .find(|t| t.contains("<nokey@id>"))
        .unwrap();
    assert!(!unsigned.contains("DKIM-Signature"), "{unsigned}");
}

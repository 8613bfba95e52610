//! Mail out, end to end over real sockets: swaks → `indimail serve` → a
//! virtual user's Maildir; relay to a Python aiosmtpd capture server routed
//! by `smtproutes`; retries after 4xx; bounces after 5xx, parsed by a real
//! MIME parser; SIGKILL during delivery.

mod common;

use common::*;
use std::path::PathBuf;
use std::process::{Command, Stdio};

#[test]
fn swaks_to_virtual_user_maildir_both_drivers() {
    for d in DRIVERS {
        let h = tempfile::tempdir().unwrap();
        let md = setup_users(h.path(), &["alice"]);
        let s = Server::start_delivering(h.path(), d);
        let out = Command::new("/usr/bin/swaks")
            .stdin(Stdio::null())
            .args([
                "--server",
                "127.0.0.1",
                "--port",
                &s.smtp.port().to_string(),
            ])
            .args(["--from", "bob@example.org", "--to", "alice@example.com"])
            .args(["--header", "Subject: to the maildir"])
            .args(["--body", "line one\n.dot line\n..two dots\nend"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        wait_until(20, "maildir delivery", || maildir_files(&md[0]).len() == 1);
        let text = std::fs::read_to_string(&maildir_files(&md[0])[0]).unwrap();
        assert!(
            text.starts_with(
                "Return-Path: <bob@example.org>\nDelivered-To: alice@example.com\nReceived: from "
            ),
            "{text}"
        );
        assert!(text.contains("\nSubject: to the maildir\n"), "{text}");
        assert!(
            text.contains("\n\nline one\n.dot line\n..two dots\nend\n"),
            "{text:?}"
        );
        assert!(!text.contains('\r'), "queue form has LF line ends");
        assert!(std::fs::read_dir(md[0].join("tmp"))
            .unwrap()
            .next()
            .is_none());
        // The queue is drained.
        wait_until(10, "queue drained", || queue_list(h.path()).is_empty());
        // Unknown user refused at RCPT.
        let (code, text) = send_message(
            s.smtp,
            "bob@example.org",
            &["nobody@example.com"],
            b"x\r\n.\r\n",
        );
        assert_eq!(code, 550, "{text}");
    }
}

fn route_home(port: u16, extra_control: &[(&str, &str)]) -> tempfile::TempDir {
    let h = tempfile::tempdir().unwrap();
    route_domain(h.path(), "remote.test", port);
    for (k, v) in extra_control {
        std::fs::write(h.path().join("control").join(k), v).unwrap();
    }
    h
}

#[test]
fn relay_to_capture_server_with_many_recipients() {
    let (mut cap, port, dir) = capture("ok");
    for d in DRIVERS {
        let h = route_home(port, &[]);
        let s = Server::start_delivering(h.path(), d);
        let before = captured(dir.path()).len();
        let rcpts: Vec<String> = (0..25).map(|i| format!("user{i}@remote.test")).collect();
        let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
        let (code, text) = send_message(
            s.smtp,
            "sender@example.org",
            &refs,
            b"Subject: relay\r\n\r\n..dotted\r\nbody\r\n.\r\n",
        );
        assert_eq!(code, 250, "{text}");
        wait_until(30, "relay to capture", || {
            captured(dir.path()).len() == before + 1
        });
        let (env, msg) = captured(dir.path()).pop().unwrap();
        assert_eq!(env.lines().count(), 26, "{env}");
        assert!(env.starts_with("sender@example.org\n"));
        assert!(
            msg.contains("\r\n.dotted\r\nbody\r\n") || msg.contains("\n.dotted\nbody"),
            "{msg:?}"
        );
        wait_until(10, "queue drained", || queue_list(h.path()).is_empty());
    }
    let _ = cap.kill();
}

#[test]
fn temporary_failure_is_retried_then_delivered() {
    let (mut cap, port, dir) = capture("tempfirst");
    let h = route_home(port, &[("chanskipremote", "1\n")]);
    let s = Server::start_delivering(h.path(), "uring");
    let (code, _) = send_message(
        s.smtp,
        "sender@example.org",
        &["later@remote.test"],
        b"Subject: retry\r\n\r\nx\r\n.\r\n",
    );
    assert_eq!(code, 250);
    // First attempt gets 451; the retry (chanskip 1: about a second later) succeeds.
    wait_until(30, "delivery after retry", || {
        captured(dir.path()).len() == 1
    });
    assert!(s.log().contains("deferral"), "{}", s.log());
    wait_until(10, "queue drained", || queue_list(h.path()).is_empty());
    let _ = cap.kill();
}

#[test]
fn permanent_failure_bounces_to_local_sender() {
    let (mut cap, port, _dir) = capture("reject");
    let h = route_home(port, &[]);
    let md = setup_users(h.path(), &["sender"]);
    let s = Server::start_delivering(h.path(), "epoll");
    let (code, _) = send_message(
        s.smtp,
        "sender@example.com",
        &["gone@remote.test"],
        b"Subject: doomed\r\nMessage-ID: <doomed@test>\r\n\r\nbody\r\n.\r\n",
    );
    assert_eq!(code, 250);
    wait_until(30, "bounce in sender's maildir", || {
        maildir_files(&md[0]).len() == 1
    });
    let raw = std::fs::read(&maildir_files(&md[0])[0]).unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("Return-Path: <>\n"), "{text}");
    let parsed = mail_parser::MessageParser::default()
        .parse(&raw)
        .expect("bounce parses");
    use mail_parser::MimeHeaders;
    let ct = parsed.content_type().expect("content type");
    assert_eq!(
        (ct.c_type.as_ref(), ct.c_subtype.as_deref()),
        ("multipart", Some("report"))
    );
    assert!(text.contains("Final-Recipient: rfc822;"), "{text}");
    assert!(text.contains("gone@remote.test"), "{text}");
    assert!(text.contains("Action: failed"), "{text}");
    assert!(text.contains("550"), "{text}");
    assert!(
        text.contains("Subject: doomed"),
        "original enclosed: {text}"
    );
    wait_until(10, "queue drained", || queue_list(h.path()).is_empty());
    let _ = cap.kill();
}

#[test]
fn sigkill_during_delivery_delivers_everything_at_least_once() {
    let h = tempfile::tempdir().unwrap();
    let users: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let mds = setup_users(h.path(), &refs);
    // qmail's 10 (the default is 50): it bounds the duplicates below.
    std::fs::write(h.path().join("control/concurrencylocal"), "10\n").unwrap();
    // Accept everything first with delivery off, so the kill lands mid-delivery.
    let mut s = Server::start_with(h.path(), "uring", &[("INDIMAIL_NO_DELIVERY", "1")]);
    let total = 60;
    for m in 0..total {
        let rcpts: Vec<String> = (0..5)
            .map(|k| format!("u{}@example.com", (m + k) % 20))
            .collect();
        let r: Vec<&str> = rcpts.iter().map(String::as_str).collect();
        let body = format!("Subject: m{m}\r\nMessage-ID: <m{m}@crash>\r\n\r\nbody {m}\r\n.\r\n");
        assert_eq!(
            send_message(s.smtp, "s@example.org", &r, body.as_bytes()).0,
            250
        );
    }
    s.stop();
    let count = |mds: &[PathBuf]| mds.iter().map(|m| maildir_files(m).len()).sum::<usize>();
    let mut s = Server::start_delivering(h.path(), "uring");
    wait_until(60, "some deliveries", || count(&mds) >= 20);
    s.kill();
    let mut s = Server::start_delivering(h.path(), "epoll");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !queue_list(h.path()).is_empty() {
        if std::time::Instant::now() > deadline {
            // Show what is stuck and why: the queue and the deferrals.
            let log = s.log();
            let deferrals: Vec<&str> = log.lines().filter(|l| l.contains("deferral")).collect();
            panic!(
                "queue not drained after restart: {:?}\n{}",
                queue_list(h.path()),
                deferrals.join("\n")
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    s.stop();
    // Every (message, recipient) pair delivered at least once; duplicates
    // only for deliveries in flight at the kill (at most the local
    // concurrency, 10, set above).
    let mut dups = 0;
    for (i, md) in mds.iter().enumerate() {
        let mut ids = std::collections::HashMap::new();
        for f in maildir_files(md) {
            let t = std::fs::read_to_string(&f).unwrap();
            let id = t
                .lines()
                .find_map(|l| l.strip_prefix("Message-ID: "))
                .unwrap()
                .to_string();
            *ids.entry(id).or_insert(0) += 1;
        }
        for m in 0..total {
            if (0..5).any(|k| (m + k) % 20 == i) {
                let n = ids.get(&format!("<m{m}@crash>")).copied().unwrap_or(0);
                assert!(n >= 1, "m{m} never delivered to u{i}");
                dups += n - 1;
            }
        }
    }
    assert!(dups <= 10, "{dups} duplicate deliveries");
}

/// smtproutes credentials: this server relays through another indimail
/// server that relays only for authenticated users. With the right
/// password (STARTTLS, then AUTH PLAIN) the message goes through; with a
/// wrong one the relay answers 535 and the recipient stays queued,
/// deferred (never bounced for a configuration mistake).
#[test]
fn smtproutes_credentials_authenticate_to_the_relay() {
    let relay_home = tempfile::tempdir().unwrap();
    setup_users(relay_home.path(), &["bob"]);
    let relay = Server::start(relay_home.path(), "uring");
    let port = relay.smtp.port();
    let h = tempfile::tempdir().unwrap();
    let control = h.path().join("control");
    std::fs::create_dir_all(&control).unwrap();
    std::fs::write(
        control.join("smtproutes"),
        format!(
            "far.test:127.0.0.1:{port} bob@example.com pw12345\n\
             wrong.test:127.0.0.1:{port} bob@example.com not-the-password AUTH_SMTP=LOGIN\n"
        ),
    )
    .unwrap();
    let s = Server::start_delivering(h.path(), "uring");
    let (code, text) = send_message(
        s.smtp,
        "sender@example.org",
        &["x@far.test"],
        b"Subject: via an authenticated relay\r\n\r\nhi\r\n.\r\n",
    );
    assert_eq!(code, 250, "{text}");
    wait_until(30, "relayed with AUTH", || {
        relay.log().contains("rcpts=1 ip=127.0.0.1")
    });
    let log = relay.log();
    assert!(
        log.contains("auth ok user=bob@example.com mech=PLAIN"),
        "{log}"
    );
    wait_until(20, "delivered", || {
        s.log().contains("x@far.test") && queue_list(h.path()).is_empty()
    });

    let (code, text) = send_message(
        s.smtp,
        "sender@example.org",
        &["y@wrong.test"],
        b"Subject: wrong password\r\n\r\nhi\r\n.\r\n",
    );
    assert_eq!(code, 250, "{text}");
    wait_until(30, "AUTH refused", || {
        relay
            .log()
            .contains("auth failed user=bob@example.com mech=LOGIN")
    });
    wait_until(20, "deferred", || {
        s.log().contains("AUTH: bob@example.com was refused")
    });
    assert_eq!(queue_list(h.path()).len(), 1, "still queued");
    assert!(!s.log().contains("not-the-password"), "{}", s.log());
}

/// `MAILDIR_SYNC`: `file` (a flush per message) and `filesystem` (`syncfs`
/// shared by the shard's deliveries) both deliver every message whole into
/// `new/`, on both drivers; a value that names no mode stops `serve` at
/// start with an error naming the variable.
#[test]
fn maildir_sync_modes_deliver_and_a_bad_one_stops_serve() {
    for d in DRIVERS {
        for mode in ["file", "filesystem"] {
            let h = tempfile::tempdir().unwrap();
            let md = setup_users(h.path(), &["alice"]);
            let mut s = Server::start_with(h.path(), d, &[("MAILDIR_SYNC", mode)]);
            for i in 0..5 {
                let body = format!("Subject: {mode} {i}\r\n\r\nbody {i}\r\n.\r\n");
                let (code, text) = send_message(
                    s.smtp,
                    "bob@example.org",
                    &["alice@example.com"],
                    body.as_bytes(),
                );
                assert_eq!(code, 250, "{d} {mode}: {text}");
            }
            wait_until(20, "maildir delivery", || maildir_files(&md[0]).len() == 5);
            // Deliveries run concurrently: the files need not land in send order.
            let mut bodies: Vec<String> = maildir_files(&md[0])
                .iter()
                .map(|f| std::fs::read_to_string(f).unwrap())
                .map(|t| t.rsplit("\n\n").next().unwrap_or_default().to_string())
                .collect();
            bodies.sort();
            let want: Vec<String> = (0..5).map(|i| format!("body {i}\n")).collect();
            assert_eq!(bodies, want, "{d} {mode}");
            assert_eq!(std::fs::read_dir(md[0].join("tmp")).unwrap().count(), 0);
            assert_eq!(s.stop(), Some(0), "{d} {mode}");
        }
    }
    let h = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["serve", "--home"])
        .arg(h.path())
        .args(["--smtp", "127.0.0.1:0"])
        .env("INDIMAIL_ALLOW_ROOT", "1")
        .env("MAILDIR_SYNC", "fsync")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("MAILDIR_SYNC=fsync: not auto, file or filesystem"),
        "{err}"
    );
}

//! End to end over real TCP: the `indimail serve` binary on ephemeral
//! loopback ports, driven by our own client, swaks and Python's smtplib.
//! Every scenario runs on both I/O drivers (io_uring and epoll).

mod common;

use common::*;
use std::process::Command;

fn home() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn body(id: &str, extra: &str) -> Vec<u8> {
    format!("From: a@example.org\r\nTo: b@example.org\r\nSubject: {id}\r\nMessage-ID: <{id}@test>\r\n\r\nhello {id}\r\n{extra}.\r\n").into_bytes()
}

#[test]
fn accepts_and_queues_on_both_drivers() {
    for d in DRIVERS {
        let h = home();
        let mut s = Server::start(h.path(), d);
        let (code, text) = send_message(
            s.smtp,
            "a@example.org",
            &["u1@localhost", "u2@localhost"],
            &body("basic", ""),
        );
        assert_eq!(code, 250, "{d}: {text}");
        assert!(text.contains("2.0.0"), "{text}");
        let list = queue_list(h.path());
        assert_eq!(list.len(), 1, "{d}: {list:?}");
        assert!(list[0].contains("from=<a@example.org>"), "{}", list[0]);
        assert!(
            list[0].contains("<u1@localhost>") && list[0].contains("<u2@localhost>"),
            "{}",
            list[0]
        );
        assert_eq!(s.stop(), Some(0), "{d}: {}", s.log());
        // Still there after a clean restart.
        let mut s = Server::start(h.path(), d);
        assert_eq!(queue_list(h.path()).len(), 1);
        s.stop();
    }
}

#[test]
fn relaying_needs_rcpthosts_or_relayclient() {
    for d in DRIVERS {
        let h = home();
        std::fs::create_dir_all(h.path().join("tcp")).unwrap();
        std::fs::write(h.path().join("tcp/tcp.smtp"), ":allow\n").unwrap();
        std::fs::create_dir_all(h.path().join("control")).unwrap();
        std::fs::write(
            h.path().join("control/rcpthosts"),
            "example.com\n.sub.example.net\n",
        )
        .unwrap();
        let s = Server::start(h.path(), d);
        let mut c = Client::connect(s.smtp);
        c.reply();
        c.cmd("EHLO x");
        assert_eq!(c.cmd("MAIL FROM:<a@b.org>").0, 250);
        let (code, text) = c.cmd("RCPT TO:<x@elsewhere.org>");
        assert_eq!(code, 553, "{text}");
        assert!(text.contains("5.7.1"), "{text}");
        assert_eq!(c.cmd("RCPT TO:<x@example.com>").0, 250);
        assert_eq!(c.cmd("RCPT TO:<x@a.sub.example.net>").0, 250);
        assert_eq!(c.cmd("RCPT TO:<postmaster>").0, 250);
        c.cmd("QUIT");
    }
}

#[test]
fn many_concurrent_pipelined_sessions() {
    for d in DRIVERS {
        let h = home();
        let s = Server::start(h.path(), d);
        let addr = s.smtp;
        let threads: Vec<_> = (0..16)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut c = Client::connect(addr);
                    assert_eq!(c.reply().0, 220);
                    let (code, ehlo) = c.cmd("EHLO pipeliner");
                    assert_eq!(code, 250);
                    assert!(ehlo.contains("PIPELINING"), "{ehlo}");
                    for m in 0..10 {
                        let id = format!("p{t}-{m}");
                        let mut batch = format!("MAIL FROM:<{id}@example.org>\r\nRCPT TO:<a@localhost>\r\nRCPT TO:<b@localhost>\r\nDATA\r\n").into_bytes();
                        c.send(&batch);
                        for _ in 0..3 {
                            assert_eq!(c.reply().0, 250);
                        }
                        assert_eq!(c.reply().0, 354);
                        batch = body(&id, "");
                        c.send(&batch);
                        let (code, text) = c.reply();
                        assert_eq!(code, 250, "{text}");
                    }
                    c.cmd("QUIT");
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(queue_list(h.path()).len(), 160, "{d}");
    }
}

#[test]
fn message_larger_than_10_mb() {
    for d in DRIVERS {
        let h = home();
        let s = Server::start(h.path(), d);
        let line = "0123456789".repeat(7) + "\r\n";
        let mut big = b"Subject: big\r\n\r\n".to_vec();
        while big.len() < 11 * 1024 * 1024 {
            big.extend_from_slice(line.as_bytes());
        }
        big.extend_from_slice(b".\r\n");
        let (code, text) = send_message(s.smtp, "big@example.org", &["r@localhost"], &big);
        assert_eq!(code, 250, "{d}: {text}");
        let list = queue_list(h.path());
        assert_eq!(list.len(), 1);
        let size: u64 = list[0]
            .split_whitespace()
            .find_map(|w| w.strip_prefix("size="))
            .unwrap()
            .parse()
            .unwrap();
        // Stored in queue form (LF line ends), so a little smaller than sent.
        assert!(size > 10 * 1024 * 1024, "{}", list[0]);
    }
}

#[test]
fn databytes_limit_gives_552_and_session_continues() {
    for d in DRIVERS {
        let h = home();
        std::fs::create_dir_all(h.path().join("control")).unwrap();
        std::fs::write(h.path().join("control/databytes"), "1000\n").unwrap();
        let s = Server::start(h.path(), d);
        let mut c = Client::connect(s.smtp);
        c.reply();
        let (_, ehlo) = c.cmd("EHLO x");
        assert!(ehlo.contains("SIZE 1000"), "{ehlo}");
        assert_eq!(c.cmd("MAIL FROM:<a@b.org> SIZE=5000").0, 552);
        assert_eq!(c.cmd("MAIL FROM:<a@b.org>").0, 250);
        assert_eq!(c.cmd("RCPT TO:<r@localhost>").0, 250);
        assert_eq!(c.cmd("DATA").0, 354);
        c.send(&body("toobig", &("x".repeat(70) + "\r\n").repeat(30)));
        let (code, text) = c.reply();
        assert_eq!(code, 552, "{text}");
        // The session goes on and a small message is accepted.
        assert_eq!(c.cmd("MAIL FROM:<a@b.org>").0, 250);
        assert_eq!(c.cmd("RCPT TO:<r@localhost>").0, 250);
        assert_eq!(c.cmd("DATA").0, 354);
        c.send(&body("small", ""));
        assert_eq!(c.reply().0, 250);
        c.cmd("QUIT");
        assert_eq!(queue_list(h.path()).len(), 1);
    }
}

#[test]
fn chunking_bdat() {
    for d in DRIVERS {
        let h = home();
        let s = Server::start(h.path(), d);
        let mut c = Client::connect(s.smtp);
        c.reply();
        let (_, ehlo) = c.cmd("EHLO x");
        assert!(ehlo.contains("CHUNKING"), "{ehlo}");
        c.cmd("MAIL FROM:<a@b.org>");
        c.cmd("RCPT TO:<r@localhost>");
        let part1 = b"Subject: bdat\r\n\r\nline one\r\n";
        let part2 = b".leading dot stays\r\nlast line\r\n";
        c.send(format!("BDAT {}\r\n", part1.len()).as_bytes());
        c.send(part1);
        assert_eq!(c.reply().0, 250);
        c.send(format!("BDAT {} LAST\r\n", part2.len()).as_bytes());
        c.send(part2);
        let (code, text) = c.reply();
        assert_eq!(code, 250, "{text}");
        // BDAT is held to DATA's line-end rule: a bare LF is refused (it
        // could be relayed as a smuggled end of data).
        c.cmd("MAIL FROM:<a@b.org>");
        c.cmd("RCPT TO:<r@localhost>");
        let bare = b"Subject: bare\r\n\r\nbare\nLF\r\n";
        c.send(format!("BDAT {} LAST\r\n", bare.len()).as_bytes());
        c.send(bare);
        let (code, text) = c.reply();
        assert_eq!(code, 550, "{text}");
        c.cmd("QUIT");
        let list = queue_list(h.path());
        assert_eq!(list.len(), 1);
    }
}

#[test]
fn smuggling_attempt_queues_nothing() {
    for d in DRIVERS {
        let h = home();
        let s = Server::start(h.path(), d);
        for variant in ["\n.\n", "\r.\r", "\n.\r\n", "\r\n.\n", "\r.\r\n", "\r\n.\r"] {
            let mut c = Client::connect(s.smtp);
            c.reply();
            c.cmd("EHLO x");
            c.cmd("MAIL FROM:<a@b.org>");
            c.cmd("RCPT TO:<r@localhost>");
            assert_eq!(c.cmd("DATA").0, 354);
            // A smuggled second message hides behind a non-standard end.
            let payload = format!(
                "Subject: first\r\n\r\nhello{variant}MAIL FROM:<evil@x.org>\r\nRCPT TO:<victim@localhost>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n"
            );
            c.send(payload.as_bytes());
            let (code, text) = c.reply();
            assert!(code >= 500, "{d} {variant:?}: {text}");
            // No further replies: nothing was parsed as commands.
            assert_eq!(c.cmd("NOOP").0, 250, "{d} {variant:?}");
            c.cmd("QUIT");
        }
        assert_eq!(
            queue_list(h.path()).len(),
            0,
            "{d}: {:?}",
            queue_list(h.path())
        );
    }
}

#[test]
fn idle_timeout_and_per_ip_limit() {
    for d in DRIVERS {
        let h = home();
        std::fs::create_dir_all(h.path().join("control")).unwrap();
        std::fs::write(h.path().join("control/timeoutsmtpd"), "1\n").unwrap();
        let s = Server::start_with(
            h.path(),
            d,
            &[("MAXPERIP", "2"), ("INDIMAIL_NO_DELIVERY", "1")],
        );
        let mut a = Client::connect(s.smtp);
        assert_eq!(a.reply().0, 220);
        let mut b = Client::connect(s.smtp);
        assert_eq!(b.reply().0, 220);
        let mut c = Client::connect(s.smtp);
        let (code, text) = c.reply();
        assert_eq!(code, 421, "{d}: {text}");
        // The idle ones are dropped after the timeout with a 421.
        let (code, text) = a.reply();
        assert_eq!(code, 421, "{d}: {text}");
        assert!(a.is_closed());
        b.reply();
        // Slots were released: a new connection is welcome again.
        let mut e = Client::connect(s.smtp);
        assert_eq!(e.reply().0, 220);
    }
}

#[test]
fn swaks_delivers_into_the_queue() {
    let swaks = "/usr/bin/swaks";
    assert!(
        std::path::Path::new(swaks).exists(),
        "swaks is missing: install the Debian package `swaks` (scripts/install-test-deps.sh does)"
    );
    for d in DRIVERS {
        let h = home();
        let s = Server::start(h.path(), d);
        let out = Command::new(swaks)
            .stdin(std::process::Stdio::null())
            .args([
                "--server",
                "127.0.0.1",
                "--port",
                &s.smtp.port().to_string(),
            ])
            .args([
                "--from",
                "swaks@example.org",
                "--to",
                "user@localhost",
                "--pipeline",
            ])
            .args(["--header", "Subject: swaks test"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{d}: {text}");
        assert!(text.contains("<-  250 2.0.0"), "{text}");
        let list = queue_list(h.path());
        assert_eq!(list.len(), 1, "{list:?}");
        assert!(list[0].contains("from=<swaks@example.org>"));
    }
}

#[test]
fn python_smtplib_client() {
    let h = home();
    let s = Server::start(h.path(), "uring");
    let script = format!(
        r#"
import smtplib
from email.message import EmailMessage
m = EmailMessage()
m["From"] = "py@example.org"; m["To"] = "u@localhost"; m["Subject"] = "smtplib"
m.set_content("caf\u00e9 .\n.leading dot\n")
with smtplib.SMTP("127.0.0.1", {port}) as s:
    s.ehlo("pyclient")
    assert s.has_extn("pipelining") and s.has_extn("8bitmime") and s.has_extn("chunking")
    refused = s.send_message(m)
    assert refused == {{}}, refused
    try:
        s.sendmail("py@example.org", ["u@localhost"], "Subject: x\n\n" + "y" * 10)
    except smtplib.SMTPException as e:
        raise SystemExit("unexpected " + repr(e))
print("ok")
"#,
        port = s.smtp.port()
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
    assert_eq!(queue_list(h.path()).len(), 2);
}

#[test]
fn bad_commands_get_standard_replies() {
    let h = home();
    let s = Server::start(h.path(), "uring");
    let mut c = Client::connect(s.smtp);
    c.reply();
    assert_eq!(c.cmd("MAIL FROM:<a@b.org>").0, 503);
    assert_eq!(c.cmd("FOO").0, 500);
    c.cmd("EHLO x");
    assert_eq!(c.cmd("RCPT TO:<a@b>").0, 503);
    assert_eq!(c.cmd("MAIL FROM:<not an address>").0, 501);
    assert_eq!(c.cmd("VRFY someone").0, 252);
    let long = format!("NOOP {}", "x".repeat(2000));
    assert_eq!(c.cmd(&long).0, 500);
    assert_eq!(c.cmd("NOOP").0, 250);
    assert_eq!(c.cmd("QUIT").0, 221);
}

#[test]
fn tracing_spans_when_asked() {
    let h = tempfile::tempdir().unwrap();
    let s = Server::start_with(
        h.path(),
        "uring",
        &[("INDIMAIL_NO_DELIVERY", "1"), ("INDIMAIL_TRACE", "info")],
    );
    let (code, text) = send_message(
        s.smtp,
        "a@example.org",
        &["b@localhost"],
        b"Subject: traced\r\n\r\nx\r\n.\r\n",
    );
    assert_eq!(code, 250, "{text}");
    wait_until(10, "session span closed", || {
        let log = s.log();
        log.lines().any(|l| {
            l.contains("smtp_session") && l.contains("close") && l.contains("ip=127.0.0.1")
        })
    });
}

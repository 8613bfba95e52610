//! Greylisting at RCPT: built in (state on each client address's home shard, kept across a restart)
//! and as a client of IndiMail's qmail-greyd UDP protocol (spec 2.9; the
//! test runs a scripted server speaking that protocol).

mod common;

use common::*;

fn home() -> tempfile::TempDir {
    let h = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(h.path().join("control")).unwrap();
    std::fs::create_dir_all(h.path().join("tcp")).unwrap();
    std::fs::write(h.path().join("tcp/tcp.smtp"), ":allow\n").unwrap();
    std::fs::write(h.path().join("control/rcpthosts"), "example.com\n").unwrap();
    h
}

fn rcpt_code(s: &Server, from: &str, to: &str) -> (u16, String) {
    let mut c = Client::connect(s.smtp);
    c.reply();
    c.cmd("EHLO client.example.org");
    assert_eq!(c.cmd(&format!("MAIL FROM:<{from}>")).0, 250);
    let r = c.cmd(&format!("RCPT TO:<{to}>"));
    c.cmd("QUIT");
    r
}

#[test]
fn builtin_greylisting_defers_then_accepts_and_survives_restart() {
    let h = home();
    std::fs::write(h.path().join("control/greylist"), "1 3600 86400\n").unwrap();
    let mut s = Server::start(h.path(), "uring");
    let (code, text) = rcpt_code(&s, "new@sender.example", "a@example.com");
    assert_eq!(code, 451, "{text}");
    assert!(text.contains("4.7.1"), "{text}");
    assert_eq!(
        rcpt_code(&s, "new@sender.example", "a@example.com").0,
        451,
        "too early"
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(
        rcpt_code(&s, "new@sender.example", "a@example.com").0,
        250,
        "after the minimum resend time"
    );
    s.stop();
    let s = Server::start(h.path(), "epoll");
    assert_eq!(
        rcpt_code(&s, "new@sender.example", "a@example.com").0,
        250,
        "state kept across a restart"
    );
}

#[test]
fn qmail_greyd_client() {
    // A scripted qmail-greyd: the first request of a triplet gets \0\1
    // (new record: greylisted), later ones \1\2 (ok).
    let script = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
seen = set()
while True:
    data, peer = s.recvfrom(4096)
    assert data.startswith(b"I127.0.0.1\0F"), data
    if data in seen:
        s.sendto(b"\x01\x02", peer)
    else:
        seen.add(data)
        s.sendto(b"\x00\x01", peer)
"#;
    let mut child = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let port = line.trim().to_string();
    let h = home();
    let s = Server::start_with(
        h.path(),
        "uring",
        &[
            ("GREYIP", &format!("127.0.0.1@{port}")),
            ("INDIMAIL_NO_DELIVERY", "1"),
        ],
    );
    let (code, text) = rcpt_code(&s, "x@sender.example", "a@example.com");
    assert_eq!(code, 450, "{text}");
    assert_eq!(rcpt_code(&s, "x@sender.example", "a@example.com").0, 250);
    let _ = child.kill();
    let _ = child.wait();
    // Server gone: temporary failure, not acceptance.
    let (code, text) = rcpt_code(&s, "y@sender.example", "a@example.com");
    assert_eq!(code / 100, 4, "{text}");
}

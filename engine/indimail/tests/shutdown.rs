//! SIGTERM with SMTP transactions in flight: a transaction that ends
//! within `control/shutdowntimeout` is answered 250 and kept; one still in
//! DATA at the deadline gets no 250 and is not queued; an idle session does
//! not hold the server; the server exits within the bound; after a restart
//! the queue holds exactly the messages that got 250.
//!
//! Peers: blocking SMTP clients over loopback.

mod common;

use common::*;
use std::time::{Duration, Instant};

fn in_data(c: &mut Client, subject: &str) {
    assert_eq!(c.reply().0, 220);
    assert_eq!(c.cmd("EHLO test.example").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<b@example.net>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(format!("Subject: {subject}\r\n\r\nfirst part of {subject}\r\n").as_bytes());
}

#[test]
fn sigterm_finishes_or_aborts_transactions_within_the_bound() {
    let bound = 2u64;
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    std::fs::create_dir_all(home.join("control")).unwrap();
    std::fs::write(home.join("control/shutdowntimeout"), format!("{bound}\n")).unwrap();
    let mut s = Server::start(home, "epoll");
    let (code, text) = send_message(
        s.smtp,
        "a@example.org",
        &["b@example.net"],
        b"Subject: before\r\n\r\nbody\r\n.\r\n",
    );
    assert_eq!(code, 250, "{text}");
    let mut late = Client::connect(s.smtp);
    in_data(&mut late, "late");
    let mut unfinished = Client::connect(s.smtp);
    in_data(&mut unfinished, "unfinished");
    let mut idle = Client::connect(s.smtp);
    assert_eq!(idle.reply().0, 220);

    let mut child = s.child.take().unwrap();
    let t0 = Instant::now();
    // SAFETY: plain kill(2) on our child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    // Within the grace period: this transaction completes and is kept.
    std::thread::sleep(Duration::from_millis(300));
    late.send(b"rest of late\r\n.\r\n");
    let (code, text) = late.reply();
    assert_eq!(code, 250, "{text}");
    // This one never ends its DATA: the server must exit anyway.
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(bound + 15),
            "server still running {}s after SIGTERM with shutdowntimeout={bound}",
            t0.elapsed().as_secs()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    // The sessions still open at the deadline (late, unfinished and idle,
    // spread over the shards) are named in the log.
    let closed: u32 = s
        .log()
        .lines()
        .filter_map(|l| l.split_once(" stopping: closing "))
        .filter_map(|(_, rest)| rest.strip_suffix(" smtp sessions still open after 2s"))
        .map(|n| n.parse::<u32>().unwrap())
        .sum();
    assert!((2..=3).contains(&closed), "{}", s.log());
    // No 250 for the unfinished message: the connection is closed (a
    // 421 would do as well).
    let _ = unfinished.try_send(b"rest\r\n.\r\n");
    let (code, text) = unfinished.try_reply();
    assert_ne!(code, 250, "{text}");
    assert!(idle.is_closed());

    // After a restart: "before" and "late", not "unfinished".
    let s = Server::start(home, "epoll");
    let list = queue_list(home);
    assert_eq!(list.len(), 2, "{list:?}");
    let mut subjects = Vec::new();
    for line in &list {
        let id = line.split(' ').nth(1).unwrap();
        let (c, out, err) = indimail(home, &["queue", "show", id]);
        assert_eq!(c, 0, "{err}");
        subjects.extend(
            out.lines()
                .filter_map(|l| l.strip_prefix("Subject: "))
                .map(str::to_string),
        );
    }
    subjects.sort();
    assert_eq!(subjects, ["before", "late"]);
    drop(s);
}

/// During the drain the listeners take no connections: a client that connects after SIGTERM
/// is refused or reset at once, never left waiting for a greeting that will not come. (On
/// io_uring the accepts still in flight kept the socket listening until the process exited.)
#[test]
fn after_sigterm_new_connections_are_refused_not_left_waiting() {
    use std::io::Read;
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    std::fs::create_dir_all(home.join("control")).unwrap();
    std::fs::write(home.join("control/shutdowntimeout"), "10\n").unwrap();
    let mut s = Server::start(home, "uring");
    // A transaction in DATA holds the drain open.
    let mut busy = Client::connect(s.smtp);
    in_data(&mut busy, "busy");
    s.sigterm();
    std::thread::sleep(Duration::from_millis(500));
    for attempt in 0..4 {
        match std::net::TcpStream::connect_timeout(&s.smtp, Duration::from_secs(2)) {
            Err(_) => {} // refused: nobody listens any more
            Ok(mut c) => {
                c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                let mut buf = [0u8; 512];
                match c.read(&mut buf) {
                    Ok(0) => {}
                    Ok(n) => {
                        let text = String::from_utf8_lossy(&buf[..n]);
                        assert!(text.starts_with("421"), "attempt {attempt}: {text}");
                    }
                    Err(e) => assert!(
                        !matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ),
                        "attempt {attempt}: connected during the drain and got no answer"
                    ),
                }
            }
        }
    }
    // The transaction under way is still served, and the server then exits.
    busy.send(b"rest of busy\r\n.\r\n");
    let (code, text) = busy.reply();
    assert_eq!(code, 250, "{text}");
    assert_eq!(s.wait_exit(), Some(0));
}

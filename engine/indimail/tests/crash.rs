//! Crash test: while clients send, the server is killed with SIGKILL.
//! After a restart every message that got 250 is in the queue exactly once
//! with all its recipients, and nothing is there whose data was not sent in
//! full. (A message whose data was sent and committed but whose 250 was lost
//! with the process may be present: at most one per session, the window
//! between commit and reply that every MTA has.)

mod common;

use common::*;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Ledger {
    acked: HashSet<String>,
    fully_sent: HashSet<String>,
}

fn run_crash(first: &str, second: &str, sessions: usize) {
    let h = tempfile::tempdir().unwrap();
    let mut s = Server::start(h.path(), first);
    let addr = s.smtp;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..sessions)
        .map(|t| {
            let ledger = Arc::clone(&ledger);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut n = 0;
                'conn: while !stop.load(Ordering::Relaxed) {
                    let Ok(stream) = std::net::TcpStream::connect(addr) else {
                        return;
                    };
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut c = Client::from_stream(stream);
                    if c.try_reply().0 != 220 || c.try_cmd("EHLO crash").0 != 250 {
                        return;
                    }
                    for _ in 0..5 {
                        n += 1;
                        let sender = format!("c{t}m{n}@crash.test");
                        if c.try_cmd(&format!("MAIL FROM:<{sender}>")).0 != 250
                            || c.try_cmd("RCPT TO:<one@localhost>").0 != 250
                            || c.try_cmd("RCPT TO:<two@localhost>").0 != 250
                            || c.try_cmd("DATA").0 != 354
                        {
                            return;
                        }
                        let mut body = format!("Subject: {sender}\r\n\r\n").into_bytes();
                        for _ in 0..20 {
                            body.extend(std::iter::repeat_n(b'z', 98));
                            body.extend_from_slice(b"\r\n");
                        }
                        body.extend_from_slice(b".\r\n");
                        if c.try_send(&body).is_err() {
                            return;
                        }
                        ledger.lock().unwrap().fully_sent.insert(sender.clone());
                        match c.try_reply().0 {
                            250 => {
                                ledger.lock().unwrap().acked.insert(sender);
                            }
                            0 => return,
                            _ => continue 'conn,
                        }
                    }
                    let _ = c.try_cmd("QUIT");
                }
            })
        })
        .collect();
    // Let a good number of messages through, then kill mid-stream.
    wait_until(120, "some accepted messages", || {
        ledger.lock().unwrap().acked.len() >= 200
    });
    s.kill();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let ledger = ledger.lock().unwrap();

    let mut s = Server::start(h.path(), second);
    let list = queue_list(h.path());
    s.stop();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for line in &list {
        let from = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("from=<"))
            .and_then(|w| w.strip_suffix('>'))
            .unwrap_or_else(|| panic!("no sender in {line}"))
            .to_string();
        assert!(
            line.contains("<one@localhost>") && line.contains("<two@localhost>"),
            "recipients missing: {line}"
        );
        *seen.entry(from).or_default() += 1;
    }
    for a in &ledger.acked {
        assert_eq!(
            seen.get(a),
            Some(&1),
            "acked message {a} not in the queue exactly once"
        );
    }
    let mut unacked = 0;
    for (from, count) in &seen {
        assert_eq!(*count, 1, "{from} queued {count} times");
        assert!(
            ledger.fully_sent.contains(from),
            "{from} is queued but its data was never sent in full"
        );
        if !ledger.acked.contains(from) {
            unacked += 1;
        }
    }
    assert!(
        unacked <= sessions,
        "{unacked} unacknowledged messages queued for {sessions} sessions"
    );
    eprintln!(
        "crash test {first}->{second}: acked {}, queued {}, committed-but-unacked {unacked}",
        ledger.acked.len(),
        list.len()
    );
}

#[test]
fn sigkill_under_load_uring() {
    run_crash("uring", "epoll", 8);
}

#[test]
fn sigkill_under_load_epoll() {
    run_crash("epoll", "uring", 8);
}

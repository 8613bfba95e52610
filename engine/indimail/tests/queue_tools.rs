//! Queue tools end to end: `indimail queue show | hold | release | delete |
//! bounce | flush | shape` against a running server (control socket) and a
//! stopped one (queue files, under the queue lock); the qmail names
//! (`qmail-qread`, `qmail-qstat`, `qmail-rm`) through `install-links`;
//! SIGTERM during a load run loses nothing that got 250; `service install`
//! writes a unit systemd accepts; `log summary` on a real run's log.
//!
//! Peers: the Python aiosmtpd capture server (routed by `smtproutes`),
//! swaks-free blocking SMTP clients over loopback, virtual users' Maildirs.

mod common;

use common::*;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Subjects of the captured messages.
fn captured_subjects(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for n in 1.. {
        let eml = dir.join(format!("{n}.eml"));
        if !eml.exists() {
            break;
        }
        let text = std::fs::read_to_string(eml).unwrap();
        if let Some(s) = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .map(|s| s.trim().to_string())
        {
            out.push(s);
        }
    }
    out
}

/// A home with example.com, user alice (the senders' mailbox) and a route
/// for sink.example to `port`; remote retries far apart.
fn home_with_route(port: u16) -> (tempfile::TempDir, PathBuf) {
    let h = tempfile::tempdir().unwrap();
    route_domain(h.path(), "sink.example", port);
    std::fs::write(h.path().join("control/chanskipremote"), "3000\n").unwrap();
    let md = add_user(h.path(), "alice");
    (h, md)
}

fn maildir_texts(md: &Path) -> Vec<String> {
    std::fs::read_dir(md.join("new"))
        .map(|r| {
            r.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}

fn send(addr: SocketAddr, to: &str, subject: &str) {
    let body = format!("Subject: {subject}\r\n\r\nbody of {subject}\r\n.\r\n");
    let (code, text) = send_message(addr, "alice@example.com", &[to], body.as_bytes());
    assert_eq!(code, 250, "{text}");
}

/// `queue list` line of the message to `rcpt`, and its id.
fn id_of(home: &Path, rcpt: &str) -> String {
    let list = queue_list(home);
    let line = list
        .iter()
        .find(|l| l.contains(&format!("<{rcpt}>")))
        .unwrap_or_else(|| panic!("no message to {rcpt} in {list:?}"));
    line.split(' ').nth(1).unwrap().to_string()
}

/// Whether a `queue list` line is the message `id`.
fn is(line: &str, id: &str) -> bool {
    line.split(' ').nth(1) == Some(id)
}

fn ok(home: &Path, args: &[&str]) -> String {
    let (c, out, err) = indimail(home, args);
    assert_eq!(c, 0, "{args:?}: {out}{err}");
    out
}

fn socket_answers(home: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(home.join("run/control.sock")).is_ok()
}

#[test]
fn tools_on_a_running_server() {
    let port = free_port();
    let (h, alice) = home_with_route(port);
    let home = h.path();
    let s = Server::start_delivering(home, "epoll");
    wait_until(10, "control socket", || socket_answers(home));
    for i in 0..5 {
        send(
            s.smtp,
            &format!("rcpt{i}@sink.example"),
            &format!("msg-{i}"),
        );
    }
    // Every first attempt fails (nothing listens yet) and is deferred far.
    wait_until(30, "five deferrals", || {
        s.log().matches(": deferral: ").count() >= 5
    });
    let ids: Vec<String> = (0..5)
        .map(|i| id_of(home, &format!("rcpt{i}@sink.example")))
        .collect();

    // show: envelope and headers; --body: the whole message.
    let out = ok(home, &["queue", "show", &ids[0]]);
    assert!(out.contains("*** ENVELOPE ***"), "{out}");
    assert!(
        out.contains("recipient: <rcpt0@sink.example> pending attempts=1"),
        "{out}"
    );
    assert!(out.contains("Subject: msg-0"), "{out}");
    assert!(!out.contains("body of msg-0"), "{out}");
    let out = ok(home, &["queue", "show", &ids[0], "--body"]);
    assert!(out.contains("body of msg-0"), "{out}");
    let (c, out, _) = indimail(home, &["queue", "show", "9-9-9"]);
    assert_ne!(c, 0);
    assert!(out.contains("no message 9-9-9"), "{out}");

    // hold by id.
    let out = ok(home, &["queue", "hold", &ids[0]]);
    assert!(out.contains(&format!("{} held", ids[0])), "{out}");
    assert!(queue_list(home)
        .iter()
        .any(|l| is(l, &ids[0]) && l.ends_with(" held")));

    // delete: refused without --yes off a terminal; by recipient with it.
    let (c, _, err) = indimail(home, &["queue", "delete", "--rcpt", "rcpt1@sink.example"]);
    assert_eq!(c, 100, "{err}");
    assert!(err.contains("--yes"), "{err}");
    let out = ok(
        home,
        &["queue", "delete", "--yes", "--rcpt", "rcpt1@sink.example"],
    );
    assert!(out.contains("delete: 1 recipients of 1 messages"), "{out}");
    assert!(!queue_list(home).iter().any(|l| is(l, &ids[1])));

    // bounce: a real DSN reaches the sender's Maildir.
    let out = ok(home, &["queue", "bounce", "-y", &ids[2]]);
    assert!(out.contains("bounced rcpts=1 bounce="), "{out}");
    wait_until(30, "bounce in alice's Maildir", || {
        maildir_texts(&alice)
            .iter()
            .any(|t| t.contains("rcpt2@sink.example") && t.contains("multipart/report"))
    });
    assert!(!queue_list(home).iter().any(|l| is(l, &ids[2])));

    // shape: the three left (one held) by destination domain.
    let out = ok(home, &["queue", "shape"]);
    let row = |name: &str| -> Vec<u64> {
        out.lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("{name} row: {out}"))
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap())
            .collect()
    };
    assert_eq!(row("TOTAL")[..2], [3, 3], "{out}");
    assert_eq!(row("sink.example")[..2], [3, 3], "{out}");
    assert!(out.lines().next().unwrap().contains("1280+"), "{out}");

    // The sink comes up; flush retries now, the held one stays.
    let (_peer, cap) = capture_on(port);
    let out = ok(home, &["queue", "flush", "--domain", "sink.example"]);
    assert!(out.contains("flush: 2 recipients of 2 messages"), "{out}");
    wait_until(30, "flushed mail at the sink", || {
        captured_subjects(cap.path()).len() == 2
    });
    std::thread::sleep(Duration::from_secs(1));
    let mut got = captured_subjects(cap.path());
    got.sort();
    assert_eq!(got, ["msg-3", "msg-4"]);
    assert_eq!(queue_list(home).len(), 1, "the held one stays");

    // release: tried at once.
    let out = ok(home, &["queue", "release", &ids[0]]);
    assert!(out.contains("released"), "{out}");
    wait_until(30, "released mail at the sink", || {
        captured_subjects(cap.path()).len() == 3
    });
    wait_until(10, "queue empty", || queue_list(home).is_empty());
    let log = s.log();
    assert!(log.contains("held by operator"), "{log}");
    assert!(log.contains("deleted by operator"), "{log}");
}

#[test]
fn tools_on_a_stopped_server() {
    let port = free_port();
    let (h, alice) = home_with_route(port);
    let home = h.path();
    let (_peer, cap) = capture_on(port);
    {
        // Accept and queue only, then stop: the mail waits in the queue.
        let mut s = Server::start(home, "epoll");
        for i in 0..4 {
            send(
                s.smtp,
                &format!("rcpt{i}@sink.example"),
                &format!("msg-{i}"),
            );
        }
        assert_eq!(s.stop(), Some(0));
    }
    assert!(!socket_answers(home));
    let ids: Vec<String> = (0..4)
        .map(|i| id_of(home, &format!("rcpt{i}@sink.example")))
        .collect();

    let out = ok(home, &["queue", "show", &ids[3]]);
    assert!(out.contains("Subject: msg-3"), "{out}");
    ok(home, &["queue", "hold", &ids[0]]);
    let (c, _, _) = indimail(home, &["queue", "delete", &ids[1]]);
    assert_eq!(c, 100, "no --yes off a terminal");
    ok(home, &["queue", "delete", "--yes", &ids[1]]);
    let out = ok(
        home,
        &["queue", "bounce", "--yes", "--rcpt", "rcpt2@sink.example"],
    );
    assert!(out.contains("bounce: 1 recipients of 1 messages"), "{out}");
    let out = ok(home, &["queue", "shape"]);
    assert!(out.contains("sink.example"), "{out}");
    // A queue locked by another process is never opened twice.
    {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(home.join("queue/queue1/lock"))
            .unwrap();
        // SAFETY: flock(2) on a descriptor this test owns.
        assert_eq!(
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
            0
        );
        let (c, _, err) = indimail(home, &["queue", "hold", "--all"]);
        assert_eq!(c, 111);
        assert!(err.contains("in use"), "{err}");
    }

    let list = queue_list(home);
    assert!(
        list.iter().any(|l| is(l, &ids[0]) && l.ends_with(" held")),
        "{list:?}"
    );
    assert!(
        !list.iter().any(|l| is(l, &ids[1]) || is(l, &ids[2])),
        "{list:?}"
    );
    assert!(
        list.iter()
            .any(|l| l.contains("from=<>") && l.contains("<alice@example.com>")),
        "the bounce waits in the queue: {list:?}"
    );

    // Start: the untouched one is delivered, the bounce reaches alice, the
    // held one stays until released (through the running server now).
    let s = Server::start_delivering(home, "uring");
    wait_until(30, "msg-3 at the sink", || {
        captured_subjects(cap.path()) == ["msg-3"]
    });
    wait_until(30, "bounce in alice's Maildir", || {
        maildir_texts(&alice)
            .iter()
            .any(|t| t.contains("rcpt2@sink.example") && t.contains("multipart/report"))
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(captured_subjects(cap.path()), ["msg-3"]);
    assert_eq!(queue_list(home).len(), 1);
    wait_until(10, "control socket", || socket_answers(home));
    ok(home, &["queue", "release", &ids[0]]);
    wait_until(30, "released msg-0 at the sink", || {
        captured_subjects(cap.path()).len() == 2
    });
    wait_until(10, "queue empty", || queue_list(home).is_empty());
    drop(s);
}

#[test]
fn release_and_flush_on_a_stopped_server_apply_at_start() {
    let port = free_port();
    let (h, _) = home_with_route(port);
    let home = h.path();
    {
        // Delivery on, sink down: the attempt is deferred (3000 s skip).
        let mut s = Server::start_delivering(home, "epoll");
        send(s.smtp, "rcpt0@sink.example", "msg-0");
        send(s.smtp, "rcpt1@sink.example", "msg-1");
        wait_until(30, "deferrals", || {
            s.log().matches(": deferral: ").count() >= 2
        });
        let id = id_of(home, "rcpt0@sink.example");
        ok(home, &["queue", "hold", &id]);
        assert_eq!(s.stop(), Some(0));
    }
    let id0 = id_of(home, "rcpt0@sink.example");
    // Stopped: release and flush are recorded for the next start.
    let out = ok(home, &["queue", "release", &id0]);
    assert!(out.contains("tried when it starts"), "{out}");
    let out = ok(home, &["queue", "flush"]);
    assert!(out.contains("flush: 2 recipients"), "{out}");
    let (_peer, cap) = capture_on(port);
    let _s = Server::start_delivering(home, "epoll");
    wait_until(30, "both at the sink", || {
        captured_subjects(cap.path()).len() == 2
    });
    wait_until(10, "queue empty", || queue_list(home).is_empty());
}

#[test]
fn qmail_names_through_install_links() {
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    let bin_dir = tempfile::tempdir().unwrap();
    let out = ok(home, &["install-links", bin_dir.path().to_str().unwrap()]);
    for name in [
        "qmail-qread",
        "qmail-qstat",
        "qmail-rm",
        "qmail-queue",
        "sendmail",
        "vadduser",
    ] {
        let link = bin_dir.path().join(name);
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink(),
            "{name}: {out}"
        );
    }
    // Idempotent; a foreign file is kept.
    std::fs::remove_file(bin_dir.path().join("vadduser")).unwrap();
    std::fs::write(bin_dir.path().join("vadduser"), "mine").unwrap();
    let (c, out, err) = indimail(home, &["install-links", bin_dir.path().to_str().unwrap()]);
    assert_eq!(c, 1, "{out}{err}");
    assert!(out.contains("already linked"), "{out}");
    assert_eq!(
        std::fs::read_to_string(bin_dir.path().join("vadduser")).unwrap(),
        "mine"
    );

    let prog = |name: &str, args: &[&str]| {
        let o = Command::new(bin_dir.path().join(name))
            .args(args)
            .env("INDIMAIL_HOME", home)
            .env_remove("QUEUEDIR")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let mut s = Server::start(home, "epoll");
    send(s.smtp, "one@remote.example", "first message");
    send(s.smtp, "two@remote.example", "second message");
    // Running server.
    let (c, out, _) = prog("qmail-qstat", &[]);
    assert_eq!(c, 0);
    assert!(out.contains("messages in queue: 2\n"), "{out}");
    assert!(
        out.contains("messages in queue but not yet preprocessed: 0"),
        "{out}"
    );
    let (c, out, _) = prog("qmail-qread", &[]);
    assert_eq!(c, 0);
    assert!(out.contains("GMT  #"), "{out}");
    assert!(out.contains("<alice@example.com>"), "{out}");
    assert!(out.contains("\tremote\tone@remote.example\n"), "{out}");
    let (c, out, _) = prog("qmail-rm", &["-p", "FIRST MESSAGE", "-i"]);
    assert_eq!(c, 0);
    assert!(out.contains("1 messages"), "{out}");
    let (c, _, err) = prog("qmail-rm", &["-r", "-p", "first message"]);
    assert_eq!(c, 100, "{err}");
    let (c, out, _) = prog("qmail-rm", &["-r", "-y", "-p", "first message"]);
    assert_eq!(c, 0, "{out}");
    assert!(out.contains("delete: 1 recipients of 1 messages"), "{out}");
    assert_eq!(s.stop(), Some(0));
    // Stopped server.
    let (_, out, _) = prog("qmail-qstat", &[]);
    assert!(out.contains("messages in queue: 1\n"), "{out}");
    let (c, out, _) = prog("qmail-rm", &["-X", "-y", "-p", "second message"]);
    assert_eq!(c, 0, "{out}");
    assert!(out.contains("bounce: 1 recipients of 1 messages"), "{out}");
    let (_, out, _) = prog("qmail-qread", &[]);
    assert!(out.contains("<>"), "the bounce to alice is queued: {out}");
    assert!(!out.contains("two@remote.example"), "{out}");
}

/// One SMTP transaction that never panics: Some(true) on 250 after DATA,
/// Some(false) on another reply, None when the connection failed.
fn try_send(addr: SocketAddr, to: &str, token: &str) -> Option<bool> {
    let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let mut c = Client::from_stream(stream);
    if c.try_reply().0 != 220 {
        return None;
    }
    for cmd in [
        "EHLO load.example",
        "MAIL FROM:<load@example.org>",
        &format!("RCPT TO:<{to}>"),
    ] {
        if c.try_cmd(cmd).0 != 250 {
            return None;
        }
    }
    if c.try_cmd("DATA").0 != 354 {
        return None;
    }
    let body = format!("Subject: {token}\r\n\r\ntoken {token}\r\n.\r\n");
    c.try_send(body.as_bytes()).ok()?;
    let (code, _) = c.try_reply();
    let _ = c.try_cmd("QUIT");
    match code {
        250 => Some(true),
        0 => None,
        _ => Some(false),
    }
}

#[test]
fn sigterm_during_load_loses_nothing_that_got_250() {
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    let md = add_user(home, "load");
    let mut s = Server::start_delivering(home, "uring");
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let accepted = Arc::clone(&accepted);
            let stop = Arc::clone(&stop);
            let addr = s.smtp;
            std::thread::spawn(move || {
                let mut failures = 0;
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) || failures > 20 {
                        break;
                    }
                    let token = format!("tok-{t}-{i}");
                    match try_send(addr, "load@example.com", &token) {
                        Some(true) => accepted.lock().unwrap().push(token),
                        Some(false) => {}
                        None => {
                            failures += 1;
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
            })
        })
        .collect();
    // Let the load run, then SIGTERM in the middle of it.
    let start = Instant::now();
    while accepted.lock().unwrap().len() < 150 && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(s.stop(), Some(0), "clean exit on SIGTERM");
    // The clients notice the server is gone (connection failures).
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let accepted: Vec<String> = accepted.lock().unwrap().clone();
    assert!(accepted.len() >= 150, "load ran: {}", accepted.len());
    let first_log = s.log();

    // Restart: whatever is still queued is delivered.
    let s2 = Server::start_delivering(home, "uring");
    wait_until(120, "queue drained after restart", || {
        queue_list(home).is_empty()
    });
    let texts = maildir_texts(&md);
    let delivered: HashSet<String> = texts
        .iter()
        .filter_map(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .map(|s| s.trim().to_string())
        })
        .collect();
    let lost: Vec<&String> = accepted
        .iter()
        .filter(|t| !delivered.contains(*t))
        .collect();
    eprintln!(
        "sigterm under load: {} got 250, {} delivered (files {}), {} lost",
        accepted.len(),
        delivered.len(),
        texts.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "lost after 250: {lost:?}");
    drop(s2);

    // log summary on this real run's log (both runs).
    let (c, out, err) = indimail(
        home,
        &["log", "summary", home.join("serve.log").to_str().unwrap()],
    );
    assert_eq!(c, 0, "{err}");
    let num = |key: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {out}"))
    };
    assert!(num("messages: ") >= accepted.len() as u64, "{out}");
    assert!(num("recipients: ") >= accepted.len() as u64, "{out}");
    assert!(num("bytes: ") > 0, "{out}");
    assert!(out.contains(&format!("success={}", texts.len())), "{out}");
    assert!(
        out.contains("latency (arrival to final outcome): n="),
        "{out}"
    );
    assert!(out.contains("p99="), "{out}");
    assert!(first_log.contains("status: signal TERM"), "{first_log}");
}

#[test]
fn service_install_writes_a_unit_systemd_accepts() {
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    ok(home, &["init"]);
    std::fs::write(home.join("control/cpus"), "0\n").unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out = ok(
        home,
        &[
            "service",
            "install",
            out_dir.path().to_str().unwrap(),
            "--daemontools",
            "--user",
            "nobody",
        ],
    );
    assert!(out.contains("indimail.service"), "{out}");
    let unit = std::fs::read_to_string(out_dir.path().join("indimail.service")).unwrap();
    let mut section = String::new();
    let mut keys = Vec::new();
    for l in unit.lines() {
        if l.starts_with('#') || l.is_empty() {
            continue;
        }
        if l.starts_with('[') {
            section = l.to_string();
            continue;
        }
        let (k, v) = l
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {l}"));
        keys.push((section.clone(), k.to_string(), v.to_string()));
    }
    let get = |s: &str, k: &str| {
        keys.iter()
            .find(|(sec, key, _)| sec == s && key == k)
            .map(|x| x.2.clone())
            .unwrap_or_else(|| panic!("{s} {k} in {unit}"))
    };
    let exec = get("[Service]", "ExecStart");
    assert!(
        exec.ends_with(&format!(" serve --home {}", home.display())),
        "{exec}"
    );
    assert!(
        Path::new(exec.split(' ').next().unwrap()).exists(),
        "{exec}"
    );
    assert_eq!(get("[Service]", "CPUAffinity"), "0");
    assert_eq!(get("[Service]", "KillSignal"), "SIGTERM");
    assert_eq!(get("[Service]", "User"), "nobody");
    assert_eq!(get("[Install]", "WantedBy"), "multi-user.target");
    let run = std::fs::read_to_string(out_dir.path().join("indimail/run")).unwrap();
    assert!(run.starts_with("#!/bin/sh\n"), "{run}");
    assert!(run.contains("taskset -c 0 setuidgid nobody "), "{run}");
    assert!(out_dir.path().join("indimail/log/run").exists());
    // systemd's own check, where the tool is installed.
    if Path::new("/usr/bin/systemd-analyze").exists() {
        let o = Command::new("/usr/bin/systemd-analyze")
            .arg("verify")
            .arg(out_dir.path().join("indimail.service"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success(),
            "systemd-analyze verify: {err}{}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
}

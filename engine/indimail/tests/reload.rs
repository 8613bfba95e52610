//! Hot reload: control files are re-read when they change (or on SIGHUP);
//! new connections get the new configuration, open ones keep theirs, a bad
//! file keeps the old configuration and is reported with file and line.

mod common;

use common::*;

fn ehlo_size(addr: std::net::SocketAddr) -> String {
    let mut c = Client::connect(addr);
    c.reply();
    let (_, ehlo) = c.cmd("EHLO x");
    c.cmd("QUIT");
    ehlo.lines()
        .find(|l| l.contains("SIZE"))
        .unwrap_or("")
        .to_string()
}

#[test]
fn control_file_change_applies_to_new_sessions_only() {
    for d in DRIVERS {
        let h = tempfile::tempdir().unwrap();
        let home = h.path();
        std::fs::create_dir_all(home.join("control")).unwrap();
        std::fs::write(home.join("control/databytes"), "0\n").unwrap();
        let mut s = Server::start(home, d);
        assert!(ehlo_size(s.smtp).ends_with("SIZE"), "{d}");
        // A session open across the change keeps its configuration.
        let mut old = Client::connect(s.smtp);
        old.reply();
        old.cmd("EHLO old");
        std::fs::write(home.join("control/databytes"), "1000\n").unwrap();
        wait_until(20, "reload", || ehlo_size(s.smtp).ends_with("SIZE 1000"));
        assert_eq!(old.cmd("MAIL FROM:<a@example.org>").0, 250);
        assert_eq!(old.cmd("RCPT TO:<r@localhost>").0, 250);
        assert_eq!(old.cmd("DATA").0, 354);
        old.send(
            format!(
                "Subject: big\r\n\r\n{}.\r\n",
                ("y".repeat(70) + "\r\n").repeat(30)
            )
            .as_bytes(),
        );
        assert_eq!(old.reply().0, 250, "{d}: the old session keeps databytes 0");
        // A broken file keeps the old configuration and says why.
        std::fs::write(home.join("control/databytes"), "much\n").unwrap();
        wait_until(20, "reload failure logged", || {
            s.log().contains("reload failed")
        });
        assert!(
            s.log()
                .contains("databytes:1: `much` is not a valid number"),
            "{}",
            s.log()
        );
        assert!(ehlo_size(s.smtp).ends_with("SIZE 1000"));
        // SIGHUP reloads too.
        std::fs::write(home.join("control/databytes"), "2000\n").unwrap();
        // SAFETY: kill(2) on our child.
        unsafe {
            libc::kill(s.child.as_ref().unwrap().id() as i32, libc::SIGHUP);
        }
        wait_until(20, "reload on HUP", || {
            ehlo_size(s.smtp).ends_with("SIZE 2000")
        });
        assert_eq!(s.stop(), Some(0));
    }
}

#[test]
fn per_ip_limit_changed_while_running() {
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    std::fs::create_dir_all(home.join("control")).unwrap();
    let s = Server::start(home, "uring");
    let mut held: Vec<Client> = (0..3).map(|_| Client::connect(s.smtp)).collect();
    for c in held.iter_mut() {
        assert_eq!(c.reply().0, 220);
    }
    std::fs::write(home.join("control/maxperip"), "3\n").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    loop {
        let mut c = Client::connect(s.smtp);
        if c.reply().0 == 421 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "maxperip 3 not applied; log:\n{}",
            s.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The sessions already open were not dropped.
    for c in held.iter_mut() {
        assert_eq!(c.cmd("NOOP").0, 250);
    }
}

/// `smtproutes` is reloaded like the other control files: after the file
/// changes, remote mail takes the new route (on every shard), and a bad line
/// keeps the old table, reported with file and line. Delivery's control
/// files (`locals` here) are reloaded as well.
#[test]
fn smtproutes_change_reroutes_remote_mail() {
    let (_a, port_a, dir_a) = capture("ok");
    let (_b, port_b, dir_b) = capture("ok");
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    std::fs::create_dir_all(home.join("control")).unwrap();
    std::fs::write(
        home.join("control/smtproutes"),
        format!("remote.test:127.0.0.1:{port_a}\n"),
    )
    .unwrap();
    let s = Server::start_delivering(home, "uring");
    let send = |n: usize| {
        for i in 0..n {
            let (code, text) = send_message(
                s.smtp,
                "a@example.org",
                &["r@remote.test"],
                format!("Subject: m{i}\r\n\r\nx\r\n.\r\n").as_bytes(),
            );
            assert_eq!(code, 250, "{text}");
        }
    };
    send(4);
    wait_until(30, "4 at the first route", || {
        captured(dir_a.path()).len() == 4
    });
    std::fs::write(
        home.join("control/smtproutes"),
        format!("remote.test:127.0.0.1:{port_b}\n"),
    )
    .unwrap();
    wait_until(20, "reload", || s.log().contains("configuration reloaded"));
    send(4);
    wait_until(30, "4 at the new route", || {
        captured(dir_b.path()).len() == 4
    });
    assert_eq!(captured(dir_a.path()).len(), 4);
    std::fs::write(
        home.join("control/smtproutes"),
        "remote.test:127.0.0.1:notaport\n",
    )
    .unwrap();
    wait_until(20, "reload failure logged", || {
        s.log().contains("reload failed") && s.log().contains("smtproutes:1:")
    });
    send(1);
    wait_until(30, "the old table kept", || {
        captured(dir_b.path()).len() == 5
    });
    // Delivery's own control files reload too: remote.test made local, its
    // postmaster is now delivered here (the host postmaster's Maildir).
    let reloads = || s.log().matches("configuration reloaded").count();
    let before = reloads();
    std::fs::write(home.join("control/locals"), "remote.test\n").unwrap();
    std::fs::write(home.join("control/smtproutes"), "").unwrap();
    wait_until(20, "reload", || reloads() > before);
    let (code, text) = send_message(
        s.smtp,
        "a@example.org",
        &["postmaster@remote.test"],
        b"Subject: local now\r\n\r\nx\r\n.\r\n",
    );
    assert_eq!(code, 250, "{text}");
    wait_until(30, "delivered locally", || {
        maildir_files(&home.join("alias/Maildir")).len() == 1
    });
    assert_eq!(captured(dir_b.path()).len(), 5);
}

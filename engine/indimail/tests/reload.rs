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
    std::fs::write(home.join("control/cpus"), "0\n").unwrap();
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

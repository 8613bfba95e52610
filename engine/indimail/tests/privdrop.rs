//! Running as root: `serve` binds a port below 1024, then drops to the
//! configured unprivileged user (`nobody` here) before it touches mail:
//! the process runs as that user, and the queue files and the Maildir
//! message it writes belong to it. Without a user to drop to, root is
//! refused (unless `INDIMAIL_ALLOW_ROOT=1`), and a user with uid 0 too.
//!
//! Peers: a blocking SMTP client over loopback, a virtual user's Maildir.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A free loopback port below 1024 (never 25), from 1000 up.
fn privileged_port() -> u16 {
    (1000..1024)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port in 1000..1024")
}

fn serve_cmd(home: &Path, smtp: &str) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--home"])
        .arg(home)
        .args(["--smtp", smtp])
        .env("INDIMAIL_DRIVER", "epoll")
        .env_remove("INDIMAIL_ALLOW_ROOT")
        .env_remove("INDIMAIL_USER")
        .env_remove("QUEUEDIR")
        .env_remove("INDIMAIL_HOME");
    cmd
}

/// The real, effective, saved and filesystem uids of a process.
fn uids(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .map(|u| u.parse().unwrap())
        .collect()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// Starts `serve` on `port` (as root, dropping by `control/user`);
/// returns the server and its pid.
fn start(home: &Path, port: u16) -> (Server, u32) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.join("serve.log"))
        .unwrap();
    let mut child = serve_cmd(home, &format!("127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut server = Server {
        child: None,
        home: home.to_path_buf(),
        smtp: SocketAddr::from(([127, 0, 0, 1], port)),
        driver: "epoll".into(),
    };
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    while !line.starts_with("smtp listening on ") {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            let _ = child.wait();
            panic!("server did not start:\n{}", server.log());
        }
    }
    assert_eq!(line.trim(), format!("smtp listening on 127.0.0.1:{port}"));
    let pid = child.id();
    server.child = Some(child);
    (server, pid)
}

/// Sends one message to `rcpt` and waits for it in `maildir`; returns the
/// delivered file.
fn deliver(server: &Server, rcpt: &str, maildir: &Path) -> PathBuf {
    let (code, text) = send_message(
        server.smtp,
        "bob@example.org",
        &[rcpt],
        b"Subject: as nobody\r\n\r\nhello\r\n.\r\n",
    );
    assert_eq!(code, 250, "{text}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let got = files(&maildir.join("new"));
        if let Some(f) = got.into_iter().next() {
            return f;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no delivery to {rcpt}; log:\n{}",
            server.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn binds_below_1024_then_runs_and_delivers_as_the_configured_user() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let nobody = 65534;
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    // Made by root: the server gives the home to its user before dropping.
    let alice = add_user(home, "alice");
    std::fs::write(home.join("control/user"), "nobody\n").unwrap();
    let port = privileged_port();
    let (mut server, pid) = start(home, port);
    assert!(
        server.log().contains("running as nobody uid=65534"),
        "{}",
        server.log()
    );
    // Every uid of the process is nobody's: it could not bind the port
    // now, so it bound before dropping.
    assert_eq!(uids(pid), vec![nobody; 4]);

    let delivered = deliver(&server, "alice@example.com", &alice);
    assert_eq!(std::fs::metadata(&delivered).unwrap().uid(), nobody);
    let queue_files = files(&home.join("queue"));
    assert!(
        queue_files
            .iter()
            .any(|f| f.to_string_lossy().contains("/seg/")),
        "{queue_files:?}"
    );
    for f in &queue_files {
        assert_eq!(
            std::fs::metadata(f).unwrap().uid(),
            nobody,
            "{} not nobody's",
            f.display()
        );
    }
    assert_eq!(server.stop(), Some(0));

    // Between runs, as root: an admin command makes a mailbox, and
    // `sendmail` queues a message for it (a drop file, written as root).
    // The next start gives both to the user, then imports and delivers.
    let carol = add_user(home, "carol");
    // The new mailbox takes the owner of the directory it was made in
    // (the server's user), not root's.
    assert_eq!(std::fs::metadata(&carol).unwrap().uid(), nobody);
    // A mailbox root made some other way is given to the user at the next
    // start.
    let st = Command::new("chown")
        .args(["-R", "0:0"])
        .arg(carol.parent().unwrap())
        .status()
        .unwrap();
    assert!(st.success());
    let mut sm = Command::new(bin());
    sm.args(["sendmail", "-f", "bob@example.org", "carol@example.com"])
        .env("INDIMAIL_HOME", home)
        .env_remove("QUEUEDIR")
        .stdin(Stdio::piped());
    let mut child = sm.spawn().unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        b"Subject: queued while stopped\n\nhello\n",
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    assert!(files(&home.join("queue"))
        .iter()
        .any(|f| std::fs::metadata(f).unwrap().uid() == 0));
    let (server, _) = start(home, port);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while files(&carol.join("new")).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no delivery to carol; log:\n{}",
            server.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let delivered = files(&carol.join("new"));
    assert_eq!(std::fs::metadata(&delivered[0]).unwrap().uid(), nobody);
    for f in files(&home.join("queue")) {
        assert_eq!(
            std::fs::metadata(&f).unwrap().uid(),
            nobody,
            "{}",
            f.display()
        );
    }
}

#[test]
fn root_without_a_user_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    // A user with uid 0 is refused.
    let out = serve_cmd(home, "127.0.0.1:0")
        .env("INDIMAIL_USER", "root")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to run as root"), "{err}");
    // No user at all (and no `indimail` user on this machine).
    let has_indimail = std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("indimail:"));
    if !has_indimail {
        let out = serve_cmd(home, "127.0.0.1:0").output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("refusing to run as root"), "{err}");
        assert!(err.contains("control/user"), "{err}");
    }
    // A user that does not exist.
    let out = serve_cmd(home, "127.0.0.1:0")
        .env("INDIMAIL_USER", "no-such-user-xyz")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("INDIMAIL_USER: no user named no-such-user-xyz"),
        "{err}"
    );
}

#[test]
fn config_check_reports_an_unknown_user_and_shows_the_drop() {
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    let (c, _, _) = indimail(home, &["init"]);
    assert_eq!(c, 0);
    std::fs::write(home.join("control/user"), "no-such-user-xyz\n").unwrap();
    let (c, out, err) = indimail(home, &["config", "check"]);
    assert_ne!(c, 0);
    assert!(
        format!("{out}{err}").contains("user:1: no user named no-such-user-xyz"),
        "{out}{err}"
    );
    std::fs::write(home.join("control/user"), "nobody\n").unwrap();
    std::fs::write(home.join("control/shutdowntimeout"), "7\n").unwrap();
    let (c, out, err) = indimail(home, &["config", "show"]);
    assert_eq!(c, 0, "{err}");
    assert!(out.contains("shutdowntimeout: 7"), "{out}");
    if is_root() {
        assert!(out.contains("user: nobody (uid 65534"), "{out}");
    }
}

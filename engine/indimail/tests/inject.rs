//! Local injection: the qmail-queue protocol (`indimail queue inject` and
//! the binary run as `qmail-queue`) and the sendmail entry.

mod common;

use common::*;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Runs qmail-queue style: message on fd 0, envelope readable on fd 1.
fn qmail_queue(cmd: &mut Command, message: &[u8], envelope: &[u8]) -> (i32, String) {
    let (reader, mut writer) = std::io::pipe().unwrap();
    writer.write_all(envelope).unwrap();
    drop(writer);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(reader)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(message).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn inject_cmd(home: &Path) -> Command {
    let mut c = Command::new(bin());
    c.args(["queue", "inject", "--home"])
        .arg(home)
        .env_remove("QUEUEDIR");
    c
}

#[test]
fn inject_while_stopped_then_imported_by_serve() {
    let h = tempfile::tempdir().unwrap();
    let (code, err) = qmail_queue(
        &mut inject_cmd(h.path()),
        b"Subject: injected\n\nhello\n",
        b"Fsender@example.org\0Trcpt@localhost\0Tother@localhost\0\0",
    );
    assert_eq!(code, 0, "{err}");
    let list = queue_list(h.path());
    assert_eq!(list.len(), 1, "{list:?}");
    assert!(list[0].contains("awaiting-import"), "{}", list[0]);
    let mut s = Server::start(h.path(), "uring");
    wait_until(20, "import", || {
        let l = queue_list(h.path());
        l.len() == 1 && !l[0].contains("awaiting-import")
    });
    let list = queue_list(h.path());
    assert!(list[0].contains("from=<sender@example.org>"), "{}", list[0]);
    assert!(list[0].contains("<rcpt@localhost>") && list[0].contains("<other@localhost>"));
    // Injection into a running server, on the epoll driver this time.
    s.stop();
    let s = Server::start(h.path(), "epoll");
    let (code, _) = qmail_queue(
        &mut inject_cmd(h.path()),
        b"Subject: two\n\nx\n",
        b"F\0Tpm@localhost\0\0",
    );
    assert_eq!(code, 0);
    wait_until(20, "second import", || {
        let l = queue_list(h.path());
        l.len() == 2 && l.iter().all(|x| !x.contains("awaiting-import"))
    });
    drop(s);
}

#[test]
fn qmail_queue_exit_codes() {
    let h = tempfile::tempdir().unwrap();
    let cases: [(&[u8], i32); 4] = [
        (b"Xbad\0Tr@x\0\0", 79),
        (b"Fs@x\0Tr@x\0", 54),
        (b"Fs@x\0Ur@x\0\0", 79),
        (b"Fs@x\0\0", 79),
    ];
    for (env, want) in cases {
        let (code, err) = qmail_queue(&mut inject_cmd(h.path()), b"x\n", env);
        assert_eq!(code, want, "{env:?}: {err}");
    }
    let long = format!("Fs@x\0T{}@x\0\0", "a".repeat(1100));
    let (code, _) = qmail_queue(&mut inject_cmd(h.path()), b"x\n", long.as_bytes());
    assert_eq!(code, 11);
    // Nothing was queued by the failures.
    assert_eq!(queue_list(h.path()).len(), 0);
    // databytes applies: a custom permanent error (88 with a D line).
    std::fs::create_dir_all(h.path().join("control")).unwrap();
    std::fs::write(h.path().join("control/databytes"), "10\n").unwrap();
    let (code, err) = qmail_queue(&mut inject_cmd(h.path()), &[b'x'; 100], b"Fs@x\0Tr@x\0\0");
    assert_eq!(code, 88);
    assert!(err.starts_with('D'), "{err}");
}

#[test]
fn runs_as_qmail_queue_and_sendmail_by_name() {
    let h = tempfile::tempdir().unwrap();
    let bindir = tempfile::tempdir().unwrap();
    for name in ["qmail-queue", "sendmail"] {
        std::os::unix::fs::symlink(bin(), bindir.path().join(name)).unwrap();
    }
    let mut qq = Command::new(bindir.path().join("qmail-queue"));
    qq.env("INDIMAIL_HOME", h.path()).env_remove("QUEUEDIR");
    let (code, err) = qmail_queue(
        &mut qq,
        b"Subject: by name\n\nx\n",
        b"Fa@example.org\0Tb@localhost\0\0",
    );
    assert_eq!(code, 0, "{err}");

    let mut sm = Command::new(bindir.path().join("sendmail"));
    sm.args(["-t", "-f", "robot@example.org"])
        .env("INDIMAIL_HOME", h.path())
        .env_remove("QUEUEDIR")
        .stdin(Stdio::piped());
    let mut child = sm.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"To: one@localhost, Two <two@localhost>\nBcc: three@localhost\nSubject: cron\n\nreport\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let list = queue_list(h.path());
    assert_eq!(list.len(), 2, "{list:?}");
    let sm_line = list
        .iter()
        .find(|l| l.contains("robot@example.org"))
        .unwrap();
    for r in ["one@localhost", "two@localhost", "three@localhost"] {
        assert!(sm_line.contains(r), "{sm_line}");
    }
    // sendmail usage errors exit 64.
    let out = Command::new(bindir.path().join("sendmail"))
        .env("INDIMAIL_HOME", h.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

/// Injects `n` messages to `rcpt`, alternately through `indimail sendmail`
/// and the `qmail-queue` name; each must exit 0. The injectors see none of
/// the server's `--cpus` / `INDIMAIL_SHARDS`: they must still pick queues
/// the server imports.
fn inject_many(home: &Path, n: usize, rcpt: &str) {
    let bindir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(bin(), bindir.path().join("qmail-queue")).unwrap();
    for i in 0..n {
        let body = format!("Subject: layout {i}\n\nmessage {i}\n");
        if i % 2 == 0 {
            let mut child = Command::new(bin())
                .args(["sendmail", "-f", "robot@example.org", rcpt])
                .env("INDIMAIL_HOME", home)
                .env_remove("QUEUEDIR")
                .env_remove("INDIMAIL_SHARDS")
                .stdin(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(body.as_bytes())
                .unwrap();
            assert!(child.wait().unwrap().success(), "sendmail {i}");
        } else {
            let mut qq = Command::new(bindir.path().join("qmail-queue"));
            qq.env("INDIMAIL_HOME", home)
                .env_remove("QUEUEDIR")
                .env_remove("INDIMAIL_SHARDS");
            let env = format!("Frobot@example.org\0T{rcpt}\0\0");
            let (code, err) = qmail_queue(&mut qq, body.as_bytes(), env.as_bytes());
            assert_eq!(code, 0, "qmail-queue {i}: {err}");
        }
    }
}

/// Serves `home` (delivering) with `args`/`env`, injects 12 messages to a
/// virtual user and expects all 12 in the Maildir.
fn twelve_of_twelve(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
    let maildir = add_user(home, "ann");
    let listeners = [("smtp", std::net::SocketAddr::from(([127, 0, 0, 1], 0)))];
    let (s, _) = Server::start_full(home, "epoll", &listeners, args, env);
    inject_many(home, 12, "ann@example.com");
    wait_until(60, "12 of 12 delivered", || {
        maildir_files(&maildir).len() == 12
    });
    let awaiting: Vec<String> = queue_list(home)
        .into_iter()
        .filter(|l| l.contains("awaiting-import"))
        .collect();
    assert!(awaiting.is_empty(), "{awaiting:?}\n{}", s.log());
    s
}

#[test]
fn layout_one_shard_from_control_cpus() {
    let h = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(h.path().join("control")).unwrap();
    std::fs::write(h.path().join("control/cpus"), "0\n").unwrap();
    let s = twelve_of_twelve(h.path(), &[], &[]);
    assert!(s.log().contains("status: 1 shards"), "{}", s.log());
}

/// The reported bug: `serve --cpus 0` owned queue1 only while injectors
/// spread over one queue per online CPU, stranding the rest.
#[test]
fn layout_one_shard_from_cpus_argument() {
    let h = tempfile::tempdir().unwrap();
    let s = twelve_of_twelve(h.path(), &["--cpus", "0"], &[]);
    assert!(s.log().contains("status: 1 shards"), "{}", s.log());
}

#[test]
fn layout_two_shards() {
    let h = tempfile::tempdir().unwrap();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let env: &[(&str, &str)] = if cpus >= 2 {
        std::fs::create_dir_all(h.path().join("control")).unwrap();
        std::fs::write(h.path().join("control/cpus"), "0-1\n").unwrap();
        &[]
    } else {
        &[("INDIMAIL_SHARDS", "2")]
    };
    let s = twelve_of_twelve(h.path(), &[], env);
    assert!(s.log().contains("status: 2 shards"), "{}", s.log());
}

#[test]
fn layout_eight_unpinned_shards_test_mode() {
    let h = tempfile::tempdir().unwrap();
    let s = twelve_of_twelve(h.path(), &[], &[("INDIMAIL_SHARDS", "8")]);
    let log = s.log();
    assert!(log.contains("status: 8 shards"), "{log}");
    assert!(log.contains("placement=8 unpinned sched=batch"), "{log}");
}

/// Drop files in `queueN` directories outside the layout (an older layout,
/// or made after start) are delivered, not stranded.
#[test]
fn stray_queue_drops_are_delivered() {
    let h = tempfile::tempdir().unwrap();
    let maildir = add_user(h.path(), "ann");
    std::fs::create_dir_all(h.path().join("control")).unwrap();
    std::fs::write(h.path().join("control/cpus"), "0\n").unwrap();
    let stray = |n: u32, subject: &str| {
        let mut c = Command::new(bin());
        c.args(["queue", "inject", "--home"])
            .arg(h.path())
            .env("QUEUEDIR", h.path().join(format!("queue/queue{n}")));
        let (code, err) = qmail_queue(
            &mut c,
            format!("Subject: {subject}\n\nx\n").as_bytes(),
            b"Fold@example.org\0Tann@example.com\0\0",
        );
        assert_eq!(code, 0, "{err}");
    };
    stray(5, "older layout");
    assert!(h.path().join("queue/queue5/inject").is_dir());
    // Queue tools see it while the server is stopped.
    let list = queue_list(h.path());
    assert!(
        list.iter()
            .any(|l| l.starts_with("queue5 ") && l.contains("awaiting-import")),
        "{list:?}"
    );
    let s = Server::start_delivering(h.path(), "epoll");
    wait_until(30, "stray queue5 delivered", || {
        maildir_files(&maildir).len() == 1
    });
    assert!(s.log().contains("adopted queue5"), "{}", s.log());
    // A stray made while the server runs is picked up too.
    stray(7, "after start");
    wait_until(30, "stray queue7 delivered", || {
        maildir_files(&maildir).len() == 2
    });
    assert!(s.log().contains("adopted drops of queue7"), "{}", s.log());
}

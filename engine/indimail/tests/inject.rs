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

//! `indimail import-qmail-queue`: a qmail queue written by the test in the
//! original layout (spec 1.2: `mess/S/id`, `info/`, `local/`, `remote/`,
//! `todo/`, `bounce/`) is imported intact into a stopped home, a re-run
//! imports nothing twice, a run killed half-way and re-run loses and
//! duplicates nothing (and `serve` refuses the home in between), and
//! `serve` then delivers everything: to a virtual user's Maildir and,
//! through `smtproutes`, to the Python aiosmtpd capture server.

mod common;

use common::*;
use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};

/// qmail's conf-split of the test queue.
const SPLIT: u64 = 23;

fn maildir_texts(md: &Path) -> Vec<String> {
    std::fs::read_dir(md.join("new"))
        .map(|r| {
            r.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}

fn subject(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .unwrap_or("")
        .trim()
        .to_string()
}

/// (envelope recipients, message) of each captured message.
fn captured(dir: &Path) -> Vec<(Vec<String>, String)> {
    let mut out = Vec::new();
    for n in 1.. {
        let eml = dir.join(format!("{n}.eml"));
        if !eml.exists() {
            break;
        }
        let env = std::fs::read_to_string(dir.join(format!("{n}.env"))).unwrap();
        let rcpts = env.lines().skip(1).map(str::to_string).collect();
        out.push((rcpts, std::fs::read_to_string(eml).unwrap()));
    }
    out
}

/// Writes one file of the qmail queue, creating its directory.
fn put(root: &Path, dir: &str, split: bool, id: u64, bytes: &[u8]) {
    let d = if split {
        root.join(dir).join((id % SPLIT).to_string())
    } else {
        root.join(dir)
    };
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(id.to_string()), bytes).unwrap();
}

fn mess(root: &Path, id: u64, subject: &str) {
    let text = format!(
        "Received: (qmail 4242 invoked by uid 0); 24 Nov 2026 06:00:00 -0000\n\
         From: bob@sink.example\nSubject: {subject}\n\nbody of {subject}\n"
    );
    put(root, "mess", true, id, text.as_bytes());
}

/// Envelope records, NUL-terminated.
fn recs(list: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    for r in list {
        v.extend_from_slice(r.as_bytes());
        v.push(0);
    }
    v
}

/// The qmail queue of the test: every state an operator may find.
fn write_qmail_queue(root: &Path) {
    for d in ["pid", "intd", "todo", "bounce", "lock"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    // m1: preprocessed, one local (rewritten by virtualdomains) and one
    // remote recipient pending.
    mess(root, 3016451, "m1");
    put(root, "info", true, 3016451, &recs(&["Fbob@sink.example"]));
    put(
        root,
        "local",
        true,
        3016451,
        &recs(&["Texample.com-alice@example.com"]),
    );
    put(root, "remote", true, 3016451, &recs(&["Tr1@sink.example"]));
    // m2: partially delivered: alice and done@ finished (D), r2 pending.
    mess(root, 3016452, "m2");
    put(root, "info", true, 3016452, &recs(&["Fbob@sink.example"]));
    put(
        root,
        "local",
        true,
        3016452,
        &recs(&["Dexample.com-alice@example.com"]),
    );
    put(
        root,
        "remote",
        true,
        3016452,
        &recs(&["Ddone@sink.example", "Tr2@sink.example"]),
    );
    // m3: committed, not preprocessed (flat todo, BIGTODO=0), with an `e`
    // record of extra headers.
    mess(root, 3016453, "m3");
    put(
        root,
        "intd",
        false,
        3016453,
        &recs(&[
            "u0",
            "p4242",
            "Fbob@sink.example",
            "Talice@example.com",
            "Tr3@sink.example",
            "eX-Qmail-Extra: yes\n",
        ]),
    );
    std::fs::hard_link(root.join("intd/3016453"), root.join("todo/3016453")).unwrap();
    // m7: committed, not preprocessed, in a split todo (BIGTODO=1).
    mess(root, 3016457, "m7");
    put(
        root,
        "intd",
        true,
        3016457,
        &recs(&["u0", "p4243", "Fbob@sink.example", "Talice@example.com"]),
    );
    let split = (3016457 % SPLIT).to_string();
    std::fs::create_dir_all(root.join("todo").join(&split)).unwrap();
    std::fs::hard_link(
        root.join("intd").join(&split).join("3016457"),
        root.join("todo").join(&split).join("3016457"),
    )
    .unwrap();
    // m4: its only recipient failed; the bounce was not sent yet.
    mess(root, 3016454, "m4");
    put(root, "info", true, 3016454, &recs(&["Fbob@sink.example"]));
    put(
        root,
        "remote",
        true,
        3016454,
        &recs(&["Dgone@sink.example"]),
    );
    put(
        root,
        "bounce",
        false,
        3016454,
        b"<gone@sink.example>:\n127.0.0.1 does not like recipient./Remote host said: 550 no such user/\n\n",
    );
    // m5: never committed (qmail-queue died after writing the body).
    mess(root, 3016455, "m5");
    // m6: finished, qmail had not cleaned it up yet.
    mess(root, 3016456, "m6");
    put(root, "info", true, 3016456, &recs(&["Fbob@sink.example"]));
    put(
        root,
        "local",
        true,
        3016456,
        &recs(&["Dexample.com-alice@example.com"]),
    );
}

/// Files left under `root/dir`.
fn files_under(root: &Path, dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.join(dir)];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().display().to_string());
            }
        }
    }
    out
}

#[test]
fn qmail_queue_imported_intact_and_delivered() {
    let port = free_port();
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    route_domain(home, "sink.example", port);
    std::fs::write(home.join("control/me"), "mx.example.com\n").unwrap();
    let alice = add_user(home, "alice");

    let q = tempfile::tempdir().unwrap();
    let qroot = q.path().join("queue1");
    write_qmail_queue(&qroot);

    // --dry-run counts and changes nothing.
    let (c, out, err) = indimail(
        home,
        &[
            "import-qmail-queue",
            q.path().to_str().unwrap(),
            "--dry-run",
        ],
    );
    assert_eq!(c, 0, "{out}{err}");
    assert!(
        out.contains(
            "would import 4 messages (6 recipients), 1 bounces to queue; 1 already finished"
        ),
        "{out}"
    );
    assert_eq!(files_under(&qroot, "mess").len(), 7);
    assert!(!home.join("queue/queue1").exists());

    // The base holding queue1 is accepted as well as queue1 itself.
    let (c, out, err) = indimail(home, &["import-qmail-queue", q.path().to_str().unwrap()]);
    assert_eq!(c, 0, "{out}{err}");
    assert!(
        out.contains("imported 4 messages (6 recipients), 1 bounces queued; 1 already finished"),
        "{out}"
    );
    assert!(out.contains("left 1 uncommitted"), "{out}");
    // Plain progress lines (not a terminal) and one log line per message.
    assert!(err.contains("imported="), "{err}");
    for d in ["info", "local", "remote", "todo", "intd", "bounce"] {
        assert!(
            files_under(&qroot, d).is_empty(),
            "{d}: {:?}",
            files_under(&qroot, d)
        );
    }
    let left = files_under(&qroot, "mess");
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].ends_with("/3016455"), "{left:?}");
    assert_eq!(queue_list(home).len(), 5, "{:?}", queue_list(home));
    assert!(!home.join("queue/queue1/import.pending").exists());

    // `queue list` filters, as the other queue commands select.
    let count = |args: &[&str]| {
        let mut a = vec!["queue", "list"];
        a.extend_from_slice(args);
        let (c, out, err) = indimail(home, &a);
        assert_eq!(c, 0, "{err}");
        assert!(
            err.contains(&format!("{} messages", out.lines().count())),
            "{err}"
        );
        out.lines().count()
    };
    assert_eq!(count(&["--rcpt", "alice@example.com"]), 3);
    assert_eq!(count(&["--domain", "sink.example"]), 4);
    assert_eq!(count(&["--rcpt", "@SINK.example"]), 4);
    assert_eq!(count(&["--sender", "bob@sink.example"]), 4);
    assert_eq!(count(&["--sender", "<>"]), 1);
    assert_eq!(count(&["--sender", "<>", "--rcpt", "alice@example.com"]), 0);
    let first = queue_list(home)[0].split(' ').nth(1).unwrap().to_string();
    assert_eq!(count(&[&first]), 1);
    let (c, _, err) = indimail(home, &["queue", "list", "not-an-id"]);
    assert_ne!(c, 0);
    assert!(err.contains("bad message id"), "{err}");

    // A re-run has nothing left to import.
    let (c, out, err) = indimail(home, &["import-qmail-queue", qroot.to_str().unwrap()]);
    assert_eq!(c, 0, "{out}{err}");
    assert!(
        out.contains("imported 0 messages (0 recipients), 0 bounces"),
        "{out}"
    );
    assert_eq!(queue_list(home).len(), 5);

    // Our server holds the queues: an import is refused while it runs.
    let s = Server::start(home, "epoll");
    let (c, _, err) = indimail(home, &["import-qmail-queue", qroot.to_str().unwrap()]);
    assert_ne!(c, 0);
    assert!(err.contains("stop the server before importing"), "{err}");
    drop(s);

    let (_peer, cap) = capture_on(port);
    let s = Server::start_delivering(home, "epoll");
    wait_until(30, "four captured messages and three for alice", || {
        captured(cap.path()).len() >= 4 && maildir_texts(&alice).len() >= 3
    });
    wait_until(10, "queue empty", || queue_list(home).is_empty());
    let got = captured(cap.path());
    assert_eq!(got.len(), 4, "{got:?}");
    let mut by_rcpt: Vec<(String, String)> =
        got.iter().map(|(r, m)| (r.join(","), subject(m))).collect();
    by_rcpt.sort();
    assert_eq!(
        by_rcpt[..3],
        [
            ("bob@sink.example".to_string(), "failure notice".to_string()),
            ("r1@sink.example".to_string(), "m1".to_string()),
            ("r2@sink.example".to_string(), "m2".to_string()),
        ]
    );
    assert_eq!(
        by_rcpt[3],
        ("r3@sink.example".to_string(), "m3".to_string())
    );
    let bounce = &got
        .iter()
        .find(|(r, _)| r[0] == "bob@sink.example")
        .unwrap()
        .1;
    assert!(bounce.contains("gone@sink.example"), "{bounce}");
    assert!(bounce.contains("Subject: m4"), "{bounce}");
    let mut mine: Vec<String> = maildir_texts(&alice).iter().map(|t| subject(t)).collect();
    mine.sort();
    assert_eq!(mine, ["m1", "m3", "m7"]);
    let m3 = maildir_texts(&alice)
        .into_iter()
        .find(|t| subject(t) == "m3")
        .unwrap();
    assert!(
        m3.starts_with("X-Qmail-Extra: yes\n") || m3.contains("\nX-Qmail-Extra: yes\n"),
        "{m3}"
    );
    drop(s);
}

#[test]
fn import_killed_half_way_then_rerun_loses_and_duplicates_nothing() {
    const N: u64 = 300;
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    let alice = add_user(home, "alice");
    let q = tempfile::tempdir().unwrap();
    let qroot = q.path().to_path_buf();
    for d in ["pid", "intd", "todo", "bounce", "lock"] {
        std::fs::create_dir_all(qroot.join(d)).unwrap();
    }
    for i in 0..N {
        let id = 5_000_000 + i;
        mess(&qroot, id, &format!("bulk-{i}"));
        put(&qroot, "info", true, id, &recs(&["Fbob@sink.example"]));
        put(
            &qroot,
            "local",
            true,
            id,
            &recs(&["Texample.com-alice@example.com"]),
        );
    }
    let mut child = Command::new(bin())
        .args(["import-qmail-queue", qroot.to_str().unwrap(), "--home"])
        .arg(home)
        .env_remove("QUEUEDIR")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once some originals are gone (if it has not finished first).
    let killed = loop {
        if child.try_wait().unwrap().is_some() {
            break false;
        }
        let left = files_under(&qroot, "mess").len() as u64;
        if left < N - 10 {
            child.kill().unwrap();
            child.wait().unwrap();
            break true;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    if killed && home.join("queue/queue1/import.pending").exists() {
        // The home is refused until the import is finished.
        let out = Command::new(bin())
            .args(["serve", "--home"])
            .arg(home)
            .args(["--smtp", "127.0.0.1:0"])
            .env("INDIMAIL_ALLOW_ROOT", "1")
            .env_remove("QUEUEDIR")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("import-qmail-queue"), "{err}");
    }
    let (c, out, err) = indimail(home, &["import-qmail-queue", qroot.to_str().unwrap()]);
    assert_eq!(c, 0, "{out}{err}");
    eprintln!("killed half-way: {killed}; re-run: {out}");
    assert!(files_under(&qroot, "mess").is_empty());
    assert!(files_under(&qroot, "info").is_empty());
    assert_eq!(queue_list(home).len() as u64, N, "killed={killed} {out}");

    let s = Server::start_delivering(home, "epoll");
    wait_until(60, "all delivered", || {
        maildir_texts(&alice).len() as u64 >= N && queue_list(home).is_empty()
    });
    let subjects: Vec<String> = maildir_texts(&alice).iter().map(|t| subject(t)).collect();
    let unique: HashSet<&String> = subjects.iter().collect();
    assert_eq!(subjects.len() as u64, N);
    assert_eq!(unique.len() as u64, N);
    drop(s);
}

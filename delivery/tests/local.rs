//! Local delivery into real Maildirs, mboxes and programs.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::both;
use delivery::local::{deliver, read_instructions, LocalConfig, LocalEnvelope, LocalTarget};
use delivery::maildir::{Quota, QuotaPolicy};
use delivery::Outcome;

const MSG: &[u8] = b"From: a@example.org\nTo: u@example.com\nSubject: hi\n\nbody line\n.dot line\n";

fn make_maildir(p: &Path) {
    for d in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(p.join(d)).unwrap();
    }
}

fn target(home: &Path) -> LocalTarget {
    let md = home.join("Maildir");
    make_maildir(&md);
    LocalTarget {
        user: "u".into(),
        home: home.to_path_buf(),
        maildir: md,
        ..Default::default()
    }
}

/// A target with a 1,000,000-byte quota.
fn quota_target(home: &Path) -> LocalTarget {
    LocalTarget {
        quota: Some(Quota {
            bytes: 1_000_000,
            count: 0,
        }),
        ..target(home)
    }
}

fn env<'a>() -> LocalEnvelope<'a> {
    LocalEnvelope {
        sender: "a@example.org",
        recipient: "u@example.com",
        vars: &[],
    }
}

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn maildir_delivery_writes_new_and_cleans_tmp() {
    both(|_| async {
        let home = tempfile::tempdir().unwrap();
        let t = target(home.path());
        let cfg = LocalConfig {
            hostname: "mx/1:a".into(),
            ..Default::default()
        };
        let r = deliver(&cfg, &t, env(), MSG).await;
        assert!(matches!(r.outcome, Outcome::Delivered(_)), "{r:?}");
        assert!(r.forward.is_none());
        assert!(files(&t.maildir.join("tmp")).is_empty());
        let new = files(&t.maildir.join("new"));
        assert_eq!(new.len(), 1);
        let name = new[0].file_name().unwrap().to_string_lossy().into_owned();
        let data = std::fs::read(&new[0]).unwrap();
        assert!(
            name.contains(".I") && name.contains("V") && name.contains("mx\\0571\\072a"),
            "{name}"
        );
        assert!(name.ends_with(&format!(",S={}", data.len())), "{name}");
        let head = b"Return-Path: <a@example.org>\nDelivered-To: u@example.com\n";
        assert!(data.starts_with(head));
        assert_eq!(&data[head.len()..], MSG);
    });
}

#[test]
fn delivery_removes_tmp_orphans_older_than_36_hours() {
    both(|_| async {
        let home = tempfile::tempdir().unwrap();
        let t = target(home.path());
        // Left by crashed deliveries: one 37 hours old, one 1 hour old.
        let now = std::time::SystemTime::now();
        let hour = std::time::Duration::from_secs(3600);
        for (name, age) in [("old.orphan", 37 * hour), ("young.orphan", hour)] {
            let f = std::fs::File::create(t.maildir.join("tmp").join(name)).unwrap();
            f.set_modified(now - age).unwrap();
        }
        let cfg = LocalConfig::default();
        let r = deliver(&cfg, &t, env(), MSG).await;
        assert!(matches!(r.outcome, Outcome::Delivered(_)), "{r:?}");
        let left: Vec<_> = files(&t.maildir.join("tmp"))
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["young.orphan"]);
        assert_eq!(files(&t.maildir.join("new")).len(), 1);
    });
}

#[test]
fn concurrent_deliveries_are_complete() {
    both(|_| async {
        let home = tempfile::tempdir().unwrap();
        let targets: Vec<LocalTarget> = (0..8)
            .map(|i| {
                let h = home.path().join(format!("u{i}"));
                std::fs::create_dir_all(&h).unwrap();
                target(&h)
            })
            .collect();
        let cfg = std::rc::Rc::new(LocalConfig::default());
        // 40 deliveries in flight at once, 5 per Maildir: every one must end
        // complete in new/ under its own name, nothing left in tmp/.
        let mut tasks = Vec::new();
        for n in 0..40 {
            let (cfg, t) = (cfg.clone(), targets[n % 8].clone());
            tasks.push(tokio::task::spawn_local(async move {
                let body = format!("Subject: {n}\n\nmessage {n}\n");
                deliver(&cfg, &t, env(), body.as_bytes()).await
            }));
        }
        for t in tasks {
            let r = t.await.unwrap();
            assert!(matches!(r.outcome, Outcome::Delivered(_)), "{r:?}");
        }
        let mut seen = Vec::new();
        for t in &targets {
            assert!(files(&t.maildir.join("tmp")).is_empty());
            let new = files(&t.maildir.join("new"));
            assert_eq!(new.len(), 5);
            for f in new {
                let data = String::from_utf8(std::fs::read(f).unwrap()).unwrap();
                let n = data.rsplit("message ").next().unwrap().trim().to_string();
                seen.push(n.parse::<usize>().unwrap());
            }
        }
        seen.sort();
        assert_eq!(seen, (0..40).collect::<Vec<_>>());
    });
}

#[test]
fn loop_detected() {
    both(|_| async {
        let home = tempfile::tempdir().unwrap();
        let t = target(home.path());
        let mut m = b"Delivered-To: U@example.com\n".to_vec();
        m.extend_from_slice(MSG);
        let r = deliver(&LocalConfig::default(), &t, env(), &m).await;
        assert!(
            matches!(&r.outcome, Outcome::Permanent(s) if s.contains("looping")),
            "{r:?}"
        );
        assert!(files(&t.maildir.join("new")).is_empty());
        // maxdeliveredto -1 disables the check.
        let cfg = LocalConfig {
            maxdeliveredto: -1,
            ..Default::default()
        };
        assert!(matches!(
            deliver(&cfg, &t, env(), &m).await.outcome,
            Outcome::Delivered(_)
        ));
    });
}

#[test]
fn quota_over_and_under() {
    both(|_| async {
        let home = tempfile::tempdir().unwrap();
        let mut t = target(home.path());
        let big = {
            let mut m = MSG.to_vec();
            m.extend(std::iter::repeat_n(b'x', 3000));
            m.push(b'\n');
            m
        };
        t.quota = Some(Quota {
            bytes: 5000,
            count: 0,
        });
        let cfg = LocalConfig::default();
        // Under quota: delivered, maildirsize written and appended.
        let r = deliver(&cfg, &t, env(), &big).await;
        assert!(matches!(r.outcome, Outcome::Delivered(_)), "{r:?}");
        let ms = std::fs::read_to_string(t.maildir.join("maildirsize")).unwrap();
        let mut lines = ms.lines();
        assert_eq!(lines.next(), Some("5000S"));
        let total: i64 = lines
            .map(|l| l.split(' ').next().unwrap().parse::<i64>().unwrap())
            .sum();
        let stored = std::fs::metadata(&files(&t.maildir.join("new"))[0])
            .unwrap()
            .len();
        assert_eq!(total as u64, stored);
        // Second big one does not fit: permanent.
        let r = deliver(&cfg, &t, env(), &big).await;
        assert!(
            matches!(&r.outcome, Outcome::Permanent(s) if s.contains("over quota")),
            "{r:?}"
        );
        // A small message (< 1000 bytes) still goes in.
        let r = deliver(&cfg, &t, env(), MSG).await;
        assert!(matches!(r.outcome, Outcome::Delivered(_)), "{r:?}");
        // holdoverquota: temporary instead.
        let hold = LocalConfig {
            quota: QuotaPolicy {
                hold: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let r = deliver(&hold, &t, env(), &big).await;
        assert!(
            matches!(&r.outcome, Outcome::Temporary(s) if s.contains("#4.2.2")),
            "{r:?}"
        );
        assert_eq!(files(&t.maildir.join("new")).len(), 2);
        // Count quota.
        t.quota = Some(Quota { bytes: 0, count: 2 });
        let r = deliver(&cfg, &t, env(), &big).await;
        assert!(matches!(r.outcome, Outcome::Permanent(_)), "{r:?}");
    });
}

#[test]
fn program_exit_codes_and_environment() {
    both(|_| async {
        let home = tempfile::tempdir().unwrap();
        let mut t = target(home.path());
        t.ext = "ext".into();
        let out = home.path().join("prog.out");
        let cfg = LocalConfig::default();
        t.instructions = vec![format!(
            "|cat > {}; echo \"$SENDER $RECIPIENT $LOCAL $HOST $EXT $USER $HOME\" >> {}; printf %s \"$DTLINE$RPLINE\" >> {}",
            out.display(),
            out.display(),
            out.display()
        )];
        let r = deliver(&cfg, &t, env(), MSG).await;
        assert!(matches!(r.outcome, Outcome::Delivered(_)), "{r:?}");
        let got = std::fs::read(&out).unwrap();
        assert!(got.starts_with(MSG), "program gets the message on stdin");
        let text = String::from_utf8_lossy(&got[MSG.len()..]).into_owned();
        assert!(
            text.contains(&format!(
                "a@example.org u@example.com u example.com ext u {}",
                home.path().display()
            )),
            "{text}"
        );
        assert!(
            text.contains("Delivered-To: u@example.com\nReturn-Path: <a@example.org>\n"),
            "{text}"
        );

        for (code, want) in [(100, 'D'), (111, 'Z'), (64, 'D'), (1, 'Z'), (112, 'D')] {
            t.instructions = vec![format!("|echo reason {code}; exit {code}")];
            let r = deliver(&cfg, &t, env(), MSG).await;
            assert_eq!(r.outcome.letter(), want, "exit {code}: {r:?}");
            assert!(r.outcome.text().contains(&format!("reason {code}")));
        }
        // 99 stops further lines; earlier ones are done.
        t.instructions = vec![
            "# a comment".into(),
            "./Maildir/".into(),
            "|exit 99".into(),
            "|exit 100".into(),
        ];
        let r = deliver(&cfg, &t, env(), MSG).await;
        assert!(matches!(r.outcome, Outcome::Delivered(_)), "{r:?}");
        // Crash by signal: temporary.
        t.instructions = vec!["|kill -9 $$".into()];
        assert_eq!(deliver(&cfg, &t, env(), MSG).await.outcome.letter(), 'Z');
    });
}

#[test]
fn forwards_returned_and_mbox() {
    both(|_| async {
        let home = tempfile::tempdir().unwrap();
        let mut t = target(home.path());
        t.instructions = vec![
            "&x@example.net".into(),
            "y@example.net".into(),
            "./mbox".into(),
        ];
        let r = deliver(&LocalConfig::default(), &t, env(), MSG).await;
        assert!(matches!(r.outcome, Outcome::Delivered(_)), "{r:?}");
        let f = r.forward.unwrap();
        assert_eq!(f.recipients, vec!["x@example.net", "y@example.net"]);
        assert_eq!(f.dtline, "Delivered-To: u@example.com\n");
        assert!(f
            .message(MSG)
            .starts_with(b"Delivered-To: u@example.com\nFrom: a@"));
        let mbox = std::fs::read_to_string(home.path().join("mbox")).unwrap();
        assert!(mbox.starts_with("From a@example.org "));
        assert!(mbox.contains("Return-Path: <a@example.org>\nDelivered-To: u@example.com\n"));
        assert!(mbox.ends_with("\n\n"));
        // A failure anywhere means no forward is returned.
        t.instructions = vec!["&x@example.net".into(), "|exit 111".into()];
        let r = deliver(&LocalConfig::default(), &t, env(), MSG).await;
        assert!(r.forward.is_none());
        assert_eq!(r.outcome.letter(), 'Z');
    });
}

/// A user's own address in its instructions means its Maildir (no forward
/// to itself); a line that cannot be followed defers, naming the file and
/// line, and delivers nothing.
#[test]
fn self_forward_and_bad_lines() {
    both(|_| async {
        let home = tempfile::tempdir().unwrap();
        let mut t = target(home.path());
        t.instructions = vec!["&U@example.com".into(), "&x@example.net".into()];
        let r = deliver(&LocalConfig::default(), &t, env(), MSG).await;
        assert!(matches!(r.outcome, Outcome::Delivered(_)), "{r:?}");
        assert_eq!(r.forward.unwrap().recipients, vec!["x@example.net"]);
        assert_eq!(files(&t.maildir.join("new")).len(), 1);

        t.instructions = vec!["./Maildir/".into(), "|".into()];
        t.source = "/h/.qmail".into();
        let r = deliver(&LocalConfig::default(), &t, env(), MSG).await;
        assert_eq!(
            r.outcome,
            Outcome::Temporary(
                "bad delivery instruction in /h/.qmail, line 2: a program line names no program (#4.3.0)"
                    .into()
            )
        );
        assert_eq!(files(&t.maildir.join("new")).len(), 1, "nothing delivered");
    });
}

/// `.qmail-ext` files and their fallbacks, read from the home; an unreadable
/// one is an error, never a silent default.
#[test]
fn reads_the_most_specific_dot_qmail() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    assert_eq!(read_instructions(h, "").unwrap(), None);
    std::fs::write(h.join(".qmail-default"), "./Maildir/\n").unwrap();
    std::fs::write(h.join(".qmail-list-default"), "|list\n").unwrap();
    let (p, lines) = read_instructions(h, "list-rust").unwrap().unwrap();
    assert_eq!(
        (p, lines),
        (h.join(".qmail-list-default"), vec!["|list".to_string()])
    );
    let (p, _) = read_instructions(h, "news").unwrap().unwrap();
    assert_eq!(p, h.join(".qmail-default"));
    assert_eq!(read_instructions(h, "").unwrap(), None, "no .qmail");
    std::fs::create_dir(h.join(".qmail")).unwrap();
    let e = read_instructions(h, "").unwrap_err().to_string();
    assert!(
        e.starts_with("cannot read ") && e.ends_with("(#4.3.0)"),
        "{e}"
    );
}

#[test]
fn unwritable_or_missing_maildir_is_temporary() {
    both(|_| async {
        let home = tempfile::tempdir().unwrap();
        let t = target(home.path());
        let tmp = t.maildir.join("tmp");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o500)).unwrap();
        let writable = std::fs::File::create(tmp.join("probe")).is_ok();
        let _ = std::fs::remove_file(tmp.join("probe"));
        let r = deliver(&LocalConfig::default(), &t, env(), MSG).await;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700)).unwrap();
        if !writable {
            assert_eq!(r.outcome.letter(), 'Z', "{r:?}");
        }
        // Missing Maildir (works as root too).
        let mut gone = t.clone();
        gone.maildir = home.path().join("NoSuchMaildir");
        let r = deliver(&LocalConfig::default(), &gone, env(), MSG).await;
        assert!(
            matches!(&r.outcome, Outcome::Temporary(s) if s.contains("#4.2.1")),
            "{r:?}"
        );
        // A Maildir whose tmp/ is a file.
        let bad = home.path().join("Bad");
        std::fs::create_dir_all(bad.join("new")).unwrap();
        std::fs::write(bad.join("tmp"), b"").unwrap();
        let mut b = t.clone();
        b.maildir = bad;
        assert_eq!(
            deliver(&LocalConfig::default(), &b, env(), MSG)
                .await
                .outcome
                .letter(),
            'Z'
        );
    });
}

#[test]
fn qmaillocal_hook() {
    both(|_| async {
        let home = tempfile::tempdir().unwrap();
        let t = target(home.path());
        let script = home.path().join("ql.sh");
        let args = home.path().join("args");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$@\" > {}\ncat >> {}\necho hook said hi\nexit $(cat {}/code)\n",
                args.display(),
                args.display(),
                home.path().display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cfg = LocalConfig {
            qmaillocal: Some(script.clone()),
            ..Default::default()
        };
        for (code, letter) in [(0, 'K'), (111, 'Z'), (100, 'D'), (5, 'D')] {
            std::fs::write(home.path().join("code"), code.to_string()).unwrap();
            let r = deliver(&cfg, &t, env(), MSG).await;
            assert_eq!(r.outcome.letter(), letter, "{r:?}");
            assert_eq!(r.outcome.text(), "hook said hi");
        }
        let got = std::fs::read_to_string(&args).unwrap();
        assert!(
            got.starts_with(&format!(
                "-- u {} u   example.com a@example.org ./Maildir/ \n",
                home.path().display()
            )),
            "{got:?}"
        );
        assert!(got.ends_with(std::str::from_utf8(MSG).unwrap()));
    });
}

/// Another process (a POP3/IMAP server) holding the fcntl lock of
/// `maildirsize` does not stall the shard: the delivery's size update waits
/// on the blocking pool while the shard's other tasks run, and its line is
/// appended once the lock is released.
#[test]
fn a_held_maildirsize_lock_does_not_stall_the_shard() {
    both(|d| async move {
        let home = tempfile::tempdir().unwrap();
        let t = quota_target(home.path());
        let cfg = LocalConfig::default();
        // The first delivery writes maildirsize (a recalculation).
        let r = deliver(&cfg, &t, env(), MSG).await;
        assert!(matches!(r.outcome, Outcome::Delivered(_)), "{d:?} {r:?}");
        let size = t.maildir.join("maildirsize");
        let before = std::fs::read_to_string(&size).unwrap();
        let mut holder = std::process::Command::new("python3")
            .args([
                "-c",
                "import fcntl, sys, time\n\
                 f = open(sys.argv[1], 'a')\n\
                 fcntl.lockf(f, fcntl.LOCK_EX)\n\
                 print('locked', flush=True)\n\
                 time.sleep(1.5)\n",
            ])
            .arg(&size)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "locked");
        let ticks = std::rc::Rc::new(std::cell::Cell::new(0u32));
        let ticker = {
            let ticks = ticks.clone();
            tokio::task::spawn_local(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    ticks.set(ticks.get() + 1);
                }
            })
        };
        let started = std::time::Instant::now();
        let r = deliver(&cfg, &t, env(), MSG).await;
        ticker.abort();
        assert!(matches!(r.outcome, Outcome::Delivered(_)), "{d:?} {r:?}");
        assert!(holder.wait().unwrap().success());
        assert!(
            started.elapsed() >= std::time::Duration::from_millis(500),
            "{d:?}: the size update did not wait for the lock"
        );
        assert!(
            ticks.get() >= 5,
            "{d:?}: the shard stalled while the lock was held ({} ticks)",
            ticks.get()
        );
        let after = std::fs::read_to_string(&size).unwrap();
        assert_eq!(after.lines().count(), before.lines().count() + 1, "{after}");
    });
}

/// Deliveries that find `maildirsize` stale at the same time recalculate the
/// Maildir's usage once between them (not once each: a big mailbox's
/// listing multiplied by the deliveries in flight), and all are delivered.
#[test]
fn concurrent_deliveries_recalculate_a_stale_maildirsize_once() {
    both(|d| async move {
        let home = tempfile::tempdir().unwrap();
        let t = quota_target(home.path());
        // A quota line that is not the user's: the file must be recalculated.
        std::fs::write(t.maildir.join("maildirsize"), "5S\n0 0\n").unwrap();
        let before = delivery::maildir::recalculations();
        let cfg = std::rc::Rc::new(LocalConfig::default());
        let t = std::rc::Rc::new(t);
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (cfg, t) = (cfg.clone(), t.clone());
                tokio::task::spawn_local(async move { deliver(&cfg, &t, env(), MSG).await })
            })
            .collect();
        for task in tasks {
            let r = task.await.unwrap();
            assert!(matches!(r.outcome, Outcome::Delivered(_)), "{d:?} {r:?}");
        }
        assert_eq!(delivery::maildir::recalculations() - before, 1, "{d:?}");
        assert_eq!(files(&t.maildir.join("new")).len(), 16);
        let text = std::fs::read_to_string(t.maildir.join("maildirsize")).unwrap();
        assert!(text.starts_with("1000000S\n"), "{text}");
        assert_eq!(text.lines().count(), 2 + 16, "{text}");
    });
}

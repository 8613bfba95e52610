//! `domainqueue` end to end through `indimail serve` at the default shard
//! count with two queues: a domain's mail lands in the queue its line names
//! whichever shard accepts the connection (clients from many loopback
//! addresses), the queue rules are applied exactly once on the way, routed
//! mail is delivered (smtproutes to a capture sink), and a line naming a
//! queue the server does not serve is refused at `config check`, at start
//! and on reload (old configuration kept).

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

fn control(home: &Path, files: &[(&str, String)]) {
    let c = home.join("control");
    std::fs::create_dir_all(&c).unwrap();
    for (k, v) in files {
        std::fs::write(c.join(k), v).unwrap();
    }
}

/// One message on an open connection; the reply's text after `ok `.
fn send(c: &mut Client, rcpts: &[String], subject: &str) -> String {
    assert_eq!(c.cmd("MAIL FROM:<sender@example.org>").0, 250);
    for r in rcpts {
        let (code, text) = c.cmd(&format!("RCPT TO:<{r}>"));
        assert_eq!(code, 250, "{r}: {text}");
    }
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(
        format!(
            "Subject: {subject}\r\nX-Secret: hidden\r\nX-Ticket: T-{subject}\r\n\r\nbody of {subject}\r\n.\r\n"
        )
        .as_bytes(),
    );
    let (code, text) = c.reply();
    assert_eq!(code, 250, "{text}");
    text.split("ok ").nth(1).unwrap_or_default().to_string()
}

const QUEUES: [(&str, &str); 1] = [("QUEUE_COUNT", "2")];

#[test]
fn domain_mail_lands_in_its_queue_from_any_shard_with_rules_applied_once() {
    for driver in DRIVERS {
        routes_domain_mail(driver);
    }
}

fn routes_domain_mail(driver: &str) {
    let h = tempfile::tempdir().unwrap();
    let (_cap, port, dir) = capture("ok");
    let q2 = h.path().join("queue").join("queue2");
    let domains = [
        "slow.example",
        "slower.example",
        "slowq.example",
        "fast.example",
    ];
    control(
        h.path(),
        &[
            ("rcpthosts", domains.join("\n") + "\narchive.example\n"),
            (
                "smtproutes",
                domains
                    .iter()
                    .chain(&["archive.example"])
                    .map(|d| format!("{d}:127.0.0.1:{port}\n"))
                    .collect(),
            ),
            (
                "domainqueue",
                format!(
                    "slow.example:QUEUEDIR={}\nslower.example:QUEUE_START=2,QUEUE_COUNT=1\n\
                     slowq.example:QUEUEDIR={}/,QUARANTINE=quarantine@archive.example\n",
                    q2.display(),
                    q2.display()
                ),
            ),
            ("extraqueue", "archive@archive.example\n".into()),
            ("removeheaders", "X-Secret\n".into()),
            ("logheaders", "Subject\n".into()),
            ("envheaders", "X-Ticket\n".into()),
        ],
    );
    let mut env = QUEUES.to_vec();
    env.push(("INDIMAIL_NO_DELIVERY", "1"));
    let mut s = Server::start_with(h.path(), driver, &env);
    wait_until(10, "both shards up", || {
        s.log().contains("status: 2 shards")
    });

    // Per client address: one message to fast.example (stays where it was
    // accepted), one to slow.example or slower.example (queue2), and for the
    // first one a mixed message (the last matching recipient's line wins).
    let (mut fast_queues, mut routed, mut sent) = (Vec::new(), 0, Vec::new());
    for i in 0..24u8 {
        let mut c = Client::connect_from([127, 0, 0, 20 + i], s.smtp);
        assert_eq!(c.reply().0, 220);
        assert_eq!(c.cmd("EHLO client.test").0, 250);
        let rcpts = vec![format!("f{i}@fast.example")];
        let fast = send(&mut c, &rcpts, &format!("fast{i}"));
        sent.push((format!("fast{i}"), rcpts));
        let slow_domain = if i % 2 == 0 { "slow" } else { "slower" };
        let rcpts = vec![format!("s{i}@{slow_domain}.example")];
        let slow = send(&mut c, &rcpts, &format!("slow{i}"));
        sent.push((format!("slow{i}"), rcpts));
        // A local commit answers the queue id (`2-...`); a routed one names
        // the queue and its drop file.
        assert!(
            slow.starts_with("2-") || slow.starts_with("queue2 "),
            "{slow}"
        );
        routed += usize::from(slow.starts_with("queue2 "));
        fast_queues.push(fast.split('-').next().unwrap().to_string());
        if i == 0 {
            let rcpts = vec!["m@fast.example".to_string(), "m@slow.example".to_string()];
            let mixed = send(&mut c, &rcpts, "mixed");
            assert!(mixed.starts_with("2-") || mixed.starts_with("queue2 "));
            routed += usize::from(mixed.starts_with("queue2 "));
            sent.push(("mixed".into(), rcpts));
            let quarantined = send(&mut c, &["q@slowq.example".into()], "quarantined");
            assert!(quarantined.starts_with("2-") || quarantined.starts_with("queue2 "));
            routed += usize::from(quarantined.starts_with("queue2 "));
            let rcpts = vec!["quarantine@archive.example".to_string()];
            sent.push(("quarantined".into(), rcpts));
        }
        c.cmd("QUIT");
        if i >= 8 && routed > 0 && fast_queues.iter().any(|q| q == "1") {
            break;
        }
    }
    let log = s.log();
    assert!(
        routed > 0,
        "no connection reached the shard of queue1:\n{log}"
    );
    assert!(
        fast_queues.iter().any(|q| q == "1") && fast_queues.iter().any(|q| q == "2"),
        "fast.example stays in the accepting shard's queue: {fast_queues:?}"
    );
    // Routed drop files are imported by queue2's shard.
    wait_until(20, "every message queued", || {
        let list = queue_list(h.path());
        list.len() >= sent.len() && !list.iter().any(|l| l.contains("awaiting-import"))
    });
    let list = queue_list(h.path());
    let ids_of = |needle: &str| -> Vec<String> {
        list.iter()
            .filter(|l| l.contains(needle))
            .map(|l| l.split(' ').nth(1).unwrap().to_string())
            .collect()
    };
    // slowq.example's message is quarantined: its one recipient is the
    // quarantine address.
    for d in [
        "@slow.example>",
        "@slower.example>",
        "to=<quarantine@archive.example>",
    ] {
        assert!(!ids_of(d).is_empty(), "{d}: {list:?}");
        assert!(
            ids_of(d).iter().all(|id| id.starts_with("2-")),
            "{d}: {list:?}"
        );
    }
    let log = s.log();
    assert_eq!(
        log.matches(" routed msg to queue2 ").count(),
        routed,
        "one log line per routed message:\n{log}"
    );
    // logheaders: exactly one line per message, routed or not.
    for (subject, _) in &sent {
        let lines = log
            .lines()
            .filter(|l| l.contains(" headers msg ") && l.ends_with(&format!("Subject: {subject}")))
            .count();
        assert_eq!(lines, 1, "{subject}:\n{log}");
    }
    s.stop();

    // Delivery (one SMTP transaction per destination domain): every
    // recipient reached, the rules applied once.
    let s = Server::start_with(h.path(), driver, &QUEUES);
    let by_subject = || {
        let mut m: std::collections::HashMap<String, Vec<(String, String)>> = Default::default();
        for (env, msg) in captured(dir.path()) {
            let subject = msg
                .lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .unwrap_or_default()
                .trim()
                .to_string();
            m.entry(subject).or_default().push((env, msg));
        }
        m
    };
    let rcpts_of = |got: &[(String, String)]| -> Vec<String> {
        got.iter()
            .flat_map(|(env, _)| env.lines().skip(1).map(str::to_string))
            .collect()
    };
    wait_until(60, "every recipient reached", || {
        let m = by_subject();
        sent.iter().all(|(subject, rcpts)| {
            let got = rcpts_of(m.get(subject).map_or(&[][..], Vec::as_slice));
            rcpts.iter().all(|r| got.contains(r))
        })
    });
    wait_until(20, "queue drained", || queue_list(h.path()).is_empty());
    let m = by_subject();
    for (subject, rcpts) in &sent {
        let got = &m[subject];
        let all = rcpts_of(got);
        for (_, msg) in got {
            assert!(!msg.contains("X-Secret"), "removeheaders applied: {msg}");
            assert_eq!(msg.matches("Subject: ").count(), 1, "{msg}");
        }
        if subject == "quarantined" {
            // domainqueue's QUARANTINE: recipients replaced, one ID line.
            assert_eq!(&all, rcpts, "{:?}", s.log());
            assert_eq!(got[0].1.matches("X-Quarantine-ID:").count(), 1);
        } else {
            // extraqueue: the archive recipient added exactly once.
            let mut want = rcpts.clone();
            want.push("archive@archive.example".into());
            let mut all = all.clone();
            all.sort();
            want.sort();
            assert_eq!(all, want, "{subject}");
            assert!(got.iter().all(|(_, m)| !m.contains("X-Quarantine-ID:")));
        }
    }
}

#[test]
fn a_queue_not_served_is_refused_at_check_start_and_reload() {
    let h = tempfile::tempdir().unwrap();
    let bad = "ok.example:DATABYTES=100\nslow.example:QUEUEDIR=/nonexistent/queue7\n\
               slower.example:QUEUE_START=9,QUEUE_COUNT=1\n";
    control(h.path(), &[("domainqueue", bad.into())]);
    let out = Command::new(bin())
        .args(["config", "check"])
        .arg("--home")
        .arg(h.path())
        .env("QUEUE_COUNT", "2")
        .env_remove("QUEUEDIR")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("domainqueue:2: /nonexistent/queue7 is not a queue this server serves"),
        "{err}"
    );
    assert!(err.contains("domainqueue:3: "), "{err}");
    assert!(
        err.contains("queue9 is not a queue this server serves"),
        "{err}"
    );
    assert!(!err.contains("domainqueue:1"), "{err}");

    let out = Command::new(bin())
        .args(["serve", "--smtp", "127.0.0.1:0", "--home"])
        .arg(h.path())
        .env("QUEUE_COUNT", "2")
        .env("INDIMAIL_ALLOW_ROOT", "1")
        .env_remove("QUEUEDIR")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("domainqueue:2: /nonexistent/queue7"), "{err}");

    // A served queue starts; a bad edit is refused on reload, old kept.
    let good = format!(
        "slow.example:QUEUEDIR={}\n",
        h.path().join("queue/queue2").display()
    );
    control(h.path(), &[("domainqueue", good)]);
    let s = Server::start_with(h.path(), "uring", &QUEUES);
    control(h.path(), &[("domainqueue", bad.into())]);
    // SAFETY: plain kill(2) on our child's pid.
    unsafe {
        libc::kill(s.child.as_ref().unwrap().id() as i32, libc::SIGHUP);
    }
    wait_until(20, "reload refused", || {
        s.log().contains("status: configuration kept")
    });
    assert!(s.log().contains("reload failed: ") && s.log().contains("domainqueue:2: "));
}

#[test]
fn a_failed_route_answers_451_and_leaves_nothing() {
    let h = tempfile::tempdir().unwrap();
    let q2 = h.path().join("queue").join("queue2");
    control(
        h.path(),
        &[
            ("rcpthosts", "slow.example\n".into()),
            (
                "domainqueue",
                format!("slow.example:QUEUEDIR={}\n", q2.display()),
            ),
        ],
    );
    let mut env = QUEUES.to_vec();
    env.push(("INDIMAIL_NO_DELIVERY", "1"));
    let s = Server::start_with(h.path(), "uring", &env);
    wait_until(10, "both shards up", || {
        s.log().contains("status: 2 shards")
    });
    // queue2's drop directory cannot be made: a file stands in its way.
    let inject = q2.join("inject");
    let _ = std::fs::remove_dir_all(&inject);
    std::fs::write(&inject, "not a directory").unwrap();
    let mut failed = None;
    for i in 0..24u8 {
        let mut c = Client::connect_from([127, 0, 0, 60 + i], s.smtp);
        assert_eq!(c.reply().0, 220);
        assert_eq!(c.cmd("EHLO client.test").0, 250);
        assert_eq!(c.cmd("MAIL FROM:<sender@example.org>").0, 250);
        assert_eq!(c.cmd(&format!("RCPT TO:<s{i}@slow.example>")).0, 250);
        assert_eq!(c.cmd("DATA").0, 354);
        c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n");
        let (code, text) = c.reply();
        c.cmd("QUIT");
        // Accepted by queue2's own shard: committed there as usual.
        if code != 250 {
            failed = Some((i, code, text));
            break;
        }
    }
    let (i, code, text) = failed.expect("no connection reached the shard of queue1");
    assert_eq!(code, 451, "{text}");
    assert!(text.contains(" 4.3.0 "), "{text}");
    assert!(s.log().contains("smtp commit failed"), "{}", s.log());
    // Nothing of the refused message anywhere.
    let list = queue_list(h.path());
    assert!(
        !list
            .iter()
            .any(|l| l.contains(&format!("<s{i}@slow.example>"))),
        "{list:?}"
    );
    // Healed: the client's retry is routed and queued in queue2.
    std::fs::remove_file(&inject).unwrap();
    let mut c = Client::connect_from([127, 0, 0, 60 + i], s.smtp);
    assert_eq!(c.reply().0, 220);
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    let reply = send(&mut c, &[format!("s{i}@slow.example")], "retry");
    assert!(reply.starts_with("queue2 "), "{reply}");
    wait_until(10, "routed message imported", || {
        queue_list(h.path())
            .iter()
            .any(|l| l.starts_with("queue2 2-") && l.contains(&format!("<s{i}@slow.example>")))
    });
}

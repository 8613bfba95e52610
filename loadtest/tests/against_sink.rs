//! The generator against the sink, both from the built binary, over loopback.

mod common;

use std::collections::HashSet;

use common::{send, send_report, Sink};

fn u(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn counts_match_and_accepted_log_has_every_message() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(dir.path(), &[]);
    let log = dir.path().join("accepted.log");
    let report = send_report(
        dir.path(),
        &[
            "--target",
            &sink.target(),
            "--messages",
            "400",
            "--sessions",
            "8",
            "--rcpts",
            "3",
            "--size",
            "5000",
            "--accepted-log",
            log.to_str().unwrap(),
        ],
    );
    let (stats, summary) = sink.stop();
    assert_eq!(u(&report["messages_accepted"]), 400);
    assert_eq!(u(&report["messages_failed"]), 0);
    assert_eq!(u(&report["recipients_accepted"]), 1200);
    assert_eq!(
        u(&report["connections"]),
        400,
        "one message per connection by default"
    );
    assert!(report["errors"].as_object().unwrap().is_empty());
    assert!(report["msgs_per_sec"].as_f64().unwrap() > 0.0);
    for step in [
        "connect", "greeting", "ehlo", "mail", "rcpt", "data", "data_end", "message",
    ] {
        let l = &report["latency"][step];
        assert!(u(&l["count"]) >= 400, "{step}: {l}");
        assert!(l["p50_ms"].as_f64().unwrap() <= l["p999_ms"].as_f64().unwrap());
    }
    assert_eq!(u(&stats["messages"]), 400);
    assert_eq!(u(&stats["recipients"]), 1200);
    assert_eq!(
        u(&stats["bytes"]),
        u(&report["bytes_accepted"]),
        "no dots to stuff in generated text"
    );
    assert!(summary.contains("400 messages"), "{summary}");

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 400);
    let ids: HashSet<&str> = lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(ids.len(), 400, "Message-IDs are unique");
    for l in &lines {
        let (id, reply) = l.split_once(' ').unwrap();
        assert!(id.starts_with('<') && id.ends_with('>'), "{l}");
        assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{l}");
    }
}

#[test]
fn pipelining_chunking_and_connection_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(dir.path(), &[]);
    for (extra, step) in [
        (&["--pipelining"][..], "data_end"),
        (&["--pipelining", "--chunking"][..], "bdat"),
        (&["--chunking"][..], "bdat"),
    ] {
        let t = sink.target();
        let mut args = vec![
            "--target",
            &t,
            "--messages",
            "300",
            "--sessions",
            "4",
            "--per-session",
            "50",
            "--rcpts",
            "2",
            "--size",
            "20000",
        ];
        args.extend_from_slice(extra);
        let report = send_report(dir.path(), &args);
        assert_eq!(u(&report["messages_accepted"]), 300, "{extra:?}");
        // 50 per connection: at least 6 connections, and at most one partly used per session.
        let conns = u(&report["connections"]);
        assert!((6..=10).contains(&conns), "{extra:?}: {conns} connections");
        assert_eq!(u(&report["latency"][step]["count"]), 300, "{extra:?}");
    }
    let (stats, _) = sink.stop();
    assert_eq!(u(&stats["messages"]), 900);
    assert_eq!(u(&stats["recipients"]), 1800);
}

#[test]
fn starttls_and_auth() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(dir.path(), &["--tls"]);
    let report = send_report(
        dir.path(),
        &[
            "--target",
            &sink.target(),
            "--messages",
            "100",
            "--sessions",
            "4",
            "--per-session",
            "10",
            "--starttls",
            "--auth",
            "user:secret",
            "--pipelining",
        ],
    );
    let (stats, _) = sink.stop();
    assert_eq!(u(&report["messages_accepted"]), 100);
    // 10 per connection: at least 10 connections, at most one partly used per session.
    let conns = u(&report["connections"]);
    assert!((10..=14).contains(&conns), "{conns}");
    assert_eq!(u(&report["latency"]["starttls"]["count"]), conns);
    assert_eq!(u(&report["latency"]["auth"]["count"]), conns);
    assert_eq!(u(&stats["messages"]), 100);
}

#[test]
fn starttls_refused_when_not_offered_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(dir.path(), &[]);
    let report = send_report(
        dir.path(),
        &[
            "--target",
            &sink.target(),
            "--messages",
            "20",
            "--sessions",
            "2",
            "--starttls",
        ],
    );
    sink.stop();
    assert_eq!(u(&report["messages_accepted"]), 0);
    assert_eq!(u(&report["messages_failed"]), 20);
    assert_eq!(u(&report["errors"]["tls"]), 20);
}

#[test]
fn injected_failures_at_end_of_data_are_counted_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(
        dir.path(),
        &["--tempfail-percent", "20", "--permfail-percent", "10"],
    );
    let log = dir.path().join("accepted.log");
    let report = send_report(
        dir.path(),
        &[
            "--target",
            &sink.target(),
            "--messages",
            "500",
            "--sessions",
            "5",
            "--per-session",
            "0",
            "--pipelining",
            "--accepted-log",
            log.to_str().unwrap(),
        ],
    );
    let (stats, _) = sink.stop();
    let accepted = u(&report["messages_accepted"]);
    let failed = u(&report["messages_failed"]);
    let temp = u(&report["errors"]["data_end 4xx"]);
    let perm = u(&report["errors"]["data_end 5xx"]);
    assert_eq!(accepted + failed, 500);
    assert_eq!(temp + perm, failed);
    assert_eq!(temp, u(&stats["tempfails"]));
    assert_eq!(perm, u(&stats["permfails"]));
    assert!(temp > 50 && perm > 20, "about 20% and 10%: {temp} {perm}");
    assert_eq!(u(&stats["messages"]), accepted);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap().lines().count() as u64,
        accepted
    );
}

#[test]
fn injected_failures_at_rcpt_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(
        dir.path(),
        &["--permfail-percent", "50", "--fail-at", "rcpt"],
    );
    let mut total_accepted = 0;
    for pipelining in [false, true] {
        let mut args = vec![
            "--target".to_string(),
            sink.target(),
            "--messages".into(),
            "200".into(),
            "--sessions".into(),
            "4".into(),
            "--per-session".into(),
            "0".into(),
        ];
        if pipelining {
            args.push("--pipelining".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let report = send_report(dir.path(), &args);
        let accepted = u(&report["messages_accepted"]);
        let failed = u(&report["messages_failed"]);
        assert_eq!(accepted + failed, 200, "pipelining {pipelining}");
        assert_eq!(
            u(&report["errors"]["rcpt 5xx"]),
            failed,
            "one recipient per message"
        );
        assert!(failed > 50 && accepted > 50);
        assert_eq!(
            report["errors"].as_object().unwrap().len(),
            1,
            "{}",
            report["errors"]
        );
        total_accepted += accepted;
    }
    let (stats, _) = sink.stop();
    assert_eq!(u(&stats["messages"]), total_accepted);
    assert_eq!(u(&stats["permfails"]), 400 - total_accepted);
}

#[test]
fn open_loop_keeps_its_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(dir.path(), &[]);
    let report = send_report(
        dir.path(),
        &[
            "--target",
            &sink.target(),
            "--rate",
            "200",
            "--duration",
            "1.5",
            "--sessions",
            "4",
            "--per-session",
            "0",
        ],
    );
    sink.stop();
    assert_eq!(report["mode"], "open");
    assert_eq!(u(&report["messages_accepted"]), 300, "1.5 s at 200/s");
    assert!(report["elapsed_s"].as_f64().unwrap() >= 1.49);
    assert_eq!(u(&report["latency"]["start_lag"]["count"]), 300);
}

#[test]
fn connection_refused_is_counted_and_the_run_ends() {
    let port = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    let report = send_report(
        dir.path(),
        &[
            "--target",
            &format!("127.0.0.1:{port}"),
            "--messages",
            "30",
            "--sessions",
            "3",
        ],
    );
    assert_eq!(u(&report["messages_failed"]), 30);
    assert_eq!(u(&report["errors"]["connect"]), 30);
}

#[test]
fn loopback_guard_refuses_remote_targets() {
    for target in ["10.0.0.1:25", "192.168.1.1:25", "[2001:db8::1]:25"] {
        let out = send(&["--target", target, "--messages", "1"]);
        assert!(!out.status.success(), "{target} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("refusing non-loopback target") && err.contains("--allow-remote-target"),
            "{err}"
        );
    }
}

#[test]
fn unbounded_or_bad_options_are_refused() {
    let out = send(&["--target", "127.0.0.1:1", "--rate", "0", "--messages", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rate"));
    let out = send(&["--target", "127.0.0.1:1", "--auth", "nocolon"]);
    assert!(!out.status.success());
}

#[test]
fn sink_maildir_stores_each_message() {
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("Maildir");
    let sink = Sink::start(
        dir.path(),
        &["--maildir", maildir.to_str().unwrap(), "--fsync"],
    );
    let log = dir.path().join("accepted.log");
    let report = send_report(
        dir.path(),
        &[
            "--target",
            &sink.target(),
            "--messages",
            "20",
            "--sessions",
            "2",
            "--size",
            "3000",
            "--chunking",
            "--accepted-log",
            log.to_str().unwrap(),
        ],
    );
    sink.stop();
    assert_eq!(u(&report["messages_accepted"]), 20);
    let files: Vec<_> = std::fs::read_dir(maildir.join("new"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 20);
    assert_eq!(std::fs::read_dir(maildir.join("tmp")).unwrap().count(), 0);
    let stored: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        let id = line.split(' ').next().unwrap();
        assert!(stored.contains(&format!("Message-ID: {id}\r\n")), "{id}");
    }
}

#[test]
fn closed_loop_duration_ends_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(dir.path(), &[]);
    let started = std::time::Instant::now();
    let report = send_report(
        dir.path(),
        &[
            "--target",
            &sink.target(),
            "--duration",
            "1",
            "--sessions",
            "2",
            "--per-session",
            "0",
        ],
    );
    sink.stop();
    assert!(started.elapsed().as_secs_f64() < 10.0);
    assert!(u(&report["messages_accepted"]) > 0);
    assert_eq!(u(&report["messages_failed"]), 0);
}

/// Runs `handshake` with a JSON report and returns it.
fn handshake_report(dir: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let json = dir.join("handshake.json");
    let out = std::process::Command::new(common::BIN)
        .args(["handshake", "--quiet", "--json"])
        .arg(&json)
        .args(args)
        .output()
        .expect("run handshake");
    assert!(
        out.status.success(),
        "handshake failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(&json).expect("report file"))
        .expect("report JSON")
}

#[test]
fn handshake_rate_plain_starttls_and_implicit_tls() {
    let dir = tempfile::tempdir().unwrap();
    for (sink_args, mode, step) in [
        (&[][..], &[][..], None),
        (&["--tls"][..], &["--starttls"][..], Some("starttls")),
        (
            &["--tls", "--tls-on-connect"][..],
            &["--tls-on-connect"][..],
            Some("tls"),
        ),
    ] {
        let sink = Sink::start(dir.path(), sink_args);
        let mut args = vec![
            "--target",
            &sink.target()[..],
            "--connections",
            "60",
            "--sessions",
            "4",
        ]
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>();
        args.extend(mode.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let report = handshake_report(dir.path(), &args);
        let (stats, _) = sink.stop();
        assert_eq!(u(&report["completed"]), 60, "{report}");
        assert_eq!(u(&report["failed"]), 0, "{report}");
        assert_eq!(u(&stats["connections"]), 60);
        assert_eq!(u(&stats["messages"]), 0);
        assert_eq!(u(&report["latency"]["session"]["count"]), 60);
        match step {
            Some(s) => {
                assert_eq!(u(&report["latency"][s]["count"]), 60, "{report}");
                let t = report["tls_negotiated"].as_str().unwrap();
                assert!(t.starts_with("TLSv1_3"), "{t}");
            }
            None => assert!(report["tls_negotiated"].is_null()),
        }
    }
    // Full handshakes unless resumption is allowed.
    let sink = Sink::start(dir.path(), &["--tls", "--tls-on-connect"]);
    let target = sink.target();
    let base = [
        "--target",
        &target,
        "--connections",
        "20",
        "--sessions",
        "2",
        "--tls-on-connect",
    ];
    let full = handshake_report(dir.path(), &base);
    let mut args = base.to_vec();
    args.push("--tls-resume");
    let resumed = handshake_report(dir.path(), &args);
    drop(sink);
    assert_eq!(u(&full["tls_resumed"]), 0, "{full}");
    assert!(u(&resumed["tls_resumed"]) >= 10, "{resumed}");
    // A TLS handshake against a cleartext server fails, counted, not fatal.
    let sink = Sink::start(dir.path(), &[]);
    let report = handshake_report(
        dir.path(),
        &[
            "--target",
            &sink.target(),
            "--connections",
            "3",
            "--sessions",
            "1",
            "--tls-on-connect",
            "--timeout",
            "2",
        ],
    );
    drop(sink);
    assert_eq!(u(&report["failed"]), 3, "{report}");
    assert_eq!(u(&report["completed"]), 0);
}

#[test]
fn send_over_implicit_tls() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(dir.path(), &["--tls", "--tls-on-connect"]);
    let report = send_report(
        dir.path(),
        &[
            "--target",
            &sink.target(),
            "--messages",
            "40",
            "--sessions",
            "4",
            "--per-session",
            "5",
            "--tls-on-connect",
            "--tls-resume",
            "--pipelining",
        ],
    );
    let (stats, _) = sink.stop();
    assert_eq!(u(&report["messages_accepted"]), 40);
    assert!(report["tls_on_connect"].as_bool().unwrap());
    let conns = u(&report["connections"]);
    assert_eq!(u(&report["latency"]["tls"]["count"]), conns);
    assert!(report["latency"].get("starttls").is_none());
    assert_eq!(u(&stats["messages"]), 40);
    // --starttls and --tls-on-connect exclude each other.
    let out = send(&[
        "--target",
        &sink_target_unused(),
        "--starttls",
        "--tls-on-connect",
    ]);
    assert!(!out.status.success());
}

fn sink_target_unused() -> String {
    format!("127.0.0.1:{}", common::free_port())
}

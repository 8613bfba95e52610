//! Remote delivery against real sockets: a scripted SMTP server, a rustls
//! STARTTLS peer, a DNS stub, and Postfix's smtp-sink.

mod common;

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{both, dns_stub, start, Behaviour, Mode, Zone};
use delivery::dns::{DnsConfig, Resolver};
use delivery::remote::{Remote, RemoteConfig, RemoteJob};
use delivery::routes::{Route, SmtpRoutes};
use delivery::Outcome;

const MSG: &[u8] =
    b"From: a@example.org\nSubject: t\n\nline one\n.leading dot\n\xc3\xa9t\xc3\xa9\n";

fn config() -> RemoteConfig {
    let mut c = RemoteConfig::new("client.example").unwrap();
    c.timeout_connect = Duration::from_secs(2);
    c.timeout_remote = Duration::from_secs(2);
    c
}

/// A resolver pointed at a stub that knows nothing (relay routes use IP literals).
fn resolver() -> Resolver {
    let ns = dns_stub(Zone {
        mx: vec![],
        a: vec![],
        exists: vec![],
    });
    Resolver::new(&DnsConfig::Nameserver(ns)).unwrap()
}

fn job<'a>(rcpts: &'a [String], port: u16) -> RemoteJob<'a> {
    RemoteJob {
        domain: "example.com",
        sender: "a@example.org",
        recipients: rcpts,
        message: MSG,
        route: Some(Route::relay("127.0.0.1", port)),
        qqeh: "",
    }
}

fn rcpts(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn many_recipients_one_transaction_and_reuse() {
    for pipelining in [true, false] {
        let srv = start(Behaviour {
            pipelining,
            ..Default::default()
        });
        both(|_| {
            let srv = &srv;
            async move {
                let remote = Remote::new(config(), resolver());
                let r = rcpts(&[
                    "a@example.com",
                    "perm@example.com",
                    "temp@example.com",
                    "b@example.com",
                ]);
                let out = remote.deliver(&job(&r, srv.addr.port())).await;
                assert_eq!(out.len(), 4);
                assert!(
                    matches!(&out[0], Outcome::Delivered(t) if t.contains("250 2.0.0 queued")),
                    "{out:?}"
                );
                assert!(
                    matches!(&out[1], Outcome::Permanent(t) if t.contains("550 5.1.1")),
                    "{out:?}"
                );
                assert!(
                    matches!(&out[2], Outcome::Temporary(t) if t.contains("451")),
                    "{out:?}"
                );
                assert_eq!(out[3].letter(), 'K');
                // Second message reuses the connection.
                let r2 = rcpts(&["c@example.com"]);
                let out = remote.deliver(&job(&r2, srv.addr.port())).await;
                assert_eq!(out[0].letter(), 'K', "{out:?}");
                assert_eq!(remote.stats().connections, 1);
                assert_eq!(remote.stats().reused, 1);
                remote.close_all().await;
            }
        });
        assert_eq!(
            srv.connections.load(Ordering::SeqCst),
            2,
            "one connection per driver"
        );
        let rec = srv.received.lock().unwrap();
        assert_eq!(rec.len(), 4);
        assert_eq!(rec[0].rcpts, vec!["<a@example.com>", "<b@example.com>"]);
        assert!(rec[0].from.contains("BODY=8BITMIME"));
        // Wire form: CRLF and dot-stuffed.
        assert!(rec[0]
            .data
            .ends_with(b"line one\r\n..leading dot\r\n\xc3\xa9t\xc3\xa9\r\n.\r\n"));
        let cmds = srv.commands.lock().unwrap();
        assert!(
            cmds.iter().any(|c| c == "RSET"),
            "RSET between transactions"
        );
    }
}

#[test]
fn permanent_whole_message_and_data_reply() {
    let srv = start(Behaviour {
        data_reply: "554 5.7.1 spam".into(),
        ..Default::default()
    });
    both(|_| {
        let srv = &srv;
        async move {
            let remote = Remote::new(config(), resolver());
            let r = rcpts(&["a@example.com", "b@example.com"]);
            let out = remote.deliver(&job(&r, srv.addr.port())).await;
            assert!(
                out.iter()
                    .all(|o| matches!(o, Outcome::Permanent(t) if t.contains("554 5.7.1"))),
                "{out:?}"
            );
        }
    });
    let srv = start(Behaviour {
        data_reply: "452 4.3.1 full".into(),
        ..Default::default()
    });
    both(|_| {
        let srv = &srv;
        async move {
            let remote = Remote::new(config(), resolver());
            let r = rcpts(&["a@example.com"]);
            let out = remote.deliver(&job(&r, srv.addr.port())).await;
            assert_eq!(out[0].letter(), 'Z', "{out:?}");
        }
    });
}

#[test]
fn broken_peers_are_temporary() {
    for (mode, want) in [
        (Mode::Garbage, "bad reply"),
        (Mode::Hang, "timeout"),
        (Mode::DropMidData, "127.0.0.1"),
    ] {
        let srv = start(Behaviour {
            mode,
            ..Default::default()
        });
        both(|_| {
            let srv = &srv;
            async move {
                let mut c = config();
                c.timeout_remote = Duration::from_millis(500);
                let remote = Remote::new(c, resolver());
                let r = rcpts(&["a@example.com", "b@example.com"]);
                let out = remote.deliver(&job(&r, srv.addr.port())).await;
                for o in &out {
                    assert!(
                        matches!(o, Outcome::Temporary(t) if t.to_lowercase().contains(want)),
                        "{mode:?}: {o:?}"
                    );
                }
            }
        });
    }
    // Nothing listening: connection refused -> temporary.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    both(|_| async move {
        let remote = Remote::new(config(), resolver());
        let r = rcpts(&["a@example.com"]);
        let out = remote.deliver(&job(&r, port)).await;
        assert!(
            matches!(&out[0], Outcome::Temporary(t) if t.contains("#4.4.1")),
            "{out:?}"
        );
    });
}

#[test]
fn starttls_to_self_signed_peer() {
    let srv = start(Behaviour {
        tls: Some(common::tls_server_config()),
        ..Default::default()
    });
    both(|_| {
        let srv = &srv;
        async move {
            let remote = Remote::new(config(), resolver());
            let r = rcpts(&["a@example.com", "b@example.com"]);
            let out = remote.deliver(&job(&r, srv.addr.port())).await;
            assert!(out.iter().all(|o| o.letter() == 'K'), "{out:?}");
            // Reuse over TLS.
            let out = remote.deliver(&job(&r, srv.addr.port())).await;
            assert!(out.iter().all(|o| o.letter() == 'K'), "{out:?}");
            assert_eq!(remote.stats().connections, 1);
            remote.close_all().await;
        }
    });
    let rec = srv.received.lock().unwrap();
    assert_eq!(rec.len(), 4);
    assert!(rec.iter().all(|r| r.tls), "every message went over TLS");
    let cmds = srv.commands.lock().unwrap();
    assert_eq!(
        cmds.iter().filter(|c| c.starts_with("EHLO")).count(),
        4,
        "EHLO again after STARTTLS"
    );
}

#[test]
fn mx_routing_with_dns_stub() {
    let good = start(Behaviour::default());
    let flaky = start(Behaviour {
        mode: Mode::GreetTempOnce,
        ..Default::default()
    });
    // Both servers listen on 127.0.0.1; MX hosts map to loopback addresses.
    let ns = dns_stub(Zone {
        mx: vec![
            ("example.com", 10, "mx1.example.com"),
            ("example.com", 20, "mx2.example.com"),
            ("nullmx.example", 0, "."),
            ("flaky.example", 5, "mx.flaky.example"),
        ],
        a: vec![
            ("mx1.example.com", Ipv4Addr::new(127, 0, 0, 1)),
            ("mx2.example.com", Ipv4Addr::new(127, 0, 0, 1)),
            ("mx.flaky.example", Ipv4Addr::new(127, 0, 0, 1)),
            ("implicit.example", Ipv4Addr::new(127, 0, 0, 1)),
        ],
        exists: vec![],
    });
    both(|_| {
        let (good, flaky) = (&good, &flaky);
        async move {
            let resolver = Resolver::new(&DnsConfig::Nameserver(ns)).unwrap();
            let mx = resolver.mx("example.com").await.unwrap();
            assert_eq!(
                mx.iter().map(|m| m.host.as_str()).collect::<Vec<_>>(),
                ["mx1.example.com", "mx2.example.com"]
            );
            let mut c = config();
            c.mx_port = good.addr.port();
            let remote = Remote::new(c.clone(), resolver.clone());
            let r = rcpts(&["a@example.com"]);
            let mut j = job(&r, 0);
            j.route = None;
            let out = remote.deliver(&j).await;
            assert_eq!(out[0].letter(), 'K', "{out:?}");
            // Implicit MX (no MX, A only).
            j.domain = "implicit.example";
            assert_eq!(remote.deliver(&j).await[0].letter(), 'K');
            // Null MX: permanent.
            j.domain = "nullmx.example";
            let out = remote.deliver(&j).await;
            assert!(
                matches!(&out[0], Outcome::Permanent(t) if t.contains("null MX")),
                "{out:?}"
            );
            // NXDOMAIN: permanent.
            j.domain = "nowhere.example";
            let out = remote.deliver(&j).await;
            assert!(
                matches!(&out[0], Outcome::Permanent(t) if t.contains("couldn't find")),
                "{out:?}"
            );
            // smtproutes beats MX.
            let mut c2 = c.clone();
            c2.routes = SmtpRoutes::parse(
                "smtproutes",
                &format!(".example.com:127.0.0.1:{}\n", good.addr.port()),
            )
            .unwrap();
            let remote2 = Remote::new(c2, resolver.clone());
            j.domain = "sub.example.com";
            assert_eq!(remote2.deliver(&j).await[0].letter(), 'K');
            // 4xx greeting then next try gets 250.
            let mut c3 = c.clone();
            c3.mx_port = flaky.addr.port();
            let remote3 = Remote::new(c3, resolver);
            j.domain = "flaky.example";
            let first = remote3.deliver(&j).await;
            let second = remote3.deliver(&j).await;
            assert!(
                first[0].letter() == 'Z' || first[0].letter() == 'K',
                "{first:?}"
            );
            assert_eq!(second[0].letter(), 'K', "{second:?}");
        }
    });
    assert!(good.received.lock().unwrap().len() >= 6);
}

#[test]
fn qmailremote_hook() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("qr.sh");
    let args = dir.path().join("args");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$@\" > {}\ncat >/dev/null\nprintf 'r\\0h550 no\\0K250 ok\\0'\n",
            args.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    both(|_| {
        let script = script.clone();
        let args = args.clone();
        async move {
            let mut c = config();
            c.qmailremote = Some(script);
            let remote = Remote::new(c, resolver());
            let r = rcpts(&["a@example.com", "b@example.com"]);
            let out = remote.deliver(&job(&r, 25)).await;
            assert_eq!(
                out,
                vec![
                    Outcome::Delivered("250 ok".into()),
                    Outcome::Permanent("550 no".into())
                ]
            );
            let got = std::fs::read_to_string(&args).unwrap();
            assert_eq!(
                got.trim_end(),
                format!(
                    "example.com a@example.org  {} a@example.com b@example.com",
                    MSG.len()
                )
            );
        }
    });
}

#[test]
fn postfix_smtp_sink() {
    let bin = "/usr/sbin/smtp-sink";
    assert!(
        std::path::Path::new(bin).exists(),
        "{bin} is missing: install the Debian package `postfix` (it provides smtp-sink)"
    );
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cmd = std::process::Command::new(bin);
    // smtp-sink refuses to run as root without a user to drop to.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.args(["-u", "nobody"]);
    }
    let mut child = cmd
        .args(["-c", &format!("127.0.0.1:{port}"), "100"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start smtp-sink");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "smtp-sink did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    both(|_| async move {
        let remote = Remote::new(config(), resolver());
        let r = rcpts(&["a@example.com", "b@example.com", "c@example.com"]);
        for _ in 0..3 {
            let out = remote.deliver(&job(&r, port)).await;
            assert!(out.iter().all(|o| o.letter() == 'K'), "{out:?}");
        }
        assert_eq!(remote.stats().connections, 1);
        remote.close_all().await;
    });
    let _ = child.kill();
    let _ = child.wait();
}

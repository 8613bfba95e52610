//! The IMAP proxy against a real Dovecot, on both drivers: login (LOGIN with atoms, quoted
//! strings and literals; AUTHENTICATE PLAIN), SELECT / LIST / FETCH of a delivered message,
//! LOGOUT; refusals that never reach the mailstore; mailstore down; hostcntrl routing;
//! LEGACY_SERVER; the relay row.

mod support;

use support::dovecot::Dovecot;
use support::{config, dead_port, self_signed, Client, Home, Kind, Sentinel, Server, DRIVERS};

const MSG: &str = "From: a@example.org\nTo: amy@example.com\nSubject: proxied\n\nhello through the proxy\n.dot line\n";

fn full_session(c: &mut Client) {
    let r = c.imap("a2", "SELECT INBOX");
    assert!(r.contains("* 1 EXISTS"), "{r}");
    assert!(r.lines().last().unwrap().starts_with("a2 OK"), "{r}");
    let r = c.imap("a3", "LIST \"\" \"*\"");
    assert!(r.contains("INBOX"), "{r}");
    assert!(r.lines().last().unwrap().starts_with("a3 OK"), "{r}");
    let r = c.imap("a4", "FETCH 1 BODY.PEEK[]");
    assert!(r.contains("Subject: proxied"), "{r}");
    assert!(r.contains("hello through the proxy"), "{r}");
    let r = c.imap("a5", "LOGOUT");
    assert!(r.contains("* BYE"), "{r}");
    assert!(r.lines().last().unwrap().starts_with("a5 OK"), "{r}");
    assert!(c.closed());
}

#[test]
fn login_select_list_fetch_logout_through_dovecot() {
    let dc = Dovecot::start();
    dc.deliver("amy", "1700000000.M1P1.test", MSG);
    let home = Home::new();
    for d in DRIVERS {
        let mut cfg = config();
        cfg.default_imap_backend = Some(dc.imap);
        let srv = Server::start(Kind::ImapProxy, d, &home, cfg);

        // LOGIN with atoms.
        let mut c = Client::connect(srv.addr);
        assert_eq!(c.line(), "* OK IMAP4rev1 Server Ready.\r\n");
        let r = c.imap("a0", "CAPABILITY");
        assert!(r.contains("AUTH=PLAIN"), "{r}");
        let r = c.imap("a1", "LOGIN amy@example.com secret");
        assert!(r.starts_with("a1 OK [CAPABILITY IMAP4rev1"), "{d:?}: {r}");
        assert!(r.trim_end().ends_with("Logged in"), "{r}");
        full_session(&mut c);

        // LOGIN with a synchronizing literal and a quoted string, SELECT pipelined after it.
        let mut c = Client::connect(srv.addr);
        c.line();
        c.send("b1 LOGIN {15}\r\n");
        assert_eq!(c.line(), "+ Ready for literal data\r\n");
        c.send("amy@example.com \"secret\"\r\nb2 SELECT INBOX\r\n");
        let r = c.until_tagged("b1");
        assert!(r.starts_with("b1 OK"), "{r}");
        let r = c.until_tagged("b2");
        assert!(r.contains("* 1 EXISTS"), "{r}");
        c.imap("b3", "LOGOUT");

        // AUTHENTICATE PLAIN with SASL-IR (\0amy@example.com\0secret) and LITERAL+.
        let mut c = Client::connect(srv.addr);
        c.line();
        let r = c.imap("c1", "AUTHENTICATE PLAIN AGFteUBleGFtcGxlLmNvbQBzZWNyZXQ=");
        assert!(r.starts_with("c1 OK"), "{r}");
        full_session(&mut c);
        let mut c = Client::connect(srv.addr);
        c.line();
        let r = c.imap("c2", "LOGIN {15+}\r\namy@example.com {6+}\r\nsecret");
        assert!(r.starts_with("c2 OK"), "{r}");
        c.imap("c3", "LOGOUT");
    }
    assert!(home.relay_allowed(), "IMAP login records the relay row");
    let rows = home.lastauth("amy@example.com", "imap");
    assert!(
        rows.contains(&("imap".into(), "127.0.0.1".into())),
        "lastauth row of the IMAP login: {rows:?}"
    );
    let log = dc.log();
    assert!(
        log.contains("amy@example.com:127.0.0.1"),
        "login name with client ip: {log}"
    );
}

#[test]
fn refusals_never_reach_the_mailstore() {
    let home = Home::new();
    let sentinel = Sentinel::new();
    for d in DRIVERS {
        let mut cfg = config();
        cfg.default_imap_backend = Some(sentinel.addr());
        cfg.max_bad_logins = 3;
        let srv = Server::start(Kind::ImapProxy, d, &home, cfg);
        let mut c = Client::connect(srv.addr);
        c.line();
        let r = c.imap("a", "LOGIN amy@example.com wrong");
        assert_eq!(r, "a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n");
        let r = c.imap("b", "LOGIN nobody@example.com secret");
        assert_eq!(r, "b NO [AUTHENTICATIONFAILED] Authentication failed.\r\n");
        let r = c.imap("c", "SELECT INBOX");
        assert_eq!(r, "c BAD Command not valid before login.\r\n");
        // NO_IMAP account: refused, and the third failure disconnects.
        c.send("d LOGIN bob@example.com secret\r\n");
        assert!(c.line().starts_with("d NO [CONTACTADMIN]"));
        assert_eq!(
            c.line(),
            "* BYE Too many invalid authentication attempts.\r\n"
        );
        assert!(c.closed());
    }
    assert!(!sentinel.touched(), "the mailstore was contacted");
    assert!(!home.relay_allowed());
    let rows = home.lastauth("amy@example.com", "imap");
    assert!(rows.iter().all(|(s, _)| s != "imap"), "{rows:?}");
}

/// A client announcing a 100 MB literal before login: a synchronizing one is refused at once
/// with a tagged BAD (nothing of it is read, the connection stays usable); a LITERAL+ one,
/// whose bytes are already on the way, closes the connection after a BYE. Neither makes
/// the proxy read 100 MB or hang.
#[test]
fn huge_literals_before_login() {
    use std::io::Write;
    let home = Home::new();
    let sentinel = Sentinel::new();
    for d in DRIVERS {
        let mut cfg = config();
        cfg.default_imap_backend = Some(sentinel.addr());
        let srv = Server::start(Kind::ImapProxy, d, &home, cfg);

        let mut c = Client::connect(srv.addr);
        c.line();
        let started = std::time::Instant::now();
        c.send("a LOGIN {104857600}\r\n");
        assert_eq!(c.line(), "a BAD Literal too large.\r\n");
        assert_eq!(c.imap("b", "NOOP"), "b OK NOOP completed.\r\n");
        // The user name as a huge literal, after a normal-sized one.
        c.send("c LOGIN {3}\r\n");
        assert_eq!(c.line(), "+ Ready for literal data\r\n");
        c.send("amy {104857600}\r\n");
        assert_eq!(c.line(), "c BAD Literal too large.\r\n");
        assert_eq!(c.imap("d", "NOOP"), "d OK NOOP completed.\r\n");
        assert!(started.elapsed() < std::time::Duration::from_secs(10));

        // LITERAL+: the client streams the payload without waiting.
        let s = std::net::TcpStream::connect(srv.addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            w.write_all(b"a LOGIN {104857600+}\r\n")?;
            let chunk = vec![b'x'; 1 << 20];
            let mut sent = 0usize;
            for _ in 0..100 {
                w.write_all(&chunk)?;
                sent += chunk.len();
            }
            Ok::<usize, std::io::Error>(sent)
        });
        let mut r = std::io::BufReader::new(s);
        let mut greeting = String::new();
        std::io::BufRead::read_line(&mut r, &mut greeting).unwrap();
        assert!(greeting.starts_with("* OK"), "{greeting}");
        // The BYE, unless the reset for the unread payload overtook it; then the end.
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut r, &mut rest);
        let rest = String::from_utf8_lossy(&rest);
        assert!(
            rest.is_empty() || rest == "* BYE Literal too large.\r\n",
            "{d:?}: {rest}"
        );
        let sent = writer.join().unwrap();
        assert!(
            sent.is_err(),
            "{d:?}: the proxy read the whole 100 MB literal"
        );
    }
    assert!(!sentinel.touched(), "the mailstore was contacted");
}

#[test]
fn mailstore_down_is_unavailable() {
    let home = Home::new();
    for d in DRIVERS {
        let mut cfg = config();
        cfg.default_imap_backend = Some(dead_port());
        let srv = Server::start(Kind::ImapProxy, d, &home, cfg.clone());
        let mut c = Client::connect(srv.addr);
        c.line();
        let r = c.imap("a", "LOGIN amy@example.com secret");
        assert_eq!(r, "a NO [UNAVAILABLE] Backend unavailable\r\n");
        // Still in the not-authenticated state.
        assert_eq!(c.imap("b", "NOOP"), "b OK NOOP completed.\r\n");
        drop(srv);
        // No mailstore at all and no default backend.
        cfg.default_imap_backend = None;
        let srv = Server::start(Kind::ImapProxy, d, &home, cfg);
        let mut c = Client::connect(srv.addr);
        c.line();
        let r = c.imap("a", "LOGIN amy@example.com secret");
        assert_eq!(r, "a NO [UNAVAILABLE] Backend unavailable\r\n");
    }
}

#[test]
fn hostcntrl_routing_and_legacy_server() {
    let dc = Dovecot::start();
    dc.deliver("amy", "1700000000.M2P2.test", MSG);
    let home = Home::new();
    home.admin(|a| async move {
        a.host_set("ms1", "127.0.0.1".parse().unwrap())
            .await
            .unwrap();
        a.hostcntrl_add("amy@example.com", "ms1").await.unwrap();
        a
    });
    for d in DRIVERS {
        let mut cfg = config();
        // Only the mailstore of hostcntrl can serve: the default backend is dead.
        cfg.imap_port = dc.imap.port();
        cfg.default_imap_backend = Some(dead_port());
        cfg.legacy_server = true;
        let srv = Server::start(Kind::ImapProxy, d, &home, cfg);
        let mut c = Client::connect(srv.addr);
        c.line();
        let r = c.imap("a1", "LOGIN amy@example.com secret");
        assert!(r.starts_with("a1 OK"), "{d:?}: {r}");
        full_session(&mut c);
    }
    let log = dc.log();
    assert!(log.contains("user=<amy@example.com>"), "{log}");
    assert!(
        !log.contains("amy@example.com:127.0.0.1"),
        "LEGACY_SERVER: {log}"
    );
}

#[test]
fn idle_and_command_timeouts() {
    let dc = Dovecot::start();
    let home = Home::new();
    for d in DRIVERS {
        let mut cfg = config();
        cfg.default_imap_backend = Some(dc.imap);
        cfg.idle_timeout = std::time::Duration::from_secs(1);
        cfg.command_timeout = std::time::Duration::from_secs(1);
        let srv = Server::start(Kind::ImapProxy, d, &home, cfg);
        // Silent before login: the per-command timeout.
        let mut c = Client::connect(srv.addr);
        c.line();
        assert_eq!(c.line(), "* BYE Disconnected for inactivity.\r\n");
        assert!(c.closed());
        // Silent after login: DATA_TIMEOUT.
        let mut c = Client::connect(srv.addr);
        c.line();
        assert!(c
            .imap("a", "LOGIN amy@example.com secret")
            .starts_with("a OK"));
        assert_eq!(c.line(), "* BYE Disconnected for inactivity.\r\n");
        assert!(c.closed());
    }
}

const IMAPLIB_TLS: &str = r#"
import imaplib, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if mode == "implicit":
    m = imaplib.IMAP4_SSL(host, port, ssl_context=ctx, timeout=20)
else:
    m = imaplib.IMAP4(host, port, timeout=20)
    assert "STARTTLS" in m.capabilities, m.capabilities
    m.starttls(ssl_context=ctx)
typ, _ = m.login("amy@example.com", "secret")
assert typ == "OK", typ
typ, data = m.select("INBOX")
assert typ == "OK" and data[0] == b"1", data
typ, data = m.fetch("1", "(BODY.PEEK[])")
assert b"hello through the proxy" in data[0][1], data
# A large response crosses many TLS records in the relay.
typ, data = m.fetch("1", "(BODY.PEEK[])")
m.logout()
print("ok")
"#;

#[test]
fn starttls_and_implicit_tls_through_dovecot() {
    let dc = Dovecot::start();
    let big = format!("{MSG}{}\n", "x".repeat(200_000));
    dc.deliver("amy", "1700000000.M3P3.test", &big);
    let home = Home::new();
    let certs = self_signed();
    for d in DRIVERS {
        for (kind, mode) in [
            (Kind::ImapProxy, "starttls"),
            (Kind::ImapsProxy, "implicit"),
        ] {
            let mut cfg = config();
            cfg.default_imap_backend = Some(dc.imap);
            let srv = Server::start_tls(kind, d, &home, cfg, Some(certs.path().to_path_buf()));
            let out = std::process::Command::new("/usr/bin/python3")
                .arg("-c")
                .arg(IMAPLIB_TLS)
                .arg(srv.addr.ip().to_string())
                .arg(srv.addr.port().to_string())
                .arg(mode)
                .output()
                .expect("run python3");
            assert!(
                out.status.success(),
                "{d:?} {mode}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

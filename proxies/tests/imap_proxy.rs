//! The IMAP proxy against a real Dovecot, on both drivers: login (LOGIN with atoms, quoted
//! strings and literals; AUTHENTICATE PLAIN), SELECT / LIST / FETCH of a delivered message,
//! LOGOUT; refusals that never reach the mailstore; mailstore down; hostcntrl routing;
//! LEGACY_SERVER; the relay row.

mod support;

use support::dovecot::Dovecot;
use support::{config, dead_port, Client, Home, Kind, Sentinel, Server, DRIVERS};

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

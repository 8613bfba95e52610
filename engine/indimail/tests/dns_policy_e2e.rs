//! DNSBL (`dnsbllist`) and SPF (`spfbehavior`) against a real DNS server
//! (dnsmasq on loopback), over real SMTP sockets.

mod common;
#[path = "common/dnsmasq.rs"]
mod dnsmasq;

use common::*;
use dnsmasq::Dnsmasq;

fn home_with(files: &[(&str, &str)], rules: &str) -> tempfile::TempDir {
    let h = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(h.path().join("control")).unwrap();
    std::fs::create_dir_all(h.path().join("tcp")).unwrap();
    std::fs::write(h.path().join("tcp/tcp.smtp"), rules).unwrap();
    std::fs::write(h.path().join("control/rcpthosts"), "example.com\n").unwrap();
    std::fs::write(h.path().join("control/me"), "mx.example.com\n").unwrap();
    for (name, text) in files {
        std::fs::write(h.path().join("control").join(name), text).unwrap();
    }
    h
}

fn mail_from(s: &Server, from: &str) -> (u16, String) {
    let mut c = Client::connect(s.smtp);
    assert_eq!(c.reply().0, 220);
    assert_eq!(c.cmd("EHLO client.example.org").0, 250);
    c.cmd(&format!("MAIL FROM:<{from}>"))
}

fn dns() -> Dnsmasq {
    Dnsmasq::start(
        // 127.0.0.1 is listed in bl.test (RFC 5782 test point style).
        &[("1.0.0.127.bl.test", "127.0.0.2")],
        &[
            (
                "1.0.0.127.bl.test",
                "Listed for spam; see http://bl.test/q?127.0.0.1",
            ),
            ("good.test", "v=spf1 ip4:127.0.0.0/8 -all"),
            ("bad.test", "v=spf1 ip4:192.0.2.1 -all"),
            ("soft.test", "v=spf1 ip4:192.0.2.1 ~all"),
            ("broken.test", "v=spf1 ip4:not-an-address -all"),
        ],
    )
}

#[test]
fn dnsbl_listed_client_refused_with_the_lists_reason() {
    let ns = dns();
    let env = [
        ("INDIMAIL_NO_DELIVERY", "1"),
        ("INDIMAIL_DNS", &*ns.addr.to_string()),
    ];
    // Listed in bl.test: MAIL refused with 554 5.7.1 and the TXT reason.
    let h = home_with(
        &[("dnsbllist", "# zones\nclean.test\nbl.test\n")],
        ":allow\n",
    );
    let s = Server::start_with(h.path(), "uring", &env);
    let (code, text) = mail_from(&s, "a@example.org");
    assert_eq!(code, 554, "{text}");
    assert!(
        text.contains("554 5.7.1 127.0.0.1 is listed in bl.test: Listed for spam; see http://bl.test/q?127.0.0.1"),
        "{text}"
    );
    assert!(s.log().contains("rule=dnsbl:bl.test"), "{}", s.log());
    drop(s);

    // Not listed in the zone asked: accepted.
    let h = home_with(&[("dnsbllist", "clean.test\n")], ":allow\n");
    let s = Server::start_with(h.path(), "uring", &env);
    assert_eq!(mail_from(&s, "a@example.org").0, 250);
    drop(s);

    // SKIPDNSBL in the client's tcp.smtp rule: not asked.
    let h = home_with(
        &[("dnsbllist", "bl.test\n")],
        "127.0.0.1:allow,SKIPDNSBL=\"1\"\n:allow\n",
    );
    let s = Server::start_with(h.path(), "epoll", &env);
    assert_eq!(mail_from(&s, "a@example.org").0, 250);
}

#[test]
fn spf_levels_and_received_spf_header() {
    let ns = dns();
    let ns_addr = ns.addr.to_string();
    // Level 3: fail refused; softfail, permerror accepted; pass annotated.
    let h = home_with(&[("spfbehavior", "3\n")], ":allow\n");
    let maildir = setup_users(h.path(), &["alice"]).remove(0);
    let s = Server::start_with(h.path(), "uring", &[("INDIMAIL_DNS", &ns_addr)]);
    let (code, text) = mail_from(&s, "someone@bad.test");
    assert_eq!(code, 550, "{text}");
    assert!(text.starts_with("550 5.7.23 "), "{text}");
    for d in ["soft", "broken", "nospf"] {
        let r = mail_from(&s, &format!("someone@{d}.test"));
        assert_eq!(r.0, 250, "{r:?}\n{}", s.log());
    }
    let (code, text) = send_message(
        s.smtp,
        "someone@good.test",
        &["alice@example.com"],
        b"Subject: spf\r\n\r\nhello\r\n.\r\n",
    );
    assert_eq!(code, 250, "{text}\n{}", s.log());
    wait_until(20, "delivery", || {
        std::fs::read_dir(maildir.join("new")).map_or(0, |d| d.count()) == 1
    });
    let file = std::fs::read_dir(maildir.join("new"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = std::fs::read_to_string(file).unwrap();
    assert!(
        text.contains("\nReceived-SPF: pass (mx.example.com: domain of someone@good.test designates 127.0.0.1 as permitted sender) client-ip=127.0.0.1; envelope-from=\"someone@good.test\";"),
        "{text}"
    );
    let spf_at = text.find("Received-SPF:").unwrap();
    assert!(spf_at < text.find("\nReceived: from").unwrap(), "{text}");
    drop(s);

    // Level 4 refuses softfail too; relay clients are never checked.
    let h = home_with(
        &[("spfbehavior", "4\n")],
        "127.0.0.1:allow,RELAYCLIENT=\"\"\n:allow\n",
    );
    let s = Server::start_with(
        h.path(),
        "epoll",
        &[("INDIMAIL_NO_DELIVERY", "1"), ("INDIMAIL_DNS", &ns_addr)],
    );
    assert_eq!(mail_from(&s, "someone@bad.test").0, 250);
    drop(s);
    let h = home_with(&[("spfbehavior", "4\n")], ":allow\n");
    let s = Server::start_with(
        h.path(),
        "epoll",
        &[("INDIMAIL_NO_DELIVERY", "1"), ("INDIMAIL_DNS", &ns_addr)],
    );
    assert_eq!(mail_from(&s, "someone@soft.test").0, 550);
    assert_eq!(mail_from(&s, "someone@good.test").0, 250);
    drop(s);

    // Level 2: a DNS failure is a temporary refusal.
    drop(ns);
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let h = home_with(&[("spfbehavior", "2\n")], ":allow\n");
    let s = Server::start_with(
        h.path(),
        "uring",
        &[("INDIMAIL_NO_DELIVERY", "1"), ("INDIMAIL_DNS", &dead_addr)],
    );
    let (code, text) = mail_from(&s, "someone@good.test");
    assert_eq!(code, 451, "{text}");
    assert!(text.starts_with("451 4.7.24 "), "{text}");
}

/// This machine's address on its network (not loopback: resolvers answer
/// `localhost` for all of 127/8 and ::1 without asking, RFC 6761).
fn own_address() -> std::net::Ipv4Addr {
    let u = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    // Connecting a UDP socket sends nothing; it picks the source address.
    u.connect("192.0.2.1:9")
        .expect("a route off this machine (a non-loopback address for PTR tests)");
    match u.local_addr().unwrap().ip() {
        std::net::IpAddr::V4(a) if !a.is_loopback() => a,
        other => panic!("no non-loopback IPv4 address for PTR tests (got {other})"),
    }
}

/// REQPTR and badhost, before the greeting: a client whose name is in
/// `badhost` gets 553, a loopback client (`localhost`) 220, one whose
/// address has no PTR 553; with DNS down, REQPTR answers 421 (try later),
/// never a permanent refusal.
#[test]
fn reqptr_and_badhost_refuse_before_the_greeting() {
    let me = own_address();
    let from = me.octets();
    let h = home_with(&[("badhost", "*.dialup.test\n")], ":allow\n");
    let start = |dns: &str| {
        let env = [
            ("INDIMAIL_NO_DELIVERY", "1"),
            ("INDIMAIL_DNS", dns),
            ("REQPTR", ""),
            ("BADHOSTCHECK", "1"),
        ];
        Server::start_with(h.path(), "uring", &env)
    };
    let ns = Dnsmasq::start(&[("h2.dialup.test", &*me.to_string())], &[]);
    let s = start(&ns.addr.to_string());
    let (code, text) = Client::connect_from(from, s.smtp).reply();
    assert_eq!(code, 553, "{text}\n{}", s.log());
    assert!(text.contains("h2.dialup.test"), "{text}");
    let mut c = Client::connect_from([127, 0, 0, 21], s.smtp);
    assert_eq!(c.reply().0, 220);
    assert_eq!(c.cmd("EHLO mx.good.test").0, 250);
    let log = s.log();
    assert!(
        log.contains(&format!("smtp refused ip={me} rule=badhost:1")),
        "{log}"
    );
    drop(s);
    drop(ns);

    // No PTR for the address: 553.
    let ns = Dnsmasq::start(&[], &[]);
    let s = start(&ns.addr.to_string());
    let (code, text) = Client::connect_from(from, s.smtp).reply();
    assert_eq!(code, 553, "{text}");
    assert!(text.contains("no PTR record"), "{text}");
    assert!(s.log().contains("rule=REQPTR"), "{}", s.log());
    drop(s);

    // DNS that does not answer: 421, not 553.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let s = start(&dead.local_addr().unwrap().to_string());
    let (code, text) = Client::connect_from(from, s.smtp).reply();
    assert_eq!(code, 421, "{text}");
}

/// qmail-spf's local settings: `spfrules` mechanisms are tried before a
/// domain's `-all` (bad.test passes from a locally trusted network),
/// `spfguess` judges a domain without a record (nospf.test fails), and
/// `spfexp` explains a failure the domain does not explain.
#[test]
fn spfrules_spfguess_spfexp() {
    let ns = dns();
    let ns_addr = ns.addr.to_string();
    let h = home_with(
        &[
            ("spfbehavior", "3\n"),
            ("spfrules", "ip4:127.0.0.0/8\n"),
            ("spfguess", "v=spf1 ip4:192.0.2.0/24 -all\n"),
            ("spfexp", "See https://why.test/?s=%{S}&i=%{I}&r=%{R}\n"),
        ],
        ":allow\n",
    );
    let env = [("INDIMAIL_NO_DELIVERY", "1"), ("INDIMAIL_DNS", &*ns_addr)];
    let s = Server::start_with(h.path(), "uring", &env);
    let (code, text) = mail_from(&s, "someone@bad.test");
    assert_eq!(code, 250, "{text}\n{}", s.log());
    let (code, text) = mail_from(&s, "someone@nospf.test");
    assert_eq!(code, 550, "{text}");
    assert!(
        text.contains("See https://why.test/?s=someone@nospf.test&i=127.0.0.1&r=mx.example.com"),
        "{text}"
    );
    assert!(
        s.log().contains("domain=bad.test result=pass"),
        "{}",
        s.log()
    );
    drop(s);

    // A guess that is not an SPF record is a configuration error, named.
    std::fs::write(h.path().join("control/spfguess"), "a mx -all\n").unwrap();
    let (code, out, err) = indimail(h.path(), &["config", "check"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("spfguess") || out.contains("spfguess"),
        "{out}{err}"
    );
}

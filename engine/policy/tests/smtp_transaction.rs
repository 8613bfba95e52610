//! End-to-end use of the public API as the SMTP driver uses it: a realistic IndiMail control
//! directory, one transaction through every check, and greylisting over a real UDP socket on
//! loopback speaking qmail-greyd's wire format.

use std::net::{IpAddr, UdpSocket};
use std::time::{Duration, SystemTime};

use policy::greylist::{udp, Greylist, GreylistConfig, Whitelist};
use policy::{Conn, Policy, Verdict};

fn write(dir: &std::path::Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn full_transaction_against_a_control_directory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "badmailfrom", "@spam.example\n");
    write(d, "badmailpatterns", "*@*.biz\n!ok@good.biz\n");
    write(d, "badrcptto", "retired@corp.example\n");
    write(d, "goodrcptto", "postmaster@corp.example\n");
    write(d, "accesslist", "rcpt:*@corp.example:board@corp.example\n");
    write(d, "blackholedrcpt", "@trap.corp.example\n");
    write(d, "relaymailfrom", "@branch.example\n");
    write(d, "from.envrules", "*@bulk.example:DATABYTES=1000000\n");
    write(d, "hostaccess", "corp.example:192.0.2.*\n");
    write(d, "badhelo", "localhost\n");
    write(d, "badip", "203.0.113.66\n");
    write(d, "bodycheck", "lottery winner:scam:-body\n");
    let env = |k: &str| match k {
        "BADHELOCHECK" | "BADIPCHECK" | "BODYCHECK" => Some(String::new()),
        _ => None,
    };
    let p = Policy::load(d, &env).unwrap();

    assert!(matches!(
        p.check_connect("203.0.113.66".parse().unwrap()),
        Verdict::Reject { code: 421, .. }
    ));
    assert!(p.check_connect("198.51.100.1".parse().unwrap()).is_accept());
    assert!(matches!(
        p.check_helo("localhost"),
        Verdict::Reject { code: 553, .. }
    ));

    let c = Conn {
        ip: "198.51.100.1".parse().unwrap(),
        relay_client: false,
        authenticated: None,
        helo: "mx.bulk.example",
    };
    let m = p.check_mail(&c, "news@bulk.example");
    assert!(m.verdict.is_accept());
    assert_eq!(
        m.env,
        vec![("DATABYTES".to_string(), Some("1000000".to_string()))]
    );
    assert!(!m.relay);
    assert!(matches!(
        p.check_mail(&c, "x@spam.example").verdict,
        Verdict::Reject { code: 553, .. }
    ));
    assert!(matches!(
        p.check_mail(&c, "x@shop.biz").verdict,
        Verdict::Reject { code: 553, .. }
    ));
    assert!(p.check_mail(&c, "ok@good.biz").verdict.is_accept());
    assert!(p.check_mail(&c, "boss@branch.example").relay);
    // corp.example may only send from 192.0.2.0/24 ... but hostaccess only reserves IPs, the
    // domain is free elsewhere unless PARANOID.
    assert!(p.check_mail(&c, "ceo@corp.example").verdict.is_accept());

    assert!(matches!(
        p.check_rcpt(&c, "news@bulk.example", "retired@corp.example"),
        Verdict::Reject { code: 553, .. }
    ));
    assert!(p
        .check_rcpt(&c, "news@bulk.example", "postmaster@corp.example")
        .is_accept());
    assert!(matches!(
        p.check_rcpt(&c, "news@bulk.example", "board@corp.example"),
        Verdict::Reject { code: 553, .. }
    ));
    assert!(p
        .check_rcpt(&c, "ceo@corp.example", "board@corp.example")
        .is_accept());
    assert!(matches!(
        p.check_rcpt(&c, "news@bulk.example", "x@trap.corp.example"),
        Verdict::Blackhole { .. }
    ));

    let mut s = p.body_scanner().unwrap();
    for b in b"Subject: hi\r\n\r\nYou are a LOTTERY\r\n winner\r\n" {
        s.feed(std::slice::from_ref(b));
    }
    assert!(s.finish().is_accept(), "body lines are not unfolded");
    let mut s = p.body_scanner().unwrap();
    s.feed(b"Subject: hi\r\n\r\nYou are a lottery winner!\r\n.\r\n");
    assert_eq!(
        s.finish().to_string(),
        "554 5.7.1 message content rejected: scam"
    );
}

#[test]
fn greylisting_over_loopback_udp_in_greyd_format() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let addr = server.local_addr().unwrap();
    let t0 = SystemTime::now();
    // A minimal qmail-greyd: three datagrams, each answered from the greylist state, with a
    // simulated clock that jumps past the minimum resend time for the third.
    let handle = std::thread::spawn(move || {
        let mut g = Greylist::new(GreylistConfig::default(), Whitelist::default());
        let mut buf = [0u8; 2048];
        for i in 0..3 {
            let (n, peer) = server.recv_from(&mut buf).unwrap();
            let req = udp::decode_request(&buf[..n]).unwrap();
            let ip: IpAddr = req.ip.parse().unwrap();
            let now = t0 + Duration::from_secs(if i == 2 { 600 } else { 60 * i });
            let decision = g.check(ip, &req.sender, &req.rcpts, now);
            server
                .send_to(&udp::encode_reply(decision.reply()), peer)
                .unwrap();
        }
    });

    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(udp::DEFAULT_TIMEOUT)).unwrap();
    let target = udp::parse_greyip(&format!("127.0.0.1@{}", addr.port()))
        .unwrap()
        .unwrap();
    let ask = || {
        let pkt = udp::encode_request(
            "192.0.2.55".parse().unwrap(),
            "a@example.org",
            &["b@example.com"],
        );
        client.send_to(&pkt, target).unwrap();
        let mut reply = [0u8; 16];
        let (n, _) = client.recv_from(&mut reply).unwrap();
        udp::decode_reply(&reply[..n]).unwrap()
    };
    let first = ask();
    assert_eq!(first.verdict().to_string(), "450 4.7.1 try again later");
    assert_eq!(first.reason, udp::GreyReason::NewRecord);
    assert_eq!(ask().reason, udp::GreyReason::TooEarly);
    let third = ask();
    assert!(third.accept && third.verdict().is_accept());
    handle.join().unwrap();
}

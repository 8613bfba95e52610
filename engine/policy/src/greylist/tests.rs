use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::udp::{self, GreyReason, GreyReply, UdpError};
use super::*;

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const MIN: u64 = 60;

#[test]
fn first_defer_early_retry_defer_then_pass_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("greylist.context");
    let cfg = GreylistConfig::default();
    let mut g = Greylist::new(cfg, Whitelist::default());
    let c = ip("198.51.100.7");

    let d = g.check(c, "alice@example.org", &["bob@example.com"], t(0));
    assert_eq!(d, GreyDecision::Defer(GreyReason::NewRecord));
    assert_eq!(
        d.verdict().to_string(),
        "451 4.7.1 Greylisted, try again later"
    );
    assert_eq!(
        g.check(c, "alice@example.org", &["bob@example.com"], t(2 * MIN)),
        GreyDecision::Defer(GreyReason::TooEarly)
    );
    // Retry from another host of the same /24 after the minimum resend time: passes.
    let d = g.check(
        ip("198.51.100.99"),
        "Alice@Example.org",
        &["BOB@example.com"],
        t(6 * MIN),
    );
    assert_eq!(d, GreyDecision::Pass(GreyReason::GreyPassed));
    assert!(d.verdict().is_accept());
    // The network is now remembered: any envelope from it passes.
    assert_eq!(
        g.check(c, "carol@example.org", &["dave@example.com"], t(7 * MIN)),
        GreyDecision::Pass(GreyReason::Ok)
    );

    g.save(&state).unwrap();
    assert!(!dir.path().join("greylist.context.tmp").exists());
    let mut g2 = Greylist::load(&state, cfg, Whitelist::default(), t(8 * MIN)).unwrap();
    assert_eq!(g2.len(), g.len());
    assert_eq!(
        g2.check(c, "alice@example.org", &["bob@example.com"], t(9 * MIN)),
        GreyDecision::Pass(GreyReason::Ok)
    );
    // A new network is still greylisted after the restart.
    assert_eq!(
        g2.check(ip("203.0.113.1"), "x@y", &["z@w"], t(9 * MIN)),
        GreyDecision::Defer(GreyReason::NewRecord)
    );
}

#[test]
fn stale_retry_starts_over_and_passed_records_expire() {
    let cfg = GreylistConfig::indimail_installer();
    let mut g = Greylist::new(cfg, Whitelist::default());
    let c = ip("192.0.2.1");
    assert!(matches!(
        g.check(c, "a@x", &["b@y"], t(0)),
        GreyDecision::Defer(GreyReason::NewRecord)
    ));
    // Installer window is 24 h: a retry after 25 h is stale and restarts the clock.
    let late = 25 * 3600;
    assert_eq!(
        g.check(c, "a@x", &["b@y"], t(late)),
        GreyDecision::Defer(GreyReason::Stale)
    );
    assert_eq!(
        g.check(c, "a@x", &["b@y"], t(late + MIN)),
        GreyDecision::Defer(GreyReason::TooEarly)
    );
    assert_eq!(
        g.check(c, "a@x", &["b@y"], t(late + 3 * MIN)),
        GreyDecision::Pass(GreyReason::GreyPassed)
    );
    // Passed for the timeout (30 days), then forgotten.
    let passed = late + 3 * MIN;
    assert!(matches!(
        g.check(c, "a@x", &["b@y"], t(passed + 29 * 86400)),
        GreyDecision::Pass(_)
    ));
    g.purge(t(passed + 31 * 86400));
    assert!(g.is_empty());
    assert_eq!(
        g.check(c, "a@x", &["b@y"], t(passed + 31 * 86400)),
        GreyDecision::Defer(GreyReason::NewRecord)
    );
}

#[test]
fn whitelist_forms() {
    let wl = Whitelist::parse(
        "# trusted\n10.0.0.0/8\n192.168.2.*\n192.168.[3-4].45\n2001:db8::/32\n203.0.113.9\n",
    )
    .unwrap();
    assert_eq!(wl.len(), 5);
    let mut g = Greylist::new(GreylistConfig::default(), wl);
    for a in [
        "10.200.1.1",
        "192.168.2.77",
        "192.168.3.45",
        "192.168.4.45",
        "2001:db8::1",
        "203.0.113.9",
        "::ffff:10.1.1.1",
    ] {
        assert_eq!(
            g.check(ip(a), "a@x", &["b@y"], t(0)),
            GreyDecision::Pass(GreyReason::WhitelistedIp),
            "{a}"
        );
    }
    for a in [
        "11.0.0.1",
        "192.168.5.45",
        "192.168.3.46",
        "2001:db9::1",
        "203.0.113.10",
    ] {
        assert!(
            matches!(
                g.check(ip(a), "a@x", &["b@y"], t(0)),
                GreyDecision::Defer(_)
            ),
            "{a}"
        );
    }
    let errs = Whitelist::parse("10.0.0.0/33\nnot-an-ip\n").unwrap_err();
    assert_eq!(
        errs.iter().map(|e| e.line).collect::<Vec<_>>(),
        vec![Some(1), Some(2)]
    );
    // From a file, and a missing file is empty.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("greylist.white"), "127.0.0.1\n").unwrap();
    assert_eq!(
        Whitelist::load(&dir.path().join("greylist.white"))
            .unwrap()
            .len(),
        1
    );
    assert!(Whitelist::load(&dir.path().join("nope"))
        .unwrap()
        .is_empty());
}

#[test]
fn null_sender_expires_immediately_after_passing() {
    let mut g = Greylist::new(GreylistConfig::default(), Whitelist::default());
    let c = ip("2001:db8:1:2::5");
    assert!(matches!(
        g.check(c, "", &["b@y"], t(0)),
        GreyDecision::Defer(_)
    ));
    assert_eq!(
        g.check(c, "", &["b@y"], t(10 * MIN)),
        GreyDecision::Pass(GreyReason::Bounce)
    );
    assert_eq!(g.len(), 0, "bounce triplet dropped");
    // The /64 is remembered though.
    assert_eq!(
        g.check(ip("2001:db8:1:2::6"), "x@y", &["z@w"], t(11 * MIN)),
        GreyDecision::Pass(GreyReason::Ok)
    );
}

#[test]
fn every_recipient_must_pass() {
    let mut g = Greylist::new(GreylistConfig::default(), Whitelist::default());
    let c = ip("192.0.2.1");
    assert!(matches!(
        g.check(c, "a@x", &["r1@y"], t(0)),
        GreyDecision::Defer(_)
    ));
    // r1 is ripe but r2 is new: the message is deferred, r2 recorded.
    assert_eq!(
        g.check(c, "a@x", &["r1@y", "r2@y"], t(6 * MIN)),
        GreyDecision::Defer(GreyReason::NewRecord)
    );
    assert_eq!(
        g.check(c, "a@x", &["r1@y", "r2@y"], t(12 * MIN)),
        GreyDecision::Pass(GreyReason::GreyPassed)
    );
}

#[test]
fn size_is_bounded() {
    let cfg = GreylistConfig {
        max_entries: 64,
        ..GreylistConfig::default()
    };
    let mut g = Greylist::new(cfg, Whitelist::default());
    for i in 0..10_000u32 {
        let a = IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, 0]);
        g.check(a, &format!("s{i}@x"), &["r@y"], t(u64::from(i)));
        assert!(g.len() <= 64);
    }
}

#[test]
fn corrupt_or_truncated_state_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("ctx");
    let cfg = GreylistConfig::default();
    let mut g = Greylist::new(cfg, Whitelist::default());
    g.check(ip("192.0.2.1"), "a@x", &["b@y"], t(0));
    g.save(&state).unwrap();
    let good = std::fs::read(&state).unwrap();
    for cut in [0, 5, good.len() / 2, good.len() - 1] {
        std::fs::write(&state, &good[..cut]).unwrap();
        assert!(
            matches!(
                Greylist::load(&state, cfg, Whitelist::default(), t(1)),
                Err(GreylistError::Corrupt { .. })
            ),
            "cut {cut}"
        );
    }
    let mut flipped = good.clone();
    flipped[12] ^= 1;
    std::fs::write(&state, &flipped).unwrap();
    assert!(Greylist::load(&state, cfg, Whitelist::default(), t(1)).is_err());
    std::fs::write(&state, &good).unwrap();
    assert_eq!(
        Greylist::load(&state, cfg, Whitelist::default(), t(1))
            .unwrap()
            .len(),
        1
    );
    // Missing file: empty state.
    assert!(
        Greylist::load(&dir.path().join("none"), cfg, Whitelist::default(), t(1))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn udp_request_layout() {
    let pkt = udp::encode_request(ip("192.0.2.1"), "a@x.org", &["b@y.com", "c@y.com"]);
    assert_eq!(
        pkt,
        b"I192.0.2.1\0Fa@x.org\0Tb@y.com\0Tc@y.com\0\0".to_vec()
    );
    let null = udp::encode_request(ip("::ffff:10.0.0.1"), "", &["p@q"]);
    assert_eq!(null, b"I10.0.0.1\0F\0Tp@q\0\0".to_vec());
    let v6 = udp::encode_request(ip("2001:db8::1"), "a@b", &["c@d"]);
    assert_eq!(v6, b"I2001:db8::1\0Fa@b\0Tc@d\0\0".to_vec());
    let req = udp::decode_request(&pkt).unwrap();
    assert_eq!(req.ip, "192.0.2.1");
    assert_eq!(req.sender, "a@x.org");
    assert_eq!(req.rcpts, vec!["b@y.com", "c@y.com"]);
    assert_eq!(udp::decode_request(&null).unwrap().sender, "");
    for bad in [
        &b""[..],
        b"X1\0Fa\0Tb\0\0",
        b"I1\0Fa\0Tb\0",
        b"I1\0Fa\0\0",
        b"I1\0Fa\0Tb\0\0junk",
        b"I1\0Ga\0Tb\0\0",
    ] {
        assert!(
            matches!(udp::decode_request(bad), Err(UdpError::BadRequest(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn udp_reply_layout() {
    let cases = [
        ([0u8, 1u8], GreyReason::NewRecord),
        ([0, 2], GreyReason::TooEarly),
        ([0, 3], GreyReason::Stale),
        ([0, 4], GreyReason::AddFailed),
        ([1, 1], GreyReason::WhitelistedIp),
        ([1, 2], GreyReason::Ok),
        ([1, 3], GreyReason::GreyPassed),
        ([1, 4], GreyReason::Bounce),
    ];
    for (bytes, reason) in cases {
        let r = udp::decode_reply(&bytes).unwrap();
        assert_eq!(r, GreyReply::new(reason));
        assert_eq!(r.accept, bytes[0] == 1);
        assert_eq!(udp::encode_reply(r), bytes);
    }
    let grey = udp::decode_reply(&[0, 1]).unwrap().verdict();
    assert_eq!(grey.to_string(), "450 4.7.1 try again later");
    assert!(udp::decode_reply(&[1, 3]).unwrap().verdict().is_accept());
    assert_eq!(
        udp::decode_reply(&[1, 9]).unwrap().reason,
        GreyReason::Other(true, 9)
    );
    assert_eq!(udp::decode_reply(&[1]), Err(UdpError::ShortReply(1)));
    assert_eq!(udp::decode_reply(&[2, 1]), Err(UdpError::BadStatus(2)));
    // The in-process decision maps onto the same wire reply.
    assert_eq!(
        udp::encode_reply(GreyDecision::Defer(GreyReason::TooEarly).reply()),
        [0, 2]
    );
    assert_eq!(
        udp::temporary_failure("Timeout").to_string(),
        "451 4.3.0 greylist temporary failure - Timeout"
    );
}

#[test]
fn greyip_values() {
    use std::net::SocketAddr;
    let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
    assert_eq!(udp::parse_greyip("").unwrap(), None);
    assert_eq!(
        udp::parse_greyip("127.0.0.1").unwrap(),
        Some(sa("127.0.0.1:1999"))
    );
    assert_eq!(
        udp::parse_greyip("10.1.1.1@2000").unwrap(),
        Some(sa("10.1.1.1:2000"))
    );
    assert_eq!(
        udp::parse_greyip("::1@1999").unwrap(),
        Some(sa("[::1]:1999"))
    );
    assert_eq!(udp::parse_greyip("@").unwrap(), Some(sa("127.0.0.1:1999")));
    assert!(udp::parse_greyip("nonsense@x").is_err());
}

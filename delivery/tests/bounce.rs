//! Bounces checked with a real MIME parser (mail-parser).

use delivery::bounce::{
    build, build_delay_warning, decide, BounceConfig, BounceDecision, FailedRecipient, Original,
    DOUBLE_BOUNCE_SENDER,
};
use mail_parser::{MessageParser, MimeHeaders, PartType};

fn original(size: usize) -> Vec<u8> {
    let mut m = b"From: alice@example.org\nTo: bob@example.com\nSubject: hello\nMessage-ID: <m1@example.org>\n\n".to_vec();
    while m.len() < size {
        m.extend_from_slice(b"some body text line\n");
    }
    m
}

fn failed() -> Vec<FailedRecipient> {
    vec![
        FailedRecipient {
            recipient: "bob@example.com".into(),
            reason: "127.0.0.1 said: 550 5.1.1 no such user".into(),
            remote_mta: Some("mx.example.com".into()),
        },
        FailedRecipient {
            recipient: "carol@example.com".into(),
            reason: "The user's mailbox is over quota\n\nsecond paragraph (#5.2.2)".into(),
            remote_mta: None,
        },
    ]
}

fn part_text(p: &mail_parser::MessagePart<'_>) -> String {
    match &p.body {
        PartType::Text(t) => t.to_string(),
        PartType::Binary(b) | PartType::InlineBinary(b) => String::from_utf8_lossy(b).into_owned(),
        PartType::Message(m) => String::from_utf8_lossy(m.raw_message()).into_owned(),
        other => format!("{other:?}"),
    }
}

#[test]
fn dsn_structure() {
    let cfg = BounceConfig::new("mx.example.net");
    let msg = original(500);
    let d = decide(&cfg, "alice@example.org");
    let b = build(
        &cfg,
        &d,
        Original {
            sender: "alice@example.org",
            arrival: 1_700_000_000,
            id: "12345",
            message: &msg,
        },
        &failed(),
        1_700_000_100,
    )
    .unwrap();
    assert_eq!(b.sender, "");
    assert_eq!(b.recipients, vec!["alice@example.org"]);
    let m = MessageParser::default().parse(&b.message).unwrap();
    assert_eq!(m.subject(), Some("failure notice"));
    let ct = m.content_type().unwrap();
    assert_eq!(
        (ct.c_type.as_ref(), ct.c_subtype.as_deref()),
        ("multipart", Some("report"))
    );
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    let human = m.body_text(0).unwrap();
    assert!(human.starts_with("Hi. This is the qmail-send program at mx.example.net."));
    assert!(human.contains("<bob@example.com>:\n127.0.0.1 said: 550 5.1.1 no such user"));
    assert!(human.contains("over quota\n/\nsecond paragraph"), "{human}");
    // parts: 0 = multipart root, 1 = text, 2 = delivery-status, 3 = original.
    let parts = &m.parts;
    assert_eq!(parts.len(), 4, "{parts:#?}");
    let ds = &parts[2];
    assert_eq!(
        ds.content_type().unwrap().c_subtype.as_deref(),
        Some("delivery-status")
    );
    let status = part_text(ds);
    assert!(status.contains("Reporting-MTA: dns; mx.example.net"));
    assert!(status.contains("Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000"));
    assert!(status.contains("Final-Recipient: rfc822; bob@example.com\nAction: failed\nStatus: 5.1.1\nRemote-MTA: dns; mx.example.com\nDiagnostic-Code: smtp; 550 5.1.1 no such user"), "{status}");
    assert!(status.contains("Final-Recipient: rfc822; carol@example.com\nAction: failed\nStatus: 5.2.2\nDiagnostic-Code: x-unix;"), "{status}");
    let orig = &parts[3];
    assert_eq!(
        orig.content_type().unwrap().c_subtype.as_deref(),
        Some("rfc822")
    );
    match &orig.body {
        PartType::Message(inner) => {
            assert_eq!(inner.subject(), Some("hello"));
            assert_eq!(inner.return_path().as_text(), Some("alice@example.org"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn truncation_and_header_only() {
    let mut cfg = BounceConfig::new("mx.example.net");
    cfg.bouncemaxbytes = 1000;
    let msg = original(20_000);
    let orig = Original {
        sender: "alice@example.org",
        arrival: 0,
        id: "1",
        message: &msg,
    };
    let b = build(&cfg, &decide(&cfg, "alice@example.org"), orig, &failed(), 0).unwrap();
    assert!(b.message.len() < 4000, "{}", b.message.len());
    let text = String::from_utf8_lossy(&b.message);
    assert!(text.contains("--- End of message stripped."));
    let m = MessageParser::default().parse(&b.message).unwrap();
    assert_eq!(m.parts.len(), 4);
    // Cut inside the header: text/rfc822-headers.
    cfg.bouncemaxbytes = 30;
    let b = build(&cfg, &decide(&cfg, "alice@example.org"), orig, &failed(), 0).unwrap();
    let m = MessageParser::default().parse(&b.message).unwrap();
    let last = m.parts.last().unwrap();
    assert_eq!(
        last.content_type().unwrap().c_subtype.as_deref(),
        Some("rfc822-headers")
    );
}

#[test]
fn double_bounce_and_drop() {
    let cfg = BounceConfig::new("mx.example.net");
    let msg = original(100);
    // The failed message was a bounce (null sender): double bounce to postmaster.
    let d = decide(&cfg, "");
    assert_eq!(
        d,
        BounceDecision::DoubleBounce {
            to: "postmaster@mx.example.net".into()
        }
    );
    let b = build(
        &cfg,
        &d,
        Original {
            sender: "",
            arrival: 0,
            id: "2",
            message: &msg,
        },
        &failed(),
        0,
    )
    .unwrap();
    assert_eq!(b.sender, DOUBLE_BOUNCE_SENDER);
    let m = MessageParser::default().parse(&b.message).unwrap();
    assert!(m.body_text(0).unwrap().contains("the bounce bounced"));
    // A failed double bounce is dropped.
    let d = decide(&cfg, DOUBLE_BOUNCE_SENDER);
    assert_eq!(d, BounceDecision::Drop);
    assert!(build(
        &cfg,
        &d,
        Original {
            sender: DOUBLE_BOUNCE_SENDER,
            arrival: 0,
            id: "3",
            message: &msg
        },
        &failed(),
        0
    )
    .is_none());
}

#[test]
fn delay_warning() {
    let cfg = BounceConfig::new("mx.example.net");
    let msg = original(100);
    let delayed = vec![FailedRecipient {
        recipient: "bob@example.com".into(),
        reason: "127.0.0.1 said: 451 4.3.0 later".into(),
        remote_mta: None,
    }];
    let b = build_delay_warning(
        &cfg,
        Original {
            sender: "alice@example.org",
            arrival: 0,
            id: "4",
            message: &msg,
        },
        &delayed,
        3600,
    )
    .unwrap();
    let m = MessageParser::default().parse(&b.message).unwrap();
    let status = part_text(&m.parts[2]);
    assert!(
        status.contains("Action: delayed\nStatus: 4.3.0"),
        "{status}"
    );
    assert!(build_delay_warning(
        &cfg,
        Original {
            sender: "",
            arrival: 0,
            id: "5",
            message: &msg
        },
        &delayed,
        0
    )
    .is_none());
}

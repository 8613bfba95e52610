//! IndiMail's access controls over a real socket: each control with an
//! accepted and a refused transcript, checking code and enhanced code.

mod common;

use common::*;

fn home_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let h = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(h.path().join("control")).unwrap();
    std::fs::create_dir_all(h.path().join("tcp")).unwrap();
    // Ordinary (non-relay) clients, local domain example.com.
    std::fs::write(h.path().join("tcp/tcp.smtp"), ":allow\n").unwrap();
    std::fs::write(h.path().join("control/rcpthosts"), "example.com\n").unwrap();
    for (name, text) in files {
        std::fs::write(h.path().join("control").join(name), text).unwrap();
    }
    h
}

fn transaction(s: &Server, from: &str, to: &str, body: &str) -> Vec<(u16, String)> {
    transaction_on(Client::connect(s.smtp), from, to, body)
}

fn transaction_on(mut c: Client, from: &str, to: &str, body: &str) -> Vec<(u16, String)> {
    let mut out = vec![c.reply()];
    out.push(c.cmd("EHLO client.example.org"));
    let mail = c.cmd(&format!("MAIL FROM:<{from}>"));
    let ok = mail.0 == 250;
    out.push(mail);
    if !ok {
        return out;
    }
    let rcpt = c.cmd(&format!("RCPT TO:<{to}>"));
    let ok = rcpt.0 == 250;
    out.push(rcpt);
    if !ok {
        return out;
    }
    out.push(c.cmd("DATA"));
    c.send(format!("Subject: t\r\n\r\n{body}\r\n.\r\n").as_bytes());
    out.push(c.reply());
    c.cmd("QUIT");
    out
}

fn last(t: &[(u16, String)]) -> (u16, String) {
    t.last().cloned().unwrap()
}

#[test]
fn badmailfrom_badrcptto_accesslist_bodycheck_envrules_blackhole() {
    let h = home_with(&[
        ("badmailfrom", "spammer@bad.example\n@worse.example\n"),
        ("badrcptto", "noone@example.com\n"),
        (
            "accesslist",
            "from:intern@partner.example:boss@example.com\n",
        ),
        ("bodycheck", "buy now:spam words\n"),
        ("from.envrules", "small@example.org:DATABYTES=100\n"),
        ("blackholedsender", "void@sink.example\n"),
    ]);
    let s = Server::start_with(
        h.path(),
        "uring",
        &[("BODYCHECK", "bodycheck"), ("INDIMAIL_NO_DELIVERY", "1")],
    );
    // badmailfrom: exact and @domain; others accepted.
    let t = transaction(&s, "spammer@bad.example", "a@example.com", "x");
    assert_eq!(last(&t).0, 553, "{t:?}");
    assert!(last(&t).1.contains("5.7.1"), "{t:?}");
    assert_eq!(
        last(&transaction(&s, "x@worse.example", "a@example.com", "x")).0,
        553
    );
    assert_eq!(
        last(&transaction(&s, "fine@good.example", "a@example.com", "x")).0,
        250
    );
    // badrcptto.
    let t = transaction(&s, "fine@good.example", "noone@example.com", "x");
    assert_eq!(last(&t).0, 553, "{t:?}");
    // accesslist: intern may only mail boss.
    assert_eq!(
        last(&transaction(
            &s,
            "intern@partner.example",
            "boss@example.com",
            "x"
        ))
        .0,
        250
    );
    let t = transaction(&s, "intern@partner.example", "other@example.com", "x");
    assert_eq!(last(&t).0, 553, "{t:?}");
    // bodycheck at end of DATA.
    let t = transaction(&s, "fine@good.example", "a@example.com", "please buy now");
    assert_eq!(last(&t).0, 554, "{t:?}");
    assert!(last(&t).1.contains("5.7.1"), "{t:?}");
    // envrules DATABYTES=100 for one sender only.
    let long = "z".repeat(70) + "\r\n" + &"z".repeat(70);
    let t = transaction(&s, "small@example.org", "a@example.com", &long);
    assert_eq!(last(&t).0, 552, "{t:?}");
    assert_eq!(
        last(&transaction(&s, "big@example.org", "a@example.com", &long)).0,
        250
    );
    // blackholedsender: told ok, nothing stored.
    let before = queue_list(h.path()).len();
    let t = transaction(&s, "void@sink.example", "a@example.com", "x");
    assert_eq!(last(&t).0, 250, "{t:?}");
    assert_eq!(queue_list(h.path()).len(), before);
}

#[test]
fn badip_refuses_at_connect() {
    let h = home_with(&[("badip", "127.0.0.1\n")]);
    let s = Server::start_with(
        h.path(),
        "epoll",
        &[("BADIPCHECK", "1"), ("INDIMAIL_NO_DELIVERY", "1")],
    );
    let mut c = Client::connect(s.smtp);
    let (code, text) = c.reply();
    assert_eq!(code, 421, "{text}");
}

#[test]
fn badmailfrom_change_applies_without_restart() {
    let h = home_with(&[]);
    let s = Server::start(h.path(), "uring");
    assert_eq!(
        last(&transaction(&s, "late@bad.example", "a@example.com", "x")).0,
        250
    );
    std::fs::write(h.path().join("control/badmailfrom"), "@bad.example\n").unwrap();
    wait_until(20, "badmailfrom reloaded", || {
        last(&transaction(&s, "late@bad.example", "a@example.com", "x")).0 == 553
    });
}

#[test]
fn badhelo_refuses_the_transaction() {
    let h = home_with(&[("badhelo", "evil.example\n")]);
    let s = Server::start_with(
        h.path(),
        "uring",
        &[("BADHELOCHECK", "1"), ("INDIMAIL_NO_DELIVERY", "1")],
    );
    let mut c = Client::connect(s.smtp);
    c.reply();
    c.cmd("HELO evil.example");
    let (code, text) = c.cmd("MAIL FROM:<a@b.example>");
    assert_eq!(code / 100, 5, "{text}");
    let mut c = Client::connect(s.smtp);
    c.reply();
    c.cmd("HELO good.example");
    assert_eq!(c.cmd("MAIL FROM:<a@b.example>").0, 250);
}

#[test]
fn hostaccess_relaymailfrom_goodrcptto_patterns_blackholedrcpt_qregex() {
    // hostaccess: 127.0.0.* may send only as ok.example (IndiMail's reading: an address
    // listed for some domain is bound to it; PARANOID would also bind listed domains).
    let h = home_with(&[(
        "hostaccess",
        "corp.example:10.1.1-20.*\nok.example:127.0.0.*\n",
    )]);
    let s = Server::start_with(h.path(), "uring", &[("INDIMAIL_NO_DELIVERY", "1")]);
    let t = transaction(&s, "ceo@corp.example", "a@example.com", "x");
    assert_eq!(last(&t).0, 553, "{t:?}");
    assert!(last(&t).1.contains("5.7.1"), "{t:?}");
    assert_eq!(
        last(&transaction(&s, "ceo@ok.example", "a@example.com", "x")).0,
        250
    );
    drop(s);

    let h = home_with(&[
        ("relaymailfrom", "@partner.example\n"),
        ("badmailpatterns", "*@*.biz\n"),
        ("badrcptpatterns", "trap-*@example.com\n"),
        ("goodrcptto", "trap-vip@example.com\n"),
        ("blackholedrcpt", "hole@example.com\n"),
    ]);
    let s = Server::start_with(h.path(), "epoll", &[("INDIMAIL_NO_DELIVERY", "1")]);
    // relaymailfrom: this sender may relay; others may not.
    assert_eq!(
        last(&transaction(
            &s,
            "x@partner.example",
            "far@away.example",
            "x"
        ))
        .0,
        250
    );
    let t = transaction(&s, "x@other.example", "far@away.example", "x");
    assert_eq!(last(&t).0, 553, "{t:?}");
    // badmailpatterns.
    let t = transaction(&s, "deal@cheap.biz", "a@example.com", "x");
    assert_eq!(last(&t).0, 553, "{t:?}");
    assert_eq!(
        last(&transaction(&s, "deal@cheap.example", "a@example.com", "x")).0,
        250
    );
    // badrcptpatterns, with goodrcptto overriding.
    let t = transaction(&s, "a@good.example", "trap-1@example.com", "x");
    assert_eq!(last(&t).0, 553, "{t:?}");
    assert_eq!(
        last(&transaction(
            &s,
            "a@good.example",
            "trap-vip@example.com",
            "x"
        ))
        .0,
        250
    );
    // blackholedrcpt: 250, nothing stored.
    let before = queue_list(h.path()).len();
    let t = transaction(&s, "a@good.example", "hole@example.com", "x");
    assert_eq!(last(&t).0, 250, "{t:?}");
    assert_eq!(queue_list(h.path()).len(), before);
    drop(s);

    // QREGEX=1: list lines are regular expressions.
    let h = home_with(&[("badmailfrom", "^spam[0-9]+@\n")]);
    let s = Server::start_with(
        h.path(),
        "uring",
        &[("QREGEX", "1"), ("INDIMAIL_NO_DELIVERY", "1")],
    );
    let t = transaction(&s, "spam42@any.example", "a@example.com", "x");
    assert_eq!(last(&t).0, 553, "{t:?}");
    assert_eq!(
        last(&transaction(&s, "spam@any.example", "a@example.com", "x")).0,
        250
    );
}

#[test]
fn chkrcptdomains_limits_recipient_checks() {
    let h = home_with(&[("chkrcptdomains", "@example.com\n")]);
    for d in ["example.com", "example.net"] {
        let (c, _, e) = indimail(h.path(), &["domain", "add", d]);
        assert_eq!(c, 0, "{e}");
    }
    std::fs::write(
        h.path().join("control/rcpthosts"),
        "example.com\nexample.net\n",
    )
    .unwrap();
    let s = Server::start_with(h.path(), "uring", &[("INDIMAIL_NO_DELIVERY", "1")]);
    // Checked domain: an unknown user is refused at RCPT.
    let t = transaction(&s, "a@good.example", "nobody@example.com", "x");
    assert_eq!(last(&t).0, 550, "{t:?}");
    assert!(last(&t).1.contains("5.1.1"), "{t:?}");
    // Unlisted domain: not checked, accepted.
    assert_eq!(
        last(&transaction(
            &s,
            "a@good.example",
            "nobody@example.net",
            "x"
        ))
        .0,
        250
    );
}

#[test]
fn compiled_cdb_control_files_are_read() {
    let h = home_with(&[]);
    for (name, keys) in [
        ("morercpthosts.cdb", &["example.org"][..]),
        ("badmailfrom.cdb", &["spammer@bad.example"][..]),
    ] {
        let path = h.path().join("control").join(name);
        let mut w = cdb::CDBWriter::create(path.display().to_string()).unwrap();
        for k in keys {
            w.add(k.as_bytes(), b"").unwrap();
        }
        w.finish().unwrap();
    }
    let s = Server::start_with(h.path(), "uring", &[("INDIMAIL_NO_DELIVERY", "1")]);
    // morercpthosts.cdb adds example.org to the accepted domains.
    assert_eq!(
        last(&transaction(&s, "a@good.example", "x@example.org", "x")).0,
        250
    );
    let t = transaction(&s, "a@good.example", "x@elsewhere.example", "x");
    assert_eq!(last(&t).0, 553, "{t:?}");
    // badmailfrom.cdb.
    let t = transaction(&s, "spammer@bad.example", "x@example.org", "x");
    assert_eq!(last(&t).0, 553, "{t:?}");
    assert!(s.log().contains("rule=badmailfrom.cdb:1"), "{}", s.log());
}

/// auth.envrules applies at DATA to relay (and authenticated) clients only:
/// `:DATABYTES=100` refuses a relay client's long message with 552 and
/// leaves an ordinary client's alone.
#[test]
fn auth_envrules_apply_to_relay_clients() {
    let h = home_with(&[("auth.envrules", ":DATABYTES=100\n")]);
    std::fs::write(
        h.path().join("tcp/tcp.smtp"),
        "127.0.0.5:allow,RELAYCLIENT=\"\"\n:allow\n",
    )
    .unwrap();
    let s = Server::start(h.path(), "uring");
    let long = "z".repeat(70) + "\r\n" + &"z".repeat(70);
    let relay = Client::connect_from([127, 0, 0, 5], s.smtp);
    let t = transaction_on(relay, "a@example.org", "x@far.example", &long);
    assert_eq!(last(&t).0, 552, "{t:?}");
    let t = transaction(&s, "a@example.org", "a@example.com", &long);
    assert_eq!(last(&t).0, 250, "{t:?}");
    assert!(
        s.log().contains("auth.envrules user=- set=DATABYTES=100"),
        "{}",
        s.log()
    );
}

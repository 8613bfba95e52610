//! An IndiMail operator's installation acting as it did (issue 21), end to end
//! with real clients: quotas and the BOUNCE_MAIL flag.

mod common;

use common::*;

fn rcpt(s: &Server, to: &str) -> (u16, String) {
    let mut c = Client::connect(s.smtp);
    c.reply();
    c.cmd("EHLO client.example.org");
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").0, 250);
    let r = c.cmd(&format!("RCPT TO:<{to}>"));
    c.cmd("QUIT");
    r
}

/// Over quota (spec 4.7): the delivery that finds the mailbox full bounces
/// and sets the user's BOUNCE_MAIL flag, so RCPT then answers 552 5.2.2 (the
/// sender's own server bounces, nothing is accepted only to be bounced
/// here); the user's next login (POP3, poplib over STLS) clears the flag.
#[test]
fn over_quota_user_gets_552_at_rcpt_until_login() {
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    assert_eq!(indimail(home, &["domain", "add", "example.com"]).0, 0);
    let (c, _, e) = indimail(
        home,
        &[
            "user",
            "add",
            "full@example.com",
            "--password",
            "Pop-Pass-3",
            "--quota",
            "2000",
        ],
    );
    assert_eq!(c, 0, "{e}");
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let (s, ports) = Server::start_services(home, "uring", &[("smtp", any), ("pop3", any)], &[]);
    assert_eq!(rcpt(&s, "full@example.com").0, 250);
    let big = format!(
        "Subject: big\r\n\r\n{}.\r\n",
        ("z".repeat(70) + "\r\n").repeat(50)
    );
    let (code, text) = send_message(
        s.smtp,
        "a@example.org",
        &["full@example.com"],
        big.as_bytes(),
    );
    assert_eq!(code, 250, "{text}");
    wait_until(30, "BOUNCE_MAIL set", || {
        s.log()
            .contains("full@example.com over quota: BOUNCE_MAIL set")
    });
    let (c, out, _) = indimail(home, &["user", "info", "full@example.com"]);
    assert_eq!(c, 0);
    assert!(out.contains("bounce-mail"), "{out}");
    wait_until(30, "552 at RCPT", || {
        let (code, text) = rcpt(&s, "full@example.com");
        code == 552 && text.contains("5.2.2")
    });
    let script = format!(
        r#"
import poplib, ssl
p = poplib.POP3("127.0.0.1", {port}, timeout=20)
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
p.stls(ctx)
p.user("full@example.com"); p.pass_("Pop-Pass-3")
p.quit()
"#,
        port = ports["pop3"].port()
    );
    run_python(&script, &s.log());
    wait_until(30, "RCPT accepted again after the login", || {
        rcpt(&s, "full@example.com").0 == 250
    });
    let (_, out, _) = indimail(home, &["user", "info", "full@example.com"]);
    assert!(!out.contains("bounce-mail"), "{out}");
}

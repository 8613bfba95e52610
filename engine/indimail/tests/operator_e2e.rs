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

fn sendmail(home: &std::path::Path, rcpt: &str, message: &[u8]) {
    use std::io::Write;
    let mut child = std::process::Command::new(bin())
        .args(["sendmail", "-f", "robot@example.org", rcpt])
        .env("INDIMAIL_HOME", home)
        .env_remove("QUEUEDIR")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(message).unwrap();
    assert!(child.wait().unwrap().success());
}

/// The queue's line processing acts on every way into the queue (spec 1.7,
/// 1.9): mail from `sendmail` loses its `removeheaders` fields, has its
/// `logheaders` logged, and with `quarantine` set goes to the quarantine
/// address only, the original recipients kept in `X-Quarantine-ID:`. Invoked
/// as `qmail-nullqueue`, the binary takes a message and keeps nothing.
#[test]
fn queue_rules_apply_to_sendmail_and_nullqueue_discards() {
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    let boxes = setup_users(home, &["ann", "jail"]);
    std::fs::create_dir_all(home.join("control")).unwrap();
    std::fs::write(home.join("control/removeheaders"), "X-Secret\n").unwrap();
    std::fs::write(home.join("control/logheaders"), "Subject\n").unwrap();
    let s = Server::start_delivering(home, "uring");
    sendmail(
        home,
        "ann@example.com",
        b"Subject: cron report\nX-Secret: do not keep\n\nbody\n",
    );
    wait_until(30, "delivered to ann", || {
        maildir_files(&boxes[0]).len() == 1
    });
    let m = std::fs::read_to_string(&maildir_files(&boxes[0])[0]).unwrap();
    assert!(!m.contains("X-Secret"), "{m}");
    assert!(m.contains("Subject: cron report"), "{m}");
    wait_until(10, "logheaders", || {
        s.log().contains("Subject: cron report")
    });
    // quarantine, changed while the server runs (reloaded for injected mail too).
    std::fs::write(home.join("control/quarantine"), "jail@example.com\n").unwrap();
    wait_until(20, "reload", || s.log().contains("configuration reloaded"));
    sendmail(home, "ann@example.com", b"Subject: suspicious\n\nbody\n");
    wait_until(30, "quarantined", || maildir_files(&boxes[1]).len() == 1);
    let q = std::fs::read_to_string(&maildir_files(&boxes[1])[0]).unwrap();
    assert!(
        q.contains("X-Quarantine-ID: jail@example.com,ann@example.com"),
        "{q}"
    );
    assert_eq!(maildir_files(&boxes[0]).len(), 1, "ann got nothing more");

    // qmail-nullqueue: exit 0, nothing queued.
    let bindir = tempfile::tempdir().unwrap();
    let nq = bindir.path().join("qmail-nullqueue");
    std::os::unix::fs::symlink(bin(), &nq).unwrap();
    let (reader, mut writer) = std::io::pipe().unwrap();
    use std::io::Write;
    writer
        .write_all(b"Fa@example.org\0Tann@example.com\0\0")
        .unwrap();
    drop(writer);
    let mut child = std::process::Command::new(&nq)
        .env("INDIMAIL_HOME", home)
        .stdin(std::process::Stdio::piped())
        .stdout(reader)
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Subject: void\n\nx\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert!(queue_list(home).is_empty(), "{:?}", queue_list(home));
}

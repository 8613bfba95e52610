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
    quota_user(home, "full@example.com", "Pop-Pass-3", "2000");
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
    sendmail_from(home, "robot@example.org", rcpt, message)
}

fn sendmail_from(home: &std::path::Path, from: &str, rcpt: &str, message: &[u8]) {
    use std::io::Write;
    let mut child = std::process::Command::new(bin())
        .args(["sendmail", "-f", from, rcpt])
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

/// Waits for the `n`th message in `maildir` and checks that it was
/// forwarded there: it starts with the return path and both hops'
/// `Delivered-To:` lines (the mailbox's, then the forwarding address's).
fn wait_forwarded(maildir: &std::path::Path, n: usize, lines: [&str; 3]) -> String {
    wait_until(30, "forwarded copy", || maildir_files(maildir).len() == n);
    let m = std::fs::read_to_string(&maildir_files(maildir)[n - 1]).unwrap();
    let head = format!(
        "Return-Path: <{}>\nDelivered-To: {}\nDelivered-To: {}\n",
        lines[0], lines[1], lines[2]
    );
    assert!(m.starts_with(&head), "{m}");
    m
}

fn domain_mod_handler(home: &std::path::Path, handler: &str) {
    let (c, out, e) = indimail(
        home,
        &["domain", "mod", "example.com", "--handler", handler],
    );
    assert_eq!(c, 0, "{e}");
    assert!(out.contains(&format!("handler: {handler}")), "{out}");
}

/// The domain's `.qmail-default` is its catch-all (spec 4.6), as `domain
/// mod --handler` (vmoddomain -h) writes it: an address forwards, a Maildir
/// or a user's home takes the mail, `delete` discards it, and the default
/// `bounce-no-mailbox` refuses it at RCPT and bounces it at delivery. RCPT
/// answers 250 for any address of a catch-all domain.
#[test]
fn catch_all_domain_delivers_discards_and_bounces() {
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    let boxes = setup_users(home, &["ann", "catch"]);
    let s = Server::start_delivering(home, "uring");
    let msg = b"Subject: to nobody in particular\r\n\r\nbody\r\n.\r\n";

    // An address.
    domain_mod_handler(home, "catch@example.com");
    assert_eq!(rcpt(&s, "anything@example.com").0, 250);
    let (code, text) = send_message(s.smtp, "a@example.org", &["anything@example.com"], msg);
    assert_eq!(code, 250, "{text}");
    wait_forwarded(
        &boxes[1],
        1,
        ["a@example.org", "catch@example.com", "anything@example.com"],
    );

    // A user's home (vdelivermail adds /Maildir/), and a Maildir path.
    let catch_home = boxes[1].parent().unwrap().to_str().unwrap().to_string();
    domain_mod_handler(home, &catch_home);
    send_message(s.smtp, "a@example.org", &["who-ever@example.com"], msg);
    wait_until(30, "delivered to the catch home", || {
        maildir_files(&boxes[1]).len() == 2
    });
    let other = home.join("catchall/Maildir");
    domain_mod_handler(home, other.to_str().unwrap());
    send_message(s.smtp, "a@example.org", &["third@example.com"], msg);
    wait_until(30, "delivered to the Maildir made for it", || {
        maildir_files(&other).len() == 1
    });
    let m = std::fs::read_to_string(&maildir_files(&other)[0]).unwrap();
    assert!(m.contains("Delivered-To: third@example.com\n"), "{m}");

    // delete: accepted, delivered nowhere.
    domain_mod_handler(home, "delete");
    assert_eq!(rcpt(&s, "void@example.com").0, 250);
    send_message(s.smtp, "a@example.org", &["void@example.com"], msg);
    wait_until(30, "discarded", || {
        s.log()
            .contains("discarded (the domain's .qmail-default says delete)")
    });
    wait_until(10, "queue drained", || queue_list(home).is_empty());
    assert_eq!(maildir_files(&boxes[1]).len(), 2);
    assert_eq!(maildir_files(&other).len(), 1);

    // domain:ip:port: handed to that SMTP server (a capture sink here).
    let (mut cap, port, capdir) = capture("ok");
    domain_mod_handler(home, &format!("example.com:127.0.0.1:{port}"));
    send_message(s.smtp, "a@example.org", &["elsewhere@example.com"], msg);
    wait_until(30, "relayed to the sink", || {
        captured(capdir.path()).len() == 1
    });
    let (env, _) = captured(capdir.path()).pop().unwrap();
    assert_eq!(env, "a@example.org\nelsewhere@example.com\n", "{env}");
    let _ = cap.kill();

    // bounce-no-mailbox: 550 5.1.1 at RCPT; injected mail bounces.
    domain_mod_handler(home, "bounce-no-mailbox");
    let (code, text) = rcpt(&s, "nobody@example.com");
    assert!(code == 550 && text.contains("5.1.1"), "{code} {text}");
    assert_eq!(rcpt(&s, "ann@example.com").0, 250);
    sendmail_from(
        home,
        "ann@example.com",
        "nobody@example.com",
        b"Subject: lost\n\nx\n",
    );
    wait_until(30, "bounce to ann", || maildir_files(&boxes[0]).len() == 1);
    let b = std::fs::read_to_string(&maildir_files(&boxes[0])[0]).unwrap();
    assert!(b.contains("no mailbox here by that name"), "{b}");

    // A file that cannot be followed defers (and says why), never bounces.
    let qd = home.join("domains/example.com/.qmail-default");
    std::fs::write(&qd, "| /usr/sbin/vdelivermail '' not a handler\n").unwrap();
    let (code, _) = rcpt(&s, "nobody@example.com");
    assert_eq!(code, 451);
}

/// A user's `.qmail` (dot-qmail(5)): a forward to another mailbox, its own
/// Maildir, and a program run with qmail-local's environment and the
/// message on its standard input; exit 99 ends the instructions with
/// success.
#[test]
fn user_dot_qmail_forwards_delivers_and_runs_programs() {
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    let boxes = setup_users(home, &["ann", "bob"]);
    let ann_home = boxes[0].parent().unwrap().to_path_buf();
    std::fs::write(
        ann_home.join(".qmail"),
        "# ann's instructions\n&bob@example.com\n./Maildir/\n|env > prog.env; cat > prog.msg\n",
    )
    .unwrap();
    let s = Server::start_delivering(home, "epoll");
    let (code, text) = send_message(
        s.smtp,
        "sender@example.org",
        &["ann@example.com"],
        b"Subject: for ann\r\n\r\nhello ann\r\n.\r\n",
    );
    assert_eq!(code, 250, "{text}");
    wait_until(30, "ann's copy", || maildir_files(&boxes[0]).len() == 1);
    let fwd = wait_forwarded(
        &boxes[1],
        1,
        ["sender@example.org", "bob@example.com", "ann@example.com"],
    );
    assert!(fwd.contains("hello ann"), "{fwd}");
    let envf = std::fs::read_to_string(ann_home.join("prog.env")).unwrap();
    for want in [
        "SENDER=sender@example.org\n",
        "RECIPIENT=ann@example.com\n",
        "LOCAL=ann\n",
        "HOST=example.com\n",
        "EXT=\n",
        "DTLINE=Delivered-To: ann@example.com\n",
        "RPLINE=Return-Path: <sender@example.org>\n",
        "USER=ann@example.com\n",
        &format!("HOME={}\n", ann_home.display()),
    ] {
        assert!(envf.contains(want), "{want:?} missing from:\n{envf}");
    }
    let msg = std::fs::read_to_string(ann_home.join("prog.msg")).unwrap();
    assert!(
        msg.contains("Subject: for ann") && msg.contains("hello ann"),
        "{msg}"
    );
    wait_until(10, "queue drained", || queue_list(home).is_empty());

    // Exit 99: success, the lines after it are not followed.
    std::fs::write(ann_home.join(".qmail"), "|exit 99\n&bob@example.com\n").unwrap();
    send_message(
        s.smtp,
        "sender@example.org",
        &["ann@example.com"],
        b"x\r\n.\r\n",
    );
    wait_until(30, "delivered", || queue_list(home).is_empty());
    assert_eq!(maildir_files(&boxes[1]).len(), 1, "no forward after 99");
    // Exit 100: a bounce (to a local sender here).
    std::fs::write(ann_home.join(".qmail"), "|echo no thanks; exit 100\n").unwrap();
    send_message(
        s.smtp,
        "bob@example.com",
        &["ann@example.com"],
        b"x\r\n.\r\n",
    );
    wait_until(30, "bounce to bob", || maildir_files(&boxes[1]).len() == 2);
    // File names do not sort by arrival: look at both.
    let texts: Vec<String> = maildir_files(&boxes[1])
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    assert!(texts.iter().any(|b| b.contains("no thanks")), "{texts:?}");
    // A bad line defers, with the file and line in the log.
    std::fs::write(ann_home.join(".qmail"), "./Maildir/\n&\n").unwrap();
    send_message(
        s.smtp,
        "sender@example.org",
        &["ann@example.com"],
        b"x\r\n.\r\n",
    );
    wait_until(30, "deferral logged", || {
        s.log().contains(&format!(
            "bad delivery instruction in {}, line 2",
            ann_home.join(".qmail").display()
        ))
    });
    assert_eq!(maildir_files(&boxes[0]).len(), 1);
}

/// Extension addresses with `QMAIL_EXT` (spec 4.6): `user-ext@domain`
/// belongs to `user`; its `.qmail-ext` file (qmail-local's names, with the
/// `-default` fallbacks) decides, else it lands in the user's Maildir. RCPT
/// answers 250 for both; unknown users still get 550.
#[test]
fn extension_addresses_reach_dot_qmail_ext_or_the_mailbox() {
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    let boxes = setup_users(home, &["carol"]);
    let carol_home = boxes[0].parent().unwrap().to_path_buf();
    let news = carol_home.join("News");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(news.join(sub)).unwrap();
    }
    std::fs::write(carol_home.join(".qmail-news"), "./News/\n").unwrap();
    std::fs::write(
        carol_home.join(".qmail-list-default"),
        "|echo \"$EXT $EXT2\" > list.ext\n",
    )
    .unwrap();
    let (s, _) = Server::start_services(
        home,
        "uring",
        &[("smtp", std::net::SocketAddr::from(([127, 0, 0, 1], 0)))],
        &[("QMAIL_EXT", "1")],
    );
    for a in [
        "carol-news@example.com",
        "carol-misc@example.com",
        "carol-list-rust@example.com",
    ] {
        assert_eq!(rcpt(&s, a).0, 250, "{a}");
    }
    assert_eq!(rcpt(&s, "nobody-news@example.com").0, 550);
    let (code, text) = send_message(
        s.smtp,
        "a@example.org",
        &[
            "carol-news@example.com",
            "Carol-Misc@example.com",
            "carol-list-rust@example.com",
        ],
        b"Subject: ext\r\n\r\nx\r\n.\r\n",
    );
    assert_eq!(code, 250, "{text}");
    wait_until(30, "news folder", || maildir_files(&news).len() == 1);
    wait_until(30, "mailbox", || maildir_files(&boxes[0]).len() == 1);
    wait_until(30, "list program", || carol_home.join("list.ext").exists());
    let m = std::fs::read_to_string(&maildir_files(&news)[0]).unwrap();
    assert!(m.contains("Delivered-To: carol-news@example.com\n"), "{m}");
    let ext = std::fs::read_to_string(carol_home.join("list.ext")).unwrap();
    assert_eq!(ext.trim(), "list-rust rust");
}

/// Quota warnings and the over-quota hook (spec 4.7): with QUOTAWARN1=50 the
/// delivery that takes a 10,000-byte mailbox past half full also leaves a
/// warning in it; the one that does not fit runs OVERQUOTA_CMD with the
/// Maildir, the message size, the usage and the quota. With
/// control/holdoverquota the refused message is deferred, not bounced.
#[test]
fn quota_warning_and_overquota_cmd() {
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    quota_user(home, "ann@example.com", "Pw-12345", "10000");
    let maildir = maildir_of(home, "ann@example.com");
    let hook_out = home.join("hook.out");
    let hook = home.join("overquota.sh");
    std::fs::write(
        &hook,
        format!("#!/bin/sh\necho \"$@\" >> {}\n", hook_out.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(home.join("control")).unwrap();
    std::fs::write(home.join("control/holdoverquota"), "").unwrap();
    let s = Server::start_with(
        home,
        "uring",
        &[
            ("QUOTAWARN1", "50"),
            ("OVERQUOTA_CMD", &*hook.display().to_string()),
        ],
    );
    let body = |lines: usize| {
        format!(
            "Subject: fill\r\n\r\n{}.\r\n",
            ("z".repeat(70) + "\r\n").repeat(lines)
        )
    };
    let send = |lines: usize| {
        let (code, text) = send_message(
            s.smtp,
            "a@example.org",
            &["ann@example.com"],
            body(lines).as_bytes(),
        );
        assert_eq!(code, 250, "{text}");
    };
    send(40); // ~3 KB: 30 %
    wait_until(30, "first delivery", || maildir_files(&maildir).len() == 1);
    send(40); // ~6 KB: past 50 %
    wait_until(30, "second delivery and the warning", || {
        maildir_files(&maildir).len() == 3
    });
    let texts: Vec<String> = maildir_files(&maildir)
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("Subject: Warning: your mailbox is 50% full")),
        "{texts:?}"
    );
    send(80); // ~6 KB more: does not fit
              // The shell creates the file before it writes the line: wait for the line.
    wait_until(30, "OVERQUOTA_CMD ran", || {
        std::fs::read_to_string(&hook_out).is_ok_and(|t| t.ends_with('\n'))
    });
    let args = std::fs::read_to_string(&hook_out).unwrap();
    let words: Vec<&str> = args.split_whitespace().collect();
    assert_eq!(words.len(), 5, "{args}");
    assert_eq!(words[0], maildir.display().to_string());
    assert_eq!(words[4], "10000S", "{args}");
    // holdoverquota: deferred and still queued, not bounced.
    wait_until(30, "deferred", || s.log().contains("over quota"));
    assert_eq!(queue_list(home).len(), 1, "{}", s.log());
}

/// A mailbox of example.com (added with the domain when needed) with a quota.
fn quota_user(home: &std::path::Path, email: &str, password: &str, quota: &str) {
    let (c, _, e) = indimail(home, &["domain", "add", "example.com"]);
    assert!(c == 0 || e.contains("exists"), "{e}");
    let args = [
        "user",
        "add",
        email,
        "--password",
        password,
        "--quota",
        quota,
    ];
    let (c, _, e) = indimail(home, &args);
    assert_eq!(c, 0, "{e}");
}

/// qmail-local's alias files in the domain directory (vpopmail and IndiMail
/// installations keep forwards there): `.qmail-info:desk` takes
/// `info.desk@example.com` (RCPT 250) and forwards it to a mailbox.
#[test]
fn domain_directory_dot_qmail_files_take_their_address() {
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    let boxes = setup_users(home, &["ann"]);
    let (_, info, _) = indimail(home, &["domain", "info", "example.com"]);
    let ddir = info
        .lines()
        .find_map(|l| l.strip_prefix("dir: "))
        .expect("domain dir")
        .trim()
        .to_string();
    std::fs::write(
        std::path::Path::new(&ddir).join(".qmail-info:desk"),
        "&ann@example.com\n",
    )
    .unwrap();
    let s = Server::start_delivering(home, "uring");
    assert_eq!(rcpt(&s, "info.desk@example.com").0, 250);
    let msg = b"Subject: to the desk\r\n\r\nbody\r\n.\r\n";
    let (code, text) = send_message(s.smtp, "a@example.org", &["info.desk@example.com"], msg);
    assert_eq!(code, 250, "{text}");
    wait_forwarded(
        &boxes[0],
        1,
        ["a@example.org", "ann@example.com", "info.desk@example.com"],
    );
    // `.qmail-list-default` takes every `list-...` address (qmail-local's
    // order: `.qmail-list-news`, then `.qmail-list-default`), before any
    // mailbox of that name.
    std::fs::write(
        std::path::Path::new(&ddir).join(".qmail-list-default"),
        "&ann@example.com\n",
    )
    .unwrap();
    assert_eq!(rcpt(&s, "list-news@example.com").0, 250);
    let (code, text) = send_message(s.smtp, "a@example.org", &["list-news@example.com"], msg);
    assert_eq!(code, 250, "{text}");
    wait_forwarded(
        &boxes[0],
        2,
        ["a@example.org", "ann@example.com", "list-news@example.com"],
    );
}

/// vdelivermail reads only active users (the `indimail` table): mail for an
/// inactive user, accepted because CHECKRECIPIENT is off, goes to the
/// domain's catch-all, not to the inactive Maildir; with CHECKRECIPIENT on
/// RCPT refuses it with 550 5.2.1.
#[test]
fn inactive_users_mail_goes_to_the_catch_all() {
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    let boxes = setup_users(home, &["gone", "catch"]);
    domain_mod_handler(home, "catch@example.com");
    let (c, _, e) = indimail(
        home,
        &["user", "mod", "gone@example.com", "--toggle-active"],
    );
    assert_eq!(c, 0, "{e}");
    std::fs::create_dir_all(home.join("tcp")).unwrap();
    std::fs::write(
        home.join("tcp/tcp.smtp"),
        "127.0.0.3:allow,CHECKRECIPIENT=\"0\"\n",
    )
    .unwrap();
    let s = Server::start_delivering(home, "uring");
    let (code, text) = rcpt(&s, "gone@example.com");
    assert!(code == 550 && text.contains("5.2.1"), "{code} {text}");
    let mut c = Client::connect_from([127, 0, 0, 3], s.smtp);
    c.reply();
    c.cmd("EHLO client.example.org");
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<gone@example.com>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    let (code, text) = c.cmd("Subject: to the gone\r\n\r\nbody\r\n.");
    assert_eq!(code, 250, "{text}");
    wait_forwarded(
        &boxes[1],
        1,
        ["a@example.org", "catch@example.com", "gone@example.com"],
    );
    assert!(maildir_files(&boxes[0]).is_empty());
}

/// CHECKRECIPIENT 1, 2 and 3 per client (tcp.smtp), with the RECIPIENTS
/// extension as an operator sets it up: `users/recipients` compiled by
/// `recipient-cdb`, a PAVM program reading the address on fd 3, `!domain`.
#[test]
fn checkrecipient_modes_and_the_recipients_extension() {
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    setup_users(home, &["ann", "bob"]);
    std::fs::create_dir_all(home.join("users")).unwrap();
    std::fs::create_dir_all(home.join("tcp")).unwrap();
    std::fs::write(
        home.join("users/recipients"),
        "# compiled by recipient-cdb\nAnn@example.com\nlist-@example.com\n",
    )
    .unwrap();
    let (c, out, e) = indimail(home, &["recipient-cdb"]);
    assert_eq!(c, 0, "{e}");
    assert!(out.contains("2 addresses"), "{out}");
    let pavm = home.join("pavm");
    std::fs::write(
        &pavm,
        "#!/bin/sh\na=$(tr -d '\\000' <&3)\ncase \"$a\" in yes@pavm.test) exit 0;; tmp@pavm.test) exit 111;; esac\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pavm, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        home.join("control/recipients"),
        format!(
            "@example.com:users/recipients.cdb\n@pavm.test|{}\n!open.test\n",
            pavm.display()
        ),
    )
    .unwrap();
    let mut hosts = std::fs::read_to_string(home.join("control/rcpthosts")).unwrap();
    hosts.push_str("pavm.test\nopen.test\nplain.test\n");
    std::fs::write(home.join("control/rcpthosts"), hosts).unwrap();
    std::fs::write(
        home.join("tcp/tcp.smtp"),
        "127.0.0.3:allow,CHECKRECIPIENT=\"3\"\n127.0.0.4:allow,CHECKRECIPIENT=\"2\"\n",
    )
    .unwrap();
    let s = Server::start(home, "uring");
    let rcpt_from = |from: [u8; 4], to: &str| {
        let mut c = Client::connect_from(from, s.smtp);
        c.reply();
        c.cmd("EHLO client.example.org");
        assert_eq!(c.cmd("MAIL FROM:<a@example.org>").0, 250);
        let r = c.cmd(&format!("RCPT TO:<{to}>"));
        c.cmd("QUIT");
        r
    };
    let expect = |from: [u8; 4], to: &str, code: u16, enhanced: &str| {
        let (c, text) = rcpt_from(from, to);
        assert_eq!(c, code, "{from:?} {to}: {text}\n{}", s.log());
        assert!(text.contains(enhanced), "{from:?} {to}: {text}");
    };
    // 3: the extension only.
    let three = [127, 0, 0, 3];
    expect(three, "ann@example.com", 250, "");
    expect(three, "list-owner@example.com", 250, "");
    expect(three, "bob@example.com", 550, "5.1.1");
    expect(three, "yes@pavm.test", 250, "");
    expect(three, "no@pavm.test", 550, "5.1.1");
    expect(three, "tmp@pavm.test", 451, "4.3.0");
    expect(three, "anyone@open.test", 250, "");
    expect(three, "anyone@plain.test", 550, "5.1.1");
    // 2: the extension, then the directory.
    let two = [127, 0, 0, 4];
    expect(two, "bob@example.com", 250, "");
    expect(two, "ann@example.com", 250, "");
    expect(two, "nobody@example.com", 550, "5.1.1");
    expect(two, "yes@pavm.test", 250, "");
    // 1 (the default): the directory only.
    let one = [127, 0, 0, 1];
    expect(one, "bob@example.com", 250, "");
    expect(one, "list-owner@example.com", 550, "5.1.1");
    // A new cdb takes effect without a restart.
    std::fs::write(home.join("users/recipients"), "bob@example.com\n").unwrap();
    assert_eq!(indimail(home, &["recipient-cdb"]).0, 0);
    wait_until(30, "the new recipients.cdb in force", || {
        rcpt_from(three, "bob@example.com").0 == 250
    });
    expect(three, "ann@example.com", 550, "5.1.1");
}

/// vlimits act only when the domain's limits are on (`.domain_limits`,
/// `domain mod --limits 1` = vmoddomain -l 1), as in IndiMail: an expired
/// domain (vlimit -e) then refuses SMTP AUTH (535, swaks over STARTTLS) and
/// POP3 logins (poplib); before the switch the same row changes nothing.
#[test]
fn domain_expiry_refuses_logins_once_limits_are_on() {
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    setup_users(home, &["ann"]);
    let (c, _, e) = indimail(
        home,
        &[
            "domain",
            "limits",
            "example.com",
            "--domain-expiry",
            "2001-01-01",
        ],
    );
    assert_eq!(c, 0, "{e}");
    std::fs::create_dir_all(home.join("tcp")).unwrap();
    std::fs::write(home.join("tcp/tcp.smtp"), ":allow\n").unwrap();
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let (s, ports) = Server::start_services(home, "uring", &[("smtp", any), ("pop3", any)], &[]);
    let swaks = || {
        let out = std::process::Command::new("/usr/bin/swaks")
            .args(["--server", &s.smtp.to_string(), "-tls"])
            .args(["--from", "ann@example.com", "--to", "far@remote.test"])
            .args(["--auth", "PLAIN", "--auth-user", "ann@example.com"])
            .args(["--auth-password", "pw12345", "--quit-after", "AUTH"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let pop3 = |expect_ok: bool| {
        let script = format!(
            r#"
import poplib, ssl
p = poplib.POP3("127.0.0.1", {port}, timeout=20)
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
p.stls(ctx)
p.user("ann@example.com")
try:
    p.pass_("pw12345")
    ok = True
except poplib.error_proto:
    ok = False
assert ok == {expect}, ok
"#,
            port = ports["pop3"].port(),
            expect = if expect_ok { "True" } else { "False" },
        );
        run_python(&script, &s.log());
    };
    let t = swaks();
    assert!(t.contains("<~  235"), "limits off: {t}");
    pop3(true);
    domain_mod_limits(home, "1");
    wait_until(30, "the expired domain refused", || {
        swaks().contains("<~* 535")
    });
    pop3(false);
    domain_mod_limits(home, "0");
    wait_until(30, "limits off again", || swaks().contains("<~  235"));
}

fn domain_mod_limits(home: &std::path::Path, on: &str) {
    let (c, out, e) = indimail(home, &["domain", "mod", "example.com", "--limits", on]);
    assert_eq!(c, 0, "{e}");
    assert!(out.contains("limits: "), "{out}");
}

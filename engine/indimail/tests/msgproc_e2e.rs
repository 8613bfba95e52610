//! Queue-time message processing end to end through `indimail serve`:
//! header rules (removeheaders, logheaders, envheaders exported to a
//! QMAILLOCAL program), extraqueue, quarantine, NULLQUEUE, the duplicate
//! eliminator, and DKIM signing of relayed mail checked by dkimpy.

#[path = "common/clamd.rs"]
mod clamd;
mod common;
#[path = "common/dnsmasq.rs"]
mod dnsmasq;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const DRIVER: &str = DRIVERS[0];

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn control(home: &Path, files: &[(&str, &str)]) {
    let c = home.join("control");
    std::fs::create_dir_all(&c).unwrap();
    for (k, v) in files {
        std::fs::write(c.join(k), v).unwrap();
    }
}

#[test]
fn header_rules_envheaders_logheaders_and_extraqueue() {
    let h = tempfile::tempdir().unwrap();
    setup_users(h.path(), &["alice", "archive"]);
    control(
        h.path(),
        &[
            ("removeheaders", "X-Secret\nBcc\n"),
            ("logheaders", "Subject\n"),
            ("envheaders", "X-Ticket:20\nX-Long:3\n"),
            ("extraqueue", "archive@example.com\n"),
        ],
    );
    // QMAILLOCAL: a program run instead of local delivery, which records
    // its environment and the message it got.
    let out = tempfile::tempdir().unwrap();
    let script = out.path().join("qmaillocal.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nenv > {0}/env.$$\ncat > {0}/msg.$$\nexit 0\n",
            out.path().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let s = Server::start_with(
        h.path(),
        DRIVER,
        &[("QMAILLOCAL", script.to_str().unwrap())],
    );
    // The header block is sent in small pieces so header lines are split
    // across reads; X-Secret is folded.
    let mut c = Client::connect(s.smtp);
    c.reply();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<bob@example.org>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@example.com>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    let msg = b"From: bob@example.org\r\nX-Secret: top\r\n secret continued\r\nSubject: quarterly\r\n report\r\nX-Ticket: T-42\r\nX-Long: too long\r\nBcc: hidden@example.net\r\n\r\nX-Secret: stays in the body\r\nbody\r\n.\r\n";
    for piece in msg.chunks(7) {
        c.send(piece);
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let (code, text) = c.reply();
    assert_eq!(code, 250, "{text}");
    c.cmd("QUIT");
    wait_until(20, "two QMAILLOCAL runs", || {
        files(out.path())
            .iter()
            .filter(|p| p.to_string_lossy().contains("/msg."))
            .count()
            == 2
    });
    wait_until(10, "queue drained", || queue_list(h.path()).is_empty());
    let envs: Vec<String> = files(out.path())
        .iter()
        .filter(|p| p.to_string_lossy().contains("/env."))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert_eq!(envs.len(), 2);
    for e in &envs {
        assert!(e.lines().any(|l| l == "X_TICKET=T-42"), "{e}");
        assert!(!e.contains("X_LONG="), "over its maxlen: {e}");
    }
    for m in files(out.path())
        .iter()
        .filter(|p| p.to_string_lossy().contains("/msg."))
    {
        let m = std::fs::read_to_string(m).unwrap();
        assert!(!m.contains("X-Secret: top"), "{m}");
        assert!(!m.contains("secret continued"), "{m}");
        assert!(!m.contains("Bcc:"), "{m}");
        assert!(m.contains("\nSubject: quarterly\n report\n"), "{m}");
        assert!(m.contains("\n\nX-Secret: stays in the body\nbody\n"), "{m}");
    }
    let log = s.log();
    assert!(
        log.lines()
            .any(|l| l.contains(" headers msg ") && l.contains("Subject: quarterly report")),
        "{log}"
    );
}

/// An envelope too large for one queue record (here 1,150 folded `X-Big:` fields of 60 kB
/// each carried by envheaders, over the record's 64 MiB) is refused for good with the
/// queue's own answer, 552 5.3.4, never a temporary 4xx a client retries forever; and
/// nothing is queued.
#[test]
fn envelope_too_large_for_the_queue_is_refused_552() {
    let h = tempfile::tempdir().unwrap();
    setup_users(h.path(), &["alice"]);
    control(h.path(), &[("envheaders", "X-Big\n")]);
    let s = Server::start(h.path(), DRIVER);
    // Each field folded into lines of 900 bytes (a message line has at most 1000).
    let field = format!(
        "X-Big: x{}\r\n",
        format!("\r\n {}", "v".repeat(898)).repeat(66)
    );
    let mut msg = b"From: bob@example.org\r\n".to_vec();
    for _ in 0..1150 {
        msg.extend_from_slice(field.as_bytes());
    }
    msg.extend_from_slice(b"\r\nbody\r\n.\r\n");
    let r = send_message(s.smtp, "bob@example.org", &["alice@example.com"], &msg);
    assert_eq!(r.0, 552, "{r:?}\n{}", s.log());
    assert!(r.1.contains("5.3.4"), "{r:?}");
    assert!(
        queue_list(h.path()).is_empty(),
        "{:?}",
        queue_list(h.path())
    );
}

#[test]
fn quarantine_replaces_recipients_and_nullqueue_stores_nothing() {
    let h = tempfile::tempdir().unwrap();
    let md = setup_users(h.path(), &["alice", "carol", "quarantine"]);
    control(h.path(), &[("quarantine", "quarantine@example.com\n")]);
    let s = Server::start_delivering(h.path(), DRIVER);
    let (code, text) = send_message(
        s.smtp,
        "bob@example.org",
        &["alice@example.com", "carol@example.com"],
        b"Subject: q\r\n\r\nbody\r\n.\r\n",
    );
    assert_eq!(code, 250, "{text}");
    wait_until(20, "quarantine delivery", || {
        files(&md[2].join("new")).len() == 1
    });
    let m = std::fs::read_to_string(&files(&md[2].join("new"))[0]).unwrap();
    assert!(
        m.contains(
            "\nX-Quarantine-ID: quarantine@example.com,alice@example.com,carol@example.com\n"
        ),
        "{m}"
    );
    wait_until(10, "queue drained", || queue_list(h.path()).is_empty());
    assert!(files(&md[0].join("new")).is_empty());
    assert!(files(&md[1].join("new")).is_empty());
    drop(s);

    // NULLQUEUE: accepted, nothing queued or delivered.
    let h = tempfile::tempdir().unwrap();
    let md = setup_users(h.path(), &["alice"]);
    let s = Server::start_with(h.path(), DRIVER, &[("NULLQUEUE", "1")]);
    let (code, text) = send_message(
        s.smtp,
        "bob@example.org",
        &["alice@example.com"],
        b"Subject: n\r\n\r\nbody\r\n.\r\n",
    );
    assert_eq!(code, 250, "{text}");
    assert!(queue_list(h.path()).is_empty());
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(files(&md[0].join("new")).is_empty());
    assert!(s.log().contains("(nothing stored)"), "{}", s.log());
}

#[test]
fn duplicate_eliminator_delivers_once() {
    let h = tempfile::tempdir().unwrap();
    let md = setup_users(h.path(), &["alice"]);
    let s = Server::start_with(h.path(), DRIVER, &[("ELIMINATE_DUPS", "1")]);
    for body in ["first copy", "second copy", "third copy"] {
        let id = if body == "third copy" {
            "<other@x>"
        } else {
            "<same@x>"
        };
        let msg = format!("Message-ID: {id}\r\nSubject: d\r\n\r\n{body}\r\n.\r\n");
        let (code, text) = send_message(
            s.smtp,
            "bob@example.org",
            &["alice@example.com"],
            msg.as_bytes(),
        );
        assert_eq!(code, 250, "{text}");
        wait_until(20, "delivered", || queue_list(h.path()).is_empty());
    }
    let got: Vec<String> = files(&md[0].join("new"))
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().any(|m| m.contains("first copy")));
    assert!(got.iter().any(|m| m.contains("third copy")));
    assert!(s.log().contains("is a duplicate (ELIMINATE_DUPS)"));
    assert!(md[0].join("dupmd5").exists());
}

#[test]
fn dkim_signed_relay_verified_by_dkimpy() {
    let (_cap, port, dir) = capture("ok");
    let h = tempfile::tempdir().unwrap();
    control(
        h.path(),
        &[("smtproutes", &format!("remote.test:127.0.0.1:{port}\n"))],
    );
    // One RSA key (selector `default`, used by the default DKIMSIGN) and
    // one Ed25519 key for another domain, picked by a DKIMSIGN template.
    let (c, rsa_out, e) = indimail(h.path(), &["dkim", "keygen", "example.org"]);
    assert_eq!(c, 0, "{e}");
    assert!(
        rsa_out.starts_with("default._domainkey.example.org IN TXT \"v=DKIM1; k=rsa;"),
        "{rsa_out}"
    );
    let (c, ed_out, e) = indimail(
        h.path(),
        &[
            "dkim",
            "keygen",
            "example.net",
            "--selector",
            "default",
            "--type",
            "ed25519",
        ],
    );
    assert_eq!(c, 0, "{e}");
    assert!(ed_out.contains("k=ed25519"), "{ed_out}");
    assert!(h
        .path()
        .join("control/domainkeys/example.org/default")
        .exists());
    assert!(h
        .path()
        .join("control/domainkeys/example.org/default.pub")
        .exists());
    let record = |out: &str| {
        out.trim()
            .split_once("IN TXT \"")
            .map(|(_, r)| r.trim_end_matches('"').to_string())
            .unwrap()
    };
    let s = Server::start_delivering(h.path(), DRIVER);
    for (domain, out) in [("example.org", &rsa_out), ("example.net", &ed_out)] {
        let before = files(dir.path()).len();
        let msg = format!(
            "From: Sender <sender@{domain}>\r\nTo: x@remote.test\r\nSubject: signed\r\nMessage-ID: <{domain}@id>\r\n\r\nline one\r\n..dotted  \r\n\r\n\r\n.\r\n"
        );
        let (code, text) = send_message(
            s.smtp,
            &format!("sender@{domain}"),
            &["x@remote.test"],
            msg.as_bytes(),
        );
        assert_eq!(code, 250, "{text}");
        wait_until(30, "relay to capture", || {
            files(dir.path()).len() >= before + 2
        });
        let eml = files(dir.path())
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .find(|p| {
                std::fs::read_to_string(p)
                    .unwrap()
                    .contains(&format!("<{domain}@id>"))
            })
            .expect("captured");
        let text = std::fs::read_to_string(&eml).unwrap();
        assert!(text.starts_with("DKIM-Signature:"), "{text}");
        assert!(text.contains(&format!("d={domain}")), "{text}");
        let v = Command::new("/usr/bin/python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/peers/dkim_verify.py"
            ))
            .arg(&eml)
            .arg(format!("default._domainkey.{domain}"))
            .arg(record(out))
            .output()
            .expect("python3 with dkimpy (Debian python3-dkim)");
        assert!(
            v.status.success(),
            "dkimpy: {} {}\n{text}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
        // A tampered copy fails (the verifier really checks).
        let tampered = eml.with_extension("bad");
        std::fs::write(&tampered, text.replace("line one", "line 1")).unwrap();
        let v = Command::new("/usr/bin/python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/peers/dkim_verify.py"
            ))
            .arg(&tampered)
            .arg(format!("default._domainkey.{domain}"))
            .arg(record(out))
            .output()
            .unwrap();
        assert!(!v.status.success());
    }
    // Mail from a domain without a key leaves unsigned.
    let before = files(dir.path()).len();
    let (code, _) = send_message(
        s.smtp,
        "a@nokey.test",
        &["x@remote.test"],
        b"From: a@nokey.test\r\nMessage-ID: <nokey@id>\r\n\r\nb\r\n.\r\n",
    );
    assert_eq!(code, 250);
    wait_until(30, "relay to capture", || {
        files(dir.path()).len() >= before + 2
    });
    let unsigned = files(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .find(|t| t.contains("<nokey@id>"))
        .unwrap();
    assert!(!unsigned.contains("DKIM-Signature"), "{unsigned}");
}

/// Runs a command, panicking with its stderr when it fails.
fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn dkim_signature_by_dkimpy_verified_at_queue_time() {
    // An RSA key made by openssl; dkimpy signs with it, its public half is
    // served as the selector's TXT record by dnsmasq.
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("sel.pem");
    run(Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&key)
        .arg("2048"));
    let der = run(Command::new("openssl")
        .args(["rsa", "-pubout", "-outform", "DER", "-in"])
        .arg(&key));
    let p = {
        use std::io::Write;
        let mut child = Command::new("base64")
            .arg("-w0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&der).unwrap();
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
    };
    // TXT strings are at most 255 bytes: dnsmasq takes them comma-separated.
    let record = format!("v=DKIM1; k=rsa; p={p}");
    let pieces: Vec<String> = record
        .as_bytes()
        .chunks(200)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    let txt = pieces.join(",");
    let ns = dnsmasq::Dnsmasq::start(
        &[],
        &[
            ("sel._domainkey.signer.test", &txt),
            ("signer.test", "v=spf1 ip4:127.0.0.0/8 -all"),
            ("_dmarc.signer.test", "v=DMARC1; p=reject"),
        ],
    );
    let h = tempfile::tempdir().unwrap();
    let md = setup_users(h.path(), &["alice"]);
    control(
        h.path(),
        &[("spfbehavior", "1\n"), ("me", "mx.example.com\n")],
    );
    // Not a relay client, so SPF is evaluated.
    std::fs::create_dir_all(h.path().join("tcp")).unwrap();
    std::fs::write(h.path().join("tcp/tcp.smtp"), ":allow\n").unwrap();
    let sign = |body: &str| -> Vec<u8> {
        let f = keys.path().join("msg.eml");
        std::fs::write(
            &f,
            format!(
                "From: Bob <bob@signer.test>\r\nTo: alice@example.com\r\nSubject: signed\r\nMessage-ID: <{body}@signer.test>\r\n\r\n{body}\r\nsecond line\r\n"
            ),
        )
        .unwrap();
        run(Command::new("/usr/bin/python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/peers/dkim_sign.py"
            ))
            .arg(&key)
            .args(["sel", "signer.test"])
            .arg(&f))
    };
    let ns_addr = ns.addr.to_string();
    let s = Server::start_with(
        h.path(),
        DRIVER,
        &[("DKIMVERIFY", ""), ("INDIMAIL_DNS", &ns_addr)],
    );
    let send = |data: Vec<u8>| {
        let mut data = data;
        data.extend_from_slice(b".\r\n");
        let (code, text) = send_message(s.smtp, "bob@signer.test", &["alice@example.com"], &data);
        assert_eq!(code, 250, "{text}");
        wait_until(20, "delivered", || queue_list(h.path()).is_empty());
    };
    send(sign("good"));
    let tampered = String::from_utf8(sign("evil"))
        .unwrap()
        .replace("second line", "second line changed")
        .into_bytes();
    send(tampered);
    send(b"From: bob@signer.test\r\nSubject: plain\r\nMessage-ID: <plain@signer.test>\r\n\r\nunsigned\r\n".to_vec());
    wait_until(20, "three delivered", || {
        files(&md[0].join("new")).len() == 3
    });
    let got: Vec<String> = files(&md[0].join("new"))
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let find = |needle: &str| {
        got.iter()
            .find(|m| m.contains(needle))
            .expect(needle)
            .clone()
    };
    for (needle, dkim) in [
        ("<good@signer.test>", "dkim=pass"),
        ("<evil@signer.test>", "dkim=fail"),
        ("<plain@signer.test>", "dkim=none"),
    ] {
        let m = find(needle);
        // Authentication-Results comes first, ahead of our Received line.
        let ar_start = m
            .find("\nAuthentication-Results: mx.example.com;")
            .expect("Authentication-Results");
        let ar_end = m.find("\nReceived-SPF:").expect("Received-SPF");
        let ar = &m[ar_start..ar_end];
        assert!(ar.contains(dkim), "{needle}: {ar}");
        assert!(
            ar.contains("spf=pass smtp.mailfrom=bob@signer.test"),
            "{ar}"
        );
        assert!(m.find("\nReceived: from").unwrap() > ar_end, "{m}");
        if dkim != "dkim=none" {
            assert!(ar.contains("header.i=@signer.test header.s=sel"), "{ar}");
        }
        // SPF passes for an aligned MAIL FROM: DMARC passes (reported only).
        assert!(
            ar.contains("dmarc=pass header.from=signer.test policy.dmarc=reject"),
            "{ar}"
        );
    }
    // Unsigned, and MAIL FROM of another domain: not aligned, DMARC fails.
    let (code, text) = send_message(
        s.smtp,
        "bob@elsewhere.test",
        &["alice@example.com"],
        b"From: bob@signer.test\r\nTo: alice@example.com\r\nMessage-ID: <spoof@signer.test>\r\n\r\nspoofed\r\n.\r\n",
    );
    assert_eq!(code, 250, "{text}");
    wait_until(20, "four delivered", || {
        files(&md[0].join("new")).len() == 4
    });
    let m = files(&md[0].join("new"))
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .find(|m| m.contains("<spoof@signer.test>"))
        .unwrap();
    assert!(m.contains("\tdkim=none;\n"), "{m}");
    assert!(m.contains("dmarc=fail"), "{m}");
    assert!(
        m.contains("header.from=signer.test policy.dmarc=reject"),
        "{m}"
    );
    assert!(
        m.contains("spf=none smtp.mailfrom=bob@elsewhere.test"),
        "{m}"
    );
    drop(s);

    // A letter set refusing "no valid signature" (T) and "body hash
    // mismatch" (U) permanently: the tampered message is refused at DATA.
    let h2 = tempfile::tempdir().unwrap();
    setup_users(h2.path(), &["alice"]);
    let s = Server::start_with(
        h2.path(),
        DRIVER,
        &[("DKIMVERIFY", "TU"), ("INDIMAIL_DNS", &ns_addr)],
    );
    let mut bad = String::from_utf8(sign("evil2"))
        .unwrap()
        .replace("second line", "second line changed")
        .into_bytes();
    bad.extend_from_slice(b".\r\n");
    let (code, text) = send_message(s.smtp, "bob@signer.test", &["alice@example.com"], &bad);
    assert_eq!(code, 554, "{text}");
    assert!(text.contains("5.7.1"), "{text}");
    let mut good = sign("good2");
    good.extend_from_slice(b".\r\n");
    let (code, text) = send_message(s.smtp, "bob@signer.test", &["alice@example.com"], &good);
    assert_eq!(code, 250, "{text}");
}

#[test]
fn vacation_autoresponder_replies_once_and_never_to_lists() {
    let h = tempfile::tempdir().unwrap();
    let md = setup_users(h.path(), &["alice", "bob", "carol"]);
    // alice is away: the operator installs her reply (vmoduser -l), which
    // lands in her home (the Maildir's parent) as .vacation.msg.
    let text = h.path().join("away.txt");
    std::fs::write(
        &text,
        "Subject: Away: %S\n\nI am away until Monday; %t will answer \"%S\" then.\n",
    )
    .unwrap();
    let args = [
        "user",
        "mod",
        "alice@example.com",
        "--vacation",
        text.to_str().unwrap(),
    ];
    let (c, out, e) = indimail(h.path(), &args);
    assert_eq!(c, 0, "{e}");
    assert!(out.contains("vacation reply set"), "{out}");
    assert!(md[0].parent().unwrap().join(".vacation.msg").exists());
    let s = Server::start_with(h.path(), DRIVER, &[("AUTORESPONDER_INTERVAL", "3600")]);
    let send = |from: &str, extra: &str, id: &str| {
        let msg = format!(
            "From: {from}\r\nTo: alice@example.com\r\n{extra}Subject: plans\r\nMessage-ID: <{id}@example.com>\r\n\r\nhello\r\n.\r\n"
        );
        let (code, text) = send_message(s.smtp, from, &["alice@example.com"], msg.as_bytes());
        assert_eq!(code, 250, "{text}");
        wait_until(20, "delivered", || queue_list(h.path()).is_empty());
    };
    send("bob@example.com", "", "first");
    wait_until(20, "reply to bob", || files(&md[1].join("new")).len() == 1);
    let reply = std::fs::read_to_string(&files(&md[1].join("new"))[0]).unwrap();
    assert!(reply.starts_with("Return-Path: <>\n"), "{reply}");
    for want in [
        "\nFrom: alice@example.com\n",
        "\nTo: bob@example.com\n",
        "\nSubject: Away: plans\n",
        "\nAuto-Submitted: auto-replied\n",
        "\nIn-Reply-To: <first@example.com>\n",
        "\nReferences: <first@example.com>\n",
        "\n\nI am away until Monday; alice@example.com will answer \"plans\" then.\n",
    ] {
        assert!(reply.contains(want), "{want:?} in {reply}");
    }
    // The same sender again within the interval: no second reply.
    send("bob@example.com", "", "second");
    // List, bulk and automatic mail, and a null sender: no reply.
    send(
        "carol@example.com",
        "List-Id: <team.example.com>\r\n",
        "list",
    );
    send("carol@example.com", "Precedence: bulk\r\n", "bulk");
    send(
        "carol@example.com",
        "Auto-Submitted: auto-generated\r\n",
        "auto",
    );
    send("", "", "bounce");
    wait_until(20, "all six delivered to alice", || {
        files(&md[0].join("new")).len() == 6
    });
    // carol is answered once she writes in person.
    send("carol@example.com", "", "personal");
    wait_until(20, "reply to carol", || {
        files(&md[2].join("new")).len() == 1
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(files(&md[1].join("new")).len(), 1, "bob answered once");
    assert_eq!(files(&md[2].join("new")).len(), 1, "carol answered once");
    let log = s.log();
    assert!(log.contains("already answered"), "{log}");
    assert!(log.contains("(list mail)"), "{log}");
    assert!(log.contains("(bulk mail)"), "{log}");
    assert!(log.contains("(auto-submitted)"), "{log}");
    assert!(log.contains("(null sender)"), "{log}");
}

#[test]
fn clamd_scans_at_end_of_data() {
    let av = clamd::Clamd::start();
    let sock = av.socket.display().to_string();
    let h = tempfile::tempdir().unwrap();
    let md = setup_users(h.path(), &["alice", "quarantine"]);
    let msg = |body: &str| format!("From: bob@example.org\r\nSubject: scan\r\n\r\n{body}\r\n.\r\n");
    let infected = msg(&format!("attachment: {}", clamd::TEST_VIRUS));
    let send = |s: &Server, data: &str| {
        send_message(
            s.smtp,
            "bob@example.org",
            &["alice@example.com"],
            data.as_bytes(),
        )
    };

    // Default (REJECTVIRUS=1): infected refused at DATA; clean tagged.
    let s = Server::start_with(h.path(), DRIVER, &[("CLAMDSOCKET", &sock)]);
    let (code, text) = send(&s, &infected);
    assert_eq!(code, 554, "{text}");
    assert!(
        text.contains("5.7.1") && text.contains(clamd::TEST_SIGNATURE),
        "{text}"
    );
    let (code, text) = send(&s, &msg("nothing to see"));
    assert_eq!(code, 250, "{text}");
    wait_until(20, "clean delivered", || {
        files(&md[0].join("new")).len() == 1
    });
    let m = std::fs::read_to_string(&files(&md[0].join("new"))[0]).unwrap();
    assert!(m.contains("\nX-QHPSI: clean\n"), "{m}");
    assert!(m.contains("nothing to see"));
    assert!(s.log().contains(&format!(
        "rcpts=1 signature={} action=reject",
        clamd::TEST_SIGNATURE
    )));
    drop(s);

    // VIRUSFORWARD: infected mail goes to the quarantine address only.
    let s = Server::start_with(
        h.path(),
        DRIVER,
        &[
            ("CLAMDSOCKET", &sock),
            ("VIRUSFORWARD", "quarantine@example.com"),
        ],
    );
    let (code, text) = send(&s, &infected);
    assert_eq!(code, 250, "{text}");
    wait_until(20, "quarantined", || files(&md[1].join("new")).len() == 1);
    let m = std::fs::read_to_string(&files(&md[1].join("new"))[0]).unwrap();
    assert!(
        m.contains(&format!(
            "\nX-QHPSI: Virus found ({})\n",
            clamd::TEST_SIGNATURE
        )),
        "{m}"
    );
    assert!(
        m.contains("\nX-Quarantine-ID: quarantine@example.com,alice@example.com\n"),
        "{m}"
    );
    wait_until(10, "queue drained", || queue_list(h.path()).is_empty());
    assert_eq!(files(&md[0].join("new")).len(), 1, "alice got nothing more");
    drop(s);

    // Scanner down: 451 by default, accepted and tagged with QHPSIFAILOPEN.
    let gone = h.path().join("no-clamd.sock").display().to_string();
    let s = Server::start_with(h.path(), DRIVER, &[("CLAMDSOCKET", &gone)]);
    let (code, text) = send(&s, &msg("while down"));
    assert_eq!(code, 451, "{text}");
    assert!(text.contains("4.3.0"), "{text}");
    drop(s);
    let s = Server::start_with(
        h.path(),
        DRIVER,
        &[("CLAMDSOCKET", &gone), ("QHPSIFAILOPEN", "1")],
    );
    let (code, text) = send(&s, &msg("while down"));
    assert_eq!(code, 250, "{text}");
    wait_until(20, "delivered unscanned", || {
        files(&md[0].join("new")).len() == 2
    });
    let got: Vec<String> = files(&md[0].join("new"))
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(
        got.iter().any(
            |m| m.contains("\nX-QHPSI: not scanned (scanner unavailable)\n")
                && m.contains("while down")
        ),
        "{got:?}"
    );
}

#[test]
fn bogofilter_tags_spam_and_refuses_it_when_asked() {
    // A small corpus, trained with bogofilter itself.
    let db = tempfile::tempdir().unwrap();
    let train = |flag: &str, text: &str| {
        use std::io::Write;
        let mut c = Command::new("/usr/bin/bogofilter")
            .args(["-d", db.path().to_str().unwrap(), flag])
            .stdin(Stdio::piped())
            .spawn()
            .expect("bogofilter (Debian package bogofilter)");
        c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        assert!(c.wait().unwrap().success());
    };
    for i in 0..8 {
        train(
            "-s",
            &format!("From: s{i}@spam.test\nSubject: cheap pills viagra offer\n\nBuy cheap pills now, viagra casino lottery winner prize money offer {i}\n"),
        );
        train(
            "-n",
            &format!("From: h{i}@example.org\nSubject: meeting agenda project\n\nHi team, the project meeting agenda for thursday review notes schedule {i}\n"),
        );
    }
    let h = tempfile::tempdir().unwrap();
    let md = setup_users(h.path(), &["alice"]);
    let filter = format!("/usr/bin/bogofilter -p -d {}", db.path().display());
    let spam = "From: x@spam.test\r\nSubject: cheap viagra\r\n\r\ncheap pills casino lottery prize offer\r\n.\r\n";
    let ham = "From: bob@example.org\r\nSubject: project meeting\r\n\r\nagenda for the project review meeting thursday\r\n.\r\n";
    let send = |s: &Server, data: &str| {
        send_message(
            s.smtp,
            "bob@example.org",
            &["alice@example.com"],
            data.as_bytes(),
        )
    };
    let s = Server::start_with(h.path(), DRIVER, &[("SPAMFILTER", &filter)]);
    assert_eq!(send(&s, spam).0, 250);
    assert_eq!(send(&s, ham).0, 250);
    wait_until(20, "both delivered", || {
        files(&md[0].join("new")).len() == 2
    });
    let got: Vec<String> = files(&md[0].join("new"))
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let find = |needle: &str| got.iter().find(|m| m.contains(needle)).unwrap().clone();
    let m = find("cheap pills");
    assert!(m.contains("\nX-Bogosity: Spam, tests=bogofilter"), "{m}");
    let m = find("agenda for the project");
    assert!(m.contains("\nX-Bogosity: Ham, tests=bogofilter"), "{m}");
    assert!(s.log().contains("verdict=spam"), "{}", s.log());
    drop(s);

    // REJECTSPAM=1: spam refused at DATA, ham still accepted.
    let s = Server::start_with(
        h.path(),
        DRIVER,
        &[("SPAMFILTER", &filter), ("REJECTSPAM", "1")],
    );
    let (code, text) = send(&s, spam);
    assert_eq!(code, 554, "{text}");
    assert!(text.contains("5.7.1 spam threshold exceeded"), "{text}");
    assert_eq!(send(&s, ham).0, 250);
    drop(s);

    // A filter that cannot run: 451.
    let s = Server::start_with(
        h.path(),
        DRIVER,
        &[("SPAMFILTER", "/nonexistent/bogofilter")],
    );
    let (code, text) = send(&s, ham);
    assert_eq!(code, 451, "{text}");
}

#[test]
fn filterargs_altermime_adds_a_mime_aware_disclaimer() {
    let h = tempfile::tempdir().unwrap();
    let md = setup_users(h.path(), &["alice"]);
    let disc = h.path().join("control/disclaimer");
    std::fs::write(&disc, "Sent through example.com; mind the disclaimer.\n").unwrap();
    let filter = format!(
        "/usr/bin/altermime --input=- --disclaimer={0} --disclaimer-html={0}",
        disc.display()
    );
    let s = Server::start_with(h.path(), DRIVER, &[("FILTERARGS", &filter)]);
    let msg = "From: bob@example.org\r\nSubject: alt\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"BB\"\r\n\r\n--BB\r\nContent-Type: text/plain\r\n\r\nplain part\r\n--BB\r\nContent-Type: text/html\r\n\r\n<html><body>html part</body></html>\r\n--BB--\r\n.\r\n";
    let (code, text) = send_message(
        s.smtp,
        "bob@example.org",
        &["alice@example.com"],
        msg.as_bytes(),
    );
    assert_eq!(code, 250, "{text}");
    wait_until(20, "delivered", || files(&md[0].join("new")).len() == 1);
    let m = std::fs::read_to_string(&files(&md[0].join("new"))[0]).unwrap();
    // Both parts carry the text; the MIME structure is intact.
    assert!(
        m.contains("plain part\nSent through example.com; mind the disclaimer.\n--BB\n"),
        "{m}"
    );
    let html = &m[m.find("Content-Type: text/html").unwrap()..];
    assert!(html.contains("mind the disclaimer"), "{m}");
    assert!(m.trim_end().ends_with("--BB--"), "{m}");
    drop(s);

    // A failing filter: temporary refusal, nothing queued.
    let s = Server::start_with(h.path(), DRIVER, &[("FILTERARGS", "/bin/false")]);
    let (code, text) = send_message(
        s.smtp,
        "bob@example.org",
        &["alice@example.com"],
        msg.as_bytes(),
    );
    assert_eq!(code, 451, "{text}");
    assert!(queue_list(h.path()).is_empty());
}

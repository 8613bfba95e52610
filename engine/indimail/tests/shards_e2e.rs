//! Server-wide rules hold whatever the number of shards (issue 17): each
//! client address has a home shard, where the kernel places all its
//! connections (`shard::home`), so connections per IP, greylisting triplets,
//! rates and AUTH failures count for the whole server. Run at 2 shards (one
//! per CPU here) and at 8 (INDIMAIL_SHARDS, unpinned, on the same 2 CPUs).

mod common;

use common::*;

/// The shard counts every test runs with.
const SHARDS: [&str; 2] = ["2", "8"];

fn home_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let h = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(h.path().join("control")).unwrap();
    std::fs::create_dir_all(h.path().join("tcp")).unwrap();
    // Ordinary clients (no RELAYCLIENT), so greylisting and rates apply.
    std::fs::write(h.path().join("tcp/tcp.smtp"), ":allow\n").unwrap();
    std::fs::write(h.path().join("control/rcpthosts"), "example.com\n").unwrap();
    for (name, text) in files {
        std::fs::write(h.path().join("control").join(name), text).unwrap();
    }
    h
}

fn start(home: &std::path::Path, shards: &str) -> Server {
    let s = Server::start_with(
        home,
        "uring",
        &[("INDIMAIL_SHARDS", shards), ("INDIMAIL_NO_DELIVERY", "1")],
    );
    let status = format!("status: {shards} shards");
    wait_until(10, &status, || s.log().contains(&status));
    s
}

/// maxperip 4: of 12 simultaneous connections from one address, 4 are
/// greeted and 8 refused, on every shard count.
#[test]
fn maxperip_counts_for_the_whole_server() {
    for shards in SHARDS {
        let h = home_with(&[("maxperip", "4\n")]);
        let s = start(h.path(), shards);
        let mut clients: Vec<Client> = (0..12).map(|_| Client::connect(s.smtp)).collect();
        let codes: Vec<u16> = clients.iter_mut().map(|c| c.reply().0).collect();
        assert_eq!(
            codes.iter().filter(|&&c| c == 220).count(),
            4,
            "{shards} shards: {codes:?}"
        );
        assert_eq!(
            codes.iter().filter(|&&c| c == 421).count(),
            8,
            "{shards}: {codes:?}"
        );
    }
}

/// Greylisting: after the minimum resend time, 10 of 10 retries of the same
/// triplet, each on a new connection, are accepted.
#[test]
fn greylist_retries_are_accepted_on_every_connection() {
    for shards in SHARDS {
        let h = home_with(&[("greylist", "1 3600 86400\n")]);
        let s = start(h.path(), shards);
        let rcpt = |s: &Server| {
            let mut c = Client::connect(s.smtp);
            c.reply();
            c.cmd("EHLO client.example.org");
            assert_eq!(c.cmd("MAIL FROM:<new@sender.example>").0, 250);
            let r = c.cmd("RCPT TO:<a@example.com>");
            c.cmd("QUIT");
            r
        };
        let (code, text) = rcpt(&s);
        assert_eq!(code, 451, "{shards}: {text}");
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let codes: Vec<u16> = (0..10).map(|_| rcpt(&s).0).collect();
        assert_eq!(codes, vec![250; 10], "{shards} shards");
    }
}

/// msgrate 3 per minute per client: over 6 connections, exactly 3 MAILs
/// are allowed, whichever shard would have taken the connection.
#[test]
fn message_rate_counts_across_connections() {
    for shards in SHARDS {
        let h = home_with(&[("msgrate", "3\n")]);
        let s = start(h.path(), shards);
        let codes: Vec<u16> = (0..6)
            .map(|_| {
                let mut c = Client::connect(s.smtp);
                c.reply();
                c.cmd("EHLO client.example.org");
                let code = c.cmd("MAIL FROM:<a@example.org>").0;
                c.cmd("QUIT");
                code
            })
            .collect();
        assert_eq!(codes, vec![250, 250, 250, 451, 451, 451], "{shards} shards");
    }
}

/// AUTH failures from one address are counted together: the fourth failed
/// login, on its fourth connection (smtplib, STARTTLS then AUTH), is the
/// address's fourth failure, and is delayed as such.
#[test]
fn auth_failures_count_across_connections() {
    for shards in SHARDS {
        let h = home_with(&[]);
        setup_users(h.path(), &["alice"]);
        let s = start(h.path(), shards);
        let script = format!(
            r#"
import smtplib, ssl
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
for i in range(4):
    c = smtplib.SMTP("127.0.0.1", {port}, timeout=60)
    c.starttls(context=ctx)
    try:
        c.login("alice@example.com", "wrong")
        raise SystemExit("login with a wrong password succeeded")
    except smtplib.SMTPAuthenticationError as e:
        assert e.smtp_code == 535, e
    c.quit()
"#,
            port = s.smtp.port()
        );
        run_python(&script, &s.log());
        let log = s.log();
        assert!(log.contains("ip_failures=4"), "{shards}: {log}");
    }
}

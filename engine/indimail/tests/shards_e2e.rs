//! Server-wide rules hold whatever the number of shards (issue 17): each
//! client address has a home shard, where the kernel places all its
//! connections (`shard::home`), so connections per IP, greylisting triplets,
//! rates and AUTH failures count for the whole server. Run at 2 shards (one
//! per CPU here) and at 8 (INDIMAIL_SHARDS, unpinned, on the same 2 CPUs).

mod common;

use common::*;

/// Python's smtplib with a TLS context that takes the test certificate.
const TLS_CLIENT: &str = "import smtplib, ssl
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE";

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

/// maxdaemons 6 counts every shard's connections: from one address (one home
/// shard) 6 of 10 are greeted, not 6/shards; from two addresses on two home
/// shards it is 6 in all too.
#[test]
fn maxdaemons_counts_for_the_whole_server() {
    for shards in SHARDS {
        let h = home_with(&[("maxdaemons", "6\n"), ("maxperip", "0\n")]);
        let s = start(h.path(), shards);
        let mut clients: Vec<Client> = (0..10).map(|_| Client::connect(s.smtp)).collect();
        let codes: Vec<u16> = clients.iter_mut().map(|c| c.reply().0).collect();
        assert_eq!(
            codes.iter().filter(|&&c| c == 220).count(),
            6,
            "{shards} shards, one address: {codes:?}"
        );
        drop(clients);
        // The refused and closed connections are counted out again.
        wait_until(10, "connections closed", || {
            let mut c = Client::connect(s.smtp);
            let ok = c.reply().0 == 220;
            c.cmd("QUIT");
            ok
        });
        let mut greeted = 0;
        let mut held = Vec::new();
        for i in 0..10 {
            // 127.0.0.1 and 127.0.0.2 have different home shards at 2
            // and at 8 shards (shard::home's hash: 1 and 0, 7 and 6).
            let src = if i % 2 == 0 {
                [127, 0, 0, 1]
            } else {
                [127, 0, 0, 2]
            };
            let mut c = Client::connect_from(src, s.smtp);
            if c.reply().0 == 220 {
                greeted += 1;
            }
            held.push(c);
        }
        assert_eq!(greeted, 6, "{shards} shards, two addresses");
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
            r#"{TLS_CLIENT}
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
            port = s.smtp.port(),
        );
        run_python(&script, &s.log());
        let log = s.log();
        assert!(log.contains("ip_failures=4"), "{shards}: {log}");
    }
}

/// Every user has a home shard whose directory cache alone holds the
/// user's entry; the others ask it over the mesh. 24 clients, each from its
/// own address (so spread over the shards), check the same three recipients:
/// the database is asked once per user (3), at 2 shards as at 8.
#[test]
fn users_are_looked_up_once_whatever_the_shards() {
    for shards in SHARDS {
        let h = home_with(&[]);
        setup_users(h.path(), &["alice", "bob"]);
        let (s, metrics) = start_sharded_with_metrics(h.path(), shards);
        rcpts_from_24_clients(&s);
        let counter = |name: &str| metric(metrics, name);
        // The gauge loop copies each shard's count once a second.
        std::thread::sleep(std::time::Duration::from_millis(1500));
        assert_eq!(
            counter("indimail_directory_user_queries_total"),
            3,
            "{shards} shards: {}",
            s.log()
        );
        assert!(
            counter("indimail_directory_home_questions_total") > 0,
            "{shards} shards: the other shards asked the homes"
        );
        // Each of the 72 RCPTs looks up its domain on its own shard and its user on the
        // user's home shard; only three users and at most one domain entry per shard miss.
        let hits = counter("indimail_directory_cache_hits_total");
        let misses = counter("indimail_directory_cache_misses_total");
        let shard_count: u64 = shards.parse().unwrap();
        assert!(
            hits + misses >= 2 * 72,
            "{shards} shards: {hits} + {misses}"
        );
        assert!(
            misses <= 3 + shard_count,
            "{shards} shards: {misses} misses"
        );
    }
}

/// authmsgrate 3 per minute: an authenticated user sending from six
/// addresses (so over several shards) gets three messages, counted on the
/// user's home shard.
#[test]
fn user_rates_count_across_shards() {
    for shards in SHARDS {
        let h = home_with(&[("authmsgrate", "3\n")]);
        setup_users(h.path(), &["alice"]);
        let s = start(h.path(), shards);
        let script = format!(
            r#"{TLS_CLIENT}
codes = []
for i in range(6):
    c = smtplib.SMTP("127.0.0.1", {port}, timeout=60, source_address=("127.0.1.%d" % (10 + i), 0))
    c.starttls(context=ctx)
    c.login("alice@example.com", "pw12345")
    codes.append(c.mail("alice@example.com")[0])
    c.quit()
assert codes == [250, 250, 250, 451, 451, 451], codes
"#,
            port = s.smtp.port(),
        );
        run_python(&script, &format!("{shards} shards\n{}", s.log()));
    }
}

/// Greylisting state survives a restart with another shard count: a triplet
/// that passed at 2 shards is accepted on every connection at 8, though its
/// client's home shard is no longer the one that saved it.
#[test]
fn greylist_state_survives_a_change_of_shard_count() {
    let h = home_with(&[("greylist", "1 3600 86400\n")]);
    // 127.0.0.2's home is shard 0 of 2 but shard 6 of 8.
    let rcpt = |s: &Server| {
        let mut c = Client::connect_from([127, 0, 0, 2], s.smtp);
        c.reply();
        c.cmd("EHLO client.example.org");
        assert_eq!(c.cmd("MAIL FROM:<kept@sender.example>").0, 250);
        let r = c.cmd("RCPT TO:<a@example.com>");
        c.cmd("QUIT");
        r.0
    };
    let mut s = start(h.path(), "2");
    assert_eq!(rcpt(&s), 451);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(rcpt(&s), 250);
    s.stop(); // saves the state
    drop(s);
    let s = start(h.path(), "8");
    let codes: Vec<u16> = (0..10).map(|_| rcpt(&s)).collect();
    assert_eq!(codes, vec![250; 10], "{}", s.log());
}

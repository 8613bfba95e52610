//! The directory in a real MariaDB (a private instance started by the test):
//! users are added with the same commands, mail to them is accepted and
//! delivered, unknown users are refused with 550; with MariaDB stopped,
//! cached users still receive mail and unknown ones get 451.

mod common;
#[path = "../../../lookup/tests/support/mariadb.rs"]
mod mariadb;

use common::*;

#[test]
fn directory_in_mariadb_and_outage() {
    let mut db = mariadb::MariaDb::start();
    let h = mariadb_home(&db);
    let home = h.path();
    let (c, _, e) = indimail(
        home,
        &["user", "add", "erin@example.com", "--password", "Db-Pass-1"],
    );
    assert_eq!(c, 0, "{e}");
    let (_, info, _) = indimail(home, &["user", "info", "erin@example.com"]);
    let dir = info
        .lines()
        .find_map(|l| l.strip_prefix("dir: "))
        .expect("dir")
        .trim()
        .to_string();
    let maildir = std::path::Path::new(&dir).join("Maildir/new");

    // Every connection of this client lands on its home shard, so the cache
    // that saw erin is the one asked again later, on any number of shards.
    let s = Server::start_delivering(home, "uring");
    let body = b"Subject: via mariadb\r\n\r\nhello\r\n.\r\n";
    let (code, text) = send_message(s.smtp, "x@example.org", &["erin@example.com"], body);
    assert_eq!(code, 250, "{text}");
    let (code, text) = send_message(s.smtp, "x@example.org", &["ghost@example.com"], body);
    assert_eq!(code, 550, "{text}");
    assert!(text.contains("5.1.1"), "{text}");
    wait_until(30, "delivery", || {
        std::fs::read_dir(&maildir).map(|r| r.count()).unwrap_or(0) == 1
    });

    // The database goes away.
    db.stop();
    let (code, text) = send_message(s.smtp, "x@example.org", &["erin@example.com"], body);
    assert_eq!(
        code,
        250,
        "cached user while MariaDB is down: {text}\n{}",
        s.log()
    );
    let (code, text) = send_message(s.smtp, "x@example.org", &["nobody@example.com"], body);
    assert_eq!(code, 451, "unknown user while MariaDB is down: {text}");
    assert!(text.contains("4.3.0"), "{text}");
}

/// Every user's entry lives on its home shard, so with the directory in
/// MariaDB the database is asked once per user however many shards run:
/// 24 clients spread over 2, then 8 shards, check three recipients and
/// cause three user fetches.
#[test]
fn mariadb_user_queries_do_not_grow_with_shards() {
    let db = mariadb::MariaDb::start();
    for shards in ["2", "8"] {
        let h = tempfile::tempdir().unwrap();
        let home = h.path();
        use_mariadb(home, &db);
        std::fs::write(home.join("control/rcpthosts"), "example.com\n").unwrap();
        let (c, _, e) = indimail(home, &["domain", "add", "example.com"]);
        assert!(c == 0 || e.contains("exists"), "{e}");
        for u in ["alice", "bob"] {
            let email = format!("{u}@example.com");
            let (c, _, e) = indimail(home, &["user", "add", &email, "--password", "Db-Pass-1"]);
            assert!(c == 0 || e.contains("exists"), "{e}");
        }
        let (s, metrics) = start_sharded_with_metrics(home, shards);
        rcpts_from_24_clients(&s);
        // The gauge loop copies each shard's count once a second.
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let queries = metric(metrics, "indimail_directory_user_queries_total");
        assert_eq!(queries, 3, "{shards} shards: {}", s.log());
    }
}

/// A home whose directory is the private MariaDB, with the domain example.com.
fn mariadb_home(db: &mariadb::MariaDb) -> tempfile::TempDir {
    let h = tempfile::tempdir().unwrap();
    use_mariadb(h.path(), db);
    let (c, _, e) = indimail(h.path(), &["domain", "add", "example.com"]);
    assert_eq!(c, 0, "{e}");
    h
}

/// Points `home`'s directory at the private MariaDB (`control/host.mysql`).
fn use_mariadb(home: &std::path::Path, db: &mariadb::MariaDb) {
    std::fs::create_dir_all(home.join("control")).unwrap();
    std::fs::write(
        home.join("control/host.mysql"),
        format!("{}\n", db.host_mysql()),
    )
    .unwrap();
}

/// A list's `.sql` variant (IndiMail's sqlmatch): `badmailfrom.sql` names a
/// table in MariaDB, created when missing; its rows join the text file's,
/// rows added later are in force after the periodic refresh, and with the
/// database gone the last rows read stay in force.
#[test]
fn badmailfrom_sql_variant_reads_the_table() {
    let mut db = mariadb::MariaDb::start();
    let h = mariadb_home(&db);
    let home = h.path();
    std::fs::write(home.join("control/badmailfrom"), "text@bad.example\n").unwrap();
    std::fs::write(
        home.join("control/badmailfrom.sql"),
        format!("127.0.0.1;{}:root::indimail:badmailfrom\n", db.port),
    )
    .unwrap();
    let s = Server::start_with(
        home,
        "uring",
        &[("INDIMAIL_NO_DELIVERY", "1"), ("SQL_LIST_REFRESH", "1")],
    );
    let mail_from = |from: &str| {
        let mut c = Client::connect(s.smtp);
        c.reply();
        c.cmd("EHLO client.example.org");
        let r = c.cmd(&format!("MAIL FROM:<{from}>"));
        c.cmd("QUIT");
        r
    };
    assert_eq!(mail_from("text@bad.example").0, 553);
    assert_eq!(mail_from("spam@bad.example").0, 250);
    let sql = |q: &str| {
        let out = std::process::Command::new("mariadb")
            .args(["-h", "127.0.0.1", "-P", &db.port.to_string(), "-u", "root"])
            .args(["indimail", "-e", q])
            .output()
            .expect("the mariadb client (Debian package mariadb-client)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // The server created the table at load, as sqlmatch does.
    sql("INSERT INTO badmailfrom (email) VALUES ('spam@bad.example')");
    wait_until(30, "the new row in force", || {
        mail_from("spam@bad.example").0 == 553
    });
    assert!(s.log().contains("sql lists refreshed"), "{}", s.log());
    db.stop();
    wait_until(30, "a failed refresh reported", || {
        s.log().contains("badmailfrom.sql")
    });
    assert_eq!(mail_from("spam@bad.example").0, 553, "{}", s.log());
    assert_eq!(mail_from("text@bad.example").0, 553);
    assert_eq!(mail_from("good@example.org").0, 250);
}

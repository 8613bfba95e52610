//! Each domain's database server (IndiMail's MCD file, spec 4.1) through `indimail serve`:
//! `indimail dbinfo -i` routes a.example to a second MariaDB server while b.example stays on
//! `host.mysql`; RCPT and delivery find a.example's users on their server, and with that
//! server killed a.example answers "temporary failure" while b.example keeps working.

mod common;
#[path = "../../../lookup/tests/support/mariadb.rs"]
mod mariadb;

use std::net::SocketAddr;

use common::*;

/// RCPT's answer for `email`, from client address 127.0.4.`n`.
fn rcpt(n: u8, addr: SocketAddr, email: &str) -> (u16, String) {
    let mut c = Client::connect_from([127, 0, 4, n], addr);
    assert_eq!(c.reply().0, 220);
    assert_eq!(c.cmd("EHLO test.example").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<x@example.org>").0, 250);
    let r = c.cmd(&format!("RCPT TO:<{email}>"));
    c.cmd("QUIT");
    r
}

#[test]
fn a_routed_domain_is_served_from_its_own_database() {
    let server1 = mariadb::MariaDb::start();
    let mut server2 = mariadb::MariaDb::start();
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    std::fs::create_dir_all(home.join("control")).unwrap();
    std::fs::write(home.join("control/host.mysql"), server1.host_mysql()).unwrap();
    std::fs::write(home.join("control/hostid"), "store1\n").unwrap();
    let port2 = server2.port.to_string();
    let (c, _, e) = indimail(
        home,
        &[
            "dbinfo",
            "-i",
            "-S",
            "127.0.0.1",
            "-p",
            &port2,
            "-D",
            "indimail",
            "-U",
            "root",
            "-P",
            "x",
            "-d",
            "a.example",
            "-m",
            "store1",
        ],
    );
    assert_eq!(c, 0, "{e}");
    for (domain, users) in [("a.example", ["ann", "cid"]), ("b.example", ["bob", "dan"])] {
        let (c, _, e) = indimail(home, &["domain", "add", domain]);
        assert_eq!(c, 0, "{e}");
        for u in users {
            let email = format!("{u}@{domain}");
            let (c, _, e) = indimail(home, &["user", "add", &email, "--password", "Pw-1"]);
            assert_eq!(c, 0, "{e}");
        }
    }
    let count = |db: &mariadb::MariaDb, d: &str| {
        db.sql(&format!(
            "SELECT COUNT(*) FROM indimail.indimail WHERE pw_domain = '{d}' AND pw_name <> 'postmaster'"
        ))
    };
    assert_eq!(count(&server2, "a.example"), "2\n");
    assert_eq!(count(&server1, "a.example"), "0\n");
    assert_eq!(count(&server1, "b.example"), "2\n");
    let ann = maildir_of(home, "ann@a.example");

    let (s, _) = Server::start_services(
        home,
        "uring",
        &[("smtp", SocketAddr::from(([127, 0, 0, 1], 0)))],
        &[],
    );
    let (code, text) = rcpt(1, s.smtp, "ann@a.example");
    assert_eq!(code, 250, "{text}");
    let (code, text) = rcpt(2, s.smtp, "ghost@a.example");
    assert_eq!(code, 550, "a directory answered: {text}");
    let (code, text) = rcpt(3, s.smtp, "bob@b.example");
    assert_eq!(code, 250, "{text}");
    let (code, text) = send_message(
        s.smtp,
        "x@example.org",
        &["ann@a.example"],
        b"Subject: routed\r\n\r\nhello\r\n.\r\n",
    );
    assert_eq!(code, 250, "{text}");
    wait_until(30, "delivery to ann", || maildir_files(&ann).len() == 1);

    // a.example's server is killed: its users (not cached yet) answer 4xx, b.example's 250.
    server2.stop();
    let (code, text) = rcpt(4, s.smtp, "cid@a.example");
    assert!(
        (400..500).contains(&code),
        "temporary for a.example: {code} {text}"
    );
    let (code, text) = rcpt(5, s.smtp, "dan@b.example");
    assert_eq!(code, 250, "b.example keeps working: {text}");
    let log = s.log();
    assert!(!log.contains("panicked"), "{log}");
}

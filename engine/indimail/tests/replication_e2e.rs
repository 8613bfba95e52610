//! IndiMail's clustered directory on real MariaDB replication, through the
//! `indimail serve` binary at the default shard count: a primary
//! (`control/host.master`) and a replica of it (`control/host.mysql`), both
//! started by the test with binlog replication, and a separate clusterinfo
//! server (`control/host.cntrl`) holding the alias domains and the other
//! clusterinfo tables. Users added on the primary
//! are found through the replica; with the primary killed, RCPT checks and
//! AUTH are answered from the replica and admin writes fail temporarily
//! naming the master; with the replica killed (primary back), from the
//! primary. Every message accepted before each kill is delivered.

mod common;
#[path = "../../../lookup/tests/support/mariadb.rs"]
mod mariadb;

use std::net::SocketAddr;

use base64::Engine as _;
use common::*;

const PASSWORD: &str = "Repl-Pass-1";

/// Each check from its own client address, so the shards' sockets all get some.
fn client(n: u8, addr: SocketAddr) -> Client {
    let mut c = Client::connect_from([127, 0, 3, n], addr);
    assert_eq!(c.reply().0, 220);
    assert_eq!(c.cmd("EHLO test.example").0, 250);
    c
}

/// RCPT's answer for `email`, from client address `n`.
fn rcpt(n: u8, addr: SocketAddr, email: &str) -> (u16, String) {
    let mut c = client(n, addr);
    assert_eq!(c.cmd("MAIL FROM:<x@example.org>").0, 250);
    let r = c.cmd(&format!("RCPT TO:<{email}>"));
    c.cmd("QUIT");
    r
}

/// AUTH PLAIN's answer for `email`.
fn auth(n: u8, addr: SocketAddr, email: &str, password: &str) -> (u16, String) {
    let mut c = client(n, addr);
    let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{email}\0{password}"));
    let r = c.cmd(&format!("AUTH PLAIN {token}"));
    c.cmd("QUIT");
    r
}

/// The checks of one phase: `user` (never looked up before) is accepted and
/// can log in, a wrong password and an unknown user are refused for good
/// (5xx, not 4xx: a directory answered), and a message to `user` is
/// accepted.
fn phase(what: &str, smtp: SocketAddr, n: u8, user: &str) {
    let email = format!("{user}@example.com");
    let (code, text) = rcpt(n, smtp, &email);
    assert_eq!(code, 250, "{what}: RCPT {email}: {text}");
    // The alias domain is known from the clusterinfo server.
    let aliased = format!("{user}@example.net");
    let (code, text) = rcpt(n + 4, smtp, &aliased);
    assert_eq!(code, 250, "{what}: RCPT {aliased}: {text}");
    let (code, text) = auth(n + 1, smtp, &email, PASSWORD);
    assert_eq!(code, 235, "{what}: AUTH {email}: {text}");
    let (code, text) = auth(n + 2, smtp, &email, "wrong");
    assert_eq!(code, 535, "{what}: AUTH with a bad password: {text}");
    let ghost = format!("ghost-{user}@example.com");
    let (code, text) = rcpt(n + 3, smtp, &ghost);
    assert_eq!(code, 550, "{what}: RCPT {ghost}: {text}");
    let body = format!("Subject: {what}\r\n\r\nwhile {what}\r\n.\r\n");
    let (code, text) = send_message(smtp, "x@example.org", &[&email], body.as_bytes());
    assert_eq!(code, 250, "{what}: message to {email}: {text}");
}

#[test]
fn clustered_directory_survives_primary_then_replica_loss() {
    let mut primary = mariadb::MariaDb::start_primary();
    let mut replica = mariadb::MariaDb::start_replica(&primary);
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    std::fs::create_dir_all(home.join("control")).unwrap();
    std::fs::write(home.join("control/host.mysql"), replica.host_mysql()).unwrap();
    std::fs::write(home.join("control/host.master"), primary.host_mysql()).unwrap();
    let cntrl = mariadb::MariaDb::start();
    std::fs::write(home.join("control/host.cntrl"), cntrl.host_mysql()).unwrap();

    let users = ["ann", "bob", "cid", "dan"];
    let (c, _, e) = indimail(home, &["domain", "add", "example.com"]);
    assert_eq!(c, 0, "{e}");
    for u in users {
        let email = format!("{u}@example.com");
        let (c, _, e) = indimail(home, &["user", "add", &email, "--password", PASSWORD]);
        assert_eq!(c, 0, "{e}");
    }
    let (c, _, e) = indimail(home, &["domain", "add-alias", "example.net", "example.com"]);
    assert_eq!(c, 0, "{e}");
    assert_eq!(
        cntrl.sql("SELECT alias FROM indimail.aliasdomain"),
        "example.net\n"
    );
    assert_eq!(
        primary.sql("SHOW TABLES FROM indimail LIKE 'aliasdomain'"),
        ""
    );
    replica.wait_caught_up(&primary);
    let maildirs: Vec<_> = users
        .iter()
        .map(|u| maildir_of(home, &format!("{u}@example.com")))
        .collect();

    let (s, _) = Server::start_services(
        home,
        "uring",
        &[("smtp", SocketAddr::from(([127, 0, 0, 1], 0)))],
        &[("SECURE_AUTH", "0")],
    );

    // Both up: lookups come from the replica. Proof: with its SQL thread
    // stopped, a user just added on the primary is unknown to the server,
    // and is found once replication has applied it.
    phase("both up", s.smtp, 10, "ann");
    replica.sql("STOP SLAVE SQL_THREAD");
    let (c, _, e) = indimail(
        home,
        &["user", "add", "dan2@example.com", "--password", PASSWORD],
    );
    assert_eq!(c, 0, "{e}");
    let (code, text) = rcpt(20, s.smtp, "dan2@example.com");
    assert_eq!(code, 550, "the replica has not applied dan2 yet: {text}");
    replica.sql("START SLAVE SQL_THREAD");
    replica.wait_caught_up(&primary);
    wait_until(15, "dan2 through the replica", || {
        rcpt(21, s.smtp, "dan2@example.com").0 == 250
    });

    // The primary is killed: the replica answers; writes fail, temporarily,
    // naming the master.
    primary.stop();
    phase("primary down", s.smtp, 30, "bob");
    let (c, _, e) = indimail(
        home,
        &["user", "add", "eve@example.com", "--password", PASSWORD],
    );
    assert_eq!(c, 111, "a write with the master down is temporary: {e}");
    assert!(e.contains("master 127.0.0.1:"), "names the master: {e}");

    // The primary is back and the replica is killed: the primary answers.
    primary.restart();
    replica.wait_caught_up(&primary);
    replica.stop();
    phase("replica down", s.smtp, 40, "cid");
    let (c, _, e) = indimail(
        home,
        &["user", "add", "eve@example.com", "--password", PASSWORD],
    );
    assert_eq!(c, 0, "the master takes writes again: {e}");

    // Nothing accepted was lost: one message per phase, each delivered.
    for (md, n) in maildirs.iter().zip([1, 1, 1, 0]) {
        wait_until(30, "deliveries", || maildir_files(md).len() == n);
    }
    let log = s.log();
    assert!(!log.contains("panicked"), "{log}");
}

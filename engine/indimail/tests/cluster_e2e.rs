//! One domain across several hosts on loopback: a relay and two mailstores
//! sharing one directory in a private MariaDB. The relay routes each
//! recipient to its mailstore (hostcntrl → host_table → smtp_port), one
//! transaction per mailstore; a mailstore that is down gets its mail
//! deferred on the relay, never bounced and never delivered elsewhere.

mod common;
#[path = "../../../lookup/tests/support/mariadb.rs"]
mod mariadb;

use common::*;
use std::path::Path;

fn host_home(root: &Path, name: &str, db: &mariadb::MariaDb) -> std::path::PathBuf {
    let home = root.join(name);
    std::fs::create_dir_all(home.join("control")).unwrap();
    std::fs::write(
        home.join("control/host.mysql"),
        format!("{}\n", db.host_mysql()),
    )
    .unwrap();
    std::fs::write(home.join("control/hostid"), format!("{name}\n")).unwrap();
    home
}

#[test]
fn relay_routes_each_user_to_its_mailstore() {
    let db = mariadb::MariaDb::start();
    let root = tempfile::tempdir().unwrap();
    let relay = host_home(root.path(), "relay", &db);
    let store1 = host_home(root.path(), "store1", &db);
    let store2 = host_home(root.path(), "store2", &db);
    let admin = |args: &[&str]| {
        let (c, out, err) = indimail(&relay, args);
        assert_eq!(c, 0, "{args:?}: {out}{err}");
    };
    admin(&["domain", "add", "example.com"]);
    for u in ["ann", "bob", "cat"] {
        admin(&[
            "user",
            "add",
            &format!("{u}@example.com"),
            "--password",
            "Pw-123456",
        ]);
    }
    admin(&["hostcntrl", "add", "ann@example.com", "store1"]);
    admin(&["hostcntrl", "add", "bob@example.com", "store2"]);
    admin(&["hostcntrl", "add", "cat@example.com", "store2"]);
    admin(&["hostcntrl", "set-host", "store1", "127.0.0.1"]);
    admin(&["hostcntrl", "set-host", "store2", "127.0.0.1"]);

    let s1 = Server::start_delivering(&store1, "uring");
    let mut s2 = Server::start_delivering(&store2, "epoll");
    admin(&[
        "hostcntrl",
        "set-port",
        "example.com",
        "store1",
        &s1.smtp.port().to_string(),
    ]);
    admin(&[
        "hostcntrl",
        "set-port",
        "example.com",
        "store2",
        &s2.smtp.port().to_string(),
    ]);
    let r = Server::start_delivering(&relay, "uring");

    let (code, text) = send_message(
        r.smtp,
        "sender@example.org",
        &["ann@example.com", "bob@example.com", "cat@example.com"],
        b"Subject: cluster\r\n\r\nhello\r\n.\r\n",
    );
    assert_eq!(code, 250, "{text}");
    wait_until(30, "delivered on the mailstores", || {
        s1.log().contains("success") && s2.log().matches("delivery").filter(|_| true).count() >= 4
    });
    // ann's copy was delivered by store1, bob's and cat's by store2 in one
    // transaction.
    assert!(
        s1.log().contains("to local ann@example.com"),
        "{}",
        s1.log()
    );
    assert!(!s1.log().contains("bob@example.com"), "{}", s1.log());
    assert!(
        s2.log().contains("to local bob@example.com"),
        "{}",
        s2.log()
    );
    assert!(
        s2.log().contains("to local cat@example.com"),
        "{}",
        s2.log()
    );
    assert!(
        s2.log().contains("rcpts=2"),
        "one transaction for store2: {}",
        s2.log()
    );
    wait_until(20, "relay queue drained", || queue_list(&relay).is_empty());

    // store2 goes down: its users' mail is deferred on the relay.
    s2.stop();
    let (code, _) = send_message(
        r.smtp,
        "sender@example.org",
        &["bob@example.com"],
        b"Subject: later\r\n\r\nx\r\n.\r\n",
    );
    assert_eq!(code, 250);
    wait_until(30, "deferral on the relay", || r.log().contains("deferral"));
    let list = queue_list(&relay);
    assert_eq!(list.len(), 1, "{list:?}");
    assert!(list[0].contains("<bob@example.com>:pending"), "{}", list[0]);
    assert!(!r.log().contains("bounce msg"), "{}", r.log());
    assert!(
        !s1.log().contains("bob@example.com"),
        "never delivered elsewhere"
    );
}

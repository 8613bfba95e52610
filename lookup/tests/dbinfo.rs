//! Each domain's database server (spec 4.1: the MCD file `control/mcdinfo` and the `dbinfo`
//! table), on two private MariaDB servers: `dbinfo -i` routes domain A to server 2 while
//! domain B stays on `host.mysql` (server 1); the admin commands write each domain's users to
//! its own server, lookups find them there, an outage of server 2 makes domain A answer
//! "temporary failure" while domain B keeps working, and `dbinfo -s` / `-r` show and remove
//! the record.

mod support;

use std::path::Path;
use std::rc::Rc;

use lookup::{AuthResult, ManualClock, UserStatus};
use support::mariadb::MariaDb;
use support::{program, run, Kind, TestEnv};

const T0: i64 = 1_700_000_000;

fn ok(home: &Path, name: &str, args: &[&str]) -> String {
    let (code, out) = program(home, name, args);
    assert_eq!(code, 0, "{name} {args:?}: {out}");
    out
}

/// `dbinfo -i` for `domain` on `mdahost`, its database on `server:port`.
fn insert(home: &Path, server: &str, port: &str, domain: &str, mdahost: &str) -> i32 {
    let args = [
        "-i", "-S", server, "-p", port, "-o", "0", "-D", "indimail", "-U", "root", "-P", "x", "-d",
        domain, "-m", mdahost,
    ];
    program(home, "dbinfo", &args).0
}

fn count(db: &MariaDb, sql: &str) -> u64 {
    db.sql(sql).trim().parse().unwrap_or(0)
}

fn users_of(db: &MariaDb, domain: &str) -> u64 {
    count(
        db,
        &format!("SELECT COUNT(*) FROM indimail.indimail WHERE pw_domain = '{domain}'"),
    )
}

#[test]
fn a_domain_routed_by_dbinfo_lives_on_its_own_server() {
    let server1 = MariaDb::start();
    let mut server2 = MariaDb::start();
    let env = TestEnv::new(Kind::Sqlite);
    let h = env.path();
    std::fs::write(h.join("control/host.mysql"), server1.host_mysql()).unwrap();
    std::fs::write(h.join("control/hostid"), "store1\n").unwrap();
    let port2 = server2.port.to_string();

    // Bad command lines: IndiMail's usage exit, nothing written.
    assert_eq!(program(h, "dbinfo", &["-i", "-d", "a.example"]).0, 100);
    assert_eq!(program(h, "dbinfo", &["-e"]).0, 100);
    assert_eq!(program(h, "dbinfo", &["-s", "-x"]).0, 100);
    assert!(!h.join("control/mcdinfo").exists());

    assert_eq!(insert(h, "127.0.0.1", &port2, "a.example", "store1"), 0);
    let file = std::fs::read_to_string(h.join("control/mcdinfo")).unwrap();
    assert!(
        file.starts_with(&format!(
            "domain   a.example 0\nserver   127.0.0.1\nmdahost  store1\nport     {port2}\n"
        )),
        "{file}"
    );
    // No host.cntrl: the dbinfo table is in the directory's own database.
    assert_eq!(
        count(
            &server1,
            "SELECT COUNT(*) FROM indimail.dbinfo WHERE domain = 'a.example'"
        ),
        1
    );
    let shown = ok(h, "dbinfo", &["-s"]);
    assert!(
        shown.starts_with("domain         a.example - Non Distributed\nsqlserver[001] 127.0.0.1\n"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("TCP/IP Port    {port2}\n")),
        "{shown}"
    );
    // A second record for a domain that is not clustered is refused.
    let code = insert(h, "127.0.0.2", "3306", "a.example", "store2");
    assert_eq!(code, 1);

    // Admin commands: each domain's rows on its own server.
    ok(h, "vadddomain", &["a.example", "Pm-1"]);
    ok(h, "vadddomain", &["b.example", "Pm-1"]);
    ok(h, "vadduser", &["ann@a.example", "Pw-1"]);
    ok(h, "vadduser", &["bob@b.example", "Pw-2"]);
    assert_eq!(users_of(&server2, "a.example"), 2, "postmaster and ann");
    assert_eq!(users_of(&server1, "a.example"), 0);
    assert_eq!(users_of(&server1, "b.example"), 2, "postmaster and bob");
    assert_eq!(users_of(&server2, "b.example"), 0);
    let domains = ok(h, "vdominfo", &[]);
    assert!(
        domains.contains("a.example") && domains.contains("b.example"),
        "{domains}"
    );

    run(async {
        let clock = Rc::new(ManualClock::new(T0));
        let dir = env.directory(clock, env.config()).await;
        assert!(matches!(
            dir.user_status("ann@a.example").await.unwrap(),
            UserStatus::Active(_)
        ));
        assert!(matches!(
            dir.check_password("ann@a.example", "Pw-1").await.unwrap(),
            AuthResult::Ok(_)
        ));
        assert!(matches!(
            dir.check_password("bob@b.example", "Pw-2").await.unwrap(),
            AuthResult::Ok(_)
        ));
    });

    // Server 2 down: domain A answers "temporary failure", domain B keeps working, and a
    // directory still opens.
    server2.stop();
    run(async {
        let dir = env
            .directory(Rc::new(ManualClock::new(T0)), env.config())
            .await;
        let e = dir.user_status("ann@a.example").await.unwrap_err();
        assert!(e.is_temporary(), "{e}");
        assert!(matches!(
            dir.user_status("bob@b.example").await.unwrap(),
            UserStatus::Active(_)
        ));
    });
    let (code, _) = program(h, "vadduser", &["cid@a.example", "Pw-3"]);
    assert_eq!(code, 111, "a write to the routed server while it is down");
    ok(h, "vadduser", &["dan@b.example", "Pw-4"]);

    // Back up: domain A answers again.
    server2.restart();
    run(async {
        let dir = env
            .directory(Rc::new(ManualClock::new(T0)), env.config())
            .await;
        assert!(matches!(
            dir.user_status("ann@a.example").await.unwrap(),
            UserStatus::Active(_)
        ));
    });

    // -r removes the record from the file and the table; the domain's lookups then go to
    // host.mysql, where it has no rows.
    ok(h, "dbinfo", &["-r", "-d", "a.example", "-m", "store1"]);
    assert_eq!(ok(h, "dbinfo", &["-s"]), "");
    assert_eq!(count(&server1, "SELECT COUNT(*) FROM indimail.dbinfo"), 0);
    let (code, _) = program(h, "dbinfo", &["-r", "-d", "a.example", "-m", "store1"]);
    assert_eq!(code, 1, "removing a record that is not there");
}

//! A clustered directory on real MariaDB replication (spec 4.1): `host.master` names the
//! primary, `host.mysql` the local replica. Lookups read the replica and fall back to the
//! primary, admin changes write the primary only, a write during a primary outage fails
//! temporarily naming the master, and every directory of a process (one per shard) shares
//! one bounded set of connections per server.

mod support;

use std::rc::Rc;

use lookup::{AuthResult, LookupError, ManualClock, UserOptions, UserStatus};
use support::mariadb::MariaDb;
use support::{run, Kind, TestEnv};

const T0: i64 = 1_700_000_000;

/// A home whose `host.mysql` is `replica` and `host.master` is `primary`.
fn clustered_env(primary: &MariaDb, replica: &MariaDb) -> TestEnv {
    let env = TestEnv::new(Kind::Sqlite);
    let ctl = env.path().join("control");
    std::fs::write(ctl.join("host.mysql"), replica.host_mysql()).unwrap();
    std::fs::write(ctl.join("host.master"), primary.host_mysql()).unwrap();
    env
}

fn count(db: &MariaDb, sql: &str) -> u64 {
    db.sql(sql).trim().parse().unwrap_or(0)
}

#[test]
fn reads_from_replica_writes_to_master_and_both_fall_back() {
    let mut primary = MariaDb::start_primary();
    let mut replica = MariaDb::start_replica(&primary);
    let env = clustered_env(&primary, &replica);
    run(async {
        let admin = env.admin_with_domain().await;
        for u in ["ann", "bob", "cid"] {
            admin
                .user_add(&format!("{u}@example.com"), "Pw-1", &UserOptions::default())
                .await
                .unwrap();
        }
        replica.wait_caught_up(&primary);
        let clock = Rc::new(ManualClock::new(T0));
        let dir = env.directory(clock, env.config()).await;
        assert!(matches!(
            dir.user_status("ann@example.com").await.unwrap(),
            UserStatus::Active(_)
        ));

        // Reads go to the replica: with its SQL thread stopped a new user is not seen, and
        // is once replication has applied it (and the change counter moved).
        replica.sql("STOP SLAVE SQL_THREAD");
        admin
            .user_add("dan@example.com", "Pw-1", &UserOptions::default())
            .await
            .unwrap();
        assert_eq!(
            dir.user_status("dan@example.com").await.unwrap(),
            UserStatus::NoSuchUser,
            "read from the replica, which has not applied dan yet"
        );
        replica.sql("START SLAVE SQL_THREAD");
        replica.wait_caught_up(&primary);
        assert!(dir.sync_changes().await.unwrap());
        assert!(matches!(
            dir.user_status("dan@example.com").await.unwrap(),
            UserStatus::Active(_)
        ));
        // Nothing was ever written to the replica by the directory.
        assert_eq!(
            count(&replica, "SELECT COUNT(*) FROM indimail.indimail"),
            count(&primary, "SELECT COUNT(*) FROM indimail.indimail"),
        );

        // The primary dies: lookups and logins are answered by the replica; writes fail
        // with a temporary error naming the master.
        primary.stop();
        assert!(matches!(
            dir.check_password("bob@example.com", "Pw-1").await.unwrap(),
            AuthResult::Ok(_)
        ));
        assert_eq!(
            dir.user_status("ghost@example.com").await.unwrap(),
            UserStatus::NoSuchUser
        );
        let e = admin
            .user_add("eve@example.com", "Pw-1", &UserOptions::default())
            .await
            .unwrap_err();
        assert!(e.is_temporary(), "{e}");
        assert!(e.to_string().contains("master 127.0.0.1:"), "{e}");
        let e = dir
            .set_bounce_flag("bob@example.com", true)
            .await
            .unwrap_err();
        assert!(e.is_temporary(), "{e}");
        // A directory opened during the outage (a shard starting) works from the replica.
        let clock = Rc::new(ManualClock::new(T0));
        let late = env.directory(clock, env.config()).await;
        assert!(matches!(
            late.user_status("cid@example.com").await.unwrap(),
            UserStatus::Active(_)
        ));
        drop(late);

        // The primary is back and the replica dies: lookups go to the primary.
        primary.restart();
        replica.stop();
        // The primary's old connections broke with it; it is retried after the back-off.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let status = loop {
            match dir.user_status("cid-x@example.com").await {
                Ok(s) => break s,
                Err(e) if e.is_temporary() && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(status, UserStatus::NoSuchUser);
        assert!(matches!(
            dir.check_password("cid@example.com", "Pw-1").await.unwrap(),
            AuthResult::Ok(_)
        ));
        admin
            .user_add("eve@example.com", "Pw-1", &UserOptions::default())
            .await
            .unwrap();
        assert!(dir.sync_changes().await.unwrap());
        assert!(matches!(
            dir.user_status("eve@example.com").await.unwrap(),
            UserStatus::Active(_)
        ));

        // Both gone: a temporary failure naming both, never a permanent answer.
        primary.stop();
        let e = dir.user_status("zed@example.com").await.unwrap_err();
        assert!(matches!(e, LookupError::Unavailable(_)), "{e}");
        assert!(
            e.to_string().contains("replica") && e.to_string().contains("master"),
            "{e}"
        );
    });
}

/// Eight directories in one process (eight shards) share one pool per server: the server
/// sees at most `control/mysqlconnections` connections from it however many shards ask.
#[test]
fn connections_per_server_do_not_grow_with_shards() {
    let db = MariaDb::start();
    let env = TestEnv::new(Kind::Sqlite);
    let ctl = env.path().join("control");
    std::fs::write(ctl.join("host.mysql"), db.host_mysql()).unwrap();
    std::fs::write(ctl.join("mysqlconnections"), "3\n").unwrap();
    run(async {
        let admin = env.admin_with_domain().await;
        let mut dirs = Vec::new();
        for _ in 0..8 {
            let clock = Rc::new(ManualClock::new(T0));
            dirs.push(Rc::new(env.directory(clock, env.config()).await));
        }
        // 8 shards × 20 concurrent misses each.
        let mut asks = Vec::new();
        for (i, d) in dirs.iter().enumerate() {
            for n in 0..20 {
                let d = Rc::clone(d);
                asks.push(tokio::task::spawn_local(async move {
                    d.user_status(&format!("u{i}-{n}@example.com")).await
                }));
            }
        }
        for a in asks {
            assert_eq!(a.await.unwrap().unwrap(), UserStatus::NoSuchUser);
        }
        // Ours plus the one of the `mariadb` client asking.
        let connected = count(
            &db,
            "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS \
             WHERE VARIABLE_NAME = 'THREADS_CONNECTED'",
        );
        assert!(connected <= 3 + 1, "{connected} connections");
        drop(admin);
    });
}

/// `host.cntrl` names the central clusterinfo server: `hostcntrl`, `host_table`, `smtp_port`
/// and `aliasdomain` are written and read there, the users stay in the directory's own
/// database.
#[test]
fn clusterinfo_tables_live_on_host_cntrl() {
    let db = MariaDb::start();
    let cntrl = MariaDb::start();
    let env = TestEnv::new(Kind::Sqlite);
    let ctl = env.path().join("control");
    std::fs::write(ctl.join("host.mysql"), db.host_mysql()).unwrap();
    std::fs::write(ctl.join("host.cntrl"), cntrl.host_mysql()).unwrap();
    run(async {
        let admin = env.admin_with_domain().await;
        admin
            .user_add("ann@example.com", "Pw-1", &UserOptions::default())
            .await
            .unwrap();
        admin
            .alias_domain_add("example.net", "example.com")
            .await
            .unwrap();
        admin
            .host_set("store1", "10.0.0.11".parse().unwrap())
            .await
            .unwrap();
        admin
            .hostcntrl_add("ann@example.com", "store1")
            .await
            .unwrap();
        admin
            .smtp_port_set("example.com", "store1", "*", 2525)
            .await
            .unwrap();
        for (server, table, rows) in [
            (&cntrl, "hostcntrl", 1),
            (&cntrl, "host_table", 1),
            (&cntrl, "smtp_port", 1),
            (&cntrl, "aliasdomain", 1),
            (&db, "indimail", 1),
        ] {
            assert_eq!(
                count(server, &format!("SELECT COUNT(*) FROM indimail.{table}")),
                rows,
                "{table}"
            );
        }
        // The directory's own server has no clusterinfo tables at all.
        assert_eq!(db.sql("SHOW TABLES FROM indimail LIKE 'hostcntrl'"), "");
        assert_eq!(cntrl.sql("SHOW TABLES FROM indimail LIKE 'indimail'"), "");

        let clock = Rc::new(ManualClock::new(T0));
        let dir = env.directory(clock, env.config()).await;
        let store = dir.host_of("ann@example.net").await.unwrap().unwrap();
        assert_eq!(
            (store.host_id.as_str(), store.ip.as_str(), store.port),
            ("store1", "10.0.0.11", 2525)
        );
        assert!(matches!(
            dir.user_status("ann@example.net").await.unwrap(),
            UserStatus::Active(_)
        ));
    });
}

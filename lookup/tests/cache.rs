//! The per-shard cache over a real store: TTL expiry, negative entries, single flight,
//! invalidation after an admin change, background refresh, and answers from cache while the
//! private MariaDB is down.

mod support;

use std::rc::Rc;
use std::time::Duration;

use lookup::{
    AuthResult, Clock, Directory, LookupError, ManualClock, RefreshMode, SmtpReply, UserOptions,
    UserStatus,
};
use support::{run, Kind, TestEnv};

const T0: i64 = 1_700_000_000;

async fn setup(env: &TestEnv) -> lookup::Admin {
    let admin = env.admin_with_domain().await;
    admin
        .user_add("amy@example.com", "pw", &UserOptions::default())
        .await
        .unwrap();
    admin
}

fn ttl_expiry_and_negative_entries(kind: Kind) {
    let env = TestEnv::new(kind);
    run(async {
        let admin = setup(&env).await;
        // No change polling: only TTLs make changes visible.
        let mut cfg = env.config();
        cfg.change_poll = Duration::from_secs(1_000_000);
        let clock = Rc::new(ManualClock::new(T0));
        let dir = env.directory(clock.clone(), cfg).await;

        assert_eq!(
            dir.user_status("ben@example.com").await.unwrap(),
            UserStatus::NoSuchUser
        );
        admin
            .user_add("ben@example.com", "pw", &UserOptions::default())
            .await
            .unwrap();
        // Negative entry still served within its TTL (10 s)...
        clock.advance(Duration::from_secs(9));
        assert_eq!(
            dir.user_status("ben@example.com").await.unwrap(),
            UserStatus::NoSuchUser
        );
        // ...and refreshed (inline mode) once it expires.
        clock.advance(Duration::from_secs(2));
        assert!(matches!(
            dir.user_status("ben@example.com").await.unwrap(),
            UserStatus::Active(_)
        ));

        assert!(matches!(
            dir.user_status("amy@example.com").await.unwrap(),
            UserStatus::Active(_)
        ));
        admin.user_del("amy@example.com").await.unwrap();
        clock.advance(Duration::from_secs(59));
        assert!(
            matches!(
                dir.user_status("amy@example.com").await.unwrap(),
                UserStatus::Active(_)
            ),
            "positive entry fresh for 60 s"
        );
        clock.advance(Duration::from_secs(2));
        assert_eq!(
            dir.user_status("amy@example.com").await.unwrap(),
            UserStatus::NoSuchUser
        );
    });
}

fn invalidation_after_admin_change(kind: Kind) {
    let env = TestEnv::new(kind);
    run(async {
        let admin = setup(&env).await;
        let clock = Rc::new(ManualClock::new(T0));
        let dir = env.directory(clock.clone(), env.config()).await; // poll every 1 s
        assert!(matches!(
            dir.check_password("amy@example.com", "pw").await.unwrap(),
            AuthResult::Ok(_)
        ));
        admin
            .user_passwd("amy@example.com", "new", Default::default())
            .await
            .unwrap();
        // Before the poll interval: the cached hash still answers.
        clock.advance(Duration::from_millis(500));
        assert!(matches!(
            dir.check_password("amy@example.com", "pw").await.unwrap(),
            AuthResult::Ok(_)
        ));
        // After it: the counter moved, the cache is invalid, the new password counts.
        clock.advance(Duration::from_millis(600));
        assert_eq!(
            dir.check_password("amy@example.com", "pw").await.unwrap(),
            AuthResult::BadPassword
        );
        assert!(matches!(
            dir.check_password("amy@example.com", "new").await.unwrap(),
            AuthResult::Ok(_)
        ));
        assert!(!dir.sync_changes().await.unwrap(), "no further change");
    });
}

fn single_flight(kind: Kind) {
    let env = TestEnv::new(kind);
    run(async {
        let _admin = setup(&env).await;
        let dir = Rc::new(
            env.directory(Rc::new(ManualClock::new(T0)), env.config())
                .await,
        );
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let d = Rc::clone(&dir);
                tokio::task::spawn_local(async move { d.user_status("amy@example.com").await })
            })
            .collect();
        for t in tasks {
            assert!(matches!(t.await.unwrap().unwrap(), UserStatus::Active(_)));
        }
        let s = dir.cache_stats();
        // One fetch for the domain key, one for the user key; everyone else
        // waited for them or (when a fetch finished before a task first
        // looked, as on a loaded machine) found the answer cached.
        assert_eq!(s.misses, 2, "{s:?}");
        assert!(s.waits + s.hits >= 38, "{s:?}");
    });
}

fn background_refresh_serves_stale(kind: Kind) {
    let env = TestEnv::new(kind);
    run(async {
        let admin = setup(&env).await;
        let mut cfg = env.config();
        cfg.change_poll = Duration::from_secs(1_000_000);
        let clock = Rc::new(ManualClock::new(T0));
        let c: Rc<dyn Clock> = clock.clone();
        let dir = Directory::open_with(cfg, c, RefreshMode::Background)
            .await
            .unwrap();
        assert!(matches!(
            dir.user_status("amy@example.com").await.unwrap(),
            UserStatus::Active(_)
        ));
        admin.user_del("amy@example.com").await.unwrap();
        clock.advance(Duration::from_secs(61)); // past TTL, inside the refresh window
        assert!(
            matches!(
                dir.user_status("amy@example.com").await.unwrap(),
                UserStatus::Active(_)
            ),
            "stale answer served at once"
        );
        // Let the background refresh finish.
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if dir.cache_stats().misses >= 3 {
                break;
            }
        }
        let mut seen = None;
        for _ in 0..200 {
            let st = dir.user_status("amy@example.com").await.unwrap();
            if st == UserStatus::NoSuchUser {
                seen = Some(st);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(seen, Some(UserStatus::NoSuchUser));
        assert!(dir.cache_stats().stale_hits >= 1);
    });
}

/// MariaDB only: an outage is a server that stops answering.
#[test]
fn database_down_answers_from_cache_else_tempfails() {
    let mut env = TestEnv::new(Kind::Mariadb);
    run(async {
        let _admin = setup(&env).await;
        let clock = Rc::new(ManualClock::new(T0));
        let dir = env.directory(clock.clone(), env.config()).await;
        assert!(matches!(
            dir.user_status("amy@example.com").await.unwrap(),
            UserStatus::Active(_)
        ));
        assert_eq!(
            dir.user_status("nobody@example.com").await.unwrap(),
            UserStatus::NoSuchUser
        );
        env.db.as_mut().unwrap().stop();

        // Fresh entries answer without the database.
        assert!(matches!(
            dir.user_status("amy@example.com").await.unwrap(),
            UserStatus::Active(_)
        ));
        // Past TTL and refresh window: the fetch fails, the old positive answer is served.
        clock.advance(Duration::from_secs(600));
        assert!(matches!(
            dir.user_status("amy@example.com").await.unwrap(),
            UserStatus::Active(_)
        ));
        assert!(matches!(
            dir.check_password("amy@example.com", "pw").await.unwrap(),
            AuthResult::Ok(_)
        ));
        assert!(dir.cache_stats().fallbacks >= 1);
        // A stale negative answer is not trusted: temporary failure, 451 4.3.0.
        let e = dir.user_status("nobody@example.com").await.unwrap_err();
        assert!(matches!(e, LookupError::Unavailable(_)), "{e:?}");
        assert!(e.is_temporary());
        assert_eq!(UserStatus::smtp_reply_for_error(&e), SmtpReply::TEMPFAIL);
        assert_eq!(SmtpReply::TEMPFAIL.code, 451);
        assert_eq!(SmtpReply::TEMPFAIL.enhanced, "4.3.0");
        // Never seen: temporary failure.
        let e = dir.user_status("new@example.com").await.unwrap_err();
        assert!(e.is_temporary());
        assert!(dir
            .relay_allowed("192.0.2.1".parse().unwrap())
            .await
            .is_err());
        // Past max_stale: nothing left to answer with.
        clock.advance(Duration::from_secs(3600));
        assert!(dir
            .user_status("amy@example.com")
            .await
            .unwrap_err()
            .is_temporary());
    });
}

both_backends!(
    ttl_expiry_and_negative_entries,
    invalidation_after_admin_change,
    single_flight,
    background_refresh_serves_stale,
);

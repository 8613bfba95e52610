//! The directory's query API and admin changes, run against the embedded SQLite store and a
//! private MariaDB with the same test bodies.

mod support;

use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;

use lookup::catchall::Handler;
use lookup::checkpassword::{self, Outcome};
use lookup::{
    AuthResult, Destination, DomainChange, DomainOptions, HashMethod, Limits, LookupError,
    ManualClock, PasswordOptions, Quota, UserChange, UserFlags, UserOptions, UserStatus,
};
use support::{run, Kind, TestEnv};

const T0: i64 = 1_700_000_000;

fn opts() -> UserOptions {
    UserOptions::default()
}

fn domain_and_user_lifecycle(kind: Kind) {
    let env = TestEnv::new(kind);
    run(async {
        let admin = env.admin().await;
        let info = admin
            .domain_add("Example.COM", &DomainOptions::default())
            .await
            .unwrap();
        assert_eq!(info.name, "example.com");
        let ctl = env.path().join("control");
        assert_eq!(
            std::fs::read_to_string(ctl.join("rcpthosts")).unwrap(),
            "example.com\n"
        );
        assert_eq!(
            std::fs::read_to_string(ctl.join("virtualdomains")).unwrap(),
            "example.com:example.com\n"
        );
        assert!(env
            .path()
            .join("domains/example.com/.qmail-default")
            .is_file());

        let u = admin
            .user_add("Manny@example.com", "s3cret", &opts())
            .await
            .unwrap();
        assert_eq!(u.dir, env.maildir("L2P/example.com/manny"));
        for sub in ["cur", "new", "tmp"] {
            assert!(u.dir.join("Maildir").join(sub).is_dir());
        }
        assert!(u.passwd.starts_with("$5$"), "default SHA-256: {}", u.passwd);
        assert_eq!(
            u.quota,
            Quota::Limit {
                bytes: lookup::DEFAULT_HARD_QUOTA,
                count: None
            }
        );

        let clock = Rc::new(ManualClock::new(T0));
        let dir = env.directory(clock.clone(), env.config()).await;
        let st = dir.user_status("manny@EXAMPLE.com").await.unwrap();
        assert!(matches!(st, UserStatus::Active(ref u) if u.name == "manny"));
        assert_eq!(st.smtp_reply(), None);
        let st = dir.user_status("nobody@example.com").await.unwrap();
        assert_eq!(st, UserStatus::NoSuchUser);
        let r = st.smtp_reply().unwrap();
        assert_eq!((r.code, r.enhanced), (550, "5.1.1"));
        assert_eq!(
            dir.user_status("x@elsewhere.org").await.unwrap(),
            UserStatus::NotVirtualDomain
        );
        assert!(dir.is_virtual_domain("example.com").await.unwrap());
        assert!(!dir.is_virtual_domain("elsewhere.org").await.unwrap());

        assert!(matches!(
            dir.check_password("manny@example.com", "s3cret")
                .await
                .unwrap(),
            AuthResult::Ok(_)
        ));
        assert_eq!(
            dir.check_password("manny@example.com", "wrong")
                .await
                .unwrap(),
            AuthResult::BadPassword
        );
        assert_eq!(
            dir.check_password("ghost@example.com", "x").await.unwrap(),
            AuthResult::NoSuchUser
        );

        // Each admin change becomes visible once the change poll interval has passed.
        let sync = || async {
            clock.advance(Duration::from_secs(2));
            dir.sync_changes().await.unwrap();
        };
        admin
            .user_passwd(
                "manny@example.com",
                "n3w",
                PasswordOptions {
                    hash: Some(HashMethod::Sha512),
                    ..PasswordOptions::default()
                },
            )
            .await
            .unwrap();
        sync().await;
        let u = dir.user("manny@example.com").await.unwrap().unwrap();
        assert!(u.passwd.starts_with("$6$"));
        assert!(matches!(
            dir.check_password("manny@example.com", "n3w")
                .await
                .unwrap(),
            AuthResult::Ok(_)
        ));

        admin
            .user_mod(
                "manny@example.com",
                &UserChange {
                    toggle_active: true,
                    ..UserChange::default()
                },
            )
            .await
            .unwrap();
        sync().await;
        let st = dir.user_status("manny@example.com").await.unwrap();
        assert!(matches!(st, UserStatus::Inactive(_)));
        assert_eq!(st.smtp_reply().unwrap().enhanced, "5.2.1");
        assert!(matches!(
            dir.check_password("manny@example.com", "n3w")
                .await
                .unwrap(),
            AuthResult::Inactive(_)
        ));

        admin
            .user_mod(
                "manny@example.com",
                &UserChange {
                    toggle_active: true,
                    set_flags: UserFlags::BOUNCE_MAIL | UserFlags::NO_RELAY,
                    gecos: Some("Manny Calavera".into()),
                    quota: Some(Quota::parse("40000,2000").unwrap()),
                    ..UserChange::default()
                },
            )
            .await
            .unwrap();
        sync().await;
        let st = dir.user_status("manny@example.com").await.unwrap();
        let UserStatus::OverQuota(u) = &st else {
            panic!("{st:?}")
        };
        assert_eq!(u.gecos, "Manny Calavera");
        assert_eq!(u.quota_raw, "40000,2000");
        let r = st.smtp_reply().unwrap();
        assert_eq!((r.code, r.enhanced), (552, "5.2.2"));
        let auth = dir
            .check_password("manny@example.com", "n3w")
            .await
            .unwrap();
        assert_eq!(auth.exit_code(), 3, "NO_RELAY: ok but no relay");

        admin
            .set_bounce_flag("manny@example.com", false)
            .await
            .unwrap();
        admin
            .set_quota("manny@example.com", Quota::Unlimited)
            .await
            .unwrap();
        sync().await;
        let st = dir.user_status("manny@example.com").await.unwrap();
        let UserStatus::Active(u) = st else { panic!() };
        assert_eq!(u.quota, Quota::Unlimited);

        let home = u.dir.clone();
        admin.user_del("manny@example.com").await.unwrap();
        assert!(!home.exists());
        sync().await;
        assert_eq!(
            dir.user_status("manny@example.com").await.unwrap(),
            UserStatus::NoSuchUser
        );

        admin.domain_del("example.com").await.unwrap();
        sync().await;
        assert!(!dir.is_virtual_domain("example.com").await.unwrap());
        assert_eq!(std::fs::read_to_string(ctl.join("rcpthosts")).unwrap(), "");
        assert!(!env.path().join("domains/example.com").exists());
        dir.close().await;
        admin.close().await;
    });
}

/// example.com (alias domain example.net) with user anna and the alias sales
/// (`anna@example.com`, `&boss@other.org`).
async fn anna_and_sales(env: &TestEnv) -> lookup::Admin {
    let admin = env.admin().await;
    admin
        .domain_add("example.com", &DomainOptions::default())
        .await
        .unwrap();
    admin
        .user_add("anna@example.com", "pw", &opts())
        .await
        .unwrap();
    for line in ["anna@example.com", "&boss@other.org"] {
        admin.alias_add("sales@example.com", line).await.unwrap();
    }
    admin
        .alias_domain_add("example.net", "example.com")
        .await
        .unwrap();
    admin
}

fn aliases_and_alias_domains(kind: Kind) {
    let env = TestEnv::new(kind);
    run(async {
        let admin = anna_and_sales(&env).await;

        let dir = env
            .directory(Rc::new(ManualClock::new(T0)), env.config())
            .await;
        assert_eq!(
            dir.user_status("sales@example.com").await.unwrap(),
            UserStatus::AliasOnly
        );
        assert_eq!(
            dir.aliases("sales@example.net").await.unwrap(),
            vec![
                "&boss@other.org".to_string(),
                "anna@example.com".to_string()
            ]
        );
        assert!(dir.aliases("anna@example.com").await.unwrap().is_empty());
        assert_eq!(
            dir.real_domain("EXAMPLE.net").await.unwrap().as_deref(),
            Some("example.com")
        );
        assert!(matches!(
            dir.user_status("anna@example.net").await.unwrap(),
            UserStatus::Active(_)
        ));
        let virt = std::fs::read_to_string(env.path().join("control/virtualdomains")).unwrap();
        assert!(virt.contains("example.net:example.com"), "{virt}");

        let list = admin.alias_list("example.com").await.unwrap();
        assert_eq!(list.len(), 2);
        admin
            .alias_del("sales@example.com", Some("anna@example.com"))
            .await
            .unwrap();
        assert_eq!(
            admin.alias_list("sales@example.com").await.unwrap().len(),
            1
        );
        assert!(matches!(
            admin.alias_del("nobody@example.com", None).await,
            Err(LookupError::AliasNotFound(_))
        ));
        assert!(matches!(
            admin
                .alias_add("sales@example.com", "&boss@other.org")
                .await,
            Err(LookupError::AliasExists(_))
        ));
        // Deleting the real domain removes its alias domain.
        admin.domain_del("example.com").await.unwrap();
        let virt = std::fs::read_to_string(env.path().join("control/virtualdomains")).unwrap();
        assert_eq!(virt, "");
    });
}

fn hosts_limits_relay(kind: Kind) {
    let env = TestEnv::new(kind);
    run(async {
        let admin = env.admin_with_domain().await;
        admin
            .user_add("bob@example.com", "pw", &opts())
            .await
            .unwrap();
        admin
            .hostcntrl_add("*@example.com", "store1")
            .await
            .unwrap();
        admin
            .hostcntrl_add("bob@example.com", "store2")
            .await
            .unwrap();
        admin
            .host_set("store1", "10.0.0.1".parse().unwrap())
            .await
            .unwrap();
        admin
            .host_set("store2", "10.0.0.2".parse().unwrap())
            .await
            .unwrap();
        admin
            .smtp_port_set("example.com", "store2", "*", 2525)
            .await
            .unwrap();
        admin
            .limits_set(&Limits {
                domain: "example.com".into(),
                maxpopaccounts: 10,
                defaultquota: 1_000_000,
                disable_imap: true,
                domain_expiry: -1,
                passwd_expiry: -1,
                ..Limits::default()
            })
            .await
            .unwrap();
        // The row acts once the domain's limits are on (vmoddomain -l 1).
        admin
            .domain_mod(
                "example.com",
                &lookup::DomainChange {
                    limits: Some(true),
                    handler: None,
                },
            )
            .await
            .unwrap();

        let clock = Rc::new(ManualClock::new(T0));
        let dir = env.directory(clock.clone(), env.config()).await;
        let h = dir.host_of("bob@example.com").await.unwrap().unwrap();
        assert_eq!(h.to_string(), "example.com:10.0.0.2:2525");
        let h = dir.host_of("carol@example.com").await.unwrap().unwrap();
        assert_eq!(h.to_string(), "example.com:10.0.0.1:25");
        let l = dir.limits("example.com").await.unwrap().unwrap();
        assert_eq!(l.maxpopaccounts, 10);
        assert!(l.disable_imap && !l.disable_pop);
        assert!(dir.limits("nolimits.org").await.unwrap().is_none());
        // Domain default quota comes from vlimits.
        let u = admin
            .user_add("dave@example.com", "pw", &opts())
            .await
            .unwrap();
        assert_eq!(
            u.quota,
            Quota::Limit {
                bytes: 1_000_000,
                count: None
            }
        );
        assert_eq!(
            admin
                .hostcntrl_list(Some("example.com"))
                .await
                .unwrap()
                .len(),
            2
        );
        admin
            .hostcntrl_mod("bob@example.com", "store1")
            .await
            .unwrap();
        admin.hostcntrl_del("bob@example.com").await.unwrap();
        assert!(matches!(
            admin.hostcntrl_del("bob@example.com").await,
            Err(LookupError::HostNotFound(_))
        ));

        // POP/IMAP-before-SMTP relay window (60 min by default).
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(!dir.relay_allowed(ip).await.unwrap());
        dir.record_relay("bob@example.com", ip).await.unwrap();
        assert!(dir.relay_allowed(ip).await.unwrap());
        assert!(!dir
            .relay_allowed("192.0.2.8".parse().unwrap())
            .await
            .unwrap());
        clock.advance(Duration::from_secs(59 * 60));
        assert!(dir.relay_allowed(ip).await.unwrap());
        clock.advance(Duration::from_secs(2 * 60));
        assert!(!dir.relay_allowed(ip).await.unwrap());

        // lastauth: one row per user and service, replaced on each login.
        let bob = dir.user("bob@example.com").await.unwrap().unwrap();
        let before = dir.lastauth("bob@example.com").await.unwrap();
        assert!(before.iter().all(|r| r.service == "add"), "{before:?}");
        dir.record_lastauth(&bob, "imap", ip).await.unwrap();
        clock.advance(Duration::from_secs(10));
        dir.record_lastauth(&bob, "pop3", ip).await.unwrap();
        clock.advance(Duration::from_secs(10));
        let ip2: IpAddr = "2001:db8::7".parse().unwrap();
        dir.record_lastauth(&bob, "pop3", ip2).await.unwrap();
        let rows: Vec<_> = dir
            .lastauth("bob@example.com")
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.service != "add")
            .collect();
        let t = T0 + 61 * 60;
        assert_eq!(
            rows,
            vec![
                lookup::LastAuth {
                    service: "imap".into(),
                    remote_ip: "192.0.2.7".into(),
                    time: t,
                },
                lookup::LastAuth {
                    service: "pop3".into(),
                    remote_ip: "2001:db8::7".into(),
                    time: t + 20,
                },
            ]
        );
        assert!(matches!(
            dir.record_lastauth(&bob, "much-too-long", ip).await,
            Err(LookupError::FieldTooLong { .. })
        ));
    });
}

fn admin_errors(kind: Kind) {
    let env = TestEnv::new(kind);
    run(async {
        let admin = env.admin().await;
        assert_eq!(
            admin
                .user_add("a@nowhere.org", "pw", &opts())
                .await
                .unwrap_err(),
            LookupError::DomainNotFound("nowhere.org".into())
        );
        admin
            .domain_add("example.com", &DomainOptions::default())
            .await
            .unwrap();
        assert_eq!(
            admin
                .domain_add("example.com", &DomainOptions::default())
                .await
                .unwrap_err(),
            LookupError::DomainExists("example.com".into())
        );
        admin
            .user_add("a@example.com", "pw", &opts())
            .await
            .unwrap();
        let e = admin
            .user_add("A@example.com", "pw", &opts())
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "user already exists: a@example.com");
        let e = admin
            .user_add("b@example.com", &"x".repeat(200), &opts())
            .await
            .unwrap_err();
        assert!(e.to_string().starts_with("password too long"), "{e}");
        assert!(matches!(
            admin.user_del("zz@example.com").await,
            Err(LookupError::UserNotFound(_))
        ));
        assert!(matches!(
            admin.user_info("bad address").await,
            Err(LookupError::InvalidAddress(_))
        ));
        assert!(matches!(
            admin
                .domain_add("bad_dom ain", &DomainOptions::default())
                .await,
            Err(LookupError::InvalidDomain(_))
        ));
        assert!(matches!(
            admin.domain_del("nowhere.org").await,
            Err(LookupError::DomainNotFound(_))
        ));
        // A failed add leaves nothing behind.
        assert!(!env.maildir("A2E/example.com/b").exists());
    });
}

fn hashed_directories_and_schemes(kind: Kind) {
    let env = TestEnv::new(kind);
    run(async {
        let admin = env.admin().await;
        admin
            .domain_add(
                "example.com",
                &DomainOptions {
                    users_per_level: Some(2),
                    base_path: None,
                },
            )
            .await
            .unwrap();
        let schemes = [
            HashMethod::Des,
            HashMethod::Md5,
            HashMethod::Sha256,
            HashMethod::Sha512,
            HashMethod::Yescrypt,
        ];
        let mut dirs = Vec::new();
        for (i, m) in schemes.iter().enumerate() {
            let u = admin
                .user_add(
                    &format!("u{i}@example.com"),
                    "pw",
                    &UserOptions {
                        hash: Some(*m),
                        cram: *m == HashMethod::Md5,
                        ..UserOptions::default()
                    },
                )
                .await
                .unwrap();
            dirs.push(u.dir);
        }
        let base = env.maildir("T2Zsym/example.com");
        assert_eq!(dirs[0], base.join("u0"));
        assert_eq!(dirs[1], base.join("u1"));
        assert_eq!(dirs[2], base.join("0/u2"));
        assert_eq!(dirs[4], base.join("1/u4"));
        let dir = env
            .directory(Rc::new(ManualClock::new(T0)), env.config())
            .await;
        for (i, scheme) in schemes.iter().enumerate() {
            let who = format!("u{i}@example.com");
            assert!(
                matches!(
                    dir.check_password(&who, "pw").await.unwrap(),
                    AuthResult::Ok(_)
                ),
                "{scheme:?}"
            );
            assert_eq!(
                dir.check_password(&who, "pW").await.unwrap(),
                AuthResult::BadPassword
            );
        }
        assert_eq!(
            dir.cram_secret("u1@example.com").await.unwrap().as_deref(),
            Some("pw")
        );
        assert_eq!(dir.cram_secret("u2@example.com").await.unwrap(), None);
        assert_eq!(admin.domain_info("example.com").await.unwrap().users, 5);
        // Listing pages.
        let page = admin.user_page(Some("example.com"), None, 3).await.unwrap();
        assert_eq!(page.len(), 3);
        let last = page.last().unwrap();
        let rest = admin
            .user_page(Some("example.com"), Some((&last.domain, &last.name)), 3)
            .await
            .unwrap();
        assert_eq!(rest.len(), 2);
    });
}

fn checkpassword_protocol(kind: Kind) {
    let env = TestEnv::new(kind);
    run(async {
        let admin = env.admin_with_domain().await;
        let u = admin
            .user_add("eve@example.com", "pw", &opts())
            .await
            .unwrap();
        let dir = env
            .directory(Rc::new(ManualClock::new(T0)), env.config())
            .await;
        let prog = vec!["/bin/true".to_string()];
        let ok =
            checkpassword::decide(&dir, b"eve@example.com\0pw\x00123\0", &prog, None, None).await;
        // Dovecot's checkpassword-reply: USER, HOME, and the uid/gid owning the home named
        // in EXTRA.
        let meta = std::fs::metadata(&u.dir).unwrap();
        use std::os::unix::fs::MetadataExt;
        let expected = Outcome::Exec {
            program: prog.clone(),
            env: vec![
                ("USER".into(), "eve@example.com".into()),
                ("HOME".into(), u.dir.to_string_lossy().into_owned()),
                ("userdb_uid".into(), meta.uid().to_string()),
                ("userdb_gid".into(), meta.gid().to_string()),
                ("EXTRA".into(), "userdb_uid userdb_gid".into()),
            ],
        };
        assert_eq!(ok, expected);
        // The proxies' login name `user@domain:clientip` (spec 6).
        let r = checkpassword::decide(&dir, b"eve@example.com:192.0.2.1\0pw\0", &prog, None, None)
            .await;
        assert_eq!(r, expected);
        let r = checkpassword::decide(&dir, b"eve@example.com:::1\0bad\0", &[], None, None).await;
        assert_eq!(r, Outcome::Exit(1));
        let r = checkpassword::decide(&dir, b"eve@example.com\0bad\0", &[], None, None).await;
        assert_eq!(r, Outcome::Exit(1));
        let r = checkpassword::decide(&dir, b"eve\0pw\0", &[], None, Some("example.com")).await;
        assert_eq!(r, Outcome::Exit(0));
        let r = checkpassword::decide(&dir, b"eve\0pw\0", &[], None, None).await;
        assert_eq!(r, Outcome::Exit(1));
        let r = checkpassword::decide(&dir, b"garbage", &[], None, None).await;
        assert_eq!(r, Outcome::Exit(2));
        // Dovecot userdb lookup: no password check, AUTHORIZED=2 exported.
        let r = checkpassword::decide(&dir, b"eve@example.com\0\0", &prog, Some("1"), None).await;
        let Outcome::Exec { env, .. } = r else {
            panic!("{r:?}")
        };
        assert!(env.contains(&("AUTHORIZED".into(), "2".into())));
    });
}

/// `-m SCRAM-SHA-256`: the `scram` column is filled beside `pw_passwd`, replaced or cleared
/// by password changes, kept when the user moves between active and inactive.
fn scram_secrets(kind: Kind) {
    let env = TestEnv::new(kind);
    run(async {
        let admin = env.admin_with_domain().await;
        let with_scram = |salt: Option<&str>, iterations: Option<u32>| {
            Some(lookup::ScramOptions {
                salt: salt.map(str::to_string),
                iterations,
            })
        };
        admin
            .user_add(
                "sam@example.com",
                "pencil",
                &UserOptions {
                    scram: with_scram(Some("NaCl-salt"), None),
                    ..opts()
                },
            )
            .await
            .unwrap();
        let expected = lookup::password::scram_sha256("pencil", Some(b"NaCl-salt"), 4096).unwrap();
        let clock = Rc::new(ManualClock::new(T0));
        let dir = env.directory(clock.clone(), env.config()).await;
        let sync = || async {
            clock.advance(Duration::from_secs(2));
            dir.sync_changes().await.unwrap();
        };
        assert_eq!(
            dir.scram_secret("sam@example.com").await.unwrap(),
            Some(expected)
        );
        assert!(matches!(
            dir.check_password("sam@example.com", "pencil")
                .await
                .unwrap(),
            AuthResult::Ok(_)
        ));
        // Users added without -m have none.
        admin
            .user_add("plain@example.com", "pw", &opts())
            .await
            .unwrap();
        assert_eq!(dir.scram_secret("plain@example.com").await.unwrap(), None);

        // A new password without -m clears the old secret (it would still log in).
        admin
            .user_passwd("sam@example.com", "new", PasswordOptions::default())
            .await
            .unwrap();
        sync().await;
        assert_eq!(dir.scram_secret("sam@example.com").await.unwrap(), None);
        admin
            .user_passwd(
                "sam@example.com",
                "new",
                PasswordOptions {
                    scram: with_scram(None, None),
                    ..PasswordOptions::default()
                },
            )
            .await
            .unwrap();
        sync().await;
        let s = dir.scram_secret("sam@example.com").await.unwrap().unwrap();
        assert!(s.starts_with("{SCRAM-SHA-256}4096,"), "{s}");
        let u = admin
            .user_mod(
                "sam@example.com",
                &UserChange {
                    password: Some((
                        "third".into(),
                        PasswordOptions {
                            scram: with_scram(None, Some(5000)),
                            ..PasswordOptions::default()
                        },
                    )),
                    ..UserChange::default()
                },
            )
            .await
            .unwrap();
        let s = u.scram.clone().unwrap();
        assert!(s.starts_with("{SCRAM-SHA-256}5000,"), "{s}");
        let u = admin
            .user_mod(
                "sam@example.com",
                &UserChange {
                    toggle_active: true,
                    ..UserChange::default()
                },
            )
            .await
            .unwrap();
        assert!(!u.active);
        assert_eq!(u.scram, Some(s));
        // An encrypted password cannot give a SCRAM secret.
        let e = admin
            .user_passwd(
                "sam@example.com",
                "$5$abc$def",
                PasswordOptions {
                    encrypted: true,
                    scram: with_scram(None, None),
                    ..PasswordOptions::default()
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(e, LookupError::InvalidPassword(_)), "{e}");
    });
}

/// The domain's `.qmail-default` (catch-all) and extension addresses (`QMAIL_EXT`), as
/// CHECKRECIPIENT and delivery see them (spec 4.6).
fn catch_all_and_extensions(kind: Kind) {
    let env = TestEnv::new(kind);
    run(async {
        let admin = anna_and_sales(&env).await;
        let dir = env
            .directory(Rc::new(ManualClock::new(T0)), env.config())
            .await;
        // Extensions: only with QMAIL_EXT, the user before the first dash.
        assert_eq!(
            dir.recipient_status("anna-news@example.com", false)
                .await
                .unwrap(),
            UserStatus::NoSuchUser
        );
        assert!(matches!(
            dir.recipient_status("anna-news-x@example.net", true).await.unwrap(),
            UserStatus::Active(ref u) if u.name == "anna"
        ));
        assert_eq!(
            dir.recipient_status("sales-q1@example.com", true)
                .await
                .unwrap(),
            UserStatus::AliasOnly
        );
        match dir
            .destination("Anna-News@example.com", true)
            .await
            .unwrap()
        {
            Some(Destination::User { user, ext }) => {
                assert_eq!((user.name.as_str(), ext.as_str()), ("anna", "news"))
            }
            other => panic!("{other:?}"),
        }
        match dir.destination("sales-q1@example.com", true).await.unwrap() {
            Some(Destination::Aliases { lines, ext }) => {
                assert!(lines.contains(&"&boss@other.org".to_string()), "{lines:?}");
                assert_eq!(ext, "q1");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            dir.destination("x@elsewhere.org", true).await.unwrap(),
            None
        );
        // The default handler bounces; an address too long for the table is no error.
        let long = format!("{}@example.com", "v".repeat(60));
        assert_eq!(
            dir.recipient_status(&long, true).await.unwrap(),
            UserStatus::NoSuchUser
        );
        assert_eq!(
            dir.destination("nobody@example.com", true).await.unwrap(),
            Some(Destination::CatchAll(Handler::Bounce))
        );
        // domain mod --handler: any address is taken.
        for (h, want) in [
            ("delete", Handler::Delete),
            ("all@other.org", Handler::Forward("all@other.org".into())),
        ] {
            admin
                .domain_mod(
                    "example.com",
                    &DomainChange {
                        handler: Some(h.into()),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            assert_eq!(
                dir.recipient_status(&long, false).await.unwrap(),
                UserStatus::CatchAll(want.clone())
            );
            assert_eq!(
                dir.destination("nobody@example.net", false).await.unwrap(),
                Some(Destination::CatchAll(want))
            );
        }
        // The domain directory's .qmail-<local> (qmail-local's alias files, `.` as `:`)
        // takes its address before anything else; `default` and paths never match.
        let ddir = env.path().join("domains/example.com");
        std::fs::write(
            ddir.join(".qmail-info:desk"),
            "# forward\n&anna@example.com\n",
        )
        .unwrap();
        assert_eq!(
            dir.recipient_status("Info.Desk@example.net", false)
                .await
                .unwrap(),
            UserStatus::AliasOnly
        );
        match dir
            .destination("info.desk@example.com", false)
            .await
            .unwrap()
        {
            Some(Destination::Aliases { lines, ext }) => {
                assert_eq!(
                    (lines, ext.as_str()),
                    (vec!["&anna@example.com".to_string()], "")
                )
            }
            other => panic!("{other:?}"),
        }
        // An active mailbox's RCPT answer comes from the table alone (both answers accept);
        // delivery still reads the domain's `.qmail-<local>` first.
        std::fs::write(ddir.join(".qmail-anna"), "&boss@other.org\n").unwrap();
        assert!(matches!(
            dir.recipient_status("anna@example.com", false)
                .await
                .unwrap(),
            UserStatus::Active(_)
        ));
        assert!(matches!(
            dir.destination("anna@example.com", false).await.unwrap(),
            Some(Destination::Aliases { .. })
        ));
        std::fs::remove_file(ddir.join(".qmail-anna")).unwrap();
        assert!(matches!(
            dir.destination("default@example.com", false).await.unwrap(),
            Some(Destination::CatchAll(_))
        ));
        assert!(matches!(
            dir.destination("../x@example.com", false).await.unwrap(),
            Some(Destination::CatchAll(_))
        ));
        // A broken file is an error naming file and line, never a bounce.
        let qd = env.path().join("domains/example.com/.qmail-default");
        std::fs::write(&qd, "| /usr/sbin/vdelivermail '' what ever\n").unwrap();
        let e = dir
            .recipient_status("nobody@example.com", false)
            .await
            .unwrap_err();
        assert!(e.to_string().contains(".qmail-default:1:"), "{e}");
    });
}

/// A user's own password change (poppassd's `Directory::set_password`): the new password
/// logs in at once on this handle, the old one no longer does, and the CRAM/SCRAM forms the
/// user had are kept, derived from the new password.
fn own_password_change(kind: Kind) {
    let env = TestEnv::new(kind);
    run(async {
        let admin = env.admin_with_domain().await;
        admin
            .user_add(
                "cara@example.com",
                "old-pw",
                &UserOptions {
                    cram: true,
                    scram: Some(lookup::ScramOptions {
                        salt: None,
                        iterations: Some(5000),
                    }),
                    ..opts()
                },
            )
            .await
            .unwrap();
        admin
            .user_add("plain@example.com", "pw1", &opts())
            .await
            .unwrap();
        let clock = Rc::new(ManualClock::new(T0));
        let dir = env.directory(clock.clone(), env.config()).await;
        let ok = |r: AuthResult| matches!(r, AuthResult::Ok(_));
        assert!(ok(dir
            .check_password("cara@example.com", "old-pw")
            .await
            .unwrap()));
        assert!(dir
            .set_password("cara@example.com", "new-pw")
            .await
            .unwrap());
        assert!(ok(dir
            .check_password("cara@example.com", "new-pw")
            .await
            .unwrap()));
        assert!(!ok(dir
            .check_password("cara@example.com", "old-pw")
            .await
            .unwrap()));
        assert_eq!(
            dir.cram_secret("cara@example.com")
                .await
                .unwrap()
                .as_deref(),
            Some("new-pw")
        );
        let s = dir.scram_secret("cara@example.com").await.unwrap().unwrap();
        assert!(s.starts_with("{SCRAM-SHA-256}5000,"), "{s}");
        let u = admin.user_info("cara@example.com").await.unwrap();
        assert!(u.passwd.starts_with("{CRAM}new-pw,$5$"), "{}", u.passwd);

        assert!(dir.set_password("plain@example.com", "pw2").await.unwrap());
        let u = admin.user_info("plain@example.com").await.unwrap();
        assert!(u.passwd.starts_with("$5$") && u.scram.is_none(), "{u:?}");
        assert!(ok(dir
            .check_password("plain@example.com", "pw2")
            .await
            .unwrap()));

        let e = dir.set_password("plain@example.com", "").await.unwrap_err();
        assert!(matches!(e, LookupError::InvalidPassword(_)), "{e}");
        assert!(!dir.set_password("nobody@example.com", "x").await.unwrap());
        assert!(!dir.set_password("x@nowhere.example", "x").await.unwrap());
    });
}

/// Every user's home is another shard, which counts the questions it is asked.
struct CountingHome {
    home: Rc<lookup::Directory>,
    asked: Rc<std::cell::Cell<u32>>,
}

impl lookup::UserHome for CountingHome {
    fn ask(&self, user: &str, domain: &str) -> Option<lookup::HomeAnswer> {
        self.asked.set(self.asked.get() + 1);
        let (home, user, domain) = (self.home.clone(), user.to_string(), domain.to_string());
        Some(Box::pin(async move {
            Some(home.shared_user(&user, &domain).await)
        }))
    }
}

/// A shard reuses its home shard's answer about a user (found or not) for
/// `HOME_MEMO_MS`, then asks again; an admin change seen by the change poll makes it ask
/// again at once, and the new answer is the changed one.
fn home_answers_are_reused_briefly(kind: Kind) {
    let env = TestEnv::new(kind);
    run(async {
        let admin = env.admin_with_domain().await;
        admin
            .user_add("manny@example.com", "pw", &opts())
            .await
            .unwrap();
        let home_clock = Rc::new(ManualClock::new(T0));
        let home = Rc::new(env.directory(home_clock.clone(), env.config()).await);
        let clock = Rc::new(ManualClock::new(T0));
        let dir = env.directory(clock.clone(), env.config()).await;
        let asked = Rc::new(std::cell::Cell::new(0));
        dir.set_user_home(Rc::new(CountingHome {
            home: home.clone(),
            asked: asked.clone(),
        }));
        let active = |st: UserStatus| matches!(st, UserStatus::Active(ref u) if u.name == "manny");

        // The RCPT check and the delivery a moment later: one question.
        assert!(active(dir.user_status("manny@example.com").await.unwrap()));
        clock.advance(Duration::from_millis(300));
        assert!(active(dir.user_status("Manny@Example.com").await.unwrap()));
        assert_eq!(asked.get(), 1);
        // A missing user's answer is reused too.
        for _ in 0..2 {
            assert_eq!(
                dir.user_status("ghost@example.com").await.unwrap(),
                UserStatus::NoSuchUser
            );
        }
        assert_eq!(asked.get(), 2);
        let hits = dir.cache_stats().hits;

        // Past the memo's lifetime the home is asked again.
        clock.advance(Duration::from_millis(lookup::HOME_MEMO_MS + 1));
        assert!(active(dir.user_status("manny@example.com").await.unwrap()));
        assert_eq!(asked.get(), 3);
        assert!(active(dir.user_status("manny@example.com").await.unwrap()));
        assert_eq!(asked.get(), 3);
        assert!(
            dir.cache_stats().hits > hits,
            "reused answers count as hits"
        );

        // An admin change: once this shard's change poll (1 s) has seen it, it asks again
        // although the answer is younger than the memo's lifetime.
        admin.user_del("manny@example.com").await.unwrap();
        home_clock.advance(Duration::from_secs(2));
        home.sync_changes().await.unwrap();
        clock.advance(Duration::from_millis(1_500));
        const { assert!(lookup::HOME_MEMO_MS > 1_500) };
        assert_eq!(
            dir.user_status("manny@example.com").await.unwrap(),
            UserStatus::NoSuchUser
        );
        assert_eq!(asked.get(), 4);

        // SIGHUP's cache clear forgets the answers too.
        dir.clear_cache();
        dir.user_status("manny@example.com").await.unwrap();
        assert_eq!(asked.get(), 5);
    });
}

both_backends!(
    home_answers_are_reused_briefly,
    scram_secrets,
    own_password_change,
    domain_and_user_lifecycle,
    aliases_and_alias_domains,
    hosts_limits_relay,
    admin_errors,
    hashed_directories_and_schemes,
    checkpassword_protocol,
    catch_all_and_extensions,
);

//! The ATRN map (IndiMail's `atrn_map` table, `vatrn`): admin changes and the directory's
//! `atrn_domains` lookup, on the embedded SQLite store and a private MariaDB.

mod support;

use std::rc::Rc;

use lookup::{LookupError, ManualClock};
use support::{run, Kind, TestEnv};

fn atrn_map_round_trip(kind: Kind) {
    let env = TestEnv::new(kind);
    run(async {
        let admin = env.admin().await;
        admin
            .atrn_add("Ann@example.com", "Node1.Example")
            .await
            .unwrap();
        admin
            .atrn_add("ann@example.com", "node2.example")
            .await
            .unwrap();
        admin
            .atrn_add("bob@example.com", "node3.example")
            .await
            .unwrap();
        assert!(matches!(
            admin.atrn_add("ann@example.com", "node1.example").await,
            Err(LookupError::AtrnMapExists(_))
        ));
        assert!(matches!(
            admin.atrn_add("ann@example.com", "bad domain").await,
            Err(LookupError::InvalidDomain(_))
        ));
        let dir = env
            .directory(Rc::new(ManualClock::new(1_700_000_000)), env.config())
            .await;
        assert_eq!(
            dir.atrn_domains("ann@example.com").await.unwrap(),
            vec!["node1.example", "node2.example"]
        );
        assert!(dir
            .atrn_domains("carl@example.com")
            .await
            .unwrap()
            .is_empty());

        admin
            .atrn_update("ann@example.com", "node2.example", "node4.example")
            .await
            .unwrap();
        admin
            .atrn_del("ann@example.com", Some("node1.example"))
            .await
            .unwrap();
        assert!(matches!(
            admin
                .atrn_del("ann@example.com", Some("node1.example"))
                .await,
            Err(LookupError::AtrnMapNotFound(_))
        ));
        // Not cached: the change counts at once.
        assert_eq!(
            dir.atrn_domains("ann@example.com").await.unwrap(),
            vec!["node4.example"]
        );
        assert_eq!(
            admin.atrn_list(None).await.unwrap(),
            vec![
                ("ann@example.com".to_string(), "node4.example".to_string()),
                ("bob@example.com".to_string(), "node3.example".to_string()),
            ]
        );
        admin.atrn_del("bob@example.com", None).await.unwrap();
        assert!(admin
            .atrn_list(Some("bob@example.com"))
            .await
            .unwrap()
            .is_empty());
        dir.close().await;
        admin.close().await;
    });
}

both_backends!(atrn_map_round_trip);

//! Damage the server must survive without multiplying or stranding mail.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// Every spill file (bodies over the spill threshold) under the queues.
fn spill_files(home: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![home.join("queue")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.parent().and_then(|p| p.file_name()) == Some("big".as_ref()) {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn a_body_that_lost_its_bytes_is_quarantined_listed_and_logged() {
    for driver in DRIVERS {
        let h = tempfile::tempdir().unwrap();
        let home = h.path();
        {
            let mut s = Server::start(home, driver);
            let mut body = b"Subject: big\r\n\r\n".to_vec();
            for _ in 0..6000 {
                body.extend_from_slice(&[b'x'; 62]);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b".\r\n");
            let r = send_message(s.smtp, "a@example.org", &["b@sink.example"], &body);
            assert_eq!(r.0, 250, "{r:?}");
            assert_eq!(s.stop(), Some(0));
        }
        // A power cut took the body's bytes (the record survived).
        let spills = spill_files(home);
        assert_eq!(spills.len(), 1, "{spills:?}");
        std::fs::write(&spills[0], b"").unwrap();
        {
            let mut s = Server::start(home, driver);
            let log = s.log();
            assert!(log.contains("quarantined=1"), "{log}");
            assert!(log.contains("quarantined msg"), "{log}");
            assert_eq!(s.stop(), Some(0));
        }
        let list = queue_list(home);
        assert!(
            list.iter().any(|l| l.contains("state=quarantined")
                && l.contains("<b@sink.example>")
                && l.contains("0 bytes")),
            "{list:?}"
        );
        assert!(!list.iter().any(|l| l.contains("pending")), "{list:?}");
        // Never retried: a third start finds nothing to quarantine again.
        let mut s = Server::start(home, driver);
        assert!(s.log().contains("quarantined=0"), "{}", s.log());
        assert_eq!(s.stop(), Some(0));
    }
}

//! Group commit of Maildir deliveries: concurrent deliveries into one
//! `new/` share its directory fsync, and none reports success before a
//! flush covering its rename has succeeded.

mod common;

use std::path::{Path, PathBuf};

use common::both;
use delivery::dirflush;
use delivery::maildir::{self, SyncMode};
use shard::io::sim::{Faults, SimFs};

fn message(i: usize) -> Vec<u8> {
    format!("From: a@example.org\nSubject: {i}\n\nbody {i}\n").into_bytes()
}

/// Makes the Maildir `md` (tmp/, new/, cur/) and returns its path.
fn maildir(md: &Path) -> PathBuf {
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(md.join(sub)).unwrap();
    }
    md.to_path_buf()
}

/// Starts `n` deliveries into `dir` at once and returns each one's result.
async fn deliver_many(
    dir: &Path,
    n: usize,
    sync: SyncMode,
) -> Vec<(usize, Result<PathBuf, String>)> {
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let dir = dir.to_path_buf();
            tokio::task::spawn_local(async move {
                let r = maildir::write(&dir, "mx.example.com", message(i), sync).await;
                (i, r.map_err(|e| e.to_string()))
            })
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("delivery task"));
    }
    out
}

#[test]
fn concurrent_deliveries_into_one_maildir_share_the_directory_flush() {
    both(|d| async move {
        let home = tempfile::tempdir().unwrap();
        let md = maildir(&home.path().join("Maildir"));
        let before = dirflush::stats();
        let n = 64;
        let results = deliver_many(&md, n, SyncMode::File).await;
        let after = dirflush::stats();
        for (i, r) in &results {
            let path = r
                .as_ref()
                .unwrap_or_else(|e| panic!("{d:?} delivery {i}: {e}"));
            assert_eq!(std::fs::read(path).unwrap(), message(*i), "{d:?}");
        }
        assert_eq!(std::fs::read_dir(md.join("new")).unwrap().count(), n);
        assert_eq!(std::fs::read_dir(md.join("tmp")).unwrap().count(), 0);
        let flushes = after.flushes - before.flushes;
        assert_eq!(after.members - before.members, n as u64, "{d:?}");
        assert!(
            flushes < n as u64,
            "{d:?}: {flushes} directory flushes for {n} deliveries"
        );
        // One at a time, each delivery has its own flush (nobody to share with).
        let before = dirflush::stats();
        for i in 0..3 {
            maildir::write(&md, "mx.example.com", message(i), SyncMode::File)
                .await
                .unwrap();
        }
        assert_eq!(dirflush::stats().flushes - before.flushes, 3, "{d:?}");
    });
}

#[test]
fn deliveries_into_different_maildirs_flush_each_their_own() {
    both(|d| async move {
        let home = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = (0..4)
            .map(|i| maildir(&home.path().join(format!("u{i}"))))
            .collect();
        let handles: Vec<_> = dirs
            .iter()
            .cloned()
            .map(|md| {
                tokio::task::spawn_local(async move {
                    deliver_many(&md, 8, SyncMode::File)
                        .await
                        .into_iter()
                        .all(|(_, r)| r.is_ok())
                })
            })
            .collect();
        for h in handles {
            assert!(h.await.unwrap(), "{d:?}");
        }
        for md in &dirs {
            assert_eq!(std::fs::read_dir(md.join("new")).unwrap().count(), 8);
        }
    });
}

/// Under failing flushes and power cuts (the simulated file system), every
/// delivery that reported success is whole in `new/` after the cut: a failed
/// directory fsync failed every member of its group.
#[test]
fn a_delivery_reported_done_survives_a_power_cut_whatever_its_group_did() {
    let (mut failed, mut done) = (0, 0);
    for seed in 0..300u64 {
        let fs = SimFs::new(seed);
        let md = PathBuf::from("/sim-indimail/u/Maildir");
        fs.run(async {
            for sub in ["tmp", "new", "cur"] {
                shard::io::create_dir_all(md.join(sub)).unwrap();
            }
            for p in [
                "/",
                "/sim-indimail",
                "/sim-indimail/u",
                "/sim-indimail/u/Maildir",
            ] {
                shard::io::sync_dir(p).await.unwrap();
            }
        });
        fs.set_faults(Faults {
            sync_error_per_mille: 150,
            yield_per_mille: 400,
            ..Default::default()
        });
        let results = fs.run(deliver_many(&md, 12, SyncMode::Auto));
        fs.restart();
        let survivors = fs.list(&md.join("new"));
        for (i, r) in results {
            match r {
                Ok(path) => {
                    done += 1;
                    let name = path.file_name().unwrap().to_string_lossy().into_owned();
                    assert!(
                        survivors.contains(&name),
                        "seed {seed}: delivery {i} reported done but lost"
                    );
                    assert_eq!(fs.contents(&path), Some(message(i)), "seed {seed}");
                }
                Err(_) => failed += 1,
            }
        }
    }
    // The faults did happen, and so did successes.
    assert!(failed > 0 && done > 0, "failed {failed}, done {done}");
}

/// `MAILDIR_SYNC=filesystem`: deliveries into many Maildirs at once share
/// `syncfs` calls (two per delivery: before and after its rename), and
/// every message is whole in `new/` with nothing left in `tmp/`.
#[test]
fn filesystem_mode_shares_syncfs_across_maildirs() {
    both(|d| async move {
        let home = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = (0..4)
            .map(|i| maildir(&home.path().join(format!("u{i}"))))
            .collect();
        let before = dirflush::stats();
        let handles: Vec<_> = dirs
            .iter()
            .cloned()
            .map(|md| {
                tokio::task::spawn_local(
                    async move { deliver_many(&md, 8, SyncMode::FileSystem).await },
                )
            })
            .collect();
        for h in handles {
            for (i, r) in h.await.unwrap() {
                let path = r.unwrap_or_else(|e| panic!("{d:?} delivery {i}: {e}"));
                assert_eq!(std::fs::read(path).unwrap(), message(i), "{d:?}");
            }
        }
        let after = dirflush::stats();
        for md in &dirs {
            assert_eq!(std::fs::read_dir(md.join("new")).unwrap().count(), 8);
            assert_eq!(std::fs::read_dir(md.join("tmp")).unwrap().count(), 0);
        }
        let fs_flushes = after.fs_flushes - before.fs_flushes;
        assert_eq!(
            after.members - before.members,
            64,
            "{d:?}: two per delivery"
        );
        assert_eq!(
            after.flushes - before.flushes,
            fs_flushes,
            "{d:?}: no directory fsync"
        );
        assert!(
            fs_flushes < 64,
            "{d:?}: {fs_flushes} syncfs for 32 deliveries into 4 Maildirs"
        );
    });
}

/// `auto` on a local file system (the test's temporary directory: ext4,
/// XFS, btrfs or tmpfs): a delivery alone flushes its own file and `new/`
/// (no `syncfs`); deliveries under way together share `syncfs`. `file`
/// never uses `syncfs`, even in a crowd.
#[test]
fn auto_mode_shares_syncfs_in_a_crowd_and_file_mode_never() {
    both(|d| async move {
        let home = tempfile::tempdir().unwrap();
        let md = maildir(&home.path().join("Maildir"));
        let file = std::fs::File::open(home.path()).unwrap();
        assert!(
            shard::io::sync_fs_covers(&file).unwrap(),
            "the test's temporary directory is on a file system auto does not group"
        );
        let before = dirflush::stats();
        maildir::write(&md, "mx.example.com", message(1), SyncMode::Auto)
            .await
            .unwrap();
        let alone = dirflush::stats();
        assert_eq!(
            alone.fs_flushes, before.fs_flushes,
            "{d:?}: alone, no syncfs"
        );
        assert_eq!(alone.flushes - before.flushes, 1, "{d:?}: new/ fsynced");
        for r in deliver_many(&md, 16, SyncMode::Auto).await {
            r.1.unwrap();
        }
        let crowd = dirflush::stats();
        assert!(
            crowd.fs_flushes > alone.fs_flushes,
            "{d:?}: a crowd shares syncfs"
        );
        for r in deliver_many(&md, 16, SyncMode::File).await {
            r.1.unwrap();
        }
        assert_eq!(dirflush::stats().fs_flushes, crowd.fs_flushes, "{d:?}");
        assert_eq!(std::fs::read_dir(md.join("new")).unwrap().count(), 33);
        assert_eq!(std::fs::read_dir(md.join("tmp")).unwrap().count(), 0);
    });
}

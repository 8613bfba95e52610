//! Maildir delivery (`delivery::maildir::write`): create in `tmp/`, write,
//! make durable, rename into `new/`, make the rename durable — before it
//! returns — on `$TMPDIR`'s file system, driver from `INDIMAIL_DRIVER`; in
//! each way (`MAILDIR_SYNC`): `file` (an `O_DSYNC` write per message, `new/`
//! fsynced per group), `filesystem` (`syncfs` shared by the group) and `auto`
//! (the server's default: `syncfs` in a crowd on a local file system).
//!
//! * `maildir_write_1k/{file,filesystem,auto}/1`: one delivery at a time into one Maildir.
//! * `maildir_write_1k/{file,filesystem,auto}/{16,64}`: 16 or 64 at once, spread over
//!   as many Maildirs (a shard delivering to many users).
//! * `maildir_one_box_1k/{grouped,grouped_one_flush,own_flush}/{16,64}`: 16 or
//!   64 at once into ONE Maildir, sharing the flush of `new/` (group commit,
//!   `delivery::dirflush`, up to two flushes in flight as the server runs it, or
//!   one at a time) or each flushing it on its own (`set_grouping(false)`, the
//!   way before group commit), or sharing `syncfs` (`filesystem`), in the same run. Put `TMPDIR` on the file system to
//!   measure (this ext4, a journalled loop-mounted ext4, XFS: RESULTS.md).
//!
//! Baseline beside them: `queue_commit_1k_fdatasync` (bench `queue_commit`),
//! the durable write of the same bytes into the queue.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use delivery::maildir::SyncMode;
use shard::io::{run, Driver};

fn driver() -> Driver {
    Driver::from_env().expect("INDIMAIL_DRIVER")
}

fn make_maildirs(root: &Path, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let md = root.join(format!("u{i}/Maildir"));
            for sub in ["tmp", "new", "cur"] {
                std::fs::create_dir_all(md.join(sub)).expect("mkdir");
            }
            md
        })
        .collect()
}

/// `iters` 1 KiB deliveries by one task per entry of `mds` (the Maildir it
/// writes into), all at once; how long they took.
async fn deliver_all(mds: Vec<PathBuf>, iters: u64, sync: SyncMode) -> Duration {
    let conc = mds.len() as u64;
    let body = vec![b'm'; 1024];
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (t, md) in mds.into_iter().enumerate() {
        let n = iters / conc + u64::from((t as u64) < iters % conc);
        let body = body.clone();
        tasks.push(tokio::task::spawn_local(async move {
            for _ in 0..n {
                delivery::maildir::write(&md, "bench.example", body.clone(), sync)
                    .await
                    .expect("maildir write");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    start.elapsed()
}

fn bench_maildir(c: &mut Criterion) {
    let mut g = c.benchmark_group("maildir_write_1k");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(8));
    for (name, sync) in [
        ("file", SyncMode::File),
        ("filesystem", SyncMode::FileSystem),
        ("auto", SyncMode::Auto),
    ] {
        for conc in [1usize, 16, 64] {
            g.bench_with_input(BenchmarkId::new(name, conc), &conc, |b, &conc| {
                b.iter_custom(|iters| {
                    let tmp = tempfile::tempdir().expect("tempdir");
                    let mds = make_maildirs(tmp.path(), conc);
                    run(driver(), deliver_all(mds, iters, sync))
                })
            });
        }
    }
    g.finish();
}

fn bench_one_box(c: &mut Criterion) {
    let mut g = c.benchmark_group("maildir_one_box_1k");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(8));
    let max = delivery::dirflush::MAX_IN_FLIGHT;
    let variants = [
        ("grouped", true, max, SyncMode::File),
        ("grouped_one_flush", true, 1, SyncMode::File),
        ("own_flush", false, 1, SyncMode::File),
        ("filesystem", true, max, SyncMode::FileSystem),
    ];
    for (name, grouped, in_flight, sync) in variants {
        for conc in [16usize, 64] {
            g.bench_with_input(BenchmarkId::new(name, conc), &conc, |b, &conc| {
                b.iter_custom(|iters| {
                    let tmp = tempfile::tempdir().expect("tempdir");
                    let md = make_maildirs(tmp.path(), 1).remove(0);
                    run(driver(), async move {
                        delivery::dirflush::set_grouping(grouped);
                        delivery::dirflush::set_flushes_in_flight(in_flight);
                        let took = deliver_all(vec![md; conc], iters, sync).await;
                        delivery::dirflush::set_grouping(true);
                        delivery::dirflush::set_flushes_in_flight(
                            delivery::dirflush::MAX_IN_FLIGHT,
                        );
                        took
                    })
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_maildir, bench_one_box);
criterion_main!(benches);

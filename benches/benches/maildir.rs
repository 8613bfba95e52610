//! Maildir delivery (`delivery::maildir::write`): create in `tmp/`, write,
//! fdatasync, statx, rename into `new/`, fsync `new/` — durable before it
//! returns — on `$TMPDIR`'s file system, driver from `INDIMAIL_DRIVER`.
//!
//! * `maildir_write_1k/concurrency/1`: one delivery at a time into one Maildir.
//! * `maildir_write_1k/concurrency/{16,64}`: 16 or 64 at once, spread over
//!   as many Maildirs (a shard delivering to many users).
//!
//! Baseline beside them: `queue_commit_1k_fdatasync` (bench `queue_commit`),
//! the durable write of the same bytes into the queue.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
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

fn bench_maildir(c: &mut Criterion) {
    let mut g = c.benchmark_group("maildir_write_1k");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(8));
    for conc in [1usize, 16, 64] {
        g.bench_with_input(BenchmarkId::new("concurrency", conc), &conc, |b, &conc| {
            b.iter_custom(|iters| {
                let tmp = tempfile::tempdir().expect("tempdir");
                let mds = make_maildirs(tmp.path(), conc);
                run(driver(), async move {
                    let body = vec![b'm'; 1024];
                    let start = Instant::now();
                    let mut tasks = Vec::new();
                    for (t, md) in mds.into_iter().enumerate() {
                        let n = iters / conc as u64 + u64::from((t as u64) < iters % conc as u64);
                        let body = body.clone();
                        tasks.push(tokio::task::spawn_local(async move {
                            for _ in 0..n {
                                delivery::maildir::write(&md, "bench.example", body.clone())
                                    .await
                                    .expect("maildir write");
                            }
                        }));
                    }
                    for t in tasks {
                        t.await.expect("task");
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_maildir);
criterion_main!(benches);

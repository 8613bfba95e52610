//! queue-store: durable commit of 1 KiB messages (one at a time and 64
//! concurrent, fdatasync ON), and recovery time of a queue holding
//! 1,000,000 small messages.
//!
//! Driver from `INDIMAIL_DRIVER` (uring by default). The queue lives in a
//! temp dir on the default temp filesystem (set `TMPDIR` to measure another
//! disk). Baseline to compare with: MEASUREMENTS.md, one small file written
//! and fsynced ~2,600-3,300/s, qmail-style commit ~2,400/s.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use queue_store::{Durability, Envelope, Queue, QueueConfig};
use shard::io::{run, Driver};

fn driver() -> Driver {
    Driver::from_env().expect("INDIMAIL_DRIVER")
}

fn envelope() -> Envelope {
    let mut e = Envelope::new("sender@example.org", vec!["rcpt@example.net".into()]);
    e.client_ip = Some("192.0.2.1".parse().unwrap());
    e.helo = "client.example.org".into();
    e
}

async fn commit_one(q: &Queue, body: &[u8]) {
    let mut w = q.begin();
    w.write(body).await.unwrap();
    black_box(w.commit(envelope()).await.unwrap());
}

/// Commits `iters` messages with `conc` tasks; returns the elapsed time.
async fn commit_many(q: &Queue, iters: u64, conc: u64) -> Duration {
    let body = vec![b'm'; 1024];
    let start = Instant::now();
    if conc == 1 {
        for _ in 0..iters {
            commit_one(q, &body).await;
        }
    } else {
        let mut tasks = Vec::new();
        for t in 0..conc {
            let n = iters / conc + u64::from(t < iters % conc);
            let q = q.clone();
            let body = body.clone();
            tasks.push(tokio::task::spawn_local(async move {
                for _ in 0..n {
                    commit_one(&q, &body).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
    start.elapsed()
}

fn bench_commit(c: &mut Criterion) {
    let mut g = c.benchmark_group("queue_commit_1k_fdatasync");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(8));
    for conc in [1u64, 16, 64] {
        g.bench_with_input(BenchmarkId::new("concurrency", conc), &conc, |b, &conc| {
            b.iter_custom(|iters| {
                let tmp = tempfile::tempdir().unwrap();
                let dir = tmp.path().join("queue1");
                run(driver(), async move {
                    let (q, _) = Queue::open(QueueConfig::new(&dir, 1)).await.unwrap();
                    commit_many(&q, iters, conc).await
                })
            })
        });
    }
    g.finish();
}

const RECOVERY_MESSAGES: u64 = 1_000_000;

fn bench_recovery(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("queue1");
    // Building 1M messages: durability does not matter for a recovery
    // measurement, so the (unsafe) no-sync mode keeps set-up short.
    let mut cfg = QueueConfig::new(&dir, 1);
    cfg.durability = Durability::UnsafeNoSync;
    let built = {
        let cfg = cfg.clone();
        run(driver(), async move {
            let (q, _) = Queue::open(cfg).await.unwrap();
            let body = vec![b's'; 256];
            let mut tasks = Vec::new();
            let start = Instant::now();
            for _ in 0..64 {
                let q = q.clone();
                let body = body.clone();
                tasks.push(tokio::task::spawn_local(async move {
                    for _ in 0..RECOVERY_MESSAGES / 64 {
                        commit_one(&q, &body).await;
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            (q.stats(), start.elapsed())
        })
    };
    eprintln!(
        "recovery set-up: {} messages in {} segments, built in {:?}",
        built.0.messages, built.0.segments, built.1
    );
    let mut g = c.benchmark_group("queue_recovery");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(30));
    g.throughput(Throughput::Elements(built.0.messages));
    g.bench_function("open_1m_small_messages", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let cfg = cfg.clone();
                total += run(driver(), async move {
                    let start = Instant::now();
                    let (q, rep) = Queue::open(cfg).await.unwrap();
                    let t = start.elapsed();
                    assert_eq!(rep.messages, built.0.messages);
                    drop(black_box(q));
                    t
                });
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, bench_commit, bench_recovery);
criterion_main!(benches);

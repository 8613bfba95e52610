//! Cross-shard message passing (`shard::Mesh`): two shard threads, each on
//! its own runtime (driver from `INDIMAIL_DRIVER`, uring by default), as
//! `indimail serve` runs them.
//!
//! * `mesh/round_trip`: shard 0 sends a request to shard 1 and awaits the
//!   answer (ETRN, queue control and turn requests have this shape).
//! * `mesh/one_way_batch_1000`: shard 0 sends 1,000 messages; shard 1
//!   counts them (bounded channel of 1,024: back-pressure included).
//!
//! Baseline beside them: `mesh/same_thread_round_trip`, the same channel
//! used within one thread, i.e. the channel's cost without a thread hop.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shard::io::{run, Driver};
use shard::{Mesh, MeshSender};

fn driver() -> Driver {
    Driver::from_env().expect("INDIMAIL_DRIVER")
}

enum Msg {
    Ping(tokio::sync::oneshot::Sender<u64>, u64),
    Count(u64),
    Stop,
}

/// Runs `f` on shard 0 with shard 1 answering; returns what `f` returns.
fn with_two_shards<F, Fut>(f: F) -> Duration
where
    F: FnOnce(MeshSender<Msg>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Duration>,
{
    let Mesh {
        senders,
        mut receivers,
    } = Mesh::<Msg>::new(2, 1024);
    let mut rx1 = receivers.pop().expect("two receivers");
    let to1 = senders[1].clone();
    let d = driver();
    let server = std::thread::spawn(move || {
        run(d, async move {
            let mut counted = 0u64;
            while let Some(m) = rx1.recv().await {
                match m {
                    Msg::Ping(reply, n) => {
                        let _ = reply.send(n + 1);
                    }
                    Msg::Count(n) => counted += n,
                    Msg::Stop => break,
                }
            }
            counted
        })
    });
    let client = std::thread::spawn(move || {
        run(driver(), async move {
            let t = f(to1.clone()).await;
            let _ = to1.send(Msg::Stop).await;
            t
        })
    });
    let t = client.join().expect("client");
    server.join().expect("server");
    t
}

fn bench_mesh(c: &mut Criterion) {
    let mut g = c.benchmark_group("mesh");
    g.measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(1));
    g.bench_function("round_trip", |b| {
        b.iter_custom(|iters| {
            with_two_shards(move |to1| async move {
                let start = Instant::now();
                for i in 0..iters {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    to1.send(Msg::Ping(tx, i)).await.ok().expect("send");
                    rx.await.expect("answer");
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("same_thread_round_trip", |b| {
        b.iter_custom(|iters| {
            run(driver(), async move {
                let Mesh {
                    senders,
                    mut receivers,
                } = Mesh::<Msg>::new(1, 1024);
                let mut rx = receivers.pop().expect("one receiver");
                let answer = tokio::task::spawn_local(async move {
                    while let Some(m) = rx.recv().await {
                        match m {
                            Msg::Ping(reply, n) => {
                                let _ = reply.send(n + 1);
                            }
                            Msg::Stop => break,
                            Msg::Count(_) => {}
                        }
                    }
                });
                let start = Instant::now();
                for i in 0..iters {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    senders[0].send(Msg::Ping(tx, i)).await.ok().expect("send");
                    rx.await.expect("answer");
                }
                let t = start.elapsed();
                let _ = senders[0].send(Msg::Stop).await;
                let _ = answer.await;
                t
            })
        })
    });
    g.throughput(Throughput::Elements(1000));
    g.bench_function("one_way_batch_1000", |b| {
        b.iter_custom(|iters| {
            with_two_shards(move |to1| async move {
                let start = Instant::now();
                for _ in 0..iters {
                    for _ in 0..1000 {
                        to1.send(Msg::Count(1)).await.ok().expect("send");
                    }
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench_mesh);
criterion_main!(benches);

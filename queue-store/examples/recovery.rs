//! Measures recovery: `cargo run --release --example recovery -- <dir> [messages]`.
//! Builds the queue (unsafe no-sync mode, 64 concurrent writers) if `<dir>`
//! does not exist yet, then times `Queue::open` on it.

use std::time::Instant;

use queue_store::{Durability, Envelope, Queue, QueueConfig};
use shard::io::{run, Driver};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("usage: recovery <dir> [messages]"));
    let n: u64 = args
        .next()
        .map_or(1_000_000, |s| s.parse().expect("messages"));
    let driver = Driver::from_env().expect("INDIMAIL_DRIVER");
    let mut cfg = QueueConfig::new(&dir, 1);
    if !dir.exists() {
        cfg.durability = Durability::UnsafeNoSync;
        let c = cfg.clone();
        let t = run(driver, async move {
            let (q, _) = Queue::open(c).await.expect("open");
            let start = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..64 {
                let q = q.clone();
                tasks.push(tokio::task::spawn_local(async move {
                    for _ in 0..n / 64 {
                        let mut w = q.begin();
                        w.write(&[b's'; 256]).await.expect("write");
                        let mut e =
                            Envelope::new("sender@example.org", vec!["rcpt@example.net".into()]);
                        e.helo = "client.example.org".into();
                        e.client_ip = Some("192.0.2.1".parse().expect("ip"));
                        w.commit(e).await.expect("commit");
                    }
                }));
            }
            for t in tasks {
                t.await.expect("task");
            }
            start.elapsed()
        });
        println!("built {n} messages in {t:?}");
        cfg.durability = Durability::Fdatasync;
    }
    run(driver, async move {
        let start = Instant::now();
        let (q, rep) = Queue::open(cfg).await.expect("open");
        let t = start.elapsed();
        println!(
            "recovered {} messages ({} pending recipients, {} segments, {} records) in {t:?}",
            rep.messages, rep.recipients_pending, rep.segments, rep.records
        );
        std::mem::forget(q);
    });
}

//! Fills a queue directory with many small messages, for restart measurements
//! (`loadtest/restart-1m.sh`): `queue-fill DIR QUEUE_NO MESSAGES RECIPIENT`.
//!
//! Written without fsync (nothing here needs to survive a crash of the
//! filler), through the same `queue-store` code `indimail serve` uses, so the
//! server recovers exactly what it would after a real run.

use std::time::Instant;

use queue_store::{Durability, Envelope, Queue, QueueConfig};
use shard::io::{run, Driver};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, queue_no, messages, rcpt] = args.as_slice() else {
        eprintln!("usage: queue-fill DIR QUEUE_NO MESSAGES RECIPIENT");
        std::process::exit(2);
    };
    let (Ok(queue_no), Ok(messages)) = (queue_no.parse::<u32>(), messages.parse::<u64>()) else {
        eprintln!("queue-fill: QUEUE_NO and MESSAGES must be numbers");
        std::process::exit(2);
    };
    let mut cfg = QueueConfig::new(dir, queue_no);
    cfg.durability = Durability::UnsafeNoSync;
    let rcpt = rcpt.clone();
    let driver = Driver::from_env().unwrap_or_else(|e| {
        eprintln!("queue-fill: {e}");
        std::process::exit(2)
    });
    run(driver, async move {
        let (q, _) = Queue::open(cfg).await.expect("open queue");
        let start = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..64u64 {
            let q = q.clone();
            let rcpt = rcpt.clone();
            let n = messages / 64 + u64::from(t < messages % 64);
            tasks.push(tokio::task::spawn_local(async move {
                for i in 0..n {
                    let body = format!(
                        "Message-ID: <fill-{t}-{i}@queue-fill>\nSubject: fill {t}-{i}\n\n{}\n",
                        "x".repeat(200)
                    );
                    let mut w = q.begin();
                    w.write(body.as_bytes()).await.expect("write");
                    let mut e = Envelope::new("fill@example.org", vec![rcpt.clone()]);
                    e.client_ip = Some("127.0.0.1".parse().unwrap());
                    e.helo = "queue-fill".into();
                    w.commit(e).await.expect("commit");
                }
            }));
        }
        for (n, t) in tasks.into_iter().enumerate() {
            t.await.expect("task");
            if n % 16 == 15 {
                eprintln!("queue-fill: {}/64 writers done", n + 1);
            }
        }
        let s = q.stats();
        eprintln!(
            "queue-fill: {} messages in {} segments in {:.1} s",
            s.messages,
            s.segments,
            start.elapsed().as_secs_f64()
        );
    });
}

//! Crash safety: a child process (this test binary re-executed) commits
//! messages and prints each id once `commit` returned; it is SIGKILLed at a
//! random moment. Reopening must show every printed id with all its
//! recipients, and every printed outcome.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use queue_store::{Envelope, MessageId, Queue, QueueConfig, RecipientOutcome, RecipientState};
use shard::io::{run, Driver};

const CHILD_ENV: &str = "QUEUE_STORE_CRASH_CHILD";

fn config(dir: &str) -> QueueConfig {
    let mut c = QueueConfig::new(dir, 7);
    // Small segments so the child rolls segments while being killed.
    c.segment_size = 256 << 10;
    c
}

fn body(seq: u64) -> Vec<u8> {
    let mut b = format!("Subject: {seq}\r\n\r\n").into_bytes();
    if seq.is_multiple_of(10) {
        // Some bodies spill to big/.
        b.extend(std::iter::repeat_n(b'x', 300_000));
    }
    b.extend_from_slice(b"end\r\n");
    b
}

/// The child side: only does something when re-executed by the parent.
#[test]
fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (driver, dir) = spec.split_once(' ').expect("driver and dir");
    let driver: Driver = driver.parse().expect("driver");
    let dir = dir.to_string();
    run(driver, async move {
        let (q, _) = Queue::open(config(&dir)).await.expect("open");
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let q = q.clone();
            tasks.push(tokio::task::spawn_local(async move {
                for n in 0.. {
                    let seq = n * 8 + t;
                    let mut w = q.begin();
                    w.write(&body(seq)).await.expect("write");
                    let mut e = Envelope::new("s@example.org", vec!["a@x".into(), "b@y".into()]);
                    e.arrival = seq;
                    let id = w.commit(e).await.expect("commit");
                    println!("COMMITTED {id} {seq}");
                    if seq.is_multiple_of(3) {
                        q.record_outcomes(
                            &id,
                            &[(
                                0,
                                RecipientOutcome::Delivered {
                                    reply: "250 ok".into(),
                                },
                            )],
                        )
                        .await
                        .expect("outcome");
                        println!("DONE0 {id}");
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

fn random_millis(lo: u64, hi: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    lo + (nanos ^ (nanos >> 7)) % (hi - lo)
}

#[test]
fn sigkill_keeps_every_acknowledged_message() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    for driver in [Driver::Uring, Driver::Epoll] {
        for round in 0..2 {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("queue7");
            let dir_s = dir.to_str().unwrap().to_string();
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, format!("{} {dir_s}", driver.name()))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let reader = std::thread::spawn(move || {
                BufReader::new(stdout)
                    .lines()
                    .map_while(Result::ok)
                    .collect::<Vec<String>>()
            });
            std::thread::sleep(Duration::from_millis(random_millis(300, 1200)));
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            let lines = reader.join().unwrap();

            let mut committed = Vec::new();
            let mut done0 = Vec::new();
            for l in &lines {
                let mut w = l.split_whitespace();
                match (w.next(), w.next(), w.next()) {
                    (Some("COMMITTED"), Some(id), Some(seq)) => committed.push((
                        id.parse::<MessageId>().unwrap(),
                        seq.parse::<u64>().unwrap(),
                    )),
                    (Some("DONE0"), Some(id), None) => done0.push(id.parse::<MessageId>().unwrap()),
                    _ => {}
                }
            }
            assert!(!committed.is_empty(), "child committed nothing: {lines:?}");
            run(driver, async {
                let (q, rep) = Queue::open(config(&dir_s)).await.unwrap();
                eprintln!(
                    "{} round {round}: {} acknowledged, {} recovered, torn {} bytes",
                    driver.name(),
                    committed.len(),
                    rep.messages,
                    rep.torn_bytes
                );
                assert!(rep.corrupt_records.is_empty(), "{rep:?}");
                for (id, seq) in &committed {
                    let env = q
                        .envelope(id)
                        .unwrap_or_else(|| panic!("acknowledged {id} lost"));
                    assert_eq!(env.recipients.len(), 2);
                    assert_eq!(env.arrival, *seq);
                    let st = q.recipients(id).unwrap();
                    assert_eq!(st[1].state, RecipientState::Pending, "{id}");
                    assert_eq!(q.read_message(id).await.unwrap(), body(*seq), "{id}");
                }
                for id in &done0 {
                    assert_eq!(q.recipients(id).unwrap()[0].state, RecipientState::Done);
                }
            });
        }
    }
}

//! `--metrics`: Prometheus text, counters summed over shards; scraped and
//! parsed while a load run goes on, the counters match the load.
//!
//! Peers: blocking SMTP clients over loopback (several threads), a virtual
//! user's Maildir, plain HTTP/1.0 scrapes of the endpoint.

mod common;

use common::*;
use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[test]
fn metrics_count_accepted_messages() {
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    let log = std::fs::File::create(home.join("serve.log")).unwrap();
    std::fs::create_dir_all(home).unwrap();
    let mut child = Command::new(bin())
        .args(["serve", "--home"])
        .arg(home)
        .env("INDIMAIL_ALLOW_ROOT", "1")
        .args(["--smtp", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
        .env("INDIMAIL_NO_DELIVERY", "1")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut addrs = std::collections::HashMap::new();
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some((svc, a)) = line.split_once(" listening on ") {
            addrs.insert(svc.to_string(), a.parse::<std::net::SocketAddr>().unwrap());
        }
        if addrs.len() == 2 {
            break;
        }
    }
    let server = Server {
        child: Some(child),
        home: home.to_path_buf(),
        smtp: addrs["smtp"],
        driver: "uring".into(),
    };
    for _ in 0..3 {
        assert_eq!(
            send_message(
                server.smtp,
                "a@example.org",
                &["b@localhost"],
                b"x\r\n.\r\n"
            )
            .0,
            250
        );
    }
    let mut s = std::net::TcpStream::connect(addrs["metrics"]).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.0 200 OK"), "{text}");
    assert!(
        text.contains("\nindimail_smtp_messages_accepted_total 3\n"),
        "{text}"
    );
    assert!(
        text.contains("indimail_smtp_connections_total{shard=\"0\"}"),
        "{text}"
    );
    // Delivery is off: the three messages wait; the queue gauges (refreshed
    // every second by the owning shards) show them.
    let sum = |m: &HashMap<String, u64>, prefix: &str| -> u64 {
        m.iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    };
    wait_until(10, "queue gauges", || {
        let m = scrape(addrs["metrics"]);
        sum(&m, "indimail_queue_messages{") == 3
            && sum(&m, "indimail_queue_recipients_pending{") == 3
    });
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let m = scrape(addrs["metrics"]);
    assert!(
        m.iter()
            .any(|(k, v)| k.starts_with("indimail_queue_oldest_age_seconds{") && *v >= 1),
        "{m:?}"
    );
}

/// Starts `serve` with SMTP and metrics listeners (delivery on); returns
/// the server and the metrics address.
fn start_with_metrics(home: &Path) -> (Server, SocketAddr) {
    let log = std::fs::File::create(home.join("serve.log")).unwrap();
    let mut child = Command::new(bin())
        .args(["serve", "--home"])
        .arg(home)
        .env("INDIMAIL_ALLOW_ROOT", "1")
        .env("INDIMAIL_DRIVER", "epoll")
        .env_remove("QUEUEDIR")
        .env_remove("INDIMAIL_HOME")
        .args(["--smtp", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut addrs = HashMap::new();
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some((svc, a)) = line.split_once(" listening on ") {
            addrs.insert(svc.to_string(), a.parse::<SocketAddr>().unwrap());
        }
        if addrs.len() == 2 {
            break;
        }
    }
    let server = Server {
        child: Some(child),
        home: home.to_path_buf(),
        smtp: addrs["smtp"],
        driver: "epoll".into(),
    };
    (server, addrs["metrics"])
}

/// One scrape, parsed: sample name (with labels) → value. Checks the
/// exposition: every sample's metric has HELP and TYPE, and the per-shard
/// samples add up to the total.
fn scrape(addr: SocketAddr) -> HashMap<String, u64> {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP head");
    assert!(head.starts_with("HTTP/1.0 200 OK"), "{head}");
    let mut help = std::collections::HashSet::new();
    let mut typed = std::collections::HashSet::new();
    let mut samples = HashMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap();
            assert!(!text.trim().is_empty(), "empty help for {name}");
            help.insert(name.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.insert(rest.split(' ').next().unwrap().to_string());
        } else if !line.is_empty() {
            let (name, value) = line.rsplit_once(' ').unwrap();
            let mut metric = name.split('{').next().unwrap();
            // A histogram's samples: NAME_bucket{le=..}, NAME_sum, NAME_count.
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = metric.strip_suffix(suffix) {
                    if help.contains(base) {
                        metric = base;
                    }
                }
            }
            assert!(help.contains(metric), "no HELP for {metric}");
            assert!(typed.contains(metric), "no TYPE for {metric}");
            samples.insert(name.to_string(), value.parse::<u64>().unwrap());
        }
    }
    // Counters: a total and one sample per shard, adding up. Gauges: one
    // sample per queue.
    for metric in &help {
        if samples.contains_key(&format!("{metric}_count")) {
            continue; // a histogram
        }
        let Some(&total) = samples.get(metric.as_str()) else {
            assert!(
                samples
                    .keys()
                    .any(|k| k.starts_with(&format!("{metric}{{queue="))),
                "{metric}: no samples"
            );
            continue;
        };
        let shards: u64 = samples
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{metric}{{shard=")))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(total, shards, "{metric}: total vs shards");
    }
    samples
}

#[test]
fn metrics_scraped_during_a_load_run_match_the_load() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 30;
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    let alice = add_user(home, "alice");
    std::fs::write(home.join("control/databytes"), "2000\n").unwrap();
    let (server, metrics) = start_with_metrics(home);
    let smtp = server.smtp;

    // Scrape all along; counters never go down.
    let done = Arc::new(AtomicBool::new(false));
    let scraper = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut last: HashMap<String, u64> = HashMap::new();
            let mut scrapes = 0;
            while !done.load(Ordering::Relaxed) {
                let now = scrape(metrics);
                for (k, v) in &now {
                    assert!(*v >= last.get(k).copied().unwrap_or(0), "{k} went down");
                }
                last = now;
                scrapes += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            scrapes
        })
    };
    // Every 5th message is over databytes: refused at end of data.
    let big = format!("{}\r\n", "x".repeat(70)).repeat(40);
    let clients: Vec<_> = (0..THREADS)
        .map(|t| {
            let big = big.clone();
            std::thread::spawn(move || {
                let (mut ok, mut refused) = (0u64, 0u64);
                for i in 0..PER_THREAD {
                    let body = if i % 5 == 4 {
                        format!("Subject: big {t}-{i}\r\n\r\n{big}.\r\n")
                    } else {
                        format!("Subject: m {t}-{i}\r\n\r\nbody\r\n.\r\n")
                    };
                    let (code, text) = send_message(
                        smtp,
                        "bob@example.org",
                        &["alice@example.com"],
                        body.as_bytes(),
                    );
                    match code {
                        250 => ok += 1,
                        552 => refused += 1,
                        _ => panic!("unexpected reply {text}"),
                    }
                }
                (ok, refused)
            })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for c in clients {
        let (o, r) = c.join().unwrap();
        ok += o;
        refused += r;
    }
    let total = (THREADS * PER_THREAD) as u64;
    assert_eq!(ok + refused, total);
    assert_eq!(refused, total / 5);
    wait_until(60, "every accepted message delivered", || {
        scrape(metrics)["indimail_delivery_success_total"] >= ok
    });
    done.store(true, Ordering::Relaxed);
    let scrapes = scraper.join().unwrap();
    assert!(scrapes > 0);
    let m = scrape(metrics);
    assert_eq!(m["indimail_smtp_connections_total"], total);
    assert_eq!(m["indimail_smtp_messages_accepted_total"], ok);
    assert_eq!(m["indimail_smtp_messages_rejected_total"], refused);
    assert_eq!(m["indimail_delivery_success_total"], ok);
    assert_eq!(m["indimail_delivery_deferral_total"], 0);
    assert_eq!(m["indimail_delivery_failure_total"], 0);
    assert_eq!(m["indimail_bounces_total"], 0);
    // One latency observation per delivered recipient.
    assert_eq!(m["indimail_delivery_latency_seconds_count"], ok);
    assert_eq!(
        m["indimail_delivery_latency_seconds_bucket{le=\"+Inf\"}"],
        ok
    );
    let delivered = std::fs::read_dir(alice.join("new")).unwrap().count() as u64;
    assert_eq!(delivered, ok);
    // Everything delivered: the queue gauges come down to zero.
    wait_until(10, "queue gauges at zero", || {
        let m = scrape(metrics);
        let q: Vec<_> = m
            .iter()
            .filter(|(k, _)| k.starts_with("indimail_queue_"))
            .collect();
        !q.is_empty() && q.iter().all(|(_, v)| **v == 0)
    });
    drop(server);
}

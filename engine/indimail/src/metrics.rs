//! Counters, one set per shard, summed when read.
//!
//! Each shard only ever increments its own set (relaxed atomics on a cache
//! line no other shard writes, so the hot path never contends); a reader —
//! the `--metrics` endpoint, the final `status: stopped` log line — sums
//! the sets of all shards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The counters, in exposition order: (name, help).
pub const COUNTERS: [(&str, &str); 8] = [
    ("smtp_connections_total", "SMTP connections accepted"),
    (
        "smtp_messages_accepted_total",
        "messages answered 250 after DATA",
    ),
    (
        "smtp_messages_rejected_total",
        "messages refused at end of data (size, bare LF, content)",
    ),
    ("smtp_auth_failures_total", "failed SMTP AUTH attempts"),
    ("delivery_success_total", "recipients delivered"),
    (
        "delivery_deferral_total",
        "delivery attempts failed temporarily",
    ),
    (
        "delivery_failure_total",
        "recipients failed permanently (bounced)",
    ),
    ("bounces_total", "bounce messages queued"),
];

/// Index of each counter in [`COUNTERS`].
#[derive(Debug, Clone, Copy)]
pub enum Counter {
    /// See [`COUNTERS`].
    Connections = 0,
    /// See [`COUNTERS`].
    Accepted,
    /// See [`COUNTERS`].
    Rejected,
    /// See [`COUNTERS`].
    AuthFailures,
    /// See [`COUNTERS`].
    Delivered,
    /// See [`COUNTERS`].
    Deferred,
    /// See [`COUNTERS`].
    Failed,
    /// See [`COUNTERS`].
    Bounces,
}

/// One shard's counters (padded so shards do not share a cache line).
#[derive(Default, Debug)]
#[repr(align(128))]
pub struct ShardMetrics {
    values: [AtomicU64; COUNTERS.len()],
}

impl ShardMetrics {
    /// Adds one.
    pub fn inc(&self, c: Counter) {
        self.values[c as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Current value of one counter.
    pub fn get(&self, c: Counter) -> u64 {
        self.values[c as usize].load(Ordering::Relaxed)
    }
}

/// Every shard's counters, for summing.
#[derive(Clone, Default)]
pub struct Registry {
    shards: Arc<Vec<Arc<ShardMetrics>>>,
}

impl Registry {
    /// Counters for `n` shards.
    pub fn new(n: usize) -> Registry {
        Registry {
            shards: Arc::new((0..n).map(|_| Arc::new(ShardMetrics::default())).collect()),
        }
    }

    /// Shard `i`'s counters.
    pub fn shard(&self, i: usize) -> Arc<ShardMetrics> {
        Arc::clone(&self.shards[i])
    }

    /// Sum over shards of one counter.
    pub fn total(&self, c: Counter) -> u64 {
        self.shards.iter().map(|s| s.get(c)).sum()
    }

    /// Prometheus text exposition: the sums, and each shard's value.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (i, (name, help)) in COUNTERS.iter().enumerate() {
            out.push_str(&format!(
                "# HELP indimail_{name} {help}\n# TYPE indimail_{name} counter\n"
            ));
            let total: u64 = self
                .shards
                .iter()
                .map(|s| s.values[i].load(Ordering::Relaxed))
                .sum();
            out.push_str(&format!("indimail_{name} {total}\n"));
            for (n, s) in self.shards.iter().enumerate() {
                out.push_str(&format!(
                    "indimail_{name}{{shard=\"{n}\"}} {}\n",
                    s.values[i].load(Ordering::Relaxed)
                ));
            }
        }
        out
    }
}

/// Serves `GET /metrics` (any path, in fact) on a plain HTTP/1.0 listener
/// until `stop` resolves: one request per connection, then close.
pub async fn serve(
    listener: shard::io::TcpListener,
    registry: Registry,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let registry = registry.clone();
        tokio::task::spawn_local(async move {
            // Read the request head (bounded), then answer.
            let mut buf = Vec::with_capacity(4096);
            loop {
                let read =
                    tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(buf)).await;
                let Ok((r, b)) = read else { return };
                buf = b;
                match r {
                    Ok(0) | Err(_) => return,
                    Ok(_) if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() >= 4000 => break,
                    Ok(_) => buf.reserve(4096 - buf.len().min(4096)),
                }
            }
            let body = registry.render();
            let resp = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(resp.into_bytes()).await;
            let _ = stream.shutdown(std::net::Shutdown::Both);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_over_shards() {
        let r = Registry::new(2);
        r.shard(0).inc(Counter::Accepted);
        r.shard(1).inc(Counter::Accepted);
        r.shard(1).inc(Counter::Connections);
        assert_eq!(r.total(Counter::Accepted), 2);
        let text = r.render();
        assert!(
            text.contains("indimail_smtp_messages_accepted_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains("indimail_smtp_connections_total{shard=\"1\"} 1\n"),
            "{text}"
        );
    }
}

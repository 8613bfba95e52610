//! Counters, one set per shard, summed when read; gauges per queue.
//!
//! Each shard only ever increments its own set (relaxed atomics on a cache
//! line no other shard writes, so the hot path never contends); a reader —
//! the `--metrics` endpoint, the final `status: stopped` log line — sums
//! the sets of all shards. Queue gauges (messages, pending recipients,
//! oldest message age) are written every [`QUEUE_GAUGE_EVERY`] by the shard
//! owning the queue ([`QueueGauges::update`]), off the mail path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The counters, in exposition order: (name, help).
pub const COUNTERS: [(&str, &str); 12] = [
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
    (
        "directory_user_queries_total",
        "user records fetched from the database (first fetches and refreshes)",
    ),
    (
        "directory_home_questions_total",
        "user lookups answered by the user's home shard over the mesh",
    ),
    (
        "directory_cache_hits_total",
        "directory lookups (users, domains, aliases, limits) answered from the shard's cache, fresh or stale",
    ),
    (
        "directory_cache_misses_total",
        "directory lookups that needed the database (fetches started, and callers waiting on one)",
    ),
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
    /// See [`COUNTERS`] (copied from the directory, see [`ShardMetrics::set`]).
    DirectoryUserQueries,
    /// See [`COUNTERS`].
    HomeQuestions,
    /// See [`COUNTERS`] (copied from the directory's cache, see [`ShardMetrics::set`]).
    DirectoryCacheHits,
    /// See [`COUNTERS`] (copied from the directory's cache).
    DirectoryCacheMisses,
}

/// Upper bounds (seconds) of the delivery latency histogram buckets
/// (arrival to successful delivery; arrival has a one-second resolution).
pub const LATENCY_BUCKETS: [u64; 10] = [1, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400];

/// One shard's counters (padded so shards do not share a cache line).
#[derive(Default, Debug)]
#[repr(align(128))]
pub struct ShardMetrics {
    values: [AtomicU64; COUNTERS.len()],
    /// Delivery latency: one count per bucket of [`LATENCY_BUCKETS`], then
    /// the ones above the last bound.
    latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum: AtomicU64,
}

impl ShardMetrics {
    /// Adds one.
    pub fn inc(&self, c: Counter) {
        self.values[c as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Sets a counter kept elsewhere (the directory's own count).
    pub fn set(&self, c: Counter, v: u64) {
        self.values[c as usize].store(v, Ordering::Relaxed);
    }

    /// Records the latency of one successful delivery (seconds from
    /// arrival).
    pub fn observe_delivery(&self, secs: u64) {
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency[i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum.fetch_add(secs, Ordering::Relaxed);
    }

    /// Current value of one counter.
    pub fn get(&self, c: Counter) -> u64 {
        self.values[c as usize].load(Ordering::Relaxed)
    }
}

/// How often a shard refreshes the gauges of its queues.
pub const QUEUE_GAUGE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The gauges of one queue, written by the shard that owns it.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct QueueGauges {
    /// Queue number.
    pub number: u32,
    messages: AtomicU64,
    pending: AtomicU64,
    /// Arrival (unix seconds) of the oldest message; 0 = empty.
    oldest: AtomicU64,
    /// 1 while the queue's write path fails (delivery paused), else 0.
    store_failing: AtomicU64,
    /// Failed writes/flushes/outcome records of the current failure episode.
    store_errors: AtomicU64,
    /// Messages recovery moved to `quarantine/` at this start.
    quarantined: AtomicU64,
}

impl QueueGauges {
    /// Reads the queue's state (on its shard's thread). Walks the envelopes
    /// for the oldest arrival: O(messages), once per [`QUEUE_GAUGE_EVERY`].
    pub fn update(&self, q: &queue_store::Queue) {
        let st = q.stats();
        let oldest = q
            .message_ids()
            .iter()
            .filter_map(|id| q.envelope(id).map(|e| e.arrival))
            .min()
            .unwrap_or(0);
        self.messages.store(st.messages, Ordering::Relaxed);
        self.pending.store(st.recipients_pending, Ordering::Relaxed);
        self.oldest.store(oldest, Ordering::Relaxed);
        let failure = q.store_failure();
        self.store_failing
            .store(u64::from(failure.is_some()), Ordering::Relaxed);
        self.store_errors
            .store(failure.map_or(0, |f| f.errors), Ordering::Relaxed);
        self.quarantined.store(st.quarantined, Ordering::Relaxed);
    }
}

/// The queue gauges: (name, help).
const GAUGES: [(&str, &str); 6] = [
    ("queue_messages", "messages in the queue"),
    (
        "queue_recipients_pending",
        "recipients not yet delivered or failed",
    ),
    (
        "queue_oldest_age_seconds",
        "age of the oldest message in the queue (0 when empty)",
    ),
    (
        "queue_store_failing",
        "1 while the queue cannot write or flush (delivery paused until it heals)",
    ),
    (
        "queue_store_errors",
        "failed writes, flushes and outcome records since the store began failing",
    ),
    (
        "queue_quarantined_messages",
        "messages recovery moved to quarantine/ (body unreadable) at this start",
    ),
];

/// Every shard's counters, for summing, and every queue's gauges.
#[derive(Clone, Default)]
pub struct Registry {
    shards: Arc<Vec<Arc<ShardMetrics>>>,
    queues: Arc<Vec<Arc<QueueGauges>>>,
}

impl Registry {
    /// Counters for `n` shards and gauges for the queues numbered `queues`.
    pub fn with_queues(n: usize, queues: &[u32]) -> Registry {
        Registry {
            shards: Arc::new((0..n).map(|_| Arc::new(ShardMetrics::default())).collect()),
            queues: Arc::new(
                queues
                    .iter()
                    .map(|&number| {
                        Arc::new(QueueGauges {
                            number,
                            ..QueueGauges::default()
                        })
                    })
                    .collect(),
            ),
        }
    }

    /// The gauges of queue `number`, if registered.
    pub fn queue(&self, number: u32) -> Option<Arc<QueueGauges>> {
        self.queues.iter().find(|q| q.number == number).cloned()
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
        // Delivery latency, summed over shards (Prometheus histogram:
        // cumulative buckets).
        let name = "indimail_delivery_latency_seconds";
        out.push_str(&format!(
            "# HELP {name} seconds from arrival to successful delivery, per recipient\n# TYPE {name} histogram\n"
        ));
        let mut cumulative = 0;
        for i in 0..=LATENCY_BUCKETS.len() {
            cumulative += self
                .shards
                .iter()
                .map(|s| s.latency[i].load(Ordering::Relaxed))
                .sum::<u64>();
            let le = LATENCY_BUCKETS
                .get(i)
                .map_or("+Inf".to_string(), |b| b.to_string());
            out.push_str(&format!("{name}_bucket{{le=\"{le}\"}} {cumulative}\n"));
        }
        let sum: u64 = self
            .shards
            .iter()
            .map(|s| s.latency_sum.load(Ordering::Relaxed))
            .sum();
        out.push_str(&format!("{name}_sum {sum}\n{name}_count {cumulative}\n"));
        if self.queues.is_empty() {
            return out;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for (i, (name, help)) in GAUGES.iter().enumerate() {
            out.push_str(&format!(
                "# HELP indimail_{name} {help}\n# TYPE indimail_{name} gauge\n"
            ));
            for q in self.queues.iter() {
                let v = match i {
                    0 => q.messages.load(Ordering::Relaxed),
                    1 => q.pending.load(Ordering::Relaxed),
                    3 => q.store_failing.load(Ordering::Relaxed),
                    4 => q.store_errors.load(Ordering::Relaxed),
                    5 => q.quarantined.load(Ordering::Relaxed),
                    _ => match q.oldest.load(Ordering::Relaxed) {
                        0 => 0,
                        t => now.saturating_sub(t),
                    },
                };
                out.push_str(&format!("indimail_{name}{{queue=\"{}\"}} {v}\n", q.number));
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
        let r = Registry::with_queues(2, &[]);
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
        assert!(!text.contains("queue_messages"));
        r.shard(0).observe_delivery(0);
        r.shard(1).observe_delivery(7);
        r.shard(1).observe_delivery(100_000);
        let text = r.render();
        for line in [
            "indimail_delivery_latency_seconds_bucket{le=\"1\"} 1\n",
            "indimail_delivery_latency_seconds_bucket{le=\"5\"} 1\n",
            "indimail_delivery_latency_seconds_bucket{le=\"10\"} 2\n",
            "indimail_delivery_latency_seconds_bucket{le=\"86400\"} 2\n",
            "indimail_delivery_latency_seconds_bucket{le=\"+Inf\"} 3\n",
            "indimail_delivery_latency_seconds_sum 100007\n",
            "indimail_delivery_latency_seconds_count 3\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        let r = Registry::with_queues(1, &[3]);
        r.queue(3).unwrap().messages.store(7, Ordering::Relaxed);
        let text = r.render();
        assert!(
            text.contains("# TYPE indimail_queue_messages gauge\n"),
            "{text}"
        );
        assert!(
            text.contains("indimail_queue_messages{queue=\"3\"} 7\n"),
            "{text}"
        );
        assert!(
            text.contains("indimail_queue_oldest_age_seconds{queue=\"3\"} 0\n"),
            "{text}"
        );
        assert!(r.queue(4).is_none());
    }
}

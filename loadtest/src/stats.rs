//! Latency histograms per protocol step and the run report (printed and JSON).
//!
//! Each session keeps its own histograms (no locking on the hot path); they are merged once
//! at the end. Values are microseconds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The steps timed, in the order they are printed.
pub const STEPS: &[&str] = &[
    "start_lag",
    "connect",
    "tls",
    "greeting",
    "ehlo",
    "starttls",
    "auth",
    "mail",
    "rcpt",
    "data",
    "data_end",
    "bdat",
    "message",
    "session",
];

/// One histogram per step.
#[derive(Debug, Clone)]
pub struct Histograms {
    by_step: BTreeMap<&'static str, Histogram<u64>>,
}

impl Default for Histograms {
    fn default() -> Self {
        Self::new()
    }
}

impl Histograms {
    /// Empty histograms (1 µs to 1 hour, 3 significant digits).
    pub fn new() -> Self {
        Histograms {
            by_step: BTreeMap::new(),
        }
    }

    /// Records `d` for `step`.
    pub fn record(&mut self, step: &'static str, d: Duration) {
        let h = self.by_step.entry(step).or_insert_with(|| {
            // Bounds are constants that hdrhistogram accepts; failure would be a bug here.
            Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
        });
        h.saturating_record(d.as_micros().clamp(1, 3_600_000_000) as u64);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histograms) {
        for (step, h) in &other.by_step {
            match self.by_step.get_mut(step) {
                Some(mine) => {
                    // Same bounds on both sides, so add cannot fail.
                    let _ = mine.add(h);
                }
                None => {
                    self.by_step.insert(step, h.clone());
                }
            }
        }
    }

    /// Percentile summaries of every step that has values.
    pub fn summaries(&self) -> BTreeMap<String, LatencySummary> {
        self.by_step
            .iter()
            .filter(|(_, h)| !h.is_empty())
            .map(|(step, h)| (step.to_string(), LatencySummary::of(h)))
            .collect()
    }
}

/// Percentiles of one step, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Number of values.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest value.
    pub max_ms: f64,
}

impl LatencySummary {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// The result of a `send` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Target address.
    pub target: String,
    /// "closed" (sessions as fast as possible) or "open" (fixed rate).
    pub mode: String,
    /// Concurrent sessions.
    pub sessions: usize,
    /// Requested arrival rate (open loop).
    pub rate: Option<f64>,
    /// Message size requested, bytes.
    pub size: usize,
    /// Recipients per message.
    pub rcpts: usize,
    /// Messages per connection (0 = unlimited).
    pub per_session: u64,
    /// PIPELINING used when offered.
    pub pipelining: bool,
    /// BDAT used when offered.
    pub chunking: bool,
    /// STARTTLS used.
    pub starttls: bool,
    /// Implicit TLS (TLS from the first byte) used.
    #[serde(default)]
    pub tls_on_connect: bool,
    /// Wall time of the run, seconds.
    pub elapsed_s: f64,
    /// Messages started.
    pub messages_attempted: u64,
    /// Messages that got a 2xx after their data.
    pub messages_accepted: u64,
    /// Messages that did not.
    pub messages_failed: u64,
    /// Recipients accepted within accepted messages.
    pub recipients_accepted: u64,
    /// Message bytes of accepted messages.
    pub bytes_accepted: u64,
    /// Connections opened successfully.
    pub connections: u64,
    /// Accepted messages per second of wall time.
    pub msgs_per_sec: f64,
    /// Error counts by class ("rcpt 4xx", "data_end 5xx", "disconnect", "timeout", ...).
    pub errors: BTreeMap<String, u64>,
    /// Latency per step.
    pub latency: BTreeMap<String, LatencySummary>,
}

impl Report {
    /// The human summary printed at the end of a run.
    pub fn summary_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} loop, {} sessions{}, target {}: {} accepted, {} failed in {:.2} s = {:.1} msgs/s ({} connections)",
            self.mode,
            self.sessions,
            self.rate.map(|r| format!(", rate {r}/s")).unwrap_or_default(),
            self.target,
            self.messages_accepted,
            self.messages_failed,
            self.elapsed_s,
            self.msgs_per_sec,
            self.connections
        );
        if !self.errors.is_empty() {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let _ = writeln!(s, "errors: {}", list.join(", "));
        }
        let _ = writeln!(
            s,
            "{:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "step", "count", "mean ms", "p50", "p90", "p99", "p99.9", "max"
        );
        for step in STEPS {
            if let Some(l) = self.latency.get(*step) {
                let _ = writeln!(
                    s,
                    "{:<10} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                    step, l.count, l.mean_ms, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_merge_summarise() {
        let mut a = Histograms::new();
        let mut b = Histograms::new();
        for i in 1..=100u64 {
            a.record("mail", Duration::from_micros(i * 10));
        }
        b.record("mail", Duration::from_secs(2));
        b.record("rcpt", Duration::ZERO);
        a.merge(&b);
        let s = a.summaries();
        assert_eq!(s["mail"].count, 101);
        assert!((s["mail"].p50_ms - 0.51).abs() < 0.01);
        assert!((s["mail"].max_ms - 2000.0).abs() < 2.0);
        assert_eq!(s["rcpt"].count, 1);
        assert!(!s.contains_key("data"));
    }
}

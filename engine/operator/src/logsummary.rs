//! `indimail log summary FILE`: the role of qmailanalog's `zoverall`.
//!
//! Reads the server's log lines (format in `LOGS.md`) and reports messages,
//! recipients and bytes queued, deliveries by result and channel, bounces,
//! and delivery latency percentiles (hdrhistogram): from a message's
//! `new msg` line to each recipient's final outcome (success or failure),
//! and the duration of each attempt (`starting delivery` to its outcome).
//! Lines it does not know are skipped; a log that starts mid-way simply
//! has no arrival time for older messages (their deliveries count, their
//! latency does not).

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use hdrhistogram::Histogram;

/// The totals of one log.
#[derive(Debug)]
pub struct Summary {
    /// `new msg` lines.
    pub messages: u64,
    /// Recipients of those messages.
    pub recipients: u64,
    /// Bytes of those messages.
    pub bytes: u64,
    /// Messages queued by the server itself (bounces, forwards).
    pub generated: u64,
    /// Deliveries started, by channel.
    pub started: HashMap<String, u64>,
    /// Recipient outcomes: success, deferral, failure.
    pub outcomes: HashMap<String, u64>,
    /// `end msg` lines (messages finished).
    pub finished: u64,
    /// Bounces queued.
    pub bounces: u64,
    /// Arrival to final outcome, milliseconds.
    pub latency: Histogram<u64>,
    /// One attempt, milliseconds.
    pub attempt: Histogram<u64>,
    /// First and last time stamps.
    pub span: Option<(f64, f64)>,
    /// Lines read.
    pub lines: u64,
}

impl Default for Summary {
    fn default() -> Self {
        let h = || Histogram::new_with_bounds(1, 30 * 24 * 3_600_000, 3).expect("valid bounds");
        Summary {
            messages: 0,
            recipients: 0,
            bytes: 0,
            generated: 0,
            started: HashMap::new(),
            outcomes: HashMap::new(),
            finished: 0,
            bounces: 0,
            latency: h(),
            attempt: h(),
            span: None,
            lines: 0,
        }
    }
}

/// `key=value` in a line.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.split(' ')
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// Reads a whole log.
pub fn summarize(input: impl BufRead) -> Summary {
    let mut s = Summary::default();
    // message id -> arrival time
    let mut arrival: HashMap<String, f64> = HashMap::new();
    // (shard, delivery number) -> (message id, start time)
    let mut deliveries: HashMap<(String, String), (String, f64)> = HashMap::new();
    for line in input.lines() {
        let Ok(line) = line else { break };
        s.lines += 1;
        let Some((ts, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(t) = ts.parse::<f64>() else { continue };
        s.span = Some(match s.span {
            None => (t, t),
            Some((a, b)) => (a.min(t), b.max(t)),
        });
        // "shardN <event>" (or "tool <event>" from a queue tool).
        let Some((who, ev)) = rest.split_once(' ') else {
            continue;
        };
        if let Some(r) = ev.strip_prefix("new msg ") {
            let id = r.split(' ').next().unwrap_or("");
            s.messages += 1;
            s.bytes += field(r, "bytes").and_then(|v| v.parse().ok()).unwrap_or(0);
            s.recipients += field(r, "rcpts").and_then(|v| v.parse().ok()).unwrap_or(0);
            if field(r, "origin").is_some() {
                s.generated += 1;
            }
            arrival.insert(id.to_string(), t);
        } else if let Some(r) = ev.strip_prefix("starting delivery ") {
            // "D: msg ID to CHANNEL ADDRS"
            let mut w = r.split(' ');
            let d = w.next().unwrap_or("").trim_end_matches(':').to_string();
            let (Some("msg"), Some(id), Some("to"), Some(channel)) =
                (w.next(), w.next(), w.next(), w.next())
            else {
                continue;
            };
            *s.started.entry(channel.to_string()).or_default() += 1;
            deliveries.insert((who.to_string(), d), (id.to_string(), t));
        } else if let Some(r) = ev.strip_prefix("delivery ") {
            // "D: success|deferral|failure: text"
            let mut w = r.splitn(3, ' ');
            let d = w.next().unwrap_or("").trim_end_matches(':').to_string();
            let word = w.next().unwrap_or("").trim_end_matches(':');
            if !matches!(word, "success" | "deferral" | "failure") {
                continue;
            }
            *s.outcomes.entry(word.to_string()).or_default() += 1;
            if let Some((id, start)) = deliveries.get(&(who.to_string(), d)) {
                let _ = s.attempt.record(ms(t - start));
                if word != "deferral" {
                    if let Some(a) = arrival.get(id) {
                        let _ = s.latency.record(ms(t - a));
                    }
                }
            }
        } else if ev.starts_with("end msg ") {
            s.finished += 1;
        } else if ev.starts_with("bounce msg ") && ev.contains(" qp ") {
            s.bounces += 1;
        }
    }
    s
}

fn ms(secs: f64) -> u64 {
    (secs * 1000.0).round().max(1.0) as u64
}

fn percentiles(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "none".into();
    }
    format!(
        "n={} p50={}ms p90={}ms p99={}ms max={}ms",
        h.len(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.max()
    )
}

/// The report text.
pub fn render(s: &Summary) -> String {
    let mut o = String::new();
    let get = |m: &HashMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    if let Some((a, b)) = s.span {
        o.push_str(&format!("span: {:.0}s ({a:.0} .. {b:.0})\n", b - a));
    }
    o.push_str(&format!("messages: {}\n", s.messages));
    o.push_str(&format!(
        "messages generated (bounces, forwards): {}\n",
        s.generated
    ));
    o.push_str(&format!("recipients: {}\n", s.recipients));
    o.push_str(&format!("bytes: {}\n", s.bytes));
    let mut chans: Vec<_> = s.started.iter().collect();
    chans.sort();
    o.push_str(&format!(
        "deliveries started: {}{}\n",
        s.started.values().sum::<u64>(),
        chans
            .iter()
            .map(|(k, v)| format!(" {k}={v}"))
            .collect::<String>()
    ));
    o.push_str(&format!(
        "recipient outcomes: success={} deferral={} failure={}\n",
        get(&s.outcomes, "success"),
        get(&s.outcomes, "deferral"),
        get(&s.outcomes, "failure")
    ));
    o.push_str(&format!("bounces: {}\n", s.bounces));
    o.push_str(&format!("messages finished: {}\n", s.finished));
    o.push_str(&format!(
        "latency (arrival to final outcome): {}\n",
        percentiles(&s.latency)
    ));
    o.push_str(&format!("attempt duration: {}\n", percentiles(&s.attempt)));
    o.push_str(&format!("lines: {}\n", s.lines));
    o
}

/// `indimail log summary FILE`.
pub fn main(file: &Path) -> i32 {
    let summary = if file == Path::new("-") {
        summarize(std::io::stdin().lock())
    } else {
        match std::fs::File::open(file) {
            Ok(f) => summarize(std::io::BufReader::new(f)),
            Err(e) => {
                eprintln!("indimail log summary: {}: {e}", file.display());
                return 111;
            }
        }
    };
    print!("{}", render(&summary));
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_latency_from_lines() {
        let log = "\
100.000000 shard0 new msg 1-1-32 bytes=300 from=<a@x> rcpts=2 ip=127.0.0.1
100.100000 shard0 starting delivery 1: msg 1-1-32 to local b@example.com
100.200000 shard0 delivery 1: success: delivered/
100.300000 shard0 starting delivery 2: msg 1-1-32 to remote c@example.net
100.500000 shard0 delivery 2: deferral: 451 later/
110.000000 shard0 starting delivery 3: msg 1-1-32 to remote c@example.net
110.000000 shard1 delivery 3: success: 250 unrelated shard/
112.000000 shard0 delivery 3: failure: 550 no/
112.100000 shard0 new msg 1-2-32 bytes=900 from=<> rcpts=1 origin=delivery
112.100000 shard0 bounce msg 1-1-32 qp 1-2-32
112.200000 shard0 end msg 1-1-32
garbage line
";
        let s = summarize(log.as_bytes());
        assert_eq!((s.messages, s.recipients, s.bytes), (2, 3, 1200));
        assert_eq!(s.generated, 1);
        assert_eq!(s.outcomes["success"], 2);
        assert_eq!(s.outcomes["deferral"], 1);
        assert_eq!(s.outcomes["failure"], 1);
        assert_eq!((s.started["local"], s.started["remote"]), (1, 2));
        assert_eq!((s.bounces, s.finished), (1, 1));
        // Latency: 200 ms (local) and 12 s (failure); not the other shard's line.
        assert_eq!(s.latency.len(), 2);
        assert!(s.latency.max() >= 11_990 && s.latency.max() <= 12_010);
        assert_eq!(s.attempt.len(), 3);
        let text = render(&s);
        assert!(text.contains("messages: 2\n"), "{text}");
        assert!(text.contains("success=2 deferral=1 failure=1"), "{text}");
    }
}

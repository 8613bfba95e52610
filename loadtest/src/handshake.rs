//! Connection-rate load: sessions that carry no mail, opened and closed as fast as the server
//! answers, to measure what a connection costs it, with and without TLS.
//!
//! Each of `sessions` tasks repeats: connect, [TLS handshake (implicit TLS)], greeting, EHLO,
//! [STARTTLS, handshake, EHLO], QUIT and its 221, close. The figure is completed sessions per
//! second; the latency of each step and of the whole session goes into HDR histograms (steps
//! `connect`, `tls` (implicit), `greeting`, `ehlo`, `starttls` (command and handshake),
//! `session`). By default every TLS connection is a full handshake (no resumption, see
//! [`crate::tls::client_config`]). Errors are counted by class and never stop the run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::client::{Capabilities, Connection, Reply, SmtpError};
use crate::send::SendError;
use crate::stats::{Histograms, LatencySummary, STEPS};

/// How a session gets under TLS, if at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Cleartext only.
    None,
    /// STARTTLS after the first EHLO (RFC 3207), then EHLO again.
    Starttls,
    /// TLS from the first byte (RFC 8314).
    OnConnect,
}

/// Everything a connection-rate run needs.
#[derive(Debug, Clone)]
pub struct HandshakeConfig {
    /// Where to connect (already checked by [`crate::target`]).
    pub target: SocketAddr,
    /// Name used for TLS SNI.
    pub server_name: String,
    /// Concurrent sessions.
    pub sessions: usize,
    /// Total sessions to complete; the run stops at this count or `duration`.
    pub connections: Option<u64>,
    /// Length of the run.
    pub duration: Option<Duration>,
    /// TLS or not, and how.
    pub tls: TlsMode,
    /// Let TLS sessions resume.
    pub tls_resumption: bool,
    /// EHLO name.
    pub helo: String,
    /// Per read/write timeout.
    pub timeout: Duration,
    /// Print a progress line to stderr every second.
    pub progress: bool,
}

/// The result of a connection-rate run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandshakeReport {
    /// Target address.
    pub target: String,
    /// TLS mode.
    pub tls: TlsMode,
    /// Whether TLS resumption was allowed.
    pub tls_resumption: bool,
    /// The TLS version and cipher suite of the first TLS session, when TLS was used.
    pub tls_negotiated: Option<String>,
    /// Concurrent sessions.
    pub sessions: usize,
    /// Wall time of the run, seconds.
    pub elapsed_s: f64,
    /// Sessions that went from connect to the 221 of QUIT.
    pub completed: u64,
    /// Sessions whose TLS handshake resumed an earlier session (only with resumption).
    pub tls_resumed: u64,
    /// Sessions that did not.
    pub failed: u64,
    /// Completed sessions per second of wall time.
    pub sessions_per_sec: f64,
    /// Error counts by class ("tls", "connect", "ehlo 4xx", ...).
    pub errors: BTreeMap<String, u64>,
    /// Latency per step.
    pub latency: BTreeMap<String, LatencySummary>,
}

impl HandshakeReport {
    /// The human summary printed at the end of a run.
    pub fn summary_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} sessions, TLS {:?}{}, target {}: {} completed, {} failed in {:.2} s = {:.1} sessions/s{}",
            self.sessions,
            self.tls,
            if self.tls_resumption {
                format!(" ({} resumed)", self.tls_resumed)
            } else {
                String::new()
            },
            self.target,
            self.completed,
            self.failed,
            self.elapsed_s,
            self.sessions_per_sec,
            self.tls_negotiated
                .as_deref()
                .map(|t| format!(" ({t})"))
                .unwrap_or_default()
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

struct Shared {
    config: HandshakeConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    start: Instant,
    deadline: Option<Instant>,
    next: AtomicU64,
    completed: AtomicU64,
    resumed: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    negotiated: Mutex<Option<String>>,
}

impl Shared {
    fn claim(&self) -> bool {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        !(self.config.connections.is_some_and(|m| n >= m)
            || self.deadline.is_some_and(|d| Instant::now() >= d))
    }

    fn fail(&self, e: &SmtpError) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.errors.lock() {
            *m.entry(e.class()).or_insert(0) += 1;
        }
    }
}

/// Runs the connection-rate load and returns the report.
pub async fn run(config: HandshakeConfig) -> Result<HandshakeReport, SendError> {
    if config.sessions == 0 {
        return Err(SendError::Config("--sessions must be at least 1".into()));
    }
    if config.connections.is_none() && config.duration.is_none() {
        return Err(SendError::Config(
            "give --connections or --duration so the run is bounded".into(),
        ));
    }
    let tls = match config.tls {
        TlsMode::None => None,
        _ => Some(crate::tls::client_config(config.tls_resumption)?),
    };
    let start = Instant::now();
    let shared = Arc::new(Shared {
        tls,
        start,
        deadline: config.duration.map(|d| start + d),
        next: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        resumed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        errors: Mutex::new(BTreeMap::new()),
        negotiated: Mutex::new(None),
        config,
    });
    let done = Arc::new(AtomicBool::new(false));
    let progress = shared.config.progress.then(|| {
        let (shared, done) = (shared.clone(), done.clone());
        tokio::spawn(async move {
            let mut last = 0;
            let mut tick = tokio::time::interval_at(
                (shared.start + Duration::from_secs(1)).into(),
                Duration::from_secs(1),
            );
            while !done.load(Ordering::Relaxed) {
                tick.tick().await;
                let n = shared.completed.load(Ordering::Relaxed);
                eprintln!(
                    "[{:>4}s] {:>7} sessions/s  completed {:>8}  failed {:>6}",
                    shared.start.elapsed().as_secs(),
                    n - last,
                    n,
                    shared.failed.load(Ordering::Relaxed)
                );
                last = n;
            }
        })
    });
    let mut tasks = Vec::with_capacity(shared.config.sessions);
    for _ in 0..shared.config.sessions {
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histograms::new();
            while shared.claim() {
                let t = Instant::now();
                match session(&shared, &mut hist).await {
                    Ok(()) => {
                        hist.record("session", t.elapsed());
                        shared.completed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        shared.fail(&e);
                        if matches!(e, SmtpError::Connect(_)) {
                            // A refused connect must not turn the run into a busy loop.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            }
            hist
        }));
    }
    let mut hist = Histograms::new();
    for t in tasks {
        match t.await {
            Ok(h) => hist.merge(&h),
            Err(e) => shared.fail(&SmtpError::Malformed(format!("internal: {e}"))),
        }
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        p.abort();
    }
    let completed = shared.completed.load(Ordering::Relaxed);
    let c = &shared.config;
    Ok(HandshakeReport {
        target: c.target.to_string(),
        tls: c.tls,
        tls_resumption: c.tls_resumption,
        tls_negotiated: shared.negotiated.lock().ok().and_then(|n| n.clone()),
        sessions: c.sessions,
        elapsed_s,
        completed,
        tls_resumed: shared.resumed.load(Ordering::Relaxed),
        failed: shared.failed.load(Ordering::Relaxed),
        sessions_per_sec: if elapsed_s > 0.0 {
            completed as f64 / elapsed_s
        } else {
            0.0
        },
        errors: shared.errors.lock().map(|m| m.clone()).unwrap_or_default(),
        latency: hist.summaries(),
    })
}

/// One session without mail. QUIT's 221 must arrive for it to count.
async fn session(shared: &Shared, hist: &mut Histograms) -> Result<(), SmtpError> {
    let c = &shared.config;
    let t = Instant::now();
    let mut conn = Connection::connect(c.target, c.timeout).await?;
    hist.record("connect", t.elapsed());
    if let (TlsMode::OnConnect, Some(tls)) = (c.tls, &shared.tls) {
        let t = Instant::now();
        conn.start_tls(tls.clone(), &c.server_name).await?;
        hist.record("tls", t.elapsed());
    }
    let t = Instant::now();
    expect(conn.read_reply().await?, "greeting")?;
    hist.record("greeting", t.elapsed());
    let ehlo = format!("EHLO {}\r\n", c.helo);
    let t = Instant::now();
    let reply = expect(conn.command(&ehlo).await?, "ehlo")?;
    hist.record("ehlo", t.elapsed());
    if let (TlsMode::Starttls, Some(tls)) = (c.tls, &shared.tls) {
        if !Capabilities::from_ehlo(&reply).starttls {
            return Err(SmtpError::Tls("server does not offer STARTTLS".into()));
        }
        let t = Instant::now();
        expect(conn.command("STARTTLS\r\n").await?, "starttls")?;
        conn.start_tls(tls.clone(), &c.server_name).await?;
        hist.record("starttls", t.elapsed());
        let t = Instant::now();
        expect(conn.command(&ehlo).await?, "ehlo")?;
        hist.record("ehlo", t.elapsed());
    }
    if conn.is_tls() {
        if conn.tls_resumed() {
            shared.resumed.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut n) = shared.negotiated.lock() {
            if n.is_none() {
                *n = conn.tls_description();
            }
        }
    }
    let reply = conn.command("QUIT\r\n").await?;
    if reply.code != 221 {
        return Err(refused(reply, "quit"));
    }
    conn.close().await;
    Ok(())
}

fn expect(reply: Reply, step: &'static str) -> Result<Reply, SmtpError> {
    if reply.is_positive() {
        Ok(reply)
    } else {
        Err(refused(reply, step))
    }
}

fn refused(reply: Reply, step: &'static str) -> SmtpError {
    SmtpError::Refused {
        step,
        code: reply.code,
        text: reply.lines.join(" "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unbounded_or_empty_runs_refused() {
        let config = HandshakeConfig {
            target: "127.0.0.1:25".parse().unwrap(),
            server_name: "localhost".into(),
            sessions: 1,
            connections: None,
            duration: None,
            tls: TlsMode::None,
            tls_resumption: false,
            helo: "h".into(),
            timeout: Duration::from_secs(1),
            progress: false,
        };
        assert!(matches!(
            run(config.clone()).await,
            Err(SendError::Config(_))
        ));
        let config = HandshakeConfig {
            sessions: 0,
            connections: Some(1),
            ..config
        };
        assert!(matches!(run(config).await, Err(SendError::Config(_))));
    }
}

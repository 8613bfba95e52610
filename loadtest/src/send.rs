//! The load generator: many concurrent SMTP sessions against one target.
//!
//! Closed loop (`rate` = None): `sessions` tasks each send as fast as the server answers.
//! Open loop (`rate` = Some(r)): message `i` is scheduled at `start + i / r`; a free session
//! picks it up, waits for its time if early, and its latency is measured from the scheduled
//! time, not from when a session became free, so a server that falls behind shows its real
//! queueing delay (no coordinated omission).
//!
//! Errors (4xx, 5xx, disconnects, timeouts) are counted by class and never stop the run; a
//! broken connection is replaced by a new one. The run is always bounded by a message count or
//! a duration.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::client::{auth_plain_response, Capabilities, Connection, Reply, SmtpError};
use crate::message::MessageFactory;
use crate::stats::{Histograms, Report};

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The accepted-log file could not be opened.
    #[error("opening accepted log {0}: {1}")]
    AcceptedLog(PathBuf, std::io::Error),
    /// The TLS client configuration could not be built.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsSetupError),
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct SendConfig {
    /// Where to connect (already checked by [`crate::target`]).
    pub target: SocketAddr,
    /// Name used for TLS SNI.
    pub server_name: String,
    /// Concurrent sessions (the pool size in open loop).
    pub sessions: usize,
    /// Open-loop arrival rate, messages per second; None for closed loop.
    pub rate: Option<f64>,
    /// Total messages to send; the run stops at this count or `duration`, whichever first.
    pub messages: Option<u64>,
    /// Length of the run.
    pub duration: Option<Duration>,
    /// Message size in bytes, headers included.
    pub size: usize,
    /// Recipients per message.
    pub rcpts: usize,
    /// Recipient address with `{n}` replaced by a user number in 1..=users.
    pub rcpt_template: String,
    /// How many distinct users `{n}` ranges over.
    pub users: u64,
    /// Envelope and header sender.
    pub from: String,
    /// EHLO name.
    pub helo: String,
    /// Messages per connection; 0 = unlimited.
    pub per_session: u64,
    /// Pipeline MAIL/RCPT/DATA when the server offers PIPELINING.
    pub pipelining: bool,
    /// Use BDAT when the server offers CHUNKING.
    pub chunking: bool,
    /// Use STARTTLS (the server must offer it).
    pub starttls: bool,
    /// Start TLS right after connecting (implicit TLS, RFC 8314, port 465 style).
    pub tls_on_connect: bool,
    /// Let TLS sessions resume (see [`crate::tls::client_config`]); off: full handshakes.
    pub tls_resumption: bool,
    /// AUTH PLAIN credentials.
    pub auth: Option<(String, String)>,
    /// Per read/write timeout.
    pub timeout: Duration,
    /// Connect from this many loopback addresses (127.1.0.1 upward, one after the other per
    /// connection) so a server placing clients by address sees many; 0 = the kernel's choice.
    pub source_addrs: u32,
    /// File to append `<Message-ID> <reply>` to for every accepted message.
    pub accepted_log: Option<PathBuf>,
    /// Print a progress line to stderr every second.
    pub progress: bool,
}

impl SendConfig {
    /// The local address of connection `n` (see [`SendConfig::source_addrs`]).
    pub fn source(&self, n: u64) -> Option<std::net::IpAddr> {
        if self.source_addrs == 0 {
            return None;
        }
        let k = (n % u64::from(self.source_addrs)) as u32;
        Some(std::net::Ipv4Addr::from(0x7f01_0001u32 + k).into())
    }

    /// Recipient `k` of message `seq`: spreads messages evenly over the users.
    pub fn recipient(&self, seq: u64, k: usize) -> String {
        let users = self.users.max(1);
        let n = (seq.wrapping_mul(self.rcpts as u64).wrapping_add(k as u64)) % users + 1;
        self.rcpt_template.replace("{n}", &n.to_string())
    }
}

struct Shared {
    config: SendConfig,
    factory: MessageFactory,
    tls: Option<Arc<rustls::ClientConfig>>,
    start: Instant,
    deadline: Option<Instant>,
    next: AtomicU64,
    accepted: AtomicU64,
    failed: AtomicU64,
    rcpts_accepted: AtomicU64,
    bytes_accepted: AtomicU64,
    connections: AtomicU64,
    /// Connection attempts so far: picks each one's source address.
    next_source: AtomicU64,
    error_events: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    accepted_log: Option<Mutex<File>>,
}

impl Shared {
    fn count_error(&self, class: String) {
        self.error_events.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut map) = self.errors.lock() {
            *map.entry(class).or_insert(0) += 1;
        }
    }

    /// The next message to send and the instant its latency is measured from, or None when
    /// the run is over. Sleeps until the scheduled time in open loop.
    async fn claim(&self, hist: &mut Histograms) -> Option<(u64, Instant)> {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        if self.config.messages.is_some_and(|m| seq >= m) {
            return None;
        }
        match self.config.rate {
            None => {
                let now = Instant::now();
                if self.deadline.is_some_and(|d| now >= d) {
                    return None;
                }
                Some((seq, now))
            }
            Some(rate) => {
                let at = self.start + Duration::from_secs_f64(seq as f64 / rate);
                if self.deadline.is_some_and(|d| at >= d) {
                    return None;
                }
                tokio::time::sleep_until(at.into()).await;
                // tokio's timer wakes up to a millisecond late; that lag is the generator's,
                // not the server's, and is reported apart so it can be told from the latency.
                hist.record("start_lag", at.elapsed());
                Some((seq, at))
            }
        }
    }

    fn log_accepted(&self, message_id: &str, reply: &Reply) {
        if let Some(log) = &self.accepted_log {
            // One write per line on an O_APPEND file: the line is in the kernel as soon as
            // the 250 has been seen, so a run that kills the server knows what was accepted.
            let line = format!("{} {}\n", message_id, reply.text());
            if let Ok(mut f) = log.lock() {
                if let Err(e) = f.write_all(line.as_bytes()) {
                    eprintln!("accepted log: {e}");
                }
            }
        }
    }
}

/// Runs the load and returns the report.
pub async fn run(config: SendConfig) -> Result<Report, SendError> {
    if config.sessions == 0 {
        return Err(SendError::Config("--sessions must be at least 1".into()));
    }
    if config.messages.is_none() && config.duration.is_none() {
        return Err(SendError::Config(
            "give --messages or --duration so the run is bounded".into(),
        ));
    }
    if config.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return Err(SendError::Config("--rate must be a positive number".into()));
    }
    if config.rcpts == 0 {
        return Err(SendError::Config("--rcpts must be at least 1".into()));
    }
    if config.starttls && config.tls_on_connect {
        return Err(SendError::Config(
            "--starttls and --tls-on-connect exclude each other".into(),
        ));
    }
    let accepted_log = match &config.accepted_log {
        None => None,
        Some(p) => Some(Mutex::new(
            File::options()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| SendError::AcceptedLog(p.clone(), e))?,
        )),
    };
    let tls = if config.starttls || config.tls_on_connect {
        Some(crate::tls::client_config(config.tls_resumption)?)
    } else {
        None
    };
    let start = Instant::now();
    let shared = Arc::new(Shared {
        factory: MessageFactory::new(config.size, &config.from),
        tls,
        start,
        deadline: config.duration.map(|d| start + d),
        next: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        rcpts_accepted: AtomicU64::new(0),
        bytes_accepted: AtomicU64::new(0),
        connections: AtomicU64::new(0),
        next_source: AtomicU64::new(0),
        error_events: AtomicU64::new(0),
        errors: Mutex::new(BTreeMap::new()),
        accepted_log,
        config,
    });

    let done = Arc::new(AtomicBool::new(false));
    let progress = shared.config.progress.then(|| {
        let shared = shared.clone();
        let done = done.clone();
        tokio::spawn(progress_loop(shared, done))
    });

    let mut tasks = Vec::with_capacity(shared.config.sessions);
    for _ in 0..shared.config.sessions {
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut session = Session {
                shared,
                hist: Histograms::new(),
            };
            session.run().await;
            session.hist
        }));
    }
    let mut hist = Histograms::new();
    for t in tasks {
        match t.await {
            Ok(h) => hist.merge(&h),
            Err(e) => shared.count_error(format!("internal: {e}")),
        }
    }
    let elapsed = start.elapsed();
    done.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.await;
    }

    let c = &shared.config;
    let accepted = shared.accepted.load(Ordering::Relaxed);
    let failed = shared.failed.load(Ordering::Relaxed);
    let elapsed_s = elapsed.as_secs_f64();
    Ok(Report {
        target: c.target.to_string(),
        mode: if c.rate.is_some() { "open" } else { "closed" }.into(),
        sessions: c.sessions,
        rate: c.rate,
        size: c.size,
        rcpts: c.rcpts,
        per_session: c.per_session,
        pipelining: c.pipelining,
        chunking: c.chunking,
        starttls: c.starttls,
        tls_on_connect: c.tls_on_connect,
        elapsed_s,
        messages_attempted: accepted + failed,
        messages_accepted: accepted,
        messages_failed: failed,
        recipients_accepted: shared.rcpts_accepted.load(Ordering::Relaxed),
        bytes_accepted: shared.bytes_accepted.load(Ordering::Relaxed),
        connections: shared.connections.load(Ordering::Relaxed),
        msgs_per_sec: if elapsed_s > 0.0 {
            accepted as f64 / elapsed_s
        } else {
            0.0
        },
        errors: shared.errors.lock().map(|m| m.clone()).unwrap_or_default(),
        latency: hist.summaries(),
    })
}

async fn progress_loop(shared: Arc<Shared>, done: Arc<AtomicBool>) {
    let mut last = 0u64;
    let mut tick = tokio::time::interval_at(
        (shared.start + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    while !done.load(Ordering::Relaxed) {
        tick.tick().await;
        if done.load(Ordering::Relaxed) {
            break;
        }
        let ok = shared.accepted.load(Ordering::Relaxed);
        eprintln!(
            "[{:>4}s] {:>7} msgs/s  accepted {:>8}  failed {:>6}  errors {:>6}",
            shared.start.elapsed().as_secs(),
            ok - last,
            ok,
            shared.failed.load(Ordering::Relaxed),
            shared.error_events.load(Ordering::Relaxed)
        );
        last = ok;
    }
}

/// How a transaction ended, when the connection is still usable.
enum Outcome {
    Accepted,
    Failed,
}

struct Session {
    shared: Arc<Shared>,
    hist: Histograms,
}

impl Session {
    async fn run(&mut self) {
        let shared = self.shared.clone();
        let c = &shared.config;
        'connections: loop {
            let Some(mut pending) = shared.claim(&mut self.hist).await else {
                break;
            };
            let (mut conn, caps) = match self.open().await {
                Ok(x) => x,
                Err(e) => {
                    self.fail_message(e.class());
                    // A refused connect must not turn the run into a busy loop.
                    if matches!(e, SmtpError::Connect(_)) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    continue;
                }
            };
            let mut sent = 0u64;
            loop {
                let (seq, started) = pending;
                sent += 1;
                match self.transaction(&mut conn, &caps, seq, started).await {
                    Ok(Outcome::Accepted) => {}
                    Ok(Outcome::Failed) => {
                        shared.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        self.fail_message(e.class());
                        continue 'connections;
                    }
                }
                if c.per_session != 0 && sent >= c.per_session {
                    break;
                }
                match shared.claim(&mut self.hist).await {
                    Some(next) => pending = next,
                    None => {
                        conn.quit().await;
                        break 'connections;
                    }
                }
            }
            conn.quit().await;
        }
    }

    fn fail_message(&self, class: String) {
        self.shared.failed.fetch_add(1, Ordering::Relaxed);
        self.shared.count_error(class);
    }

    /// Connect, greeting, EHLO, optional STARTTLS and AUTH.
    async fn open(&mut self) -> Result<(Connection, Capabilities), SmtpError> {
        let c = &self.shared.config;
        let t = Instant::now();
        let n = self.shared.next_source.fetch_add(1, Ordering::Relaxed);
        let mut conn = Connection::connect_from(c.target, c.source(n), c.timeout).await?;
        self.hist.record("connect", t.elapsed());
        self.shared.connections.fetch_add(1, Ordering::Relaxed);
        if let (true, Some(tls)) = (c.tls_on_connect, &self.shared.tls) {
            let t = Instant::now();
            conn.start_tls(tls.clone(), &c.server_name).await?;
            self.hist.record("tls", t.elapsed());
        }
        let t = Instant::now();
        let greeting = conn.read_reply().await?;
        self.hist.record("greeting", t.elapsed());
        expect(&greeting, "greeting")?;
        let ehlo = format!("EHLO {}\r\n", c.helo);
        let t = Instant::now();
        let reply = conn.command(&ehlo).await?;
        self.hist.record("ehlo", t.elapsed());
        expect(&reply, "ehlo")?;
        let mut caps = Capabilities::from_ehlo(&reply);
        if let (true, Some(tls)) = (c.starttls, &self.shared.tls) {
            if !caps.starttls {
                return Err(SmtpError::Tls("server does not offer STARTTLS".into()));
            }
            let t = Instant::now();
            let reply = conn.command("STARTTLS\r\n").await?;
            expect(&reply, "starttls")?;
            conn.start_tls(tls.clone(), &c.server_name).await?;
            self.hist.record("starttls", t.elapsed());
            let t = Instant::now();
            let reply = conn.command(&ehlo).await?;
            self.hist.record("ehlo", t.elapsed());
            expect(&reply, "ehlo")?;
            caps = Capabilities::from_ehlo(&reply);
        }
        if let Some((user, pass)) = &c.auth {
            let t = Instant::now();
            let line = format!("AUTH PLAIN {}\r\n", auth_plain_response(user, pass));
            let reply = conn.command(&line).await?;
            self.hist.record("auth", t.elapsed());
            expect(&reply, "auth")?;
        }
        Ok((conn, caps))
    }

    /// One message. `Err` means the connection is unusable (and the message failed).
    async fn transaction(
        &mut self,
        conn: &mut Connection,
        caps: &Capabilities,
        seq: u64,
        started: Instant,
    ) -> Result<Outcome, SmtpError> {
        let shared = self.shared.clone();
        let c = &shared.config;
        let rcpts: Vec<String> = (0..c.rcpts).map(|k| c.recipient(seq, k)).collect();
        let message = shared.factory.message(seq, &rcpts);
        let pipelining = c.pipelining && caps.pipelining;
        let chunking = c.chunking && caps.chunking;

        let mut mail = format!("MAIL FROM:<{}>", c.from);
        if caps.size {
            mail.push_str(&format!(" SIZE={}", message.raw.len()));
        }
        mail.push_str("\r\n");
        let rcpt_lines: Vec<String> = rcpts.iter().map(|r| format!("RCPT TO:<{r}>\r\n")).collect();
        let body = if chunking {
            let mut b = format!("BDAT {} LAST\r\n", message.raw.len()).into_bytes();
            b.extend_from_slice(&message.raw);
            b
        } else {
            message.data_payload()
        };

        let mut t;
        let mail_reply;
        let mut ok_rcpts = 0usize;
        let final_reply;
        if pipelining {
            // RFC 2920: the envelope and DATA (or BDAT with its chunk) go in one write; each
            // step's latency is the time since the previous reply arrived.
            let mut out = mail.into_bytes();
            for r in &rcpt_lines {
                out.extend_from_slice(r.as_bytes());
            }
            if chunking {
                out.extend_from_slice(&body);
            } else {
                out.extend_from_slice(b"DATA\r\n");
            }
            t = Instant::now();
            conn.write_all(&out).await?;
            mail_reply = conn.read_reply().await?;
            self.step("mail", &mut t);
            for _ in &rcpt_lines {
                let r = conn.read_reply().await?;
                self.step("rcpt", &mut t);
                ok_rcpts += self.rcpt_result(&r)?;
            }
            if chunking {
                final_reply = conn.read_reply().await?;
                self.step("bdat", &mut t);
            } else {
                let data = conn.read_reply().await?;
                self.step("data", &mut t);
                let envelope_ok = mail_reply.is_positive() && ok_rcpts > 0;
                if data.code == 354 && !envelope_ok {
                    // A server that says 354 with no valid envelope: end the empty message.
                    conn.write_all(b".\r\n").await?;
                    let _ = conn.read_reply().await?;
                }
                if !mail_reply.is_positive() {
                    return self.failed(conn, "mail", &mail_reply, true).await;
                }
                if ok_rcpts == 0 {
                    // The rejected recipients are already counted.
                    self.reset(conn).await?;
                    return Ok(Outcome::Failed);
                }
                if data.code != 354 {
                    return self.failed(conn, "data", &data, true).await;
                }
                conn.write_all(&body).await?;
                t = Instant::now();
                final_reply = conn.read_reply().await?;
                self.step("data_end", &mut t);
            }
            if !mail_reply.is_positive() {
                return self.failed(conn, "mail", &mail_reply, true).await;
            }
        } else {
            t = Instant::now();
            mail_reply = conn.command(&mail).await?;
            self.step("mail", &mut t);
            if !mail_reply.is_positive() {
                return self.failed(conn, "mail", &mail_reply, true).await;
            }
            for r in &rcpt_lines {
                let reply = conn.command(r).await?;
                self.step("rcpt", &mut t);
                ok_rcpts += self.rcpt_result(&reply)?;
            }
            if ok_rcpts == 0 {
                // The rejected recipients are already counted.
                self.reset(conn).await?;
                return Ok(Outcome::Failed);
            }
            if chunking {
                conn.write_all(&body).await?;
                final_reply = conn.read_reply().await?;
                self.step("bdat", &mut t);
            } else {
                let data = conn.command("DATA\r\n").await?;
                self.step("data", &mut t);
                if data.code != 354 {
                    return self.failed(conn, "data", &data, true).await;
                }
                conn.write_all(&body).await?;
                t = Instant::now();
                final_reply = conn.read_reply().await?;
                self.step("data_end", &mut t);
            }
        }
        let step = if chunking { "bdat" } else { "data_end" };
        if ok_rcpts == 0 {
            // Pipelined BDAT after every RCPT failed: the rcpt errors are already counted.
            return Ok(Outcome::Failed);
        }
        if !final_reply.is_positive() {
            return self.failed(conn, step, &final_reply, false).await;
        }
        self.hist.record("message", started.elapsed());
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        shared
            .rcpts_accepted
            .fetch_add(ok_rcpts as u64, Ordering::Relaxed);
        shared
            .bytes_accepted
            .fetch_add(message.raw.len() as u64, Ordering::Relaxed);
        shared.log_accepted(&message.message_id, &final_reply);
        Ok(Outcome::Accepted)
    }

    fn step(&mut self, name: &'static str, t: &mut Instant) {
        let now = Instant::now();
        self.hist.record(name, now - *t);
        *t = now;
    }

    /// 1 if accepted; a rejected recipient is counted as an error, 421 ends the session.
    fn rcpt_result(&self, reply: &Reply) -> Result<usize, SmtpError> {
        if reply.is_positive() {
            return Ok(1);
        }
        closing(reply, "rcpt")?;
        self.shared.count_error(format!("rcpt {}xx", reply.class()));
        Ok(0)
    }

    /// Counts a failed step and, if the transaction may still be open, sends RSET.
    async fn failed(
        &mut self,
        conn: &mut Connection,
        step: &'static str,
        reply: &Reply,
        reset: bool,
    ) -> Result<Outcome, SmtpError> {
        closing(reply, step)?;
        self.shared
            .count_error(format!("{step} {}xx", reply.class()));
        if reset {
            self.reset(conn).await?;
        }
        Ok(Outcome::Failed)
    }

    async fn reset(&mut self, conn: &mut Connection) -> Result<(), SmtpError> {
        let r = conn.command("RSET\r\n").await?;
        expect(&r, "rset")
    }
}

/// A 421 means the server is closing the connection (RFC 5321 section 3.8).
fn closing(reply: &Reply, step: &'static str) -> Result<(), SmtpError> {
    if reply.code == 421 {
        return Err(SmtpError::Refused {
            step,
            code: reply.code,
            text: reply.lines.join(" "),
        });
    }
    Ok(())
}

fn expect(reply: &Reply, step: &'static str) -> Result<(), SmtpError> {
    if reply.is_positive() {
        Ok(())
    } else {
        Err(SmtpError::Refused {
            step,
            code: reply.code,
            text: reply.lines.join(" "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SendConfig {
        SendConfig {
            target: "127.0.0.1:25".parse().unwrap(),
            server_name: "localhost".into(),
            sessions: 1,
            rate: None,
            messages: Some(1),
            duration: None,
            size: 1024,
            rcpts: 3,
            rcpt_template: "user{n}@example.com".into(),
            users: 10,
            from: "a@b.c".into(),
            helo: "h".into(),
            per_session: 1,
            pipelining: false,
            chunking: false,
            starttls: false,
            tls_on_connect: false,
            tls_resumption: false,
            auth: None,
            timeout: Duration::from_secs(1),
            source_addrs: 0,
            accepted_log: None,
            progress: false,
        }
    }

    #[test]
    fn sources_cycle_over_loopback_addresses() {
        let mut c = config();
        assert_eq!(c.source(5), None);
        c.source_addrs = 300;
        assert_eq!(c.source(0), Some("127.1.0.1".parse().unwrap()));
        assert_eq!(c.source(255), Some("127.1.1.0".parse().unwrap()));
        assert_eq!(c.source(299), Some("127.1.1.44".parse().unwrap()));
        assert_eq!(c.source(300), Some("127.1.0.1".parse().unwrap()));
    }

    #[test]
    fn recipients_spread_over_users() {
        let c = config();
        let all: Vec<String> = (0..10)
            .flat_map(|s| (0..3).map(move |k| (s, k)))
            .map(|(s, k)| c.recipient(s, k))
            .collect();
        assert_eq!(all[0], "user1@example.com");
        assert_eq!(all[2], "user3@example.com");
        assert_eq!(all[3], "user4@example.com");
        for u in 1..=10 {
            assert_eq!(
                all.iter()
                    .filter(|r| **r == format!("user{u}@example.com"))
                    .count(),
                3
            );
        }
    }

    #[tokio::test]
    async fn unbounded_run_refused() {
        let mut c = config();
        c.messages = None;
        assert!(matches!(run(c).await, Err(SendError::Config(_))));
    }
}

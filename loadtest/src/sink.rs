//! A fast SMTP sink: accepts mail, counts it and throws it away (or writes it to a Maildir),
//! as a stand-in for the remote servers an MTA relays to, next to Postfix's `smtp-sink`.
//!
//! It offers PIPELINING (replies to everything buffered are sent in one write), 8BITMIME,
//! SIZE, CHUNKING, STARTTLS (self-signed) and AUTH PLAIN (any credentials). It can delay the
//! reply to the end of data and inject 4xx/5xx replies at RCPT or at the end of data.
//!
//! Bad input gets a standard reply (500/501/503/552), never a panic: lines are capped, and a
//! connection that sends more than the cap without a line end is answered and closed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::stream::Stream;

/// Longest command line accepted (RFC 5321 section 4.5.3.1.4 says 512; be generous).
const MAX_COMMAND_LINE: usize = 4096;

/// Where injected failures happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FailAt {
    /// At RCPT TO.
    Rcpt,
    /// At the end of data (after the final dot or the last BDAT chunk).
    #[default]
    Data,
}

/// Configuration of the sink.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Name in the greeting and EHLO reply.
    pub hostname: String,
    /// Wait this long before answering the end of data (a slow remote).
    pub delay: Duration,
    /// Percentage of RCPT or end-of-data replies that are 451.
    pub tempfail_percent: u8,
    /// Percentage of RCPT or end-of-data replies that are 550/554.
    pub permfail_percent: u8,
    /// Where the failures are injected.
    pub fail_at: FailAt,
    /// Write each accepted message to this Maildir (tmp/ then new/); None discards.
    pub maildir: Option<PathBuf>,
    /// fsync Maildir files before answering (as a durable remote would).
    pub fsync: bool,
    /// Largest message accepted, announced with SIZE.
    pub max_message_size: usize,
    /// TLS configuration for STARTTLS; None does not offer it.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// With `tls`: TLS from the first byte (implicit TLS, port 465 style) instead of STARTTLS.
    pub tls_on_connect: bool,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            hostname: "sink.loadtest.invalid".into(),
            delay: Duration::ZERO,
            tempfail_percent: 0,
            permfail_percent: 0,
            fail_at: FailAt::Data,
            maildir: None,
            fsync: false,
            max_message_size: 64 << 20,
            tls: None,
            tls_on_connect: false,
        }
    }
}

/// Counters, shared by every connection.
#[derive(Debug, Default)]
pub struct SinkCounters {
    connections: AtomicU64,
    messages: AtomicU64,
    recipients: AtomicU64,
    bytes: AtomicU64,
    tempfails: AtomicU64,
    permfails: AtomicU64,
    protocol_errors: AtomicU64,
}

/// A snapshot of the counters, as written to `--stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkStats {
    /// Connections accepted.
    pub connections: u64,
    /// Messages accepted (250 at the end of data).
    pub messages: u64,
    /// Recipients of accepted messages.
    pub recipients: u64,
    /// Message bytes received in accepted messages.
    pub bytes: u64,
    /// Injected 4xx replies.
    pub tempfails: u64,
    /// Injected 5xx replies.
    pub permfails: u64,
    /// Commands answered with 500/501/503.
    pub protocol_errors: u64,
}

impl SinkCounters {
    /// Current values.
    pub fn snapshot(&self) -> SinkStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SinkStats {
            connections: l(&self.connections),
            messages: l(&self.messages),
            recipients: l(&self.recipients),
            bytes: l(&self.bytes),
            tempfails: l(&self.tempfails),
            permfails: l(&self.permfails),
            protocol_errors: l(&self.protocol_errors),
        }
    }
}

/// Accepts connections on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, config: Arc<SinkConfig>, counters: Arc<SinkCounters>) {
    let mut seed: u64 = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
        | 1;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                eprintln!("sink: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        counters.connections.fetch_add(1, Ordering::Relaxed);
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let session = SinkSession::new(config.clone(), counters.clone(), seed, peer);
        tokio::spawn(session.run(tcp));
    }
}

enum State {
    Command,
    /// After 354: `line_start` is true when the next byte begins a line.
    Data {
        line_start: bool,
    },
    /// Inside a BDAT chunk of `remaining` bytes.
    Bdat {
        remaining: usize,
        last: bool,
        total: usize,
    },
}

struct SinkSession {
    config: Arc<SinkConfig>,
    counters: Arc<SinkCounters>,
    rng: u64,
    state: State,
    /// MAIL given.
    mail: bool,
    rcpts: u64,
    /// Bytes of the current message.
    size: usize,
    /// Message content kept only when writing a Maildir.
    content: Vec<u8>,
    /// A BDAT transaction failed earlier; later chunks are consumed and rejected.
    bdat_failed: bool,
    /// Discarding an over-long line until its end.
    skipping: bool,
    /// The reply to the end of data must wait for the configured delay.
    delay_pending: bool,
    quit: bool,
    starttls: bool,
    /// The connection is under TLS: STARTTLS is no longer offered.
    in_tls: bool,
    /// Waiting for the AUTH PLAIN response line.
    auth_pending: bool,
    seq: u64,
}

impl SinkSession {
    fn new(
        config: Arc<SinkConfig>,
        counters: Arc<SinkCounters>,
        seed: u64,
        _peer: SocketAddr,
    ) -> Self {
        SinkSession {
            config,
            counters,
            rng: seed,
            state: State::Command,
            mail: false,
            rcpts: 0,
            size: 0,
            content: Vec::new(),
            bdat_failed: false,
            skipping: false,
            delay_pending: false,
            quit: false,
            starttls: false,
            in_tls: false,
            auth_pending: false,
            seq: 0,
        }
    }

    async fn run(mut self, tcp: TcpStream) {
        let _ = tcp.set_nodelay(true);
        let mut stream = match (&self.config.tls, self.config.tls_on_connect) {
            (Some(tls), true) => match tokio_rustls::TlsAcceptor::from(tls.clone())
                .accept(tcp)
                .await
            {
                Ok(s) => {
                    self.in_tls = true;
                    Stream::Server(Box::new(s))
                }
                Err(_) => return,
            },
            _ => Stream::Plain(tcp),
        };
        let mut out = format!(
            "220 {} ESMTP indimail-loadtest sink\r\n",
            self.config.hostname
        )
        .into_bytes();
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if !out.is_empty() {
                if self.delay_pending && !self.config.delay.is_zero() {
                    tokio::time::sleep(self.config.delay).await;
                }
                self.delay_pending = false;
                if stream.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
            if self.quit {
                let _ = stream.shutdown().await;
                return;
            }
            if self.starttls {
                self.starttls = false;
                let Some(tls) = self.config.tls.clone() else {
                    return;
                };
                if !buf.is_empty() {
                    // Cleartext pipelined after STARTTLS must not be trusted (RFC 3207 sec. 6).
                    return;
                }
                stream = match stream {
                    Stream::Plain(tcp) => {
                        match tokio_rustls::TlsAcceptor::from(tls).accept(tcp).await {
                            Ok(s) => {
                                self.in_tls = true;
                                Stream::Server(Box::new(s))
                            }
                            Err(_) => return,
                        }
                    }
                    other => other,
                };
                self.reset();
            }
            let n = match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            let used = self.feed(&buf, &mut out);
            buf.drain(..used);
            if self.state_is_command() && buf.len() > MAX_COMMAND_LINE && !self.skipping {
                self.counters
                    .protocol_errors
                    .fetch_add(1, Ordering::Relaxed);
                out.extend_from_slice(b"500 5.5.0 Line too long\r\n");
                buf.clear();
                self.skipping = true;
            }
        }
    }

    fn state_is_command(&self) -> bool {
        matches!(self.state, State::Command)
    }

    fn roll(&mut self) -> u32 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % 100) as u32
    }

    /// Decides an injected failure: Some(reply) or None to accept.
    fn inject(&mut self, at: FailAt) -> Option<&'static [u8]> {
        if self.config.fail_at != at
            || (self.config.tempfail_percent == 0 && self.config.permfail_percent == 0)
        {
            return None;
        }
        let r = self.roll();
        let temp = u32::from(self.config.tempfail_percent);
        let perm = u32::from(self.config.permfail_percent);
        if r < temp {
            self.counters.tempfails.fetch_add(1, Ordering::Relaxed);
            Some(b"451 4.3.0 Injected temporary failure\r\n")
        } else if r < temp + perm {
            self.counters.permfails.fetch_add(1, Ordering::Relaxed);
            Some(match at {
                FailAt::Rcpt => b"550 5.1.1 Injected permanent failure\r\n",
                FailAt::Data => b"554 5.6.0 Injected permanent failure\r\n",
            })
        } else {
            None
        }
    }

    fn reset(&mut self) {
        self.mail = false;
        self.rcpts = 0;
        self.size = 0;
        self.content.clear();
        self.bdat_failed = false;
    }

    /// Processes as much of `buf` as possible, appending replies to `out`; returns the bytes
    /// consumed. Stops early at QUIT or STARTTLS so the driver can act on them.
    fn feed(&mut self, buf: &[u8], out: &mut Vec<u8>) -> usize {
        let mut pos = 0;
        while pos < buf.len() && !self.quit && !self.starttls {
            match self.state {
                State::Command => {
                    let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') else {
                        break;
                    };
                    let line = &buf[pos..pos + nl + 1];
                    pos += nl + 1;
                    if self.skipping {
                        self.skipping = false;
                        continue;
                    }
                    let line = trim_line(line);
                    self.command(line, out);
                }
                State::Data { line_start } => {
                    let rest = &buf[pos..];
                    if line_start && rest.len() < 3 && b".\r\n".starts_with(rest) {
                        break; // could be the terminator; wait for more
                    }
                    if line_start && rest.starts_with(b".\r\n") {
                        pos += 3;
                        self.state = State::Command;
                        self.end_of_message(out);
                        continue;
                    }
                    match rest.iter().position(|&b| b == b'\n') {
                        Some(nl) => {
                            let line = &rest[..nl + 1];
                            self.take_data(line, line_start);
                            self.state = State::Data {
                                line_start: line.ends_with(b"\r\n"),
                            };
                            pos += nl + 1;
                        }
                        None => {
                            // Keep a trailing CR: with the LF that follows it ends a line.
                            let n = if rest.ends_with(b"\r") {
                                rest.len() - 1
                            } else {
                                rest.len()
                            };
                            if n == 0 {
                                break;
                            }
                            self.take_data(&rest[..n], line_start);
                            self.state = State::Data { line_start: false };
                            pos += n;
                        }
                    }
                }
                State::Bdat {
                    remaining,
                    last,
                    total,
                } => {
                    let n = remaining.min(buf.len() - pos);
                    let part = &buf[pos..pos + n];
                    if !self.bdat_failed {
                        self.size += n;
                        if self.config.maildir.is_some()
                            && self.size <= self.config.max_message_size
                        {
                            self.content.extend_from_slice(part);
                        }
                    }
                    pos += n;
                    if n < remaining {
                        self.state = State::Bdat {
                            remaining: remaining - n,
                            last,
                            total,
                        };
                        continue;
                    }
                    self.state = State::Command;
                    if self.bdat_failed || !self.mail || self.rcpts == 0 {
                        self.counters
                            .protocol_errors
                            .fetch_add(1, Ordering::Relaxed);
                        out.extend_from_slice(b"503 5.5.1 No valid recipients\r\n");
                        self.bdat_failed = true;
                        if last {
                            self.reset();
                        }
                    } else if last {
                        self.end_of_message(out);
                    } else {
                        out.extend_from_slice(
                            format!("250 2.0.0 {total} octets received\r\n").as_bytes(),
                        );
                    }
                }
            }
        }
        pos
    }

    fn take_data(&mut self, line: &[u8], line_start: bool) {
        self.size += line.len();
        if self.config.maildir.is_some() && self.size <= self.config.max_message_size {
            // Undo dot-stuffing (RFC 5321 section 4.5.2).
            let line = if line_start && line.starts_with(b".") {
                &line[1..]
            } else {
                line
            };
            self.content.extend_from_slice(line);
        }
    }

    fn end_of_message(&mut self, out: &mut Vec<u8>) {
        self.delay_pending = true;
        if self.size > self.config.max_message_size {
            out.extend_from_slice(b"552 5.3.4 Message too big\r\n");
        } else if let Some(reply) = self.inject(FailAt::Data) {
            out.extend_from_slice(reply);
        } else {
            match self.store() {
                Ok(id) => {
                    self.counters.messages.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .recipients
                        .fetch_add(self.rcpts, Ordering::Relaxed);
                    self.counters
                        .bytes
                        .fetch_add(self.size as u64, Ordering::Relaxed);
                    out.extend_from_slice(format!("250 2.0.0 Ok: queued as {id}\r\n").as_bytes());
                }
                Err(e) => {
                    eprintln!("sink: maildir: {e}");
                    out.extend_from_slice(b"451 4.3.0 Cannot store message\r\n");
                }
            }
        }
        self.reset();
    }

    /// Writes the message to the Maildir if configured; returns the id given in the reply.
    fn store(&mut self) -> std::io::Result<String> {
        self.seq += 1;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let id = format!("{}.{:x}.{}", now.as_secs(), self.rng, self.seq);
        let Some(dir) = &self.config.maildir else {
            return Ok(id);
        };
        let tmp = dir.join("tmp").join(&id);
        let new = dir.join("new").join(&id);
        // Maildir: write under tmp/, then rename into new/ (the qmail protocol).
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, &self.content)?;
        if self.config.fsync {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &new)?;
        if self.config.fsync {
            std::fs::File::open(dir.join("new"))?.sync_all()?;
        }
        Ok(id)
    }

    fn command(&mut self, line: &[u8], out: &mut Vec<u8>) {
        if self.auth_pending {
            self.auth_pending = false;
            if line == b"*" {
                out.extend_from_slice(b"501 5.7.0 Authentication cancelled\r\n");
            } else {
                out.extend_from_slice(b"235 2.7.0 Authentication successful\r\n");
            }
            return;
        }
        let (verb, arg) = match line.iter().position(|&b| b == b' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &b""[..]),
        };
        let verb = verb.to_ascii_uppercase();
        match verb.as_slice() {
            b"EHLO" => {
                self.reset();
                let mut r = format!(
                    "250-{}\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE {}\r\n250-CHUNKING\r\n",
                    self.config.hostname, self.config.max_message_size
                );
                if self.config.tls.is_some() && !self.in_tls {
                    r.push_str("250-STARTTLS\r\n");
                }
                r.push_str("250-AUTH PLAIN\r\n250 ENHANCEDSTATUSCODES\r\n");
                out.extend_from_slice(r.as_bytes());
            }
            b"HELO" => {
                self.reset();
                out.extend_from_slice(format!("250 {}\r\n", self.config.hostname).as_bytes());
            }
            b"MAIL" => {
                if self.mail {
                    self.protocol_error(out, b"503 5.5.1 Nested MAIL command\r\n");
                } else if !starts_with_ignore_case(arg, b"FROM:") {
                    self.protocol_error(out, b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n");
                } else {
                    self.mail = true;
                    out.extend_from_slice(b"250 2.1.0 Ok\r\n");
                }
            }
            b"RCPT" => {
                if !self.mail {
                    self.protocol_error(out, b"503 5.5.1 Need MAIL command\r\n");
                } else if !starts_with_ignore_case(arg, b"TO:") {
                    self.protocol_error(out, b"501 5.5.4 Syntax: RCPT TO:<address>\r\n");
                } else if let Some(reply) = self.inject(FailAt::Rcpt) {
                    out.extend_from_slice(reply);
                } else {
                    self.rcpts += 1;
                    out.extend_from_slice(b"250 2.1.5 Ok\r\n");
                }
            }
            b"DATA" => {
                if !self.mail || self.rcpts == 0 {
                    self.protocol_error(out, b"554 5.5.1 No valid recipients\r\n");
                } else {
                    self.state = State::Data { line_start: true };
                    out.extend_from_slice(b"354 End data with <CR><LF>.<CR><LF>\r\n");
                }
            }
            b"BDAT" => {
                let mut words = arg.split(|&b| b == b' ').filter(|w| !w.is_empty());
                let size = words
                    .next()
                    .and_then(|w| std::str::from_utf8(w).ok())
                    .and_then(|w| w.parse::<usize>().ok());
                let last = words
                    .next()
                    .is_some_and(|w| w.eq_ignore_ascii_case(b"LAST"));
                match size {
                    Some(remaining) => {
                        self.state = State::Bdat {
                            remaining,
                            last,
                            total: remaining,
                        };
                        if remaining == 0 {
                            // Zero-length chunk: the state handler never runs without input.
                            self.state = State::Command;
                            if last && self.mail && self.rcpts > 0 && !self.bdat_failed {
                                self.end_of_message(out);
                            } else if self.mail && self.rcpts > 0 && !self.bdat_failed {
                                out.extend_from_slice(b"250 2.0.0 0 octets received\r\n");
                            } else {
                                self.protocol_error(out, b"503 5.5.1 No valid recipients\r\n");
                            }
                        }
                    }
                    None => self.protocol_error(out, b"501 5.5.4 Syntax: BDAT size [LAST]\r\n"),
                }
            }
            b"RSET" => {
                self.reset();
                out.extend_from_slice(b"250 2.0.0 Ok\r\n");
            }
            b"NOOP" => out.extend_from_slice(b"250 2.0.0 Ok\r\n"),
            b"VRFY" => out.extend_from_slice(b"252 2.0.0 Cannot VRFY user\r\n"),
            b"QUIT" => {
                out.extend_from_slice(b"221 2.0.0 Bye\r\n");
                self.quit = true;
            }
            b"STARTTLS" if self.config.tls.is_some() && !self.in_tls => {
                out.extend_from_slice(b"220 2.0.0 Ready to start TLS\r\n");
                self.starttls = true;
            }
            b"AUTH" => {
                let mut words = arg.split(|&b| b == b' ').filter(|w| !w.is_empty());
                if !words
                    .next()
                    .is_some_and(|m| m.eq_ignore_ascii_case(b"PLAIN"))
                {
                    self.protocol_error(out, b"504 5.5.4 Unrecognized authentication type\r\n");
                } else if words.next().is_some() {
                    out.extend_from_slice(b"235 2.7.0 Authentication successful\r\n");
                } else {
                    self.auth_pending = true;
                    out.extend_from_slice(b"334 \r\n");
                }
            }
            _ => self.protocol_error(out, b"502 5.5.2 Command not recognized\r\n"),
        }
    }

    fn protocol_error(&self, out: &mut Vec<u8>, reply: &[u8]) {
        self.counters
            .protocol_errors
            .fetch_add(1, Ordering::Relaxed);
        out.extend_from_slice(reply);
    }
}

fn trim_line(line: &[u8]) -> &[u8] {
    let mut l = line;
    while let Some((&last, rest)) = l.split_last() {
        if last == b'\n' || last == b'\r' {
            l = rest;
        } else {
            break;
        }
    }
    l
}

fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(config: SinkConfig) -> (SinkSession, Arc<SinkCounters>) {
        let counters = Arc::new(SinkCounters::default());
        let s = SinkSession::new(
            Arc::new(config),
            counters.clone(),
            12345,
            "127.0.0.1:1".parse().unwrap(),
        );
        (s, counters)
    }

    /// Feeds `input` split at every position, as the network may deliver it.
    fn transcript_at_every_split(input: &[u8]) -> Vec<(String, SinkStats)> {
        let mut results = Vec::new();
        for split in 0..=input.len() {
            let (mut s, counters) = session(SinkConfig::default());
            let mut out = Vec::new();
            let mut buf = Vec::new();
            for part in [&input[..split], &input[split..]] {
                buf.extend_from_slice(part);
                let used = s.feed(&buf, &mut out);
                buf.drain(..used);
            }
            results.push((String::from_utf8(out).unwrap(), counters.snapshot()));
        }
        results
    }

    #[test]
    fn data_transaction_any_split() {
        let input = b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\nDATA\r\nSubject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n";
        let results = transcript_at_every_split(input);
        let (first, stats) = &results[0];
        assert!(first.contains("354 "), "{first}");
        assert!(first.contains("250 2.0.0 Ok: queued as"));
        assert!(first.ends_with("221 2.0.0 Bye\r\n"));
        assert_eq!((stats.messages, stats.recipients), (1, 2));
        for (out, st) in &results {
            assert_eq!(st, stats);
            assert_eq!(out.lines().count(), first.lines().count());
        }
    }

    #[test]
    fn bdat_transaction_any_split() {
        let input = b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 5\r\nab\r\nxBDAT 3 LAST\r\n.\r\nQUIT\r\n";
        for (out, st) in transcript_at_every_split(input) {
            assert!(out.contains("250 2.0.0 5 octets received"), "{out}");
            assert_eq!((st.messages, st.bytes), (1, 8), "{out}");
        }
    }

    #[test]
    fn dot_only_ends_at_line_start() {
        // ".\r\n" inside a line (bare LF before it) is not the terminator.
        let input = b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\n.\r\nstill data\r\n.\r\n";
        for (out, st) in transcript_at_every_split(input) {
            assert_eq!(st.messages, 1);
            assert_eq!(out.matches("queued").count(), 1);
        }
    }

    #[test]
    fn sequence_errors() {
        let (mut s, c) = session(SinkConfig::default());
        let mut out = Vec::new();
        s.feed(
            b"RCPT TO:<a@b>\r\nDATA\r\nBDAT x\r\nFOO\r\nMAIL FROM:<a>\r\nMAIL FROM:<a>\r\n",
            &mut out,
        );
        let out = String::from_utf8(out).unwrap();
        let codes: Vec<&str> = out.lines().map(|l| &l[..3]).collect();
        assert_eq!(codes, ["503", "554", "501", "502", "250", "503"]);
        assert_eq!(c.snapshot().protocol_errors, 5);
    }

    #[test]
    fn injected_failures_counted() {
        let config = SinkConfig {
            permfail_percent: 100,
            fail_at: FailAt::Rcpt,
            ..SinkConfig::default()
        };
        let (mut s, c) = session(config);
        let mut out = Vec::new();
        s.feed(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "250 2.1.0 Ok\r\n550 5.1.1 Injected permanent failure\r\n554 5.5.1 No valid recipients\r\n");
        assert_eq!(c.snapshot().permfails, 1);
    }

    #[test]
    fn auth_plain_two_step() {
        let (mut s, _) = session(SinkConfig::default());
        let mut out = Vec::new();
        s.feed(
            b"AUTH PLAIN\r\nAHRpbQB0YW5zdGFhZg==\r\nAUTH LOGIN\r\n",
            &mut out,
        );
        assert_eq!(String::from_utf8(out).unwrap(), "334 \r\n235 2.7.0 Authentication successful\r\n504 5.5.4 Unrecognized authentication type\r\n");
    }
}

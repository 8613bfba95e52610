//! The SMTP listener of one shard: accepts connections and drives the
//! sans-I/O [`smtp_proto::Session`] over the shard's owned-buffer sockets,
//! spooling each message into a queue the shard owns.
//!
//! The driver is deliberately thin: the protocol core decides every reply;
//! this file only moves bytes, applies the connection-level policy (access
//! rules, per-IP and per-shard limits, idle timeout), answers the core's
//! MAIL/RCPT questions (relaying) and commits messages.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::SystemTime;

use shard::io::{TcpListener, TcpStream};
use smtp_proto::{Decision, Event, Reply, Session, SessionConfig};

use crate::config::SmtpSettings;
use crate::log;
use crate::metrics::ShardMetrics;
use crate::queues::ShardQueues;

/// Read buffer size; a line longer than this is handled by the core's
/// line cap, so this only bounds one read.
const READ_CHUNK: usize = 64 * 1024;

/// Per-shard state shared by the shard's SMTP connections (single thread).
pub struct SmtpShard {
    /// Settings read at start-up.
    pub settings: Rc<SmtpSettings>,
    /// Protocol settings derived from them.
    pub proto: Rc<SessionConfig>,
    /// The queues this shard owns.
    pub queues: Rc<ShardQueues>,
    /// Counters.
    pub metrics: Rc<ShardMetrics>,
    /// Shard index, for logs.
    pub index: usize,
    connections: Cell<u32>,
    per_ip: RefCell<HashMap<IpAddr, u32>>,
    /// The user directory, for CHECKRECIPIENT.
    directory: Rc<crate::directory::DirectoryHandle>,
}

impl SmtpShard {
    /// State for one shard.
    pub fn new(
        settings: Rc<SmtpSettings>,
        queues: Rc<ShardQueues>,
        metrics: Rc<ShardMetrics>,
        index: usize,
        directory: Rc<crate::directory::DirectoryHandle>,
    ) -> SmtpShard {
        let proto = Rc::new(session_config(&settings));
        SmtpShard {
            settings,
            proto,
            queues,
            metrics,
            index,
            connections: Cell::new(0),
            per_ip: RefCell::new(HashMap::new()),
            directory,
        }
    }
}

impl SmtpShard {
    /// Connections open right now.
    pub fn active_connections(&self) -> u32 {
        self.connections.get()
    }
}

/// Protocol-core settings from the control files.
pub fn session_config(s: &SmtpSettings) -> SessionConfig {
    SessionConfig {
        hostname: s.me.clone(),
        greeting: s.greeting.clone(),
        max_message_size: s.databytes,
        max_recipients: s.max_recipients,
        ..SessionConfig::default()
    }
}

/// Accepts connections until `stop` resolves.
pub async fn accept_loop(
    shard: Rc<SmtpShard>,
    listener: TcpListener,
    stop: impl std::future::Future<Output = ()>,
) {
    let local = listener.local_addr().ok();
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let shard = Rc::clone(&shard);
                tokio::task::spawn_local(async move {
                    connection(shard, stream, peer, local).await;
                });
            }
            Err(e) => {
                // EMFILE and friends: back off briefly rather than spin.
                log!("shard{} smtp accept error: {e}", shard.index);
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Releases a connection's slots when the connection ends, however it ends.
struct Slot {
    shard: Rc<SmtpShard>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shard
            .connections
            .set(self.shard.connections.get().saturating_sub(1));
        let mut m = self.shard.per_ip.borrow_mut();
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

async fn connection(
    shard: Rc<SmtpShard>,
    stream: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
) {
    let ip = peer.ip();
    let rule = shard.settings.rules.lookup(ip);
    let _ = stream.set_nodelay(true);
    if rule.deny {
        log!("shard{} smtp deny ip={ip} rule=tcp.smtp", shard.index);
        let r = Reply::new(
            554,
            Some((5, 7, 1)),
            format!("{} access denied to your IP address", shard.settings.me),
        );
        let _ = stream.write_all(r.to_wire()).await;
        return;
    }
    let max_per_ip = rule
        .var("MAXPERIP")
        .and_then(|v| v.parse().ok())
        .unwrap_or(shard.settings.max_per_ip);
    let per_ip = {
        let mut m = shard.per_ip.borrow_mut();
        let n = m.entry(ip).or_insert(0);
        *n += 1;
        *n
    };
    shard.connections.set(shard.connections.get() + 1);
    let _slot = Slot {
        shard: Rc::clone(&shard),
        ip,
    };
    if shard.connections.get() > shard.settings.max_connections {
        log!(
            "shard{} smtp busy ip={ip} connections={}",
            shard.index,
            shard.connections.get()
        );
        let r = Reply::new(
            421,
            Some((4, 3, 2)),
            format!("{} too many connections, try later", shard.settings.me),
        );
        let _ = stream.write_all(r.to_wire()).await;
        return;
    }
    if max_per_ip > 0 && per_ip > max_per_ip {
        log!(
            "shard{} smtp per-ip limit ip={ip} count={per_ip}",
            shard.index
        );
        let r = Reply::new(
            421,
            Some((4, 7, 0)),
            format!("{} too many connections from your IP", shard.settings.me),
        );
        let _ = stream.write_all(r.to_wire()).await;
        return;
    }
    shard
        .metrics
        .connections
        .set(shard.metrics.connections.get() + 1);
    let relay = shard.settings.relay_everyone || rule.var("RELAYCLIENT").is_some();
    let check_rcpt = match rule.var("CHECKRECIPIENT") {
        Some(v) => v != "0" && !v.is_empty(),
        None => shard.settings.check_recipient,
    };
    let mut conn = Connection {
        shard: Rc::clone(&shard),
        stream,
        peer,
        local,
        relay,
        check_rcpt,
        session: Session::new(Rc::clone(&shard.proto)),
        spool: None,
        spool_failed: None,
        message_bytes: 0,
        pending_cr: false,
        scratch: Vec::new(),
    };
    log!(
        "shard{} smtp connect ip={ip} port={} relay={}",
        shard.index,
        peer.port(),
        relay
    );
    match conn.run().await {
        Ok(()) => {}
        Err(e) => log!("shard{} smtp drop ip={ip} reason={e}", shard.index),
    }
    if let Some(w) = conn.spool.take() {
        w.abort().await;
    }
}

struct Connection {
    shard: Rc<SmtpShard>,
    stream: TcpStream,
    peer: SocketAddr,
    #[allow(dead_code)]
    local: Option<SocketAddr>,
    relay: bool,
    /// CHECKRECIPIENT in force for this connection.
    check_rcpt: bool,
    session: Session,
    spool: Option<queue_store::MessageWriter>,
    /// Set when writing the spool failed mid-message: the commit then
    /// answers 452 instead of 250.
    spool_failed: Option<String>,
    message_bytes: u64,
    /// CRLF → LF conversion state and scratch buffer (see [`to_queue_form`]).
    pending_cr: bool,
    scratch: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("idle timeout")]
    Timeout,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Connection {
    async fn run(&mut self) -> Result<(), ConnError> {
        self.session.greet();
        let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
        let mut start = 0usize;
        loop {
            // Process what is buffered.
            loop {
                let (consumed, event) = self.session.feed(&buf[start..]);
                let more = !matches!(event, Event::NeedMore);
                let closed = matches!(event, Event::Close);
                // Copy what the event borrows out of `buf` before awaiting.
                match event {
                    Event::NeedMore => {}
                    Event::Close => {}
                    Event::Data(chunk) => self.spool_data(chunk).await,
                    other => {
                        let owned = OwnedEvent::from(other);
                        self.handle(owned).await;
                    }
                }
                start += consumed;
                if closed {
                    self.flush().await?;
                    let _ = self.stream.shutdown(std::net::Shutdown::Both);
                    return Ok(());
                }
                if !more {
                    break;
                }
            }
            // Flush replies before waiting for input (PIPELINING batches
            // replies until the client's input is drained).
            self.flush().await?;
            // Keep the unconsumed tail at the front, then read after it.
            if start > 0 {
                buf.drain(..start);
                start = 0;
            }
            if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
            }
            let timeout = self.shard.settings.timeout;
            let (r, b) = match tokio::time::timeout(timeout, self.stream.read(buf)).await {
                Ok(x) => x,
                Err(_) => {
                    let r = Reply::new(
                        421,
                        Some((4, 4, 2)),
                        format!("{} timeout, closing connection", self.shard.settings.me),
                    );
                    let _ = self.stream.write_all(r.to_wire()).await;
                    return Err(ConnError::Timeout);
                }
            };
            buf = b;
            match r {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        let out = self.session.output();
        if out.is_empty() {
            return Ok(());
        }
        let bytes = out.to_vec();
        let n = bytes.len();
        let (r, _) = self.stream.write_all(bytes).await;
        self.session.consume_output(n);
        r
    }

    async fn handle(&mut self, ev: OwnedEvent) {
        match ev {
            OwnedEvent::Mail => self.session.decide(Decision::Accept),
            OwnedEvent::Rcpt { domain, address } => {
                let mut d = self.rcpt_decision(domain.as_deref());
                if let (Decision::Accept, Some(addr)) = (&d, address) {
                    d = self.check_recipient(&addr).await;
                }
                self.session.decide(d);
            }
            OwnedEvent::DataStart => self.begin_message().await,
            OwnedEvent::MessageEnd => self.commit().await,
            OwnedEvent::MessageAborted => {
                if let Some(w) = self.spool.take() {
                    w.abort().await;
                }
                self.spool_failed = None;
                self.shard
                    .metrics
                    .rejected
                    .set(self.shard.metrics.rejected.get() + 1);
            }
        }
    }

    fn rcpt_decision(&self, domain: Option<&str>) -> Decision {
        if self.relay {
            return Decision::Accept;
        }
        match domain {
            // <postmaster> is always accepted (RFC 5321 4.5.1).
            None => Decision::Accept,
            Some(d) if self.shard.settings.rcpthosts.contains(d) => Decision::Accept,
            Some(_) => Decision::Reject(Reply::new(
                553,
                Some((5, 7, 1)),
                "sorry, that domain isn't in my list of allowed rcpthosts",
            )),
        }
    }

    /// CHECKRECIPIENT (spec 2.5 step 9): a recipient in a virtual domain
    /// must exist and be active. On by default; `CHECKRECIPIENT=0` (server
    /// environment or tcp.smtp rule) turns it off. A directory that cannot
    /// answer gives 451, never a permanent refusal.
    async fn check_recipient(&self, addr: &str) -> Decision {
        if !self.check_rcpt {
            return Decision::Accept;
        }
        let status = match self.shard.directory.get().await {
            Ok(dir) => dir
                .user_status(&addr.to_ascii_lowercase())
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        let reply = match status {
            Ok(status) => status.smtp_reply(),
            Err(e) => {
                log!(
                    "shard{} rcpt check failed addr=<{addr}> reason={e}",
                    self.shard.index
                );
                Some(lookup::SmtpReply::TEMPFAIL)
            }
        };
        match reply {
            None => Decision::Accept,
            Some(r) => {
                let e = parse_enhanced(r.enhanced);
                log!(
                    "shard{} rcpt refused addr=<{addr}> reply={} {}",
                    self.shard.index,
                    r.code,
                    r.enhanced
                );
                Decision::Reject(Reply::new(r.code, e, r.text))
            }
        }
    }

    async fn begin_message(&mut self) {
        if let Some(w) = self.spool.take() {
            w.abort().await;
        }
        self.spool_failed = None;
        self.message_bytes = 0;
        self.pending_cr = false;
        let mut w = self.shard.queues.begin();
        let received = self.received_header();
        if let Err(e) = w.write(received.as_bytes()).await {
            self.spool_failed = Some(e.to_string());
        }
        self.spool = Some(w);
    }

    async fn spool_data(&mut self, chunk: &[u8]) {
        self.message_bytes += chunk.len() as u64;
        if self.spool_failed.is_some() {
            return;
        }
        if let Some(w) = self.spool.as_mut() {
            self.scratch.clear();
            to_queue_form(chunk, &mut self.pending_cr, &mut self.scratch);
            if let Err(e) = w.write(&self.scratch).await {
                self.spool_failed = Some(e.to_string());
            }
        }
    }

    fn received_header(&self) -> String {
        let env = self.session.envelope();
        let helo = env.helo.as_deref().unwrap_or("unknown");
        let ip = self.peer.ip();
        let for_clause = match env.recipients.as_slice() {
            [one] => format!("\n\tfor <{}>", one.path),
            _ => String::new(),
        };
        format!(
            "Received: from {helo} ([{ip}]) by {} (indimail-rs) with {}{for_clause};\n\t{}\n",
            self.shard.settings.me,
            self.session.protocol(),
            log::rfc5322_date(SystemTime::now())
        )
    }

    async fn commit(&mut self) {
        let Some(mut w) = self.spool.take() else {
            let r = Reply::new(451, Some((4, 3, 0)), "internal error: no spool for message");
            self.session.message_committed(Err(r));
            return;
        };
        // A CR at the very end of the data was not followed by LF.
        if std::mem::take(&mut self.pending_cr) && self.spool_failed.is_none() {
            if let Err(e) = w.write(b"\r").await {
                self.spool_failed = Some(e.to_string());
            }
        }
        if let Some(reason) = self.spool_failed.take() {
            w.abort().await;
            log!(
                "shard{} smtp spool failed ip={} reason={reason}",
                self.shard.index,
                self.peer.ip()
            );
            self.session.message_committed(Err(queue_full_reply()));
            return;
        }
        let env = self.session.envelope();
        let sender = env
            .reverse_path
            .as_ref()
            .map_or(String::new(), |p| p.to_string());
        let recipients: Vec<String> = env.recipients.iter().map(|r| r.path.to_string()).collect();
        let helo = env.helo.clone().unwrap_or_default();
        let mut envelope = queue_store::Envelope::new(sender.clone(), recipients);
        envelope.client_ip = Some(self.peer.ip());
        envelope.helo = helo;
        let rcpt_count = envelope.recipients.len();
        match w.commit(envelope).await {
            Ok(id) => {
                self.shard
                    .metrics
                    .accepted
                    .set(self.shard.metrics.accepted.get() + 1);
                log!(
                    "shard{} new msg {id} bytes={} from=<{sender}> rcpts={} ip={}",
                    self.shard.index,
                    self.message_bytes,
                    rcpt_count,
                    self.peer.ip()
                );
                self.session.message_committed(Ok(id.to_string()));
            }
            Err(e) => {
                log!(
                    "shard{} smtp commit failed ip={} reason={e}",
                    self.shard.index,
                    self.peer.ip()
                );
                self.session.message_committed(Err(queue_full_reply()));
            }
        }
    }
}

/// Converts message bytes from SMTP form (CRLF line ends) to queue form
/// (LF, as qmail stores messages and Maildir readers expect). A CR is
/// dropped only when an LF follows it, also across chunk boundaries
/// (`pending_cr`); any other CR (possible in BDAT data) is kept.
pub fn to_queue_form(chunk: &[u8], pending_cr: &mut bool, out: &mut Vec<u8>) {
    out.reserve(chunk.len() + 1);
    let mut rest = chunk;
    if std::mem::take(pending_cr) && rest.first() != Some(&b'\n') {
        out.push(b'\r');
    }
    while let Some(p) = rest.iter().position(|&b| b == b'\r') {
        out.extend_from_slice(&rest[..p]);
        match rest.get(p + 1) {
            Some(b'\n') => {}
            Some(_) => out.push(b'\r'),
            None => *pending_cr = true,
        }
        rest = &rest[p + 1..];
    }
    out.extend_from_slice(rest);
}

/// `"5.1.1"` → `(5, 1, 1)`.
fn parse_enhanced(s: &str) -> Option<(u8, u16, u16)> {
    let mut it = s.split('.');
    Some((
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    ))
}

fn queue_full_reply() -> Reply {
    Reply::new(
        452,
        Some((4, 3, 1)),
        "insufficient system storage, message not queued; try later",
    )
}

/// The parts of an [`Event`] the driver needs after the input buffer is
/// released (events borrow the input).
enum OwnedEvent {
    Mail,
    Rcpt {
        domain: Option<String>,
        address: Option<String>,
    },
    DataStart,
    MessageEnd,
    MessageAborted,
}

impl From<Event<'_>> for OwnedEvent {
    fn from(e: Event<'_>) -> OwnedEvent {
        match e {
            Event::Mail { .. } => OwnedEvent::Mail,
            Event::Rcpt { to, .. } => match &to {
                smtp_proto::ForwardPath::Postmaster => OwnedEvent::Rcpt {
                    domain: None,
                    address: None,
                },
                smtp_proto::ForwardPath::Mailbox(m) => OwnedEvent::Rcpt {
                    domain: Some(m.domain.to_string()),
                    address: Some(m.to_string()),
                },
            },
            Event::DataStart => OwnedEvent::DataStart,
            Event::MessageEnd => OwnedEvent::MessageEnd,
            Event::MessageAborted => OwnedEvent::MessageAborted,
            Event::NeedMore
            | Event::Close
            | Event::Data(_)
            | Event::StartTls
            | Event::Auth { .. } => {
                unreachable!("handled by the caller")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::to_queue_form;

    #[test]
    fn crlf_to_lf_across_every_split() {
        let input = b"a\r\nb\rc\r\n\r\nend\r";
        let want = b"a\nb\rc\n\nend";
        for split in 0..=input.len() {
            let (mut cr, mut out) = (false, Vec::new());
            to_queue_form(&input[..split], &mut cr, &mut out);
            to_queue_form(&input[split..], &mut cr, &mut out);
            assert!(cr, "trailing CR pending at split {split}");
            assert_eq!(out, want, "split {split}");
        }
    }
}

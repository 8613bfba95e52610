//! The SMTP listener of one shard: accepts connections and drives the
//! sans-I/O [`smtp_proto::Session`] over the shard's owned-buffer sockets,
//! spooling each message into a queue the shard owns.
//!
//! The driver is deliberately thin: the protocol core decides every reply;
//! this file only moves bytes (plain or TLS, see [`tls::MaybeTls`]),
//! applies the connection-level policy (access rules, per-IP and per-shard
//! limits, idle timeout), answers the core's questions (relaying, recipient
//! checks, AUTH against the directory, STARTTLS) and commits messages.
//!
//! Four services share this driver: `smtp` (port 25 style: STARTTLS and
//! AUTH offered), `submission` (587: AUTH required before MAIL, sender must
//! match the authenticated user unless `MASQUERADE` is set), `smtps`
//! (465: implicit TLS, RFC 8314) and `odmr` (366: AUTH then ATRN, RFC 2645;
//! ETRN and ATRN are in [`scheduler::turn`]).

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use shard::io::TcpStream;
use smtp_proto::{Decision, Event, Reply, Session};
use tls::MaybeTls;

use crate::admission::Admitted;
use crate::server::SmtpShard;
use crate::service::Service;
use crate::settings::{RecipientCheck, SmtpSettings};
use control::log;

mod auth;
mod client_checks;
mod commit;
mod events;
mod mail_rcpt;
mod rcptcheck;
mod spool;
mod txn;

use commit::SpoolFailure;
use events::OwnedEvent;
use txn::{Dnsbl, Txn};

/// Largest read buffer: a connection streaming a message reads in pieces
/// this big. A line longer than this is handled by the core's line cap.
const READ_CHUNK: usize = 64 * 1024;

/// Buffer of a connection between messages: small, so that many idle
/// sessions cost little memory (on io_uring a pending read holds its
/// buffer); it grows to `READ_CHUNK` while data streams in.
const IDLE_CHUNK: usize = 4 * 1024;

/// Longest a TLS handshake may take before the connection is dropped (a
/// slow TLS client must not hold a slot for long).
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

struct Connection {
    shard: Rc<SmtpShard>,
    /// greetdelay, REQPTR, tarpitting, PENALTY for this client.
    checks: crate::clientchecks::ClientChecks,
    /// An accepted ATRN, until the connection is turned around.
    turned: Option<scheduler::turn::Turned>,
    /// The client's DNSBL listing, if any (see [`Dnsbl`]).
    dnsbl: Dnsbl,
    /// The settings this connection started with.
    settings: Rc<SmtpSettings>,
    /// `None` only while STARTTLS replaces the plain stream by a TLS one.
    stream: Option<MaybeTls>,
    peer: SocketAddr,
    #[allow(dead_code)]
    local: Option<SocketAddr>,
    service: Service,
    relay: bool,
    /// POP/IMAP-before-SMTP (`CHECKRELAY`, default on): a recent login from
    /// this IP recorded in the relay table allows relaying.
    check_relay: bool,
    /// The authenticated user, after a successful AUTH.
    auth_user: Option<String>,
    /// Per-transaction state set by the access controls at MAIL.
    txn: Txn,
    /// Failed AUTH attempts on this connection.
    auth_failures: u32,
    /// CHECKRECIPIENT in force for this connection.
    check_rcpt: crate::settings::RecipientCheck,
    session: Session,
    spool: Option<scheduler::domainqueue::Spool>,
    /// Set when storing the message failed mid-message: the commit then
    /// answers with the failure's reply instead of 250.
    spool_failed: Option<SpoolFailure>,
    message_bytes: u64,
    /// CRLF → LF conversion state and scratch buffer (see [`to_queue_form`]).
    pending_cr: bool,
    scratch: Vec<u8>,
    /// Slow-client deadlines (see [`read_deadline`]): when the command or
    /// message transfer now awaited began, and the time its bytes so far
    /// have earned at `mindatarate`.
    waiting_since: tokio::time::Instant,
    data_credit: std::time::Duration,
    /// This connection has seen its shard under stress.
    stressed: bool,
    /// The session ended with the client's QUIT or close, with nothing in
    /// flight on the socket.
    closed_cleanly: bool,
}

/// When the client must have sent what the session waits for: a whole
/// command line within `timeoutsmtpd` of the previous one (a byte every few
/// seconds does not keep a connection alive, as it did with a per-read
/// timeout), a message transfer within the same plus 1/`mindatarate` s per
/// byte received. Under stress (¾ of `maxdaemons` in use in the server) the
/// base shrinks to `timeoutstress`, for waits already under way too; a
/// connection that saw stress keeps the short base (as a Postfix smtpd
/// started under stress does), so a flood is cut whole, not down to ¾.
fn read_deadline(
    shard: &SmtpShard,
    settings: &SmtpSettings,
    since: tokio::time::Instant,
    credit: std::time::Duration,
    stressed: &mut bool,
) -> tokio::time::Instant {
    *stressed |= u64::from(shard.server_connections()) * 4
        >= u64::from(shard.connection_limit(settings)) * 3;
    let base = if *stressed {
        settings.stress_timeout
    } else {
        settings.timeout
    };
    since + base + credit
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("idle timeout")]
    Timeout,
    #[error("tls: {0}")]
    Tls(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Connection {
    async fn run(&mut self) -> Result<(), ConnError> {
        self.session.greet();
        let mut buf: Vec<u8> = Vec::with_capacity(IDLE_CHUNK);
        // Whether the last read filled the buffer: then the client is
        // streaming and a bigger buffer saves reads.
        let mut filled = false;
        let mut start = 0usize;
        let mut progressed = false;
        loop {
            // Process what is buffered.
            loop {
                let (consumed, event) = self.session.feed(&buf[start..]);
                if matches!(event, Event::Turn) {
                    // ATRN accepted (RFC 2645): send the 250, then this host
                    // is the client on this connection; what the node sent
                    // after ATRN (its 220) belongs to that session.
                    self.flush().await?;
                    let rest = buf[start..].to_vec();
                    if let Some(t) = self.turned.take() {
                        let (me, timeout) = (self.settings.me.clone(), self.settings.timeout);
                        let (index, peer) = (self.shard.index, self.peer);
                        scheduler::turn::reverse(self.io(), rest, t, &me, timeout, index, peer)
                            .await;
                    }
                    return Ok(());
                }
                let more = !matches!(event, Event::NeedMore);
                let closed = matches!(event, Event::Close);
                if matches!(event, Event::StartTls) {
                    // RFC 3207 / CVE-2011-0411: whatever the client sent
                    // after STARTTLS in plain text is discarded, never
                    // executed inside the TLS session.
                    self.flush().await?;
                    buf.clear();
                    start = 0;
                    self.start_tls().await?;
                    progressed = true;
                    continue;
                }
                if let Event::Data(chunk) = &event {
                    self.earn_data_credit(chunk.len());
                }
                // Copy what the event borrows out of `buf` before awaiting.
                match event {
                    Event::NeedMore => {}
                    Event::Close => {}
                    Event::StartTls => {}
                    Event::Data(chunk) => self.spool_data(chunk).await,
                    other => {
                        let owned = OwnedEvent::from(other);
                        self.handle(owned).await;
                    }
                }
                start += consumed;
                if closed {
                    self.flush().await?;
                    let _ = self.io().close_notify().await;
                    self.closed_cleanly = true;
                    return Ok(());
                }
                if !more {
                    break;
                }
            }
            // A reply means a whole command (or message) was taken: the
            // client earns a new deadline (see `read_deadline`).
            progressed |= !self.session.output().is_empty();
            // Flush replies before waiting for input (PIPELINING batches
            // replies until the client's input is drained).
            self.flush().await?;
            if std::mem::take(&mut progressed) {
                // The client's clock for its next command starts now, not
                // while this server was answering the last one.
                self.waiting_since = tokio::time::Instant::now();
                self.data_credit = std::time::Duration::ZERO;
            }
            // Keep the unconsumed tail at the front, then read after it.
            if start > 0 {
                buf.drain(..start);
                start = 0;
            }
            if filled && buf.capacity() < READ_CHUNK {
                buf.reserve(READ_CHUNK - buf.len());
            } else if buf.is_empty() && buf.capacity() > IDLE_CHUNK {
                buf = Vec::with_capacity(IDLE_CHUNK);
            } else if buf.capacity() - buf.len() < IDLE_CHUNK / 2 {
                buf.reserve(IDLE_CHUNK);
            }
            let room = buf.capacity() - buf.len();
            let read = {
                let io = self
                    .stream
                    .as_mut()
                    .expect("stream present outside start_tls");
                let read = io.read(buf);
                tokio::pin!(read);
                loop {
                    let now = tokio::time::Instant::now();
                    let deadline = read_deadline(
                        &self.shard,
                        &self.settings,
                        self.waiting_since,
                        self.data_credit,
                        &mut self.stressed,
                    );
                    if now >= deadline {
                        break None;
                    }
                    // Wake now and then to notice stress beginning.
                    let wake = deadline.min(now + self.settings.stress_timeout);
                    tokio::select! {
                        r = &mut read => break Some(r),
                        _ = tokio::time::sleep_until(wake) => {}
                    }
                }
            };
            let (r, b) = match read {
                Some(x) => x,
                None => {
                    let r = Reply::new(
                        421,
                        Some((4, 4, 2)),
                        format!("{} timeout, closing connection", self.settings.me),
                    );
                    let _ = self.io().write_all(r.to_wire()).await;
                    // close_notify under TLS, so the client can tell this
                    // end from a truncation attack.
                    let _ = self.io().shutdown().await;
                    // On io_uring the timed-out read is still in flight and
                    // keeps the socket open; shutting it down ends both.
                    let _ = self.io().tcp().shutdown(std::net::Shutdown::Both);
                    return Err(ConnError::Timeout);
                }
            };
            buf = b;
            match r {
                Ok(0) => {
                    // The client closed (under TLS: sent close_notify, or
                    // cut the TCP connection); answer with ours.
                    let _ = self.io().close_notify().await;
                    self.closed_cleanly = true;
                    return Ok(());
                }
                Ok(n) => filled = n == room,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A piece of a message arrived: it extends the transfer's deadline by
    /// its share at `mindatarate`, never beyond `timeoutsmtpd` from now.
    fn earn_data_credit(&mut self, bytes: usize) {
        let earned =
            std::time::Duration::from_secs_f64(bytes as f64 / self.settings.min_data_rate as f64);
        let elapsed = self.waiting_since.elapsed();
        self.data_credit = (self.data_credit + earned).min(elapsed);
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        let out = self.session.output();
        if out.is_empty() {
            return Ok(());
        }
        let bytes = out.to_vec();
        let n = bytes.len();
        let (r, _) = self.io().write_all(bytes).await;
        self.session.consume_output(n);
        r
    }

    fn io(&mut self) -> &mut MaybeTls {
        self.stream
            .as_mut()
            .expect("stream present outside start_tls")
    }

    async fn start_tls(&mut self) -> Result<(), ConnError> {
        let Some(certs) = &self.shard.certs else {
            return Err(ConnError::Tls("STARTTLS without a certificate".into()));
        };
        let config = certs.config();
        let plain = self.stream.take().expect("stream present");
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, plain.start_tls_server(config)).await {
            Ok(Ok(s)) => {
                let (proto, cipher) = match s.tls() {
                    Some(t) => (
                        t.protocol_name().unwrap_or("?"),
                        t.cipher_name().unwrap_or("?"),
                    ),
                    None => ("?", "?"),
                };
                log!(
                    "shard{} {} starttls ip={} protocol={proto} cipher={cipher}",
                    self.shard.index,
                    self.service.name(),
                    self.peer.ip()
                );
                self.stream = Some(s);
                self.session.tls_started();
                // Authentication does not survive STARTTLS (RFC 3207).
                self.auth_user = None;
                Ok(())
            }
            Ok(Err(e)) => Err(ConnError::Tls(e.to_string())),
            Err(_) => Err(ConnError::Tls("handshake timeout".into())),
        }
    }

    async fn handle(&mut self, ev: OwnedEvent) {
        match ev {
            OwnedEvent::Mail { sender } => {
                let d = self.mail_policy(&sender);
                let d = match d {
                    Decision::Accept => self.mail_decision(&sender),
                    reject => reject,
                };
                let d = match d {
                    Decision::Accept => self.mail_dns_and_rate(&sender).await,
                    reject => reject,
                };
                self.session.decide(d);
            }
            OwnedEvent::Auth {
                mechanism,
                authcid,
                secret,
            } => {
                let outcome = self.authenticate(&mechanism, &authcid, secret).await;
                self.session.auth_result(outcome);
            }
            OwnedEvent::ScramLookup { authcid } => {
                let (credentials, nonce) = self.scram_lookup(&authcid).await;
                self.session.scram_credentials(credentials, &nonce);
            }
            OwnedEvent::Rcpt { domain, address } => {
                let mut d = self.rate_check(false).await;
                if let (Decision::Accept, Some(addr)) = (&d, &address) {
                    d = self.rcpt_policy(addr);
                }
                if let Decision::Accept = d {
                    d = self.rcpt_decision(domain.as_deref()).await;
                }
                if let (Decision::Accept, Some(addr)) = (&d, address) {
                    if self.settings.policy.chkrcpt_applies(&addr) {
                        d = rcptcheck::check(&self.shard, &self.settings, self.check_rcpt, &addr)
                            .await;
                    }
                    if let Decision::Accept = d {
                        d = self.greylist(&addr).await;
                    }
                    if let (Decision::Accept, true) = (&d, self.settings.domain_queues.is_on()) {
                        self.domain_queue(&addr);
                    }
                }
                self.slow_down_rcpt(&d).await;
                self.session.decide(d);
            }
            OwnedEvent::Etrn { node } => {
                let hub = self.shard.turn.borrow().clone();
                let r = scheduler::turn::etrn(
                    hub.as_ref(),
                    &self.settings.turn,
                    &node,
                    self.shard.index,
                    self.peer.ip(),
                )
                .await;
                self.session.etrn_result(r);
            }
            OwnedEvent::Atrn { domains } => {
                let hub = self.shard.turn.borrow().clone();
                let r = scheduler::turn::atrn(
                    hub.as_ref(),
                    &self.settings.turn,
                    &self.shard.directory,
                    self.auth_user.as_deref(),
                    &domains,
                    self.shard.index,
                    self.peer.ip(),
                )
                .await;
                match r {
                    Ok(t) => {
                        self.turned = Some(t);
                        self.session.atrn_result(Ok(()));
                    }
                    Err(reply) => self.session.atrn_result(Err(reply)),
                }
            }
            OwnedEvent::DataStart => self.begin_message().await,
            OwnedEvent::MessageEnd => self.commit().await,
            OwnedEvent::MessageAborted => {
                if let Some(w) = self.spool.take() {
                    w.abort().await;
                }
                self.txn.held = None;
                self.spool_failed = None;
                self.shard
                    .metrics
                    .inc(scheduler::metrics::Counter::Rejected);
            }
        }
    }
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

/// Serves one admitted client: the session for its service, the implicit TLS handshake
/// (smtps), the DNSBL question asked while it reads the greeting, then the session loop.
pub(crate) async fn serve(
    shard: Rc<SmtpShard>,
    stream: TcpStream,
    (peer, local): (SocketAddr, Option<SocketAddr>),
    service: Service,
    admitted: Admitted,
) {
    let Admitted {
        generation,
        rule,
        slot: _slot,
    } = admitted;
    let ip = peer.ip();
    let settings = Rc::clone(&generation.settings);
    let relay = settings.relay_everyone || rule.var("RELAYCLIENT").is_some();
    let check_rcpt = match rule.var("CHECKRECIPIENT") {
        Some(v) => RecipientCheck::from_var(Some(v)),
        None => settings.check_recipient,
    };
    let mut session = Session::new(Rc::clone(generation.proto(service)));
    let checks = settings.client_checks.for_client(&rule);
    session.set_max_rcpt_errors(checks.max_rcpt_errors);
    session.set_auth_entropy(tls::session_random_u64(), scheduler::deliver::unix_now());
    let stream = if service == Service::Smtps {
        match implicit_tls(&shard, stream, ip).await {
            Some(s) => {
                session.set_tls(true);
                s
            }
            None => return,
        }
    } else {
        MaybeTls::Plain(stream)
    };
    // DNSBL (rblsmtpd's job in IndiMail): asked while the client reads the
    // greeting, answered at its first MAIL; not for submission, relay
    // clients, or where SKIPDNSBL is set (environment or tcp.smtp rule).
    let dnsbl = if service != Service::Submission
        && !relay
        && !settings.dnsbl_zones.is_empty()
        && !settings.skip_dnsbl
        && rule.var("SKIPDNSBL").is_none()
    {
        let shard = Rc::clone(&shard);
        let zones = settings.dnsbl_zones.clone();
        Dnsbl::Pending(tokio::task::spawn_local(async move {
            shard.dns.dnsbl(ip, &zones).await
        }))
    } else {
        Dnsbl::Done(None)
    };
    let mut conn = Connection {
        checks,
        dnsbl,
        shard: Rc::clone(&shard),
        check_relay: settings.check_relay,
        settings,
        stream: Some(stream),
        peer,
        local,
        service,
        relay,
        check_rcpt,
        auth_user: None,
        txn: Txn::default(),
        auth_failures: 0,
        session,
        spool: None,
        spool_failed: None,
        message_bytes: 0,
        pending_cr: false,
        scratch: Vec::new(),
        turned: None,
        waiting_since: tokio::time::Instant::now(),
        data_credit: std::time::Duration::ZERO,
        stressed: false,
        closed_cleanly: false,
    };
    log!(
        "shard{} {} connect ip={ip} port={} relay={}",
        shard.index,
        service.name(),
        peer.port(),
        relay
    );
    let greet = conn.before_greeting().await;
    if let Err(e) = if greet { conn.run().await } else { Ok(()) } {
        log!("shard{} smtp drop ip={ip} reason={e}", shard.index);
    }
    if let Some(w) = conn.spool.take() {
        w.abort().await;
    }
    // After the client's QUIT or close nothing is in flight, and dropping the
    // stream closes the socket; any other end may leave an operation holding
    // it open on io_uring, which shutdown(2) ends.
    if let Some(s) = conn.stream.as_ref().filter(|_| !conn.closed_cleanly) {
        let _ = s.tcp().shutdown(std::net::Shutdown::Both);
    }
}

/// The TLS handshake of an smtps connection (RFC 8314), within [`HANDSHAKE_TIMEOUT`];
/// `None` (logged) when there is no certificate or the handshake fails.
async fn implicit_tls(shard: &SmtpShard, stream: TcpStream, ip: IpAddr) -> Option<MaybeTls> {
    let Some(certs) = &shard.certs else {
        log!(
            "shard{} smtps drop ip={ip} reason=no server certificate",
            shard.index
        );
        return None;
    };
    match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        MaybeTls::Plain(stream).start_tls_server(certs.config()),
    )
    .await
    {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            log!(
                "shard{} smtps tls handshake failed ip={ip} reason={e}",
                shard.index
            );
            None
        }
        Err(_) => {
            log!("shard{} smtps tls handshake timeout ip={ip}", shard.index);
            None
        }
    }
}

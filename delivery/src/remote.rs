//! Remote delivery: what qmail-remote does for one destination domain.
//!
//! [`Remote`] lives on one shard (`Rc`/`RefCell` state): the resolver, the
//! backoff table and the connection pool are per shard, never shared. The
//! engine calls [`Remote::deliver`] with one message, one sender and the
//! recipients of one domain, and gets one [`Outcome`] per recipient.
//!
//! Routing precedence: the caller's route (dynamic `SMTPROUTE` for
//! clustered domains, per-user routes) > `smtproutes` > MX records
//! (implicit MX to the domain's A/AAAA; null MX is permanent). Hosts are
//! tried in preference order, each address in turn, moving on after a
//! connect failure, timeout, or a refused greeting/EHLO. Once a
//! transaction has started on a host there is no next host: the outcome
//! of that host stands (qmail-remote does the same).
//!
//! A recipient is Delivered only if its RCPT got 2xx and the message got
//! 2xx after DATA. 5xx is Permanent; 4xx, network errors, timeouts and
//! garbage are Temporary with the reason.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backoff::{Backoff, DEFAULT_MAX_TOLERANCE, DEFAULT_PENALTY};
use crate::dns::{DnsError, Resolver};
use crate::program::{self, ProgramSpec};
use crate::routes::{Route, SmtpRoutes, SMTP_PORT};
use crate::transport::{Connection, StepError, TransportError};
use crate::Outcome;
use smtp_proto::client::{
    reply_text, ClientConfig, ClientError, ClientEvent, ClientSession, OutgoingMessage, RcptOutcome,
};

/// Remote delivery settings.
#[derive(Clone)]
pub struct RemoteConfig {
    /// EHLO name (`helohost`, else `me`).
    pub helo: String,
    /// `timeoutconnect` (60 s).
    pub timeout_connect: Duration,
    /// `timeoutremote` (1200 s): each read or write.
    pub timeout_remote: Duration,
    /// `smtproutes` at start (later tables: [`Remote::set_routes`]).
    pub routes: SmtpRoutes,
    /// Port used for MX hosts (25; tests use an ephemeral port).
    pub mx_port: u16,
    /// Issue STARTTLS when offered.
    pub starttls: bool,
    /// TLS client configuration (certificate verification policy).
    pub tls: Arc<rustls::ClientConfig>,
    /// Minimum backoff (`MIN_PENALTY`, 3600 s) unless a route says otherwise.
    pub penalty: u64,
    /// `MAX_TOLERANCE` (120 s) unless a route says otherwise.
    pub max_tolerance: u64,
    /// `QMAILREMOTE`: run this program instead of speaking SMTP here.
    pub qmailremote: Option<PathBuf>,
    /// Close pooled connections idle longer than this.
    pub idle_timeout: Duration,
    /// Most transactions on one connection before it is closed.
    pub max_reuse: u32,
    /// Most idle connections kept per destination.
    pub max_idle_per_dest: usize,
}

impl RemoteConfig {
    /// qmail-remote's defaults, opportunistic TLS without verification.
    pub fn new(helo: &str) -> Result<RemoteConfig, rustls::Error> {
        Ok(RemoteConfig {
            helo: helo.to_string(),
            timeout_connect: Duration::from_secs(60),
            timeout_remote: Duration::from_secs(1200),
            routes: SmtpRoutes::default(),
            mx_port: SMTP_PORT,
            starttls: true,
            tls: tls::ClientTlsConfig::new(tls::ClientVerify::AcceptAny)
                .build()
                .map_err(|e| match e {
                    tls::TlsError::Tls(e) => e,
                    other => rustls::Error::General(other.to_string()),
                })?,
            penalty: DEFAULT_PENALTY,
            max_tolerance: DEFAULT_MAX_TOLERANCE,
            qmailremote: None,
            idle_timeout: Duration::from_secs(30),
            max_reuse: 100,
            // As many as a shard runs transactions by default (concurrencyremote 20, and
            // more): fewer, and a burst's extra connections were closed and reopened, one
            // TCP connection and EHLO per relayed message (RESULTS.md, issue 23).
            max_idle_per_dest: 32,
        })
    }
}

/// One remote delivery: a message, its sender, and recipients of one domain.
#[derive(Debug, Clone)]
pub struct RemoteJob<'a> {
    /// The recipients' domain (or `[ip]` literal).
    pub domain: &'a str,
    /// Envelope sender (empty = null sender).
    pub sender: &'a str,
    /// Recipients, all at `domain`.
    pub recipients: &'a [String],
    /// The message in queue form (LF line ends).
    pub message: &'a [u8],
    /// A route decided by the caller (dynamic `SMTPROUTE`), beating `smtproutes`.
    pub route: Option<Route>,
    /// qmail's `qqeh` (extra envelope headers), passed to `QMAILREMOTE`.
    pub qqeh: &'a str,
}

/// Idle connections are kept per address and per identity: a session that
/// authenticated as one route's user never carries another route's mail.
type PoolKey = (SocketAddr, Option<crate::routes::Credentials>);

/// Where and as whom one attempt connects.
struct Dest<'a> {
    addr: SocketAddr,
    host: &'a str,
    implicit_tls: bool,
    auth: Option<&'a crate::routes::Credentials>,
}

impl Dest<'_> {
    fn key(&self) -> PoolKey {
        (self.addr, self.auth.cloned())
    }
}

struct Pooled {
    conn: Connection,
    session: ClientSession,
    since: Instant,
    uses: u32,
}

/// Counters of one shard's remote deliveries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RemoteStats {
    /// TCP connections opened.
    pub connections: u64,
    /// Transactions that ran on a reused connection.
    pub reused: u64,
}

/// The per-shard remote delivery agent.
pub struct Remote {
    cfg: RemoteConfig,
    /// `smtproutes`, replaced whole on a reload (see [`Remote::set_routes`]).
    routes: RefCell<Arc<SmtpRoutes>>,
    resolver: Resolver,
    backoff: RefCell<Backoff>,
    pool: RefCell<HashMap<PoolKey, Vec<Pooled>>>,
    stats: RefCell<RemoteStats>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Why opening a connection to one address failed; the next address is tried.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    /// Connecting or the TLS handshake failed.
    #[error("{0}")]
    Transport(#[from] TransportError),
    /// The client core refused a step (e.g. TLS reported in the wrong state).
    #[error("{addr}: {error}")]
    Session {
        addr: SocketAddr,
        error: ClientError,
    },
    /// The session was ready for something other than a transaction.
    #[error("{0}: unexpected client state")]
    UnexpectedState(SocketAddr),
    /// The server refused the greeting, HELO/EHLO, STARTTLS or AUTH.
    #[error("Connected to {addr} but {why}")]
    Refused { addr: SocketAddr, why: String },
}

enum Attempt {
    /// A transaction ran: these are the outcomes.
    Done(Vec<Outcome>),
    /// This address did not work; try the next.
    Next(String),
}

impl Remote {
    /// A remote agent for one shard.
    pub fn new(mut cfg: RemoteConfig, resolver: Resolver) -> Remote {
        let routes = RefCell::new(Arc::new(std::mem::take(&mut cfg.routes)));
        Remote {
            cfg,
            routes,
            resolver,
            backoff: RefCell::new(Backoff::new()),
            pool: RefCell::new(HashMap::new()),
            stats: RefCell::new(RemoteStats::default()),
        }
    }

    /// Replaces the `smtproutes` table (hot reload); deliveries under way
    /// keep the route they started with.
    pub fn set_routes(&self, routes: Arc<SmtpRoutes>) {
        *self.routes.borrow_mut() = routes;
    }

    /// Counters.
    pub fn stats(&self) -> RemoteStats {
        *self.stats.borrow()
    }

    /// Closes pooled connections idle past `idle_timeout` (call from a
    /// periodic timer; checkouts also skip stale ones).
    pub async fn close_idle(&self) {
        let mut stale = Vec::new();
        {
            let mut pool = self.pool.borrow_mut();
            for list in pool.values_mut() {
                let (old, keep): (Vec<_>, Vec<_>) = std::mem::take(list)
                    .into_iter()
                    .partition(|p| p.since.elapsed() >= self.cfg.idle_timeout);
                *list = keep;
                stale.extend(old);
            }
            pool.retain(|_, l| !l.is_empty());
        }
        for p in stale {
            quit(p.conn, p.session).await;
        }
    }

    /// Closes every pooled connection (shutdown).
    pub async fn close_all(&self) {
        let all: Vec<Pooled> = self
            .pool
            .borrow_mut()
            .drain()
            .flat_map(|(_, v)| v)
            .collect();
        for p in all {
            quit(p.conn, p.session).await;
        }
    }

    /// Delivers one message to the recipients of one domain.
    pub async fn deliver(&self, job: &RemoteJob<'_>) -> Vec<Outcome> {
        if job.recipients.is_empty() {
            return Vec::new();
        }
        if let Some(prog) = &self.cfg.qmailremote {
            return run_qmailremote(prog, job).await;
        }
        let n = job.recipients.len();
        let route = job.route.clone().or_else(|| {
            self.routes
                .borrow()
                .lookup(job.domain, job.sender.is_empty())
                .cloned()
        });
        let (penalty, tolerance) = (
            route
                .as_ref()
                .and_then(|r| r.penalty)
                .unwrap_or(self.cfg.penalty),
            route
                .as_ref()
                .and_then(|r| r.max_tolerance)
                .unwrap_or(self.cfg.max_tolerance),
        );
        let (hosts, port, implicit_tls) = match route.as_ref().and_then(|r| r.relay.clone()) {
            Some(relay) => {
                let r = route
                    .as_ref()
                    .map(|r| (r.port, r.implicit_tls()))
                    .unwrap_or((SMTP_PORT, false));
                (vec![relay], r.0, r.1)
            }
            None => {
                let port = route.as_ref().map(|r| r.port).unwrap_or(self.cfg.mx_port);
                let literal = job.domain.starts_with('[') && job.domain.ends_with(']');
                if literal {
                    (vec![job.domain.to_string()], port, port == 465)
                } else {
                    match self.resolver.mx(job.domain).await {
                        Ok(mx) => (mx.into_iter().map(|m| m.host).collect(), port, port == 465),
                        Err(e) => return vec![dns_outcome(&e); n],
                    }
                }
            }
        };

        let mut wire = Vec::with_capacity(job.message.len() + job.message.len() / 40 + 5);
        smtp_proto::dot_stuff(job.message, &mut wire);
        let wire = Arc::new(wire);
        let envelope = OutgoingMessage {
            from: job.sender.to_string(),
            to: job.recipients.to_vec(),
            size: Some(job.message.len() as u64),
            eight_bit: !job.message.is_ascii(),
            // Set by the core from the addresses.
            smtputf8: false,
        };
        let mut last_error: Option<String> = None;
        let mut permanent_dns: Option<DnsError> = None;
        let mut tried_address = false;
        let mut temporary_dns = false;
        for host in &hosts {
            let ips = match self.resolver.addresses(host).await {
                Ok(ips) => ips,
                Err(e) => {
                    if e.is_temporary() {
                        temporary_dns = true;
                    } else {
                        permanent_dns.get_or_insert(e.clone());
                    }
                    last_error = Some(e.to_string());
                    continue;
                }
            };
            for ip in ips {
                tried_address = true;
                let addr = SocketAddr::new(ip, port);
                if self
                    .backoff
                    .borrow()
                    .should_skip(ip, now_secs(), penalty, tolerance)
                {
                    last_error.get_or_insert_with(|| {
                        format!("{ip} is backed off after repeated failures")
                    });
                    continue;
                }
                let dest = Dest {
                    addr,
                    host,
                    implicit_tls,
                    auth: route.as_ref().and_then(|r| r.credentials.as_ref()),
                };
                match self.attempt(&dest, &envelope, &wire).await {
                    Attempt::Done(outcomes) => return outcomes,
                    Attempt::Next(why) => last_error = Some(why),
                }
            }
        }
        // Every host name failed permanently in DNS: no point retrying.
        if let (Some(e), false, false) = (&permanent_dns, tried_address, temporary_dns) {
            return vec![dns_outcome(e); n];
        }
        let why = last_error.unwrap_or_else(|| "no host to try".into());
        vec![
            Outcome::Temporary(format!(
                "Sorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n{why}"
            ));
            n
        ]
    }

    fn checkout(&self, key: &PoolKey) -> Option<Pooled> {
        let mut pool = self.pool.borrow_mut();
        let list = pool.get_mut(key)?;
        while let Some(p) = list.pop() {
            if p.since.elapsed() < self.cfg.idle_timeout && p.session.is_ready() {
                return Some(p);
            }
            // Stale: dropped, which closes the socket.
        }
        None
    }

    fn checkin(&self, key: PoolKey, p: Pooled) -> Option<Pooled> {
        if !p.session.is_ready() || p.uses >= self.cfg.max_reuse {
            return Some(p);
        }
        let mut pool = self.pool.borrow_mut();
        let list = pool.entry(key).or_default();
        if list.len() >= self.cfg.max_idle_per_dest {
            return Some(p);
        }
        list.push(p);
        None
    }

    async fn attempt(
        &self,
        dest: &Dest<'_>,
        env: &OutgoingMessage,
        wire: &Arc<Vec<u8>>,
    ) -> Attempt {
        let addr = dest.addr;
        // A pooled connection may have been closed by the peer while idle;
        // if it fails before any reply to this transaction, nothing was
        // accepted, so a fresh connection is tried instead.
        if let Some(p) = self.checkout(&dest.key()) {
            self.stats.borrow_mut().reused += 1;
            match self.transact(p, env, wire, true).await {
                Ok((outcomes, p)) => {
                    if let Some(p) = p.and_then(|p| self.checkin(dest.key(), p)) {
                        quit(p.conn, p.session).await;
                    }
                    return Attempt::Done(self.decorate(addr, outcomes));
                }
                Err(None) => {}
                Err(Some(outcomes)) => return Attempt::Done(outcomes),
            }
        }
        let (conn, session) = match self.open(dest).await {
            Ok(v) => v,
            Err(why) => return Attempt::Next(why.to_string()),
        };
        let p = Pooled {
            conn,
            session,
            since: Instant::now(),
            uses: 0,
        };
        match self.transact(p, env, wire, false).await {
            Ok((outcomes, p)) => {
                if let Some(p) = p.and_then(|p| self.checkin(dest.key(), p)) {
                    quit(p.conn, p.session).await;
                }
                Attempt::Done(self.decorate(addr, outcomes))
            }
            Err(Some(outcomes)) => Attempt::Done(outcomes),
            Err(None) => Attempt::Next(format!("{addr}: connection failed before MAIL")),
        }
    }

    fn decorate(&self, addr: SocketAddr, outcomes: Vec<Outcome>) -> Vec<Outcome> {
        let ip = addr.ip();
        outcomes
            .into_iter()
            .map(|o| match o {
                Outcome::Delivered(t) => {
                    Outcome::Delivered(format!("{ip} accepted message.\nRemote host said: {t}"))
                }
                Outcome::Temporary(t) => Outcome::Temporary(format!("{ip} said: {t}")),
                Outcome::Permanent(t) => Outcome::Permanent(format!("{ip} said: {t}")),
            })
            .collect()
    }

    /// Connects, reads the greeting, EHLO (HELO), STARTTLS when offered.
    async fn open(&self, dest: &Dest<'_>) -> Result<(Connection, ClientSession), OpenError> {
        let (addr, host, implicit_tls) = (dest.addr, dest.host, dest.implicit_tls);
        self.stats.borrow_mut().connections += 1;
        let mut conn = match Connection::connect(
            addr,
            self.cfg.timeout_connect,
            self.cfg.timeout_remote,
        )
        .await
        {
            Ok(c) => c,
            Err(e) => {
                self.backoff.borrow_mut().failure(addr.ip(), now_secs());
                return Err(e.into());
            }
        };
        if implicit_tls {
            if let Err(e) = conn.start_tls(Arc::clone(&self.cfg.tls), host).await {
                // Port 465: TLS is mandatory; fail this host.
                return Err(e.into());
            }
        }
        let mut session = ClientSession::new(ClientConfig {
            starttls: self.cfg.starttls,
            // qmail-remote's caps: 4096-byte lines (CRLF aside), 256 lines.
            max_reply_line: MAX_REPLY_LINE + 2,
            max_reply: 256 * (MAX_REPLY_LINE + 2),
            lossy_replies: true,
            implicit_tls,
            auth: dest.auth.cloned(),
            ..ClientConfig::new(self.cfg.helo.as_str())
        });
        loop {
            match conn.step(&mut session).await {
                Ok(ClientEvent::StartTls) => {
                    if let Err(e) = conn.start_tls(Arc::clone(&self.cfg.tls), host).await {
                        // A failed opportunistic handshake leaves the session
                        // unusable; the next address (or a retry) goes on.
                        return Err(e.into());
                    }
                    if let Err(error) = session.tls_established() {
                        return Err(OpenError::Session { addr, error });
                    }
                }
                Ok(ClientEvent::Ready) => {
                    self.backoff.borrow_mut().success(addr.ip());
                    return Ok((conn, session));
                }
                Ok(_) => return Err(OpenError::UnexpectedState(addr)),
                Err(StepError::Transport(e)) => return Err(self.conn_failure(addr, e).into()),
                Err(StepError::Session(e)) => {
                    conn.close().await;
                    return Err(OpenError::Refused {
                        addr,
                        why: session_failure(&e),
                    });
                }
            }
        }
    }

    fn conn_failure(&self, addr: SocketAddr, e: TransportError) -> TransportError {
        if matches!(
            e,
            TransportError::Timeout(..) | TransportError::Closed(_) | TransportError::Io(..)
        ) {
            self.backoff.borrow_mut().failure(addr.ip(), now_secs());
        }
        e
    }

    /// Runs one transaction. `Err(None)`: the connection failed before any
    /// reply to it (safe to retry elsewhere, only possible on a reused
    /// connection or before MAIL). `Err(Some)`: the transaction failed
    /// midway; outcomes are Temporary except those already final.
    async fn transact(
        &self,
        mut p: Pooled,
        env: &OutgoingMessage,
        wire: &Arc<Vec<u8>>,
        reused: bool,
    ) -> Result<(Vec<Outcome>, Option<Pooled>), Option<Vec<Outcome>>> {
        let n = env.to.len();
        let start = p.conn.consumed();
        if let Err(e) = p.session.send_mail(env.clone()) {
            // Refused before anything was sent: the session stays usable.
            p.uses += 1;
            p.since = Instant::now();
            return Ok((vec![refusal(&e); n], Some(p)));
        }
        let temporary = |why: String| Some(vec![Outcome::Temporary(why); n]);
        loop {
            match p.conn.step(&mut p.session).await {
                Ok(ClientEvent::SendData) => {
                    if let Err(e) = p.conn.send(wire.as_ref().clone()).await {
                        return Err(temporary(e.to_string()));
                    }
                    if let Err(e) = p.session.data_sent() {
                        return Err(temporary(e.to_string()));
                    }
                }
                Ok(ClientEvent::TransactionDone { per_rcpt, .. }) => {
                    let outcomes = per_rcpt.iter().map(|r| outcome(&r.outcome)).collect();
                    p.uses += 1;
                    p.since = Instant::now();
                    return Ok((outcomes, Some(p)));
                }
                Ok(_) => return Err(temporary("unexpected client state".into())),
                // A pooled connection that failed before any reply to this
                // transaction accepted nothing: a fresh one may be tried.
                Err(StepError::Transport(_)) if reused && p.conn.consumed() == start => {
                    return Err(None)
                }
                Err(StepError::Transport(e)) => return Err(temporary(e.to_string())),
                Err(StepError::Session(e)) => return Err(temporary(session_failure(&e))),
            }
        }
    }
}

/// qmail-remote's longest reply line.
const MAX_REPLY_LINE: usize = 4096;

/// What a recipient's result from the client core means here.
fn outcome(o: &RcptOutcome) -> Outcome {
    match o {
        RcptOutcome::Delivered(r) => Outcome::Delivered(reply_text(r)),
        RcptOutcome::Deferred(r) => Outcome::Temporary(reply_text(r)),
        RcptOutcome::Failed(r) => Outcome::Permanent(reply_text(r)),
    }
}

/// The outcome of a message the core refused before sending anything.
fn refusal(e: &ClientError) -> Outcome {
    match e {
        ClientError::SmtpUtf8NotOffered => Outcome::Permanent(
            "Remote host does not offer SMTPUTF8 but the address is not ASCII (#5.6.7)".into(),
        ),
        ClientError::MessageTooBig { size, max } => Outcome::Permanent(format!(
            "Message is {size} bytes; remote host accepts at most {max} (#5.3.4)"
        )),
        ClientError::BadAddress(a) => {
            Outcome::Permanent(format!("Address {a:?} cannot be sent in SMTP (#5.1.3)"))
        }
        e => Outcome::Temporary(e.to_string()),
    }
}

/// Why a session failed, as qmail-remote words it (the text never holds a password).
fn session_failure(e: &ClientError) -> String {
    match e {
        ClientError::Greeting(r) => format!("greeting: {}", reply_text(r)),
        ClientError::Helo(r) => format!("HELO: {}", reply_text(r)),
        e => e.to_string(),
    }
}

async fn quit(mut conn: Connection, mut session: ClientSession) {
    if session.quit().is_ok() {
        // Sends QUIT and reads its reply.
        let _ = conn.step(&mut session).await;
    }
    conn.close().await;
}

fn dns_outcome(e: &DnsError) -> Outcome {
    if e.is_temporary() {
        Outcome::Temporary(e.to_string())
    } else {
        Outcome::Permanent(e.to_string())
    }
}

/// Runs `QMAILREMOTE` with qmail-remote's argv (`host sender qqeh size
/// rcpt...`) and parses its report: per recipient `r` (accepted), `h`
/// (permanent) or `s` (temporary), then `K`/`Z`/`D` for the message, each
/// NUL-terminated with text after the letter.
pub async fn run_qmailremote(prog: &std::path::Path, job: &RemoteJob<'_>) -> Vec<Outcome> {
    let n = job.recipients.len();
    let mut args = vec![
        job.domain.to_string(),
        job.sender.to_string(),
        job.qqeh.to_string(),
        job.message.len().to_string(),
    ];
    args.extend(job.recipients.iter().cloned());
    let spec = ProgramSpec {
        program: prog.to_path_buf(),
        args,
        cwd: None,
        env: Vec::new(),
    };
    match program::run(spec, Arc::new(job.message.to_vec())).await {
        Err(e) => vec![Outcome::Temporary(format!("Unable to run {}: {e}", prog.display())); n],
        Ok(x) if x.code != Some(0) => vec![
            Outcome::Temporary(format!(
                "{} exited {:?} (signal {:?}): {}",
                prog.display(),
                x.code,
                x.signal,
                program::output_text(&x.output)
            ));
            n
        ],
        Ok(x) => parse_remote_report(&x.output, n),
    }
}

/// Parses qmail-remote's report for `n` recipients.
pub fn parse_remote_report(out: &[u8], n: usize) -> Vec<Outcome> {
    let parts: Vec<String> = out
        .split(|&b| b == 0)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    // The last split piece is what follows the final NUL (normally empty).
    let fields: Vec<&String> = parts.iter().take(parts.len().saturating_sub(1)).collect();
    let bad = || {
        vec![
            Outcome::Temporary(format!(
                "Unable to parse the remote agent's report: {:?}",
                String::from_utf8_lossy(&out[..out.len().min(200)])
            ));
            n
        ]
    };
    // A message-level failure may come alone (e.g. no connection): Z/D only.
    if let Some(first) = fields.first() {
        if fields.len() == 1 {
            let text = first.get(1..).unwrap_or("").to_string();
            return match first.chars().next() {
                Some('Z') => vec![Outcome::Temporary(text); n],
                Some('D') => vec![Outcome::Permanent(text); n],
                _ => bad(),
            };
        }
    }
    if fields.len() != n + 1 {
        return bad();
    }
    let msg = fields[n];
    let msg_text = msg.get(1..).unwrap_or("").to_string();
    let msg_kind = msg.chars().next();
    if !matches!(msg_kind, Some('K' | 'Z' | 'D')) {
        return bad();
    }
    let mut v = Vec::with_capacity(n);
    for f in &fields[..n] {
        let text = f.get(1..).unwrap_or("").to_string();
        v.push(match (f.chars().next(), msg_kind) {
            (Some('r'), Some('K')) => Outcome::Delivered(msg_text.clone()),
            (Some('r'), Some('D')) => Outcome::Permanent(msg_text.clone()),
            (Some('r'), _) => Outcome::Temporary(msg_text.clone()),
            (Some('h'), _) => Outcome::Permanent(text),
            (Some('s'), _) => Outcome::Temporary(text),
            _ => return bad(),
        });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_reports() {
        let r = parse_remote_report(b"r\0h550 no\0s451 later\0K250 ok\0", 3);
        assert_eq!(
            r,
            vec![
                Outcome::Delivered("250 ok".into()),
                Outcome::Permanent("550 no".into()),
                Outcome::Temporary("451 later".into())
            ]
        );
        assert_eq!(
            parse_remote_report(b"Zno connection\0", 2),
            vec![Outcome::Temporary("no connection".into()); 2]
        );
        assert_eq!(
            parse_remote_report(b"r\0Dbad data\0", 1),
            vec![Outcome::Permanent("bad data".into())]
        );
        assert!(
            matches!(&parse_remote_report(b"r\0", 1)[0], Outcome::Temporary(t) if t.contains("Unable to parse"))
        );
        assert!(matches!(
            &parse_remote_report(b"x\0K\0", 1)[0],
            Outcome::Temporary(_)
        ));
        assert!(matches!(
            &parse_remote_report(b"", 1)[0],
            Outcome::Temporary(_)
        ));
    }
}

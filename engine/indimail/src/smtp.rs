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

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::SystemTime;
use tracing::Instrument;

use shard::io::{TcpListener, TcpStream};
use smtp_proto::{
    AuthOutcome, AuthSecret, Decision, Event, Reply, ScramCredentials, Session, SessionConfig,
};
use tls::MaybeTls;

use crate::config::SmtpSettings;
use control::log;
use scheduler::metrics::ShardMetrics;
use scheduler::queues::ShardQueues;

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

/// Which service a listener offers (SMTP here; the IMAP/POP3 ones are
/// served by the `proxies` crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Plain SMTP with STARTTLS and optional AUTH (port 25).
    Smtp,
    /// Message submission (RFC 6409, port 587): AUTH required.
    Submission,
    /// Implicit TLS (RFC 8314, port 465).
    Smtps,
    /// On-Demand Mail Relay (RFC 2645, port 366): AUTH, then ATRN turns the
    /// connection around (see [`scheduler::turn`]).
    Odmr,
    /// POP3 server on the users' Maildirs (STLS offered).
    Pop3,
    /// POP3 server, implicit TLS.
    Pop3s,
    /// IMAP proxy to the user's mailstore (STARTTLS offered).
    ImapProxy,
    /// IMAP proxy, implicit TLS.
    ImapsProxy,
    /// POP3 proxy to the user's mailstore (STLS offered).
    Pop3Proxy,
    /// POP3 proxy, implicit TLS.
    Pop3sProxy,
    /// Password changes by the users (poppassd, IndiMail's `qmail-poppass.106`).
    Poppass,
    /// poppassd, implicit TLS.
    Poppasss,
    /// Prometheus metrics over HTTP.
    Metrics,
}

impl Service {
    /// Every service, in the order of their names.
    pub const ALL: [Service; 13] = [
        Service::Smtp,
        Service::Submission,
        Service::Smtps,
        Service::Odmr,
        Service::Pop3,
        Service::Pop3s,
        Service::ImapProxy,
        Service::ImapsProxy,
        Service::Pop3Proxy,
        Service::Pop3sProxy,
        Service::Poppass,
        Service::Poppasss,
        Service::Metrics,
    ];

    /// Name in logs, `control/listeners`, `--NAME` options and the ready lines.
    pub fn name(self) -> &'static str {
        match self {
            Service::Smtp => "smtp",
            Service::Submission => "submission",
            Service::Smtps => "smtps",
            Service::Odmr => "odmr",
            Service::Pop3 => "pop3",
            Service::Pop3s => "pop3s",
            Service::ImapProxy => "imap-proxy",
            Service::ImapsProxy => "imaps-proxy",
            Service::Pop3Proxy => "pop3-proxy",
            Service::Pop3sProxy => "pop3s-proxy",
            Service::Poppass => "poppass",
            Service::Poppasss => "poppasss",
            Service::Metrics => "metrics",
        }
    }

    /// The service called `name`.
    pub fn from_name(name: &str) -> Option<Service> {
        Service::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether the listener starts with TLS (needs a certificate).
    pub fn implicit_tls(self) -> bool {
        matches!(
            self,
            Service::Smtps
                | Service::Pop3s
                | Service::ImapsProxy
                | Service::Pop3sProxy
                | Service::Poppasss
        )
    }

    /// Whether this is one of the SMTP services.
    pub fn is_smtp(self) -> bool {
        matches!(
            self,
            Service::Smtp | Service::Submission | Service::Smtps | Service::Odmr
        )
    }
}

/// The settings a connection runs with: taken whole when it starts, so a
/// reload never changes a session midway.
struct Generation {
    settings: Rc<SmtpSettings>,
    /// Protocol settings per service (smtp, submission, smtps, odmr).
    protos: [Rc<SessionConfig>; 4],
}

/// Per-shard state shared by the shard's SMTP connections (single thread).
pub struct SmtpShard {
    /// Current settings; replaced whole by [`SmtpShard::reload`].
    current: RefCell<Rc<Generation>>,
    /// The server certificate, reloaded when its files change.
    certs: Option<Rc<tls::CertStore>>,
    /// Failed AUTH attempts per client IP on this shard: later attempts from
    /// an IP with many failures are answered more slowly.
    auth_failures: RefCell<HashMap<IpAddr, u32>>,
    /// The queues this shard owns.
    pub queues: Rc<ShardQueues>,
    /// Counters.
    pub metrics: std::sync::Arc<ShardMetrics>,
    /// Shard index, for logs.
    pub index: usize,
    /// How many shards share the server's `maxdaemons`.
    shards: u32,
    connections: Cell<u32>,
    per_ip: RefCell<HashMap<IpAddr, u32>>,
    /// The user directory, for CHECKRECIPIENT.
    pub(crate) directory: Rc<scheduler::directory::DirectoryHandle>,
    /// Greylisting, when enabled (see [`Greylisting`]).
    greylisting: RefCell<Option<Greylisting>>,
    /// Every shard's turn channel, for ETRN and ATRN (see [`scheduler::turn`]).
    turn: RefCell<Option<scheduler::turn::TurnHub>>,
    /// RCPT and message rates per client address and per user (`rcptrate`,
    /// `msgrate`, `authrcptrate`, `authmsgrate`), counted on this shard for
    /// the clients and users it is home to.
    rates: RefCell<policy::rate::RateLimits>,
    /// Reaches the home shards of users (several shards).
    user_rates: RefCell<Option<Rc<crate::userrates::UserRateRouter>>>,
    /// DNSBL and SPF lookups.
    dns: crate::dnscheck::DnsChecks,
}

/// Most client addresses / users a shard's rate limiter remembers.
const RATE_KEYS: usize = 100_000;

fn rate_limits(r: &crate::config::Rates) -> policy::rate::RateLimits {
    policy::rate::RateLimits::new(
        r.rcpt_per_ip,
        r.msg_per_ip,
        r.rcpt_per_user,
        r.msg_per_user,
        RATE_KEYS,
    )
}

/// Greylisting (RFC 6647) at RCPT for clients that are neither relay
/// clients nor authenticated: either IndiMail's `qmail-greyd` asked over
/// UDP (`GREYIP=ip[@port]`), or built in, with its state on the client's home shard in
/// `<home>/greylist/shard<N>.state` (saved every few minutes and at stop,
/// so a restart does not greylist everyone again). Built-in greylisting is
/// on when `control/greylist` exists (optional line: `min-resend window
/// timeout` in seconds; default IndiMail's installer values 120 86400
/// 2592000) or `GREYLIST=1`; `control/greylist.white` lists networks never
/// greylisted.
pub enum Greylisting {
    /// Ask a qmail-greyd server.
    Server(SocketAddr),
    /// The shard's own state.
    BuiltIn {
        /// Triplets and passed networks.
        state: policy::greylist::Greylist,
        /// Where it is saved.
        path: std::path::PathBuf,
    },
}

impl Greylisting {
    /// What the configuration asks for on shard `index`, loading saved state.
    pub fn from_config(
        control: &control::ControlDir,
        home: &std::path::Path,
        index: usize,
    ) -> Result<Option<Greylisting>, String> {
        if let Ok(v) = std::env::var("GREYIP") {
            return match policy::greylist::udp::parse_greyip(&v) {
                Ok(Some(addr)) => Ok(Some(Greylisting::Server(addr))),
                Ok(None) => Ok(None),
                Err(e) => Err(format!("GREYIP: {e}")),
            };
        }
        let file = control.lines("greylist").map_err(|e| e.to_string())?;
        let env_on = std::env::var("GREYLIST").is_ok_and(|v| !v.is_empty() && v != "0");
        if file.is_none() && !env_on {
            return Ok(None);
        }
        let mut config = policy::greylist::GreylistConfig::indimail_installer();
        if let Some((line, text)) = file.and_then(|v| v.into_iter().next()) {
            let nums: Vec<u64> = text
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            match nums.as_slice() {
                [m, w, t] => {
                    config.min_resend = std::time::Duration::from_secs(*m);
                    config.window = std::time::Duration::from_secs(*w);
                    config.timeout = std::time::Duration::from_secs(*t);
                }
                _ => {
                    return Err(format!(
                        "{}:{line}: expected `min-resend window timeout` in seconds",
                        control.file("greylist").display()
                    ))
                }
            }
        }
        let white_path = control.file("greylist.white");
        let whitelist = if white_path.exists() {
            policy::greylist::Whitelist::load(&white_path).map_err(|errs| {
                errs.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            })?
        } else {
            policy::greylist::Whitelist::default()
        };
        let dir = home.join("greylist");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join(format!("shard{index}.state"));
        let now = SystemTime::now();
        let mut state =
            match policy::greylist::Greylist::load(&path, config, whitelist.clone(), now) {
                Ok(g) => g,
                Err(e) => {
                    log!(
                        "shard{index} greylist state {} unreadable, starting empty: {e}",
                        path.display()
                    );
                    policy::greylist::Greylist::new(config, whitelist)
                }
            };
        // The other shards' files too: with another shard count than last
        // run, a client's home shard is not the one that saved its triplets.
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let other = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if other != path && name.starts_with("shard") && name.ends_with(".state") {
                if let Err(e) = state.merge_file(&other, now) {
                    log!(
                        "shard{index} greylist state {} skipped: {e}",
                        other.display()
                    );
                }
            }
        }
        Ok(Some(Greylisting::BuiltIn { state, path }))
    }
}

impl SmtpShard {
    /// State for one shard.
    pub fn new(
        settings: Rc<SmtpSettings>,
        queues: Rc<ShardQueues>,
        metrics: std::sync::Arc<ShardMetrics>,
        (index, shards): (usize, usize),
        directory: Rc<scheduler::directory::DirectoryHandle>,
        certs: Option<Rc<tls::CertStore>>,
    ) -> SmtpShard {
        let rates = RefCell::new(rate_limits(&settings.rates));
        let current = RefCell::new(Rc::new(generation(settings, certs.is_some())));
        SmtpShard {
            rates,
            user_rates: RefCell::new(None),
            dns: crate::dnscheck::DnsChecks::new(index),
            current,
            certs,
            auth_failures: RefCell::new(HashMap::new()),
            queues,
            metrics,
            index,
            shards: u32::try_from(shards.max(1)).unwrap_or(u32::MAX),
            connections: Cell::new(0),
            per_ip: RefCell::new(HashMap::new()),
            directory,
            greylisting: RefCell::new(None),
            turn: RefCell::new(None),
        }
    }
}

fn generation(settings: Rc<SmtpSettings>, tls: bool) -> Generation {
    let protos = [
        Service::Smtp,
        Service::Submission,
        Service::Smtps,
        Service::Odmr,
    ]
    .map(|svc| Rc::new(session_config(&settings, svc, tls)));
    Generation { settings, protos }
}

impl SmtpShard {
    /// This shard's share of `maxdaemons`, which counts for the whole
    /// server: the shards split it evenly (rounded up). Clients are placed
    /// by address (see `shard::home`), so the shares fill evenly too.
    fn connection_limit(&self, settings: &SmtpSettings) -> u32 {
        settings.max_connections.div_ceil(self.shards)
    }

    /// Connects this shard to every shard's turn channel (ETRN, ATRN).
    pub fn set_turn(&self, hub: scheduler::turn::TurnHub) {
        *self.turn.borrow_mut() = Some(hub);
    }

    /// Counts authenticated users' rates on their home shards.
    pub fn set_user_rates(&self, router: crate::userrates::UserRateRouter) {
        *self.user_rates.borrow_mut() = Some(Rc::new(router));
    }

    /// This shard's rate limiters.
    pub fn rates(&self) -> &RefCell<policy::rate::RateLimits> {
        &self.rates
    }

    /// Turns greylisting on for this shard.
    pub fn set_greylisting(&self, g: Option<Greylisting>) {
        *self.greylisting.borrow_mut() = g;
    }

    /// Saves the built-in greylisting state (periodically and at stop).
    pub fn save_greylist(&self) {
        if let Some(Greylisting::BuiltIn { state, path }) = &mut *self.greylisting.borrow_mut() {
            state.purge(SystemTime::now());
            if let Err(e) = state.save(path) {
                log!("shard{} greylist state not saved: {e}", self.index);
            }
        }
    }

    /// Swaps in new settings (hot reload); connections already open keep
    /// the ones they started with.
    pub fn reload(&self, settings: Rc<SmtpSettings>) {
        let r = settings.rates;
        self.rates.borrow_mut().set_rates(
            r.rcpt_per_ip,
            r.msg_per_ip,
            r.rcpt_per_user,
            r.msg_per_user,
        );
        let g = generation(settings, self.certs.is_some());
        *self.current.borrow_mut() = Rc::new(g);
    }

    /// Connections open right now.
    pub fn active_connections(&self) -> u32 {
        self.connections.get()
    }
}

/// Protocol-core settings from the control files and variables, for one
/// service. `tls` says whether a server certificate is available.
///
/// * STARTTLS is offered when a certificate is available, unless
///   `STARTTLS=0`.
/// * AUTH PLAIN, LOGIN, CRAM-MD5 and SCRAM-SHA-256 are offered; PLAIN and
///   LOGIN only under TLS unless `SECURE_AUTH=0` (IndiMail's `SECURE_AUTH`).
///   `DISABLE_AUTH_*`, `DISABLE_CRAM_MD5` and `DISABLE_SCRAM_SHA256` drop a
///   mechanism. SCRAM-SHA-256 checks the `scram` column of the directory
///   (always configured: SQLite or MySQL), set by `user add/passwd -m`; a
///   user without one fails with 535 like a wrong password.
/// * `REQUIREAUTH` (always on for submission) and `FORCE_TLS`.
pub fn session_config(s: &SmtpSettings, service: Service, tls: bool) -> SessionConfig {
    let var_off = |v: &str| std::env::var(v).is_ok_and(|x| x.trim() == "0");
    let var_on = |v: &str| std::env::var(v).is_ok_and(|x| !x.trim().is_empty() && x.trim() != "0");
    let mut mechs = Vec::new();
    for (m, var) in [
        ("PLAIN", "DISABLE_AUTH_PLAIN"),
        ("LOGIN", "DISABLE_AUTH_LOGIN"),
        ("CRAM-MD5", "DISABLE_CRAM_MD5"),
        ("SCRAM-SHA-256", "DISABLE_SCRAM_SHA256"),
    ] {
        if !var_on(var) {
            mechs.push(m.to_string());
        }
    }
    let odmr = service == Service::Odmr || (service != Service::Submission && var_on("ODMR"));
    SessionConfig {
        hostname: s.me.clone(),
        greeting: s.greeting.clone(),
        max_message_size: s.databytes,
        max_recipients: s.max_recipients,
        starttls: tls && service != Service::Smtps && !var_off("STARTTLS"),
        auth_mechanisms: mechs,
        auth_plain_needs_tls: !var_off("SECURE_AUTH"),
        require_auth: service == Service::Submission || var_on("REQUIREAUTH"),
        require_tls: var_on("FORCE_TLS"),
        max_auth_failures: s.max_auth_failures,
        // ETRN everywhere but submission; ODMR (ATRN) on the odmr service,
        // or on smtp/smtps when `ODMR` is set (IndiMail's port table).
        etrn: service != Service::Submission,
        atrn: odmr,
        odmr,
        ..SessionConfig::new(s.me.clone())
    }
}

/// Accepts connections until `stop` resolves.
pub async fn accept_loop(
    shard: Rc<SmtpShard>,
    listener: TcpListener,
    service: Service,
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
                let span = tracing::info_span!(
                    "smtp_session",
                    shard = shard.index,
                    service = service.name(),
                    ip = %peer.ip()
                );
                let shard = Rc::clone(&shard);
                tokio::task::spawn_local(
                    async move {
                        connection(shard, stream, peer, local, service).await;
                    }
                    .instrument(span),
                );
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
    service: Service,
) {
    let ip = peer.ip();
    let generation = Rc::clone(&shard.current.borrow());
    let settings = Rc::clone(&generation.settings);
    let rule = settings.rules.lookup(ip);
    let _ = stream.set_nodelay(true);
    if rule.deny {
        log!("shard{} smtp deny ip={ip} rule=tcp.smtp", shard.index);
        let r = Reply::new(
            554,
            Some((5, 7, 1)),
            format!("{} access denied to your IP address", settings.me),
        );
        let _ = stream.write_all(r.to_wire()).await;
        return;
    }
    if let policy::Verdict::Reject {
        code,
        enhanced,
        text,
        rule,
    } = settings.policy.check_connect(ip)
    {
        log!("shard{} smtp refused ip={ip} rule={rule}", shard.index);
        let r = Reply::new(code, Some(enhanced), text);
        let _ = stream.write_all(r.to_wire()).await;
        return;
    }
    let max_per_ip = rule
        .var("MAXPERIP")
        .and_then(|v| v.parse().ok())
        .unwrap_or(settings.max_per_ip);
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
    if shard.connections.get() > shard.connection_limit(&settings) {
        log!(
            "shard{} smtp busy ip={ip} connections={}",
            shard.index,
            shard.connections.get()
        );
        let r = Reply::new(
            421,
            Some((4, 3, 2)),
            format!("{} too many connections, try later", settings.me),
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
            format!("{} too many connections from your IP", settings.me),
        );
        let _ = stream.write_all(r.to_wire()).await;
        return;
    }
    shard.metrics.inc(scheduler::metrics::Counter::Connections);
    let relay = settings.relay_everyone || rule.var("RELAYCLIENT").is_some();
    let check_rcpt = match rule.var("CHECKRECIPIENT") {
        Some(v) => crate::rcptcheck::RecipientCheck::from_var(Some(v)),
        None => settings.check_recipient,
    };
    let proto = match service {
        Service::Submission => &generation.protos[1],
        Service::Smtps => &generation.protos[2],
        Service::Odmr => &generation.protos[3],
        _ => &generation.protos[0],
    };
    let mut session = Session::new(Rc::clone(proto));
    let checks = settings.client_checks.for_client(&rule);
    session.set_max_rcpt_errors(checks.max_rcpt_errors);
    let random = tls::random_u64()
        .unwrap_or_else(|_| u64::from(peer.port()) << 32 | u64::from(std::process::id()));
    session.set_auth_entropy(random, scheduler::deliver::unix_now());
    let stream = if service == Service::Smtps {
        let Some(certs) = &shard.certs else {
            log!(
                "shard{} smtps drop ip={ip} reason=no server certificate",
                shard.index
            );
            return;
        };
        match tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            MaybeTls::Plain(stream).start_tls_server(certs.config()),
        )
        .await
        {
            Ok(Ok(s)) => {
                session.set_tls(true);
                s
            }
            Ok(Err(e)) => {
                log!(
                    "shard{} smtps tls handshake failed ip={ip} reason={e}",
                    shard.index
                );
                return;
            }
            Err(_) => {
                log!("shard{} smtps tls handshake timeout ip={ip}", shard.index);
                return;
            }
        }
    } else {
        MaybeTls::Plain(stream)
    };
    let check_relay = settings.check_relay;
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
        settings,
        stream: Some(stream),
        peer,
        local,
        service,
        relay,
        check_rcpt,
        check_relay,
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
    };
    log!(
        "shard{} {} connect ip={ip} port={} relay={}",
        shard.index,
        service.name(),
        peer.port(),
        relay
    );
    let greet = conn.before_greeting().await;
    match if greet { conn.run().await } else { Ok(()) } {
        Ok(()) => {}
        Err(e) => log!("shard{} smtp drop ip={ip} reason={e}", shard.index),
    }
    if let Some(w) = conn.spool.take() {
        w.abort().await;
    }
    if let Some(s) = conn.stream.as_ref() {
        let _ = s.tcp().shutdown(std::net::Shutdown::Both);
    }
}

/// What an authenticated user may do over SMTP: `None` when the user's
/// NO_SMTP flag, the domain's `disable_smtp` limit or its expiry (domain or
/// passwords, vlimit -e / -t) refuses SMTP altogether, else whether relaying is allowed (NO_RELAY, `disable_relay`).
/// The `override` flag exempts a user from the domain limits, as in vlimit.
async fn smtp_permissions(
    dir: &lookup::Directory,
    u: &lookup::User,
) -> Result<Option<bool>, lookup::LookupError> {
    use lookup::UserFlags;
    if u.flags.has(UserFlags::NO_SMTP) {
        return Ok(None);
    }
    let mut relay = !u.flags.has(UserFlags::NO_RELAY);
    if !u.flags.has(UserFlags::V_OVERRIDE) {
        if let Some(l) = dir.limits(&u.domain).await? {
            if l.disable_smtp || l.expired(lookup::unix_now()) {
                return Ok(None);
            }
            relay &= !l.disable_relay;
        }
    }
    Ok(Some(relay))
}

/// A connection's DNSBL answer: asked at connect, needed at MAIL.
enum Dnsbl {
    Pending(tokio::task::JoinHandle<Option<policy::Verdict>>),
    Done(Option<policy::Verdict>),
}

/// `VAR=val,VAR2=<unset>` for the log.
fn env_text(env: &[policy::EnvAssign]) -> String {
    env.iter()
        .map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("<unset>")))
        .collect::<Vec<_>>()
        .join(",")
}

impl Txn {
    /// The variables an envrules line (`from.envrules`, `auth.envrules`)
    /// sets for this message: DATABYTES, RELAYCLIENT, NULLQUEUE, QUARANTINE
    /// (those naming control files act in the `policy` crate).
    fn apply_env(&mut self, env: &[policy::EnvAssign]) {
        for (var, value) in env {
            match (var.as_str(), value) {
                ("DATABYTES", Some(n)) => self.databytes = n.trim().parse().ok(),
                ("DATABYTES", None) => self.databytes = None,
                ("RELAYCLIENT", Some(_)) => self.relay = true,
                ("RELAYCLIENT", None) => self.relay = false,
                ("NULLQUEUE", Some(_)) => self.nullqueue = true,
                ("NULLQUEUE", None) => self.nullqueue = false,
                ("QUARANTINE", q) => self.quarantine = q.clone().filter(|q| !q.is_empty()),
                _ => {}
            }
        }
    }
}

/// What the access controls decided for the current transaction.
#[derive(Default)]
struct Txn {
    /// `Received-SPF:` for the message, when SPF was evaluated.
    spf_header: Option<String>,
    /// Envelope sender as given at MAIL.
    sender: String,
    /// `relaymailfrom` or an envrules `RELAYCLIENT`: relay for this message.
    relay: bool,
    /// Blackholed (blackholedsender/rcpt, bodycheck blackhole, NULLQUEUE):
    /// answer 250 and store nothing.
    nullqueue: bool,
    /// An envrules `DATABYTES` for this message only.
    databytes: Option<u64>,
    /// bodycheck, scanning the message once as it streams in.
    scanner: Option<policy::BodyScanner>,
    /// An envrules `QUARANTINE` address for this message.
    quarantine: Option<String>,
    /// Header rules (`removeheaders`, `envheaders`, `logheaders`) applied
    /// once as the header block streams in, and its output buffer.
    headers: Option<msgproc::HeaderProcessor>,
    header_out: Vec<u8>,
    /// The SPF result word and MAIL FROM, for `Authentication-Results:`.
    spf_result: Option<(String, String)>,
    /// Message plugins on: the message as received (SMTP form), held until
    /// the end of DATA, and the trace lines to write after the headers the
    /// plugins make (see [`Connection::release_held`]).
    held: Option<Vec<u8>>,
    held_prefix: String,
    /// `Received:`/`Delivered-To:` fields of the message (loop guard).
    hops: smtp_proto::HopCounter,
    /// `domainqueue` assignments of the accepted recipients, merged.
    queue_env: Vec<policy::EnvAssign>,
}

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
    check_rcpt: crate::rcptcheck::RecipientCheck,
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
}

/// When the client must have sent what the session waits for: a whole
/// command line within `timeoutsmtpd` of the previous one (a byte every few
/// seconds does not keep a connection alive, as it did with a per-read
/// timeout), a message transfer within the same plus 1/`mindatarate` s per
/// byte received. Under stress (¾ of `maxdaemons` in use on the shard) the
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
    *stressed |=
        u64::from(shard.connections.get()) * 4 >= u64::from(shard.connection_limit(settings)) * 3;
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
                    let _ = self.io().shutdown().await;
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
                    let _ = self.io().shutdown().await;
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

    /// The checks before the greeting (see [`crate::clientchecks`]):
    /// `greetdelay` (with the client's name looked up meanwhile when `REQPTR`
    /// or `badhost` need it), then early talkers, REQPTR and badhost. `false`
    /// when the client was refused (answered; the caller closes).
    async fn before_greeting(&mut self) -> bool {
        let ip = self.peer.ip();
        let lookup = self.checks.wants_client_name(&self.settings.policy);
        let delay = self.checks.greeting();
        let shard = Rc::clone(&self.shard);
        let (name, ()) = tokio::join!(
            async move {
                match lookup {
                    true => Some(shard.dns.client_name(ip).await),
                    false => None,
                }
            },
            async {
                if let Some((d, _)) = delay {
                    tokio::time::sleep(d).await;
                }
            }
        );
        let me = self.settings.me.clone();
        let early = matches!(delay, Some((_, true)))
            && !self.session.is_tls()
            && self.io().tcp().has_unread_input();
        let refusal = if early {
            Some((
                crate::clientchecks::ClientChecks::early_talker(&me),
                "GREETDELAY".to_string(),
            ))
        } else {
            name.and_then(|n| {
                self.checks
                    .judge_client_name(&self.settings.policy, &n, &me)
            })
        };
        let Some((reply, rule)) = refusal else {
            // The client's clock starts at the greeting, not at connect.
            self.waiting_since = tokio::time::Instant::now();
            return true;
        };
        log!(
            "shard{} smtp refused ip={ip} rule={rule} code={}",
            self.shard.index,
            reply.code()
        );
        let _ = self.io().write_all(reply.to_wire()).await;
        let _ = self.io().shutdown().await;
        false
    }

    /// Tarpitting before an accepted RCPT's answer, the penalty after a
    /// refused one (see [`crate::clientchecks`]).
    async fn slow_down_rcpt(&self, d: &Decision) {
        let wait = match d {
            Decision::Accept => self
                .checks
                .tarpit(self.session.envelope().recipients.len() + 1),
            Decision::Reject(r) if r.code() >= 500 => {
                Some(self.checks.penalty).filter(|p| !p.is_zero())
            }
            Decision::Reject(_) => None,
        };
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
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
                        d = crate::rcptcheck::check(
                            &self.shard,
                            &self.settings,
                            self.check_rcpt,
                            &addr,
                        )
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

    /// The MAIL checks that ask DNS or count: the client's DNSBL listing
    /// (not for authenticated users), the message rate, then SPF
    /// (`spfbehavior`; not for relay clients or authenticated users), which
    /// also prepares the `Received-SPF:` header.
    async fn mail_dns_and_rate(&mut self, sender: &str) -> Decision {
        if let Dnsbl::Pending(task) = &mut self.dnsbl {
            let listed = task.await.ok().flatten();
            self.dnsbl = Dnsbl::Done(listed);
        }
        let mut txn = std::mem::take(&mut self.txn);
        let d = self.mail_dns_checks(sender, &mut txn).await;
        self.txn = txn;
        d
    }

    async fn mail_dns_checks(&mut self, sender: &str, txn: &mut Txn) -> Decision {
        if self.auth_user.is_none() {
            if let Dnsbl::Done(Some(v)) = &self.dnsbl {
                return self.verdict(v.clone(), txn, sender);
            }
        }
        if let d @ Decision::Reject(_) = self.rate_check(true).await {
            return d;
        }
        let spf = self.settings.spf;
        if !spf.enabled() || self.relay || txn.relay || self.auth_user.is_some() {
            return Decision::Accept;
        }
        let (ip, helo) = self.policy_conn();
        let found = self
            .shard
            .dns
            .spf(
                ip,
                &helo,
                sender,
                &self.settings.me,
                &self.settings.spf_local,
            )
            .await;
        log!(
            "shard{} spf ip={ip} sender=<{sender}> domain={} result={}",
            self.shard.index,
            found.domain,
            found.result
        );
        txn.spf_result = Some((found.result.to_string(), sender.to_string()));
        txn.spf_header = Some(policy::spf::received_spf(
            found.result,
            &self.settings.me,
            ip,
            sender,
            &helo,
        ));
        let v = spf.verdict(found.result, &found.domain, found.explanation.as_deref());
        self.verdict(v, txn, sender)
    }

    /// One message (at MAIL) or one recipient (at RCPT) against the rate
    /// limits: the authenticated user's, else the client address's.
    async fn rate_check(&self, message: bool) -> Decision {
        let ip = self.peer.ip();
        let user = self.auth_user.as_deref();
        let d = match user {
            Some(u) => {
                let router = self.shard.user_rates.borrow().clone();
                crate::userrates::check_user(router.as_deref(), &self.shard.rates, u, message).await
            }
            None => {
                let now = std::time::Instant::now();
                let mut rates = self.shard.rates.borrow_mut();
                if message {
                    rates.check_message(ip, None, now)
                } else {
                    rates.check_rcpt(ip, None, now)
                }
            }
        };
        match d.verdict() {
            policy::Verdict::Reject {
                code,
                enhanced,
                text,
                ..
            } => {
                log!(
                    "shard{} rate limited ip={ip} user={} what={}",
                    self.shard.index,
                    user.unwrap_or("-"),
                    if message { "message" } else { "rcpt" }
                );
                Decision::Reject(Reply::new(code, Some(enhanced), text))
            }
            _ => Decision::Accept,
        }
    }

    /// Submission's anti-spoofing (IndiMail's CHECKSENDER/MASQUERADE): an
    /// authenticated client may only use its own address as the envelope
    /// sender, unless `MASQUERADE` is set (to anything).
    fn mail_decision(&self, sender: &str) -> Decision {
        if self.service != Service::Submission || self.settings.masquerade {
            return Decision::Accept;
        }
        match &self.auth_user {
            Some(user) if !sender.is_empty() && !sender.eq_ignore_ascii_case(user) => {
                log!(
                    "shard{} submission sender refused user={user} sender=<{sender}>",
                    self.shard.index
                );
                Decision::Reject(Reply::new(
                    553,
                    Some((5, 7, 1)),
                    "sender address does not match the authenticated user",
                ))
            }
            _ => Decision::Accept,
        }
    }

    fn policy_conn(&self) -> (IpAddr, String) {
        let helo = self.session.envelope().helo.clone().unwrap_or_default();
        (self.peer.ip(), helo)
    }

    /// MAIL-time access controls (spec 2.4): from.envrules, hostaccess,
    /// blackholedsender, badmailfrom, relaymailfrom. Starts a new
    /// transaction's state.
    fn mail_policy(&mut self, sender: &str) -> Decision {
        let (ip, helo) = self.policy_conn();
        let conn = policy::Conn {
            ip,
            relay_client: self.relay,
            authenticated: self.auth_user.as_deref(),
            helo: &helo,
        };
        // badhelo: the protocol core answers HELO itself, so the HELO name
        // is judged at the first MAIL after it (same reply class).
        if !self.relay {
            if let policy::Verdict::Reject {
                code,
                enhanced,
                text,
                rule,
            } = self.settings.policy.check_helo(&helo)
            {
                log!(
                    "shard{} policy refused helo <{helo}> ip={ip} reply={code} rule={rule}",
                    self.shard.index
                );
                return Decision::Reject(Reply::new(code, Some(enhanced), text));
            }
        }
        let v = self.settings.policy.check_mail(&conn, sender);
        let mut txn = Txn {
            sender: sender.to_string(),
            relay: v.relay,
            ..Txn::default()
        };
        if !v.env.is_empty() {
            txn.apply_env(&v.env);
            log!(
                "shard{} envrules sender=<{sender}> set={}",
                self.shard.index,
                env_text(&v.env)
            );
        }
        let d = self.verdict(v.verdict, &mut txn, sender);
        self.txn = txn;
        d
    }

    /// RCPT-time access controls (spec 2.5): relay probes, goodrcptto,
    /// badrcptto, accesslist, blackholedrcpt.
    fn rcpt_policy(&mut self, rcpt: &str) -> Decision {
        let (ip, helo) = self.policy_conn();
        let conn = policy::Conn {
            ip,
            relay_client: self.relay || self.txn.relay,
            authenticated: self.auth_user.as_deref(),
            helo: &helo,
        };
        let sender = self.txn.sender.clone();
        let v = self.settings.policy.check_rcpt(&conn, &sender, rcpt);
        let mut txn = std::mem::take(&mut self.txn);
        let d = self.verdict(v, &mut txn, rcpt);
        self.txn = txn;
        d
    }

    /// `domainqueue`: an accepted recipient's line joins the message's
    /// assignments; DATABYTES, NULLQUEUE and QUARANTINE act as from
    /// envrules (see [`scheduler::domainqueue::txn_vars`]).
    fn domain_queue(&mut self, rcpt: &str) {
        let env = self.settings.policy.domain_queue_env(rcpt);
        if env.is_empty() {
            return;
        }
        policy::merge_env(&mut self.txn.queue_env, &env);
        self.txn.apply_env(&scheduler::domainqueue::txn_vars(&env));
        log!(
            "shard{} domainqueue rcpt=<{rcpt}> set={}",
            self.shard.index,
            env_text(&env)
        );
    }

    /// Greylisting for clients that are neither relay clients nor
    /// authenticated (see [`Greylisting`]).
    async fn greylist(&mut self, rcpt: &str) -> Decision {
        if self.relay || self.txn.relay || self.auth_user.is_some() {
            return Decision::Accept;
        }
        let ip = self.peer.ip();
        let sender = self.txn.sender.clone();
        let server = match &mut *self.shard.greylisting.borrow_mut() {
            None => return Decision::Accept,
            Some(Greylisting::BuiltIn { state, .. }) => {
                let d = state.check(ip, &sender, &[rcpt], SystemTime::now());
                let mut txn = std::mem::take(&mut self.txn);
                let decision = self.verdict(d.verdict(), &mut txn, rcpt);
                self.txn = txn;
                return decision;
            }
            Some(Greylisting::Server(addr)) => *addr,
        };
        let request = policy::greylist::udp::encode_request(ip, &sender, &[rcpt]);
        let answer = async {
            let bind = if server.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let sock = tokio::net::UdpSocket::bind(bind).await?;
            sock.send_to(&request, server).await?;
            let mut buf = [0u8; 16];
            let n = sock.recv(&mut buf).await?;
            Ok::<_, std::io::Error>(buf[..n].to_vec())
        };
        let verdict =
            match tokio::time::timeout(policy::greylist::udp::DEFAULT_TIMEOUT, answer).await {
                Ok(Ok(bytes)) => match policy::greylist::udp::decode_reply(&bytes) {
                    Ok(reply) => reply.verdict(),
                    Err(e) => policy::greylist::udp::temporary_failure(&format!(
                        "bad reply from {server}: {e}"
                    )),
                },
                Ok(Err(e)) => policy::greylist::udp::temporary_failure(&format!("{server}: {e}")),
                Err(_) => policy::greylist::udp::temporary_failure(&format!("{server}: timeout")),
            };
        let mut txn = std::mem::take(&mut self.txn);
        let decision = self.verdict(verdict, &mut txn, rcpt);
        self.txn = txn;
        decision
    }

    /// Turns a policy verdict into a decision, logging the rule that matched.
    fn verdict(&self, v: policy::Verdict, txn: &mut Txn, what: &str) -> Decision {
        match v {
            policy::Verdict::Accept => Decision::Accept,
            policy::Verdict::Blackhole { rule } => {
                log!("shard{} blackhole <{what}> rule={rule}", self.shard.index);
                txn.nullqueue = true;
                Decision::Accept
            }
            policy::Verdict::Reject {
                code,
                enhanced,
                text,
                rule,
            } => {
                log!(
                    "shard{} policy refused <{what}> ip={} reply={code} rule={rule}",
                    self.shard.index,
                    self.peer.ip()
                );
                Decision::Reject(Reply::new(code, Some(enhanced), text))
            }
        }
    }

    async fn rcpt_decision(&self, domain: Option<&str>) -> Decision {
        if self.relay || self.txn.relay {
            return Decision::Accept;
        }
        match domain {
            // <postmaster> is always accepted (RFC 5321 4.5.1).
            None => Decision::Accept,
            Some(d) if self.settings.rcpthosts.contains(d) => Decision::Accept,
            Some(_) if self.check_relay && self.relay_table_allows().await => Decision::Accept,
            Some(_) => Decision::Reject(Reply::new(
                553,
                Some((5, 7, 1)),
                "sorry, that domain isn't in my list of allowed rcpthosts",
            )),
        }
    }

    /// POP/IMAP-before-SMTP: the relay table has a recent login from this IP.
    async fn relay_table_allows(&self) -> bool {
        match self.shard.directory.get().await {
            Ok(dir) => dir.relay_allowed(self.peer.ip()).await.unwrap_or(false),
            Err(_) => false,
        }
    }

    /// SCRAM-SHA-256 after the client-first message: the user's stored
    /// secret (the `scram` column) and a fresh server nonce. A user who does
    /// not exist, has no SCRAM secret or an unusable one gets a decoy, so the
    /// exchange looks the same and fails with 535 at its end; `None` (454)
    /// only when the directory cannot answer now.
    async fn scram_lookup(&self, authcid: &str) -> (Option<ScramCredentials>, String) {
        let user = authcid.trim().to_ascii_lowercase();
        let ip = self.peer.ip();
        let random = || tls::random_u64().ok();
        let Some(nonce) = (|| {
            Some(format!(
                "{:016x}{:016x}{:016x}",
                random()?,
                random()?,
                random()?
            ))
        })() else {
            log!(
                "shard{} auth tempfail user={user} ip={ip} reason=no randomness",
                self.shard.index
            );
            return (None, String::new());
        };
        let secret = match self.shard.directory.get().await {
            Ok(dir) => dir.scram_secret(&user).await,
            Err(e) => Err(lookup::LookupError::Unavailable(e)),
        };
        let decoy = || {
            ScramCredentials::decoy(
                &user,
                scram_decoy_key(),
                smtp_proto::SCRAM_DEFAULT_ITERATIONS,
            )
        };
        let credentials = match secret {
            Ok(Some(column)) => ScramCredentials::parse(&column).unwrap_or_else(|e| {
                log!(
                    "shard{} auth scram secret of {user} unusable: {e}",
                    self.shard.index
                );
                decoy()
            }),
            Ok(None) => decoy(),
            Err(e) if e.is_temporary() => {
                log!(
                    "shard{} auth tempfail user={user} ip={ip} reason={e}",
                    self.shard.index
                );
                return (None, nonce);
            }
            // Not a user name the directory can hold: fails like an unknown user.
            Err(_) => decoy(),
        };
        (Some(credentials), nonce)
    }

    /// Verifies an AUTH exchange against the directory. The secret is never
    /// logged. Failures are delayed, more for IPs with many failures on this
    /// shard.
    async fn authenticate(
        &mut self,
        mechanism: &str,
        authcid: &str,
        secret: AuthSecret,
    ) -> AuthOutcome {
        let user = authcid.trim().to_ascii_lowercase();
        let ip = self.peer.ip();
        let dir = match self.shard.directory.get().await {
            Ok(d) => d,
            Err(e) => {
                log!(
                    "shard{} auth tempfail user={user} ip={ip} reason={e}",
                    self.shard.index
                );
                return AuthOutcome::TempFail;
            }
        };
        let verdict: Result<Option<Rc<lookup::User>>, lookup::LookupError> = match secret {
            AuthSecret::Password(pw) => match dir.check_password(&user, &pw).await {
                Ok(lookup::AuthResult::Ok(u)) => Ok(Some(u)),
                Ok(_) => Ok(None),
                Err(e) => Err(e),
            },
            // The core checked the proof against the secret from scram_lookup.
            AuthSecret::Scram { proof_valid: true } => {
                dir.user(&user).await.map(|u| u.filter(|u| u.active))
            }
            AuthSecret::Scram { proof_valid: false } => Ok(None),
            AuthSecret::CramResponse { challenge, digest } => match dir.cram_secret(&user).await {
                Ok(Some(clear))
                    if cram_md5_hex(&clear, &challenge).eq_ignore_ascii_case(digest.trim()) =>
                {
                    dir.user(&user).await.map(|u| u.filter(|u| u.active))
                }
                Ok(_) => Ok(None),
                Err(e) => Err(e),
            },
        };
        // User flags and domain limits (vlimit) decide what a valid login
        // may do: NO_SMTP / disable_smtp refuse it like a bad password
        // (IndiMail's vchkpass), NO_RELAY / disable_relay keep it local.
        let verdict = match verdict {
            Ok(Some(u)) => match smtp_permissions(&dir, &u).await {
                Ok(Some(relay)) => Ok(Some((u, relay))),
                Ok(None) => {
                    log!(
                        "shard{} auth refused user={} ip={ip} reason=no-smtp",
                        self.shard.index,
                        u.email()
                    );
                    Ok(None)
                }
                Err(e) => Err(e),
            },
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        match verdict {
            Ok(Some((u, may_relay))) => {
                let no_relay = !may_relay;
                if !no_relay {
                    self.relay = true;
                }
                self.auth_user = Some(u.email());
                self.shard.auth_failures.borrow_mut().remove(&ip);
                log!(
                    "shard{} auth ok user={} mech={mechanism} ip={ip} relay={}",
                    self.shard.index,
                    u.email(),
                    !no_relay
                );
                AuthOutcome::Ok
            }
            Ok(None) => {
                self.auth_failures += 1;
                let ip_failures = {
                    let mut m = self.shard.auth_failures.borrow_mut();
                    let n = m.entry(ip).or_insert(0);
                    *n = n.saturating_add(1);
                    *n
                };
                self.shard
                    .metrics
                    .inc(scheduler::metrics::Counter::AuthFailures);
                log!(
                    "shard{} auth failed user={user} mech={mechanism} ip={ip} failures={} ip_failures={ip_failures}",
                    self.shard.index,
                    self.auth_failures
                );
                // PENALTY-style delay: 1 s, growing with the IP's failures
                // on this shard up to 10 s. Only this session waits.
                let delay = std::time::Duration::from_millis(500 * u64::from(ip_failures.min(20)));
                tokio::time::sleep(delay).await;
                AuthOutcome::Failed
            }
            Err(e) => {
                log!(
                    "shard{} auth tempfail user={user} ip={ip} reason={e}",
                    self.shard.index
                );
                AuthOutcome::TempFail
            }
        }
    }

    /// The envelope recipients as queued: the bare `<postmaster>` of
    /// RFC 5321 4.1.1.3 becomes `postmaster@me`, so it is delivered here
    /// and never taken for a remote address.
    fn queue_recipients(&self) -> Vec<String> {
        self.session
            .envelope()
            .recipients
            .iter()
            .map(|r| match &r.path {
                smtp_proto::ForwardPath::Postmaster => format!("postmaster@{}", self.settings.me),
                p => p.to_string(),
            })
            .collect()
    }

    async fn begin_message(&mut self) {
        if let Some(w) = self.spool.take() {
            w.abort().await;
        }
        self.spool_failed = None;
        self.message_bytes = 0;
        self.pending_cr = false;
        self.txn.hops = smtp_proto::HopCounter::new();
        self.txn.scanner = self.settings.policy.body_scanner();
        if self.relay || self.txn.relay || self.auth_user.is_some() {
            // auth.envrules (AUTHRULES), at DATA for relay and
            // authenticated clients (spec 2.6).
            let env = self.settings.policy.auth_env();
            if !env.is_empty() {
                self.txn.apply_env(&env);
                log!(
                    "shard{} auth.envrules user={} set={}",
                    self.shard.index,
                    self.auth_user.as_deref().unwrap_or("-"),
                    env_text(&env)
                );
            }
        }
        let rules = std::sync::Arc::clone(&self.settings.msgproc);
        if self.txn.nullqueue || rules.nullqueue {
            // NULLQUEUE / blackholed at MAIL or RCPT: the client is told
            // "ok" and nothing touches the disk (spec 1.11).
            self.txn.nullqueue = true;
            return;
        }
        self.txn.headers = (!rules.headers.is_empty())
            .then(|| msgproc::HeaderProcessor::new(std::sync::Arc::clone(&rules.headers)));
        let dq = &self.settings.domain_queues;
        let target = dq.target(&self.txn.queue_env, self.shard.index);
        let mut w = scheduler::domainqueue::Spool::begin(&self.shard.queues, target);
        let mut received = self.txn.spf_header.clone().unwrap_or_default();
        received.push_str(&self.received_header());
        let rcpts = self.queue_recipients();
        if let (_, Some(q)) = rules.recipients(self.txn.quarantine.as_deref(), rcpts) {
            received.push_str(&q);
        }
        if crate::plugins::any(&rules) {
            // Message plugins: hold the message until its end, when the
            // headers they make (`Authentication-Results:`, `X-QHPSI:`)
            // go first.
            self.txn.held = Some(Vec::new());
            self.txn.held_prefix = received;
            self.spool = Some(w);
            return;
        }
        if let Err(e) = w.write(received.as_bytes()).await {
            self.spool_failed = Some(SpoolFailure::Queue(e));
        }
        self.spool = Some(w);
    }

    async fn spool_data(&mut self, chunk: &[u8]) {
        self.message_bytes += chunk.len() as u64;
        self.txn.hops.feed(chunk);
        if let Some(s) = self.txn.scanner.as_mut() {
            s.feed(chunk);
        }
        if self.spool_failed.is_some() {
            return;
        }
        if self
            .txn
            .databytes
            .is_some_and(|max| max > 0 && self.message_bytes > max)
        {
            // An envrules DATABYTES for this sender: stop storing; the
            // commit answers 552.
            self.spool_failed = Some(SpoolFailure::OverSenderLimit);
            return;
        }
        if let Some(held) = self.txn.held.as_mut() {
            held.extend_from_slice(chunk);
            return;
        }
        self.spool_write(chunk).await;
    }

    /// Writes a piece of the message (SMTP form) to the spool, through the
    /// header rules.
    async fn spool_write(&mut self, chunk: &[u8]) {
        if self.spool_failed.is_some() {
            return;
        }
        if let Some(w) = self.spool.as_mut() {
            self.scratch.clear();
            to_queue_form(chunk, &mut self.pending_cr, &mut self.scratch);
            let data = match self.txn.headers.as_mut() {
                Some(h) if !h.in_body() => {
                    self.txn.header_out.clear();
                    h.feed(&self.scratch, &mut self.txn.header_out);
                    &self.txn.header_out
                }
                _ => &self.scratch,
            };
            if let Err(e) = w.write(data).await {
                self.spool_failed = Some(SpoolFailure::Queue(e));
            }
        }
    }

    /// The message plugins (`crate::plugins`: DKIM verification, clamd,
    /// spam filter, external filter) on the held message; then its header
    /// lines, the trace lines and the (possibly replaced) message go to
    /// the spool. A refusal is returned. The message is held in memory
    /// because the checks need all of it and the headers they yield go
    /// first: up to `databytes` per message being received, on top of
    /// what the spool buffers.
    async fn release_held(&mut self) -> Option<Reply> {
        let mut held = self.txn.held.take()?;
        if self.spool_failed.is_some() {
            return None;
        }
        let rules = std::sync::Arc::clone(&self.settings.msgproc);
        let recipients = self.queue_recipients();
        let spf = self.txn.spf_result.clone();
        let max_output = match self.txn.databytes.filter(|d| *d > 0) {
            Some(d) => d as usize + 64 * 1024,
            None => held.len().saturating_mul(4).max(1 << 20),
        };
        let mut prefix = String::new();
        for plugin in crate::plugins::builtins(&rules) {
            let cx = crate::plugins::Context {
                shard: self.shard.index,
                me: &self.settings.me,
                dns: &self.shard.dns,
                sender: &self.txn.sender,
                recipients: &recipients,
                ip: self.peer.ip(),
                relay: self.relay || self.txn.relay || self.auth_user.is_some(),
                spf: spf.as_ref().map(|(r, f)| (r.as_str(), f.as_str())),
                max_output,
            };
            match plugin.check(&cx, &held).await {
                crate::plugins::Verdict::Pass { header, message } => {
                    prefix.push_str(&header);
                    if let Some(m) = message {
                        held = m;
                    }
                }
                crate::plugins::Verdict::Reject(r) => {
                    log!(
                        "shard{} {} refused msg from=<{}> ip={}",
                        self.shard.index,
                        plugin.name(),
                        self.txn.sender,
                        self.peer.ip()
                    );
                    return Some(r);
                }
                crate::plugins::Verdict::Discard => {
                    // Blackholed: nothing more is written.
                    self.txn.nullqueue = true;
                    return None;
                }
                crate::plugins::Verdict::Quarantine { address, header } => {
                    prefix.push_str(&header);
                    // The X-Quarantine-ID line written at DATA (if a
                    // quarantine was already in force) names the old
                    // address; this one is the one in force.
                    if let (_, Some(q)) = rules.recipients(Some(&address), recipients.clone()) {
                        prefix.push_str(&q);
                    }
                    self.txn.quarantine = Some(address);
                }
            }
        }
        prefix.push_str(&std::mem::take(&mut self.txn.held_prefix));
        if let Some(w) = self.spool.as_mut() {
            if let Err(e) = w.write(prefix.as_bytes()).await {
                self.spool_failed = Some(SpoolFailure::Queue(e));
            }
        }
        for piece in held.chunks(64 * 1024) {
            self.spool_write(piece).await;
        }
        None
    }

    fn received_header(&self) -> String {
        let env = self.session.envelope();
        let helo = env.helo.as_deref().unwrap_or("unknown");
        let ip = self.peer.ip();
        let for_clause = match env.recipients.as_slice() {
            [one] => format!("\n\tfor <{}>", one.path),
            _ => String::new(),
        };
        let auth = match &self.auth_user {
            Some(u) => format!(" (AUTH: {u})"),
            None => String::new(),
        };
        format!(
            "Received: from {helo} ([{ip}]){auth} by {} (indimail-rs) with {}{for_clause};\n\t{}\n",
            self.settings.me,
            self.session.protocol(),
            delivery::bounce::rfc5322_date_of(SystemTime::now())
        )
    }

    async fn commit(&mut self) {
        if self.txn.nullqueue && self.spool.is_none() {
            log!(
                "shard{} blackholed msg from=<{}> ip={} (nothing stored)",
                self.shard.index,
                self.txn.sender,
                self.peer.ip()
            );
            self.session.message_committed(Ok("blackholed".into()));
            return;
        }
        if let Some(r) = self.release_held().await {
            if let Some(w) = self.spool.take() {
                w.abort().await;
            }
            self.session.message_committed(Err(r));
            return;
        }
        let Some(mut w) = self.spool.take() else {
            let r = Reply::new(451, Some((4, 3, 0)), "internal error: no spool for message");
            self.session.message_committed(Err(r));
            return;
        };
        // A CR at the very end of the data was not followed by LF; what the
        // header rules still hold is written too.
        let tail: &[u8] = if std::mem::take(&mut self.pending_cr) {
            b"\r"
        } else {
            b""
        };
        let mut found = None;
        let mut out = std::mem::take(&mut self.txn.header_out);
        out.clear();
        match self.txn.headers.as_mut() {
            Some(h) => {
                h.feed(tail, &mut out);
                found = Some(h.finish(&mut out));
            }
            None => out.extend_from_slice(tail),
        }
        if !out.is_empty() && self.spool_failed.is_none() {
            if let Err(e) = w.write(&out).await {
                self.spool_failed = Some(SpoolFailure::Queue(e));
            }
        }
        if let Some(failure) = self.spool_failed.take() {
            w.abort().await;
            match &failure {
                SpoolFailure::OverSenderLimit => log!(
                    "shard{} message too big for sender <{}> (envrules DATABYTES)",
                    self.shard.index,
                    self.txn.sender
                ),
                SpoolFailure::Queue(e) => log!(
                    "shard{} smtp spool failed ip={} reason={e}",
                    self.shard.index,
                    self.peer.ip()
                ),
            }
            self.session.message_committed(Err(failure.reply()));
            return;
        }
        if self.txn.hops.looping() {
            w.abort().await;
            log!(
                "shard{} refused looping msg from=<{}> ip={} hops={}",
                self.shard.index,
                self.txn.sender,
                self.peer.ip(),
                self.txn.hops.hops()
            );
            let r = Reply::new(
                554,
                Some((5, 4, 6)),
                "too many hops, this message is looping",
            );
            self.session.message_committed(Err(r));
            return;
        }
        if let Some(mut scanner) = self.txn.scanner.take() {
            let mut txn = std::mem::take(&mut self.txn);
            let d = self.verdict(scanner.finish(), &mut txn, "message body");
            self.txn = txn;
            if let Decision::Reject(r) = d {
                w.abort().await;
                self.session.message_committed(Err(r));
                return;
            }
        }
        if self.txn.nullqueue {
            // Blackholed: the client is told "ok", nothing is stored.
            w.abort().await;
            log!(
                "shard{} blackholed msg from=<{}> ip={}",
                self.shard.index,
                self.txn.sender,
                self.peer.ip()
            );
            self.session.message_committed(Ok("blackholed".into()));
            return;
        }
        let env = self.session.envelope();
        let sender = env
            .reverse_path
            .as_ref()
            .map_or(String::new(), |p| p.to_string());
        let recipients = self.queue_recipients();
        let helo = env.helo.clone().unwrap_or_default();
        // quarantine replaces the recipients, extraqueue adds some.
        let (recipients, _) = self
            .settings
            .msgproc
            .recipients(self.txn.quarantine.as_deref(), recipients);
        let mut envelope = queue_store::Envelope::new(sender.clone(), recipients);
        envelope.client_ip = Some(self.peer.ip());
        envelope.helo = helo;
        envelope.auth_user = self.auth_user.clone();
        let found = found.unwrap_or_default();
        // envheaders travel with the envelope; delivery exports them.
        envelope.extra.extend(found.env.iter().map(|(k, v)| {
            (
                msgproc::headers::ENVELOPE_KEY.to_string(),
                format!("{k}={v}"),
            )
        }));
        let rcpt_count = envelope.recipients.len();
        match w.commit(envelope, &found.logged).await {
            Ok(scheduler::domainqueue::Stored::Routed { queue, name }) => {
                // The importing shard logs `new msg` and the headers.
                self.shard.queues.wake_owner(queue);
                self.shard
                    .metrics
                    .inc(scheduler::metrics::Counter::Accepted);
                log!(
                    "shard{} routed msg to queue{queue} drop={name} bytes={} from=<{sender}> rcpts={rcpt_count} ip={} (domainqueue)",
                    self.shard.index,
                    self.message_bytes,
                    self.peer.ip()
                );
                self.session
                    .message_committed(Ok(format!("queue{queue} {name}")));
            }
            Ok(scheduler::domainqueue::Stored::Queued(id)) => {
                self.shard
                    .metrics
                    .inc(scheduler::metrics::Counter::Accepted);
                log!(
                    "shard{} new msg {id} bytes={} from=<{sender}> rcpts={} ip={}",
                    self.shard.index,
                    self.message_bytes,
                    rcpt_count,
                    self.peer.ip()
                );
                if !found.logged.is_empty() {
                    log!(
                        "shard{} headers msg {id} {}",
                        self.shard.index,
                        found.logged.join(" | ").replace(['\n', '\r'], " ")
                    );
                }
                self.session.message_committed(Ok(id.to_string()));
            }
            Err(e) => {
                log!(
                    "shard{} smtp commit failed ip={} reason={e}",
                    self.shard.index,
                    self.peer.ip()
                );
                self.session
                    .message_committed(Err(SpoolFailure::Queue(e).reply()));
            }
        }
    }
}

/// Converts message bytes from SMTP form (CRLF line ends) to queue form
/// (LF, as qmail stores messages and Maildir readers expect). A CR is
/// dropped only when an LF follows it, also across chunk boundaries
/// (`pending_cr`); any other CR (possible in BDAT data) is kept.
pub fn to_queue_form(chunk: &[u8], pending_cr: &mut bool, out: &mut Vec<u8>) {
    if chunk.is_empty() {
        return;
    }
    out.reserve(chunk.len() + 1);
    let mut rest = chunk;
    if std::mem::take(pending_cr) && rest.first() != Some(&b'\n') {
        out.push(b'\r');
    }
    while let Some(p) = memchr::memchr(b'\r', rest) {
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

/// CRAM-MD5 (RFC 2195): hex HMAC-MD5 of the challenge keyed by the
/// clear-text secret.
fn cram_md5_hex(secret: &str, challenge: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<md5::Md5> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(challenge.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// This process's key for SCRAM decoys ([`ScramCredentials::decoy`]): the
/// salt shown for an unknown user stays the same while the server runs, as a
/// real user's would.
fn scram_decoy_key() -> &'static [u8] {
    static KEY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        (0..4)
            .flat_map(|i| {
                tls::random_u64()
                    .unwrap_or_else(|_| {
                        u64::from(std::process::id()) ^ scheduler::deliver::unix_now() ^ i
                    })
                    .to_le_bytes()
            })
            .collect()
    })
}

/// `"5.1.1"` → `(5, 1, 1)`.
pub(crate) fn parse_enhanced(s: &str) -> Option<(u8, u16, u16)> {
    let mut it = s.split('.');
    Some((
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    ))
}

/// Why a message could not be stored; answered at the end of DATA.
#[derive(Debug)]
enum SpoolFailure {
    /// Over the DATABYTES an envrules line set for this sender.
    OverSenderLimit,
    /// The queue refused (full disk, failed flush, sealed segment, an
    /// envelope too large...): its own reply class says temporary or not.
    Queue(queue_store::QueueError),
}

impl SpoolFailure {
    /// The one place a storing failure becomes an SMTP reply.
    fn reply(&self) -> Reply {
        match self {
            SpoolFailure::OverSenderLimit => Reply::new(
                552,
                Some((5, 3, 4)),
                "sorry, that message size exceeds my databytes limit",
            ),
            SpoolFailure::Queue(e) => {
                let (code, enhanced) = e.smtp_reply();
                let text = match code {
                    452 => "insufficient system storage, message not queued; try later",
                    451 => "local error in processing, message not queued; try later",
                    552 => "envelope too large for the queue",
                    _ => "message not queued",
                };
                Reply::new(code, parse_enhanced(enhanced), text)
            }
        }
    }
}

/// The parts of an [`Event`] the driver needs after the input buffer is
/// released (events borrow the input).
enum OwnedEvent {
    Mail {
        sender: String,
    },
    Auth {
        mechanism: String,
        authcid: String,
        secret: AuthSecret,
    },
    ScramLookup {
        authcid: String,
    },
    Rcpt {
        domain: Option<String>,
        address: Option<String>,
    },
    DataStart,
    MessageEnd,
    MessageAborted,
    Etrn {
        node: smtp_proto::EtrnNode,
    },
    Atrn {
        domains: Vec<String>,
    },
}

impl From<Event<'_>> for OwnedEvent {
    fn from(e: Event<'_>) -> OwnedEvent {
        match e {
            Event::Mail { from, .. } => OwnedEvent::Mail {
                sender: from.to_string(),
            },
            Event::Auth {
                mechanism,
                authcid,
                secret,
                ..
            } => OwnedEvent::Auth {
                mechanism: mechanism.name().to_string(),
                authcid,
                secret,
            },
            Event::ScramLookup { authcid, .. } => OwnedEvent::ScramLookup { authcid },
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
            Event::Etrn { node } => OwnedEvent::Etrn { node },
            Event::Atrn { domains } => OwnedEvent::Atrn { domains },
            Event::NeedMore | Event::Close | Event::Data(_) | Event::StartTls | Event::Turn => {
                unreachable!("handled by the caller")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{to_queue_form, SpoolFailure};
    use queue_store::QueueError;

    #[test]
    fn storing_failures_keep_their_reply_class() {
        let r = SpoolFailure::Queue(QueueError::EnvelopeTooLarge).reply();
        assert_eq!(
            (r.code(), r.to_string().contains("5.3.4")),
            (552, true),
            "{r}"
        );
        let r = SpoolFailure::Queue(QueueError::NoRecipients).reply();
        assert_eq!(r.code(), 554);
        let r = SpoolFailure::OverSenderLimit.reply();
        assert_eq!(r.code(), 552);
        let io = QueueError::Corrupt {
            path: "seg".into(),
            offset: 0,
            reason: "torn",
        };
        assert_eq!(SpoolFailure::Queue(io).reply().code() / 100, 4);
    }

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

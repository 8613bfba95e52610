//! The SMTP state of one shard that its connections share: the settings in force
//! (swapped whole on reload), connection counts, rate limiters, greylisting,
//! the turn hub and the protocol-core settings per service.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use smtp_proto::SessionConfig;

use crate::greylisting::Greylisting;
use crate::service::Service;
use crate::settings::SmtpSettings;
use control::log;
use scheduler::metrics::ShardMetrics;
use scheduler::queues::ShardQueues;

/// The settings a connection runs with: taken whole when it starts, so a
/// reload never changes a session midway.
pub struct Generation {
    pub(crate) settings: Rc<SmtpSettings>,
    /// Protocol settings per service (smtp, submission, smtps, odmr).
    protos: [Rc<SessionConfig>; 4],
}

impl Generation {
    /// The protocol-core settings of `service`.
    pub(crate) fn proto(&self, service: Service) -> &Rc<SessionConfig> {
        match service {
            Service::Submission => &self.protos[1],
            Service::Smtps => &self.protos[2],
            Service::Odmr => &self.protos[3],
            _ => &self.protos[0],
        }
    }
}

/// Per-shard state shared by the shard's SMTP connections (single thread).
pub struct SmtpShard {
    /// Current settings; replaced whole by [`SmtpShard::reload`].
    pub(crate) current: RefCell<Rc<Generation>>,
    /// The server certificate, reloaded when its files change.
    pub(crate) certs: Option<Rc<tls::CertStore>>,
    /// Failed AUTH attempts per client IP on this shard: later attempts from
    /// an IP with many failures are answered more slowly.
    pub(crate) auth_failures: RefCell<HashMap<IpAddr, u32>>,
    /// The queues this shard owns.
    pub queues: Rc<ShardQueues>,
    /// Counters.
    pub metrics: std::sync::Arc<ShardMetrics>,
    /// Shard index, for logs.
    pub index: usize,
    /// This shard's connections open now.
    pub(crate) connections: Cell<u32>,
    /// Every shard's connections open now: `maxdaemons` counts for the
    /// whole server. One atomic add and subtract per connection, shared by
    /// the shards: a share per shard refused one busy client address (all
    /// its connections land on its home shard) at maxdaemons/shards.
    pub(crate) server_connections: Arc<AtomicU32>,
    pub(crate) per_ip: RefCell<HashMap<IpAddr, u32>>,
    /// The user directory, for CHECKRECIPIENT.
    pub directory: Rc<scheduler::directory::DirectoryHandle>,
    /// Greylisting, when enabled (see [`Greylisting`]).
    pub(crate) greylisting: RefCell<Option<Greylisting>>,
    /// Every shard's turn channel, for ETRN and ATRN (see [`scheduler::turn`]).
    pub(crate) turn: RefCell<Option<scheduler::turn::TurnHub>>,
    /// RCPT and message rates per client address and per user (`rcptrate`,
    /// `msgrate`, `authrcptrate`, `authmsgrate`), counted on this shard for
    /// the clients and users it is home to.
    pub(crate) rates: RefCell<policy::rate::RateLimits>,
    /// Reaches the home shards of users (several shards).
    pub(crate) user_rates: RefCell<Option<Rc<crate::userrates::UserRateRouter>>>,
    /// DNSBL and SPF lookups.
    pub(crate) dns: crate::dnscheck::DnsChecks,
}

/// Most client addresses / users a shard's rate limiter remembers.
const RATE_KEYS: usize = 100_000;

fn rate_limits(r: &crate::settings::Rates) -> policy::rate::RateLimits {
    policy::rate::RateLimits::new(
        r.rcpt_per_ip,
        r.msg_per_ip,
        r.rcpt_per_user,
        r.msg_per_user,
        RATE_KEYS,
    )
}

impl SmtpShard {
    /// State for one shard.
    pub fn new(
        settings: Rc<SmtpSettings>,
        queues: Rc<ShardQueues>,
        metrics: std::sync::Arc<ShardMetrics>,
        (index, server_connections): (usize, Arc<AtomicU32>),
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
            connections: Cell::new(0),
            server_connections,
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
    /// `maxdaemons`: connections of the whole server, every shard's.
    pub(crate) fn connection_limit(&self, settings: &SmtpSettings) -> u32 {
        settings.max_connections
    }

    /// Connections open on every shard now.
    pub(crate) fn server_connections(&self) -> u32 {
        self.server_connections.load(Ordering::Relaxed)
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

/// Answers the other shards' checks for the users this shard is home to
/// (see [`crate::userrates`]).
pub async fn answer_user_rate_questions(
    smtp: Rc<SmtpShard>,
    mut questions: shard::MeshReceiver<crate::userrates::UserRateQuestion>,
) {
    while let Some(q) = questions.recv().await {
        let d = crate::userrates::check_here(smtp.rates(), &q.user, q.message);
        let _ = q.reply.send(d);
    }
}

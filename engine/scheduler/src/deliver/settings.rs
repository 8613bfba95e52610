//! The delivery settings a shard reads from control files (and reloads).

use delivery::bounce::BounceConfig;
use delivery::local::LocalConfig;
use delivery::schedule::{ConcurrencyLimits, RetryPolicy};

use control::{ControlDir, DomainList};
use queue_layout::QueueSpec;

/// Why the delivery settings cannot be read; the text names file (or variable) and line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// A control file, or a numeric variable, is unreadable or malformed.
    #[error("{0}")]
    Control(#[from] control::ControlError),
    /// `concurrency*` files with bad values (every one is listed).
    #[error("{}", join(.0))]
    Limits(Vec<delivery::schedule::ConfigError>),
    /// A quota variable that is not a number or percentage.
    #[error("{0}")]
    Quota(#[from] delivery::maildir::QuotaSettingError),
    /// `MAILDIR_SYNC` names no mode.
    #[error("{0}")]
    MaildirSync(#[from] delivery::maildir::SyncSettingError),
    /// `SMTPROUTE` has bad lines (every one is listed).
    #[error("{}", join(.0))]
    SmtpRoute(Vec<delivery::routes::RouteError>),
}

fn join<E: std::fmt::Display>(errors: &[E]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Settings of delivery read from control files.
pub struct DeliverySettings {
    /// `locals`: domains delivered locally besides virtual domains.
    pub locals: DomainList,
    /// Domains of `virtualdomains` (left of `:`).
    pub virtualdomains: DomainList,
    /// Local delivery settings.
    pub local: LocalConfig,
    /// Retry schedule and lifetimes.
    pub retry: RetryPolicy,
    /// Bounce settings.
    pub bounce: BounceConfig,
    /// Concurrency limits.
    pub limits: ConcurrencyLimits,
    /// `SMTPROUTE`: a route (smtproutes syntax) that beats `smtproutes`.
    pub smtproute: Option<delivery::routes::SmtpRoutes>,
    /// `control/hostid`: this host's id in `host_table`. When set, the
    /// directory's placement (hostcntrl → host_table → smtp_port) decides
    /// whether a virtual user's mail is delivered here or relayed by SMTP to
    /// the user's mailstore (IndiMail's dynamic SMTPROUTE, `ROUTES=smtp`).
    pub hostid: Option<String>,
    /// DKIM signing of remote mail per `From:` domain (`DKIMSIGN`, default
    /// `control/domainkeys/%/default`; `DKIMSIGN=` empty turns it off).
    pub dkim: Option<msgproc::dkim::Signer>,
    /// `ELIMINATE_DUPS`: the duplicate eliminator's window in seconds
    /// (`ELIMINATE_DUPS_INT`, default 900), `None` when off.
    pub dups_window: Option<u64>,
    /// The vacation autoresponder's interval: one reply per sender per
    /// this many seconds (`AUTORESPONDER_INTERVAL`, default a week).
    pub autoreply_interval: u64,
    /// The host postmaster's home (`HOME/alias`, qmail's alias user): mail
    /// to `postmaster` of a local domain with no mailbox of its own is
    /// delivered by `.qmail-postmaster` there, else to its `Maildir/`.
    /// `None` (tools that never deliver): no such fallback.
    pub postmaster_home: Option<std::path::PathBuf>,
    /// `QMAIL_EXT`: `user-ext@domain` is delivered as `user`'s (its
    /// `.qmail-ext` file, else its mailbox); see [`control::env::qmail_ext`].
    pub qmail_ext: bool,
}

impl DeliverySettings {
    /// Reads the control files; errors name file and line.
    pub fn load(
        control: &ControlDir,
        me: &str,
        queues: &[QueueSpec],
    ) -> Result<DeliverySettings, SettingsError> {
        let list = |n: &str| control.list(n);
        let mut locals = list("locals")?;
        if locals.is_empty() {
            locals = vec![me.to_string(), "localhost".to_string()];
        }
        let virtualdomains = list("virtualdomains")?
            .into_iter()
            .filter_map(|l| l.split_once(':').map(|(d, _)| d.to_string()))
            .filter(|d| !d.is_empty() && !d.contains('@'))
            .collect::<Vec<_>>();
        let num = |n: &str, d: u64| control.number(n, d);
        // qmail's schedule by default; `chanskiplocal`/`chanskipremote`
        // change the spacing (attempt k at about birth + (k * chanskip)^2).
        let retry = RetryPolicy {
            chanskip_local: num("chanskiplocal", 10)?.max(1),
            chanskip_remote: num("chanskipremote", 20)?.max(1),
            queuelifetime: num("queuelifetime", 604_800)?,
            bouncelifetime: num("bouncelifetime", 604_800)?,
        };
        let mut bounce = BounceConfig::new(me);
        if let Some(h) = control.string("bouncehost")? {
            bounce.bouncehost = h;
        }
        if let Some(f) = control.string("bouncefrom")? {
            bounce.bouncefrom = f;
        }
        if let Some(t) = control.string("doublebounceto")? {
            bounce.doublebounceto = t;
        }
        bounce.bouncemaxbytes = num("bouncemaxbytes", 50_000)? as usize;
        let names: Vec<String> = queues
            .iter()
            .map(|q| format!("queue{}", q.number))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let limits =
            ConcurrencyLimits::load(control.path(), &refs).map_err(SettingsError::Limits)?;
        let env = |n: &str| std::env::var(n).ok();
        let quota =
            delivery::maildir::QuotaPolicy::from_env(&env, control.file("holdoverquota").exists())?;
        let local = LocalConfig {
            hostname: me.to_string(),
            qmaillocal: std::env::var_os("QMAILLOCAL").map(Into::into),
            quota,
            maildir_sync: delivery::maildir::SyncMode::from_env(&env)?,
            ..LocalConfig::default()
        };
        let smtproute = match std::env::var("SMTPROUTE") {
            Ok(v) if !v.trim().is_empty() => Some(
                delivery::routes::SmtpRoutes::parse("$SMTPROUTE", &v.replace(';', "\n"))
                    .map_err(SettingsError::SmtpRoute)?,
            ),
            _ => None,
        };
        let hostid = control.string("hostid")?;
        let env = |n: &str| std::env::var(n).ok();
        let dkim = match std::env::var("DKIMSIGN") {
            Ok(v) if v.trim().is_empty() => None,
            _ => Some(msgproc::dkim::Signer::from_env(control.path(), &env)),
        };
        let dups_window = match std::env::var_os("ELIMINATE_DUPS") {
            None => None,
            Some(_) => Some(control::env::env_number(
                "ELIMINATE_DUPS_INT",
                msgproc::dups::DEFAULT_WINDOW,
            )?),
        };
        let autoreply_interval = control::env::env_number(
            "AUTORESPONDER_INTERVAL",
            msgproc::autoreply::DEFAULT_INTERVAL,
        )?;
        Ok(DeliverySettings {
            postmaster_home: None,
            qmail_ext: control::env::qmail_ext(),
            autoreply_interval,
            dkim,
            dups_window,
            smtproute,
            hostid,
            locals: DomainList::new(locals),
            virtualdomains: DomainList::new(virtualdomains),
            local,
            retry,
            bounce,
            limits,
        })
    }
}

//! The SMTP server's settings ([`SmtpSettings`]), read once from the control files and
//! IndiMail's variables at start-up and on reload. Every bad value is reported at load, as a
//! [`ControlError`] naming the file and line; a server never starts on half a configuration.
//!
//! | file | meaning | default |
//! |---|---|---|
//! | `me` | this host's name | the system host name |
//! | `smtpgreeting` | text of the 220 greeting | `<me> ESMTP` |
//! | `rcpthosts`, `morercpthosts` (or `morercpthosts.cdb`) | domains we accept mail for | none (only relay clients may send) |
//! | `databytes` | maximum message size, 0 = unlimited | 0 |
//! | `timeoutsmtpd`, `timeoutstress`, `mindatarate` | command and transfer deadlines | 1200, 10, 500 |
//! | `maxrecipients`, `maxperip`, `maxdaemons` | recipients per message, connections per IP and in all | 100, 20, 1000 |
//! | `rcptrate`, `msgrate`, `authrcptrate`, `authmsgrate` | rates per minute | 0 = unlimited |
//! | `dnsbllist`, `spfbehavior`, `spfrules`, `spfguess`, `spfexp` | DNSBL zones and SPF | none, 0 (off) |
//! | `etrnhosts`, `atrnaccess`, `smtproutes`, `domainqueue` | turning, routes, queue per domain | none |
//!
//! The full list, with the variables that override each file, is in the binary's `config`
//! module documentation.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use control::env::{env_number, qmail_ext, system_hostname, var_or_control};
use control::{ControlDir, ControlError, DomainList};
use queue_layout::Paths;

use crate::clientchecks::ClientChecks;
use crate::tcprules::TcpRules;

/// Everything the SMTP listeners need, read once at start-up.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    /// `me`.
    pub me: String,
    /// `smtpgreeting`.
    pub greeting: String,
    /// `rcpthosts` + `morercpthosts`.
    pub rcpthosts: DomainList,
    /// `databytes` / `DATABYTES`; 0 = unlimited.
    pub databytes: u64,
    /// `timeoutsmtpd`: deadline of each command line (not of each read).
    pub timeout: Duration,
    /// `timeoutstress`: the deadline while the server is under stress.
    pub stress_timeout: Duration,
    /// `mindatarate`: bytes per second a message transfer must keep.
    pub min_data_rate: u64,
    /// `maxrecipients` / `MAXRECIPIENTS`; 0 = the protocol default (100).
    pub max_recipients: usize,
    /// `maxperip` / `MAXPERIP`: connections per client IP (server-wide).
    pub max_per_ip: u32,
    /// `maxdaemons` / `MAXDAEMONS`: connections of the whole server.
    pub max_connections: u32,
    /// `RELAYCLIENT` in the server's own environment: every client may relay.
    pub relay_everyone: bool,
    /// Access rules by client IP.
    pub rules: TcpRules,
    /// `CHECKRECIPIENT`: refuse unknown or inactive users of virtual
    /// domains at RCPT, asking the directory and/or `control/recipients`
    /// (default 1, the directory; `CHECKRECIPIENT=0` turns it off).
    pub check_recipient: RecipientCheck,
    /// `QMAIL_EXT`: CHECKRECIPIENT accepts `user-ext@domain` of existing
    /// users (see [`control::env::qmail_ext`]).
    pub qmail_ext: bool,
    /// `MAX_AUTH_FAILURES`: failed AUTH attempts before the connection is
    /// closed (default 3; a value that is not a number is a load error).
    pub max_auth_failures: u32,
    /// `CHECKRELAY` (default on; `0` off): POP/IMAP-before-SMTP.
    pub check_relay: bool,
    /// `SKIPDNSBL` set: no DNSBL question for any client.
    pub skip_dnsbl: bool,
    /// `MASQUERADE` set: submission clients may use any envelope sender.
    pub masquerade: bool,
    /// Rate limits per minute (0 = none): RCPTs and messages per client
    /// address, RCPTs and messages per authenticated user.
    pub rates: Rates,
    /// `dnsbllist`: DNSBL zones asked about each client (port 25 service).
    pub dnsbl_zones: Vec<String>,
    /// `spfbehavior` / `SPFBEHAVIOR`.
    pub spf: policy::spf::SpfBehavior,
    /// `spfrules`, `spfguess`, `spfexp` (and their variables).
    pub spf_local: Arc<policy::spf::SpfLocal>,
    /// IndiMail's access controls (badmailfrom, badrcptto, accesslist,
    /// hostaccess, envrules, bodycheck, badip, ...), see the `policy` crate.
    pub policy: Arc<policy::Policy>,
    /// `etrnhosts` and `atrnaccess`: ETRN / ATRN (see [`scheduler::turn`]).
    pub turn: Arc<scheduler::turn::TurnConfig>,
    /// `greetdelay`, `REQPTR`, tarpitting, `MAX_RCPT_ERRCOUNT`, `PENALTY`
    /// (see [`crate::clientchecks`]).
    pub client_checks: ClientChecks,
    /// `smtproutes`, read with the rest so that one reload covers it
    /// (remote delivery's table; see `delivery::routes`).
    pub smtproutes: Arc<delivery::routes::SmtpRoutes>,
    /// Queue-time message processing: `removeheaders`, `envheaders`,
    /// `logheaders`, `quarantine`, `extraqueue`, `NULLQUEUE` (see `msgproc`).
    pub msgproc: Arc<msgproc::QueueRules>,
    /// `domainqueue`: the queue a recipient domain's mail goes to, checked
    /// against the queues served (see [`scheduler::domainqueue`]).
    pub domain_queues: Arc<scheduler::domainqueue::DomainQueues>,
}

/// Rate limits per minute; 0 = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rates {
    /// `rcptrate` / `RCPTRATE`.
    pub rcpt_per_ip: u32,
    /// `msgrate` / `MSGRATE`.
    pub msg_per_ip: u32,
    /// `authrcptrate` / `AUTHRCPTRATE`.
    pub rcpt_per_user: u32,
    /// `authmsgrate` / `AUTHMSGRATE`.
    pub msg_per_user: u32,
}

/// The CHECKRECIPIENT mode in force for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipientCheck {
    /// `0`: no check.
    Off,
    /// `1`: the directory.
    Directory,
    /// `2`: `recipients`, then the directory.
    RecipientsThenDirectory,
    /// `3`: `recipients` only.
    Recipients,
}

impl RecipientCheck {
    /// The mode a CHECKRECIPIENT value selects (`None`: the variable is unset).
    pub fn from_var(v: Option<&str>) -> RecipientCheck {
        match v.map(str::trim) {
            None => RecipientCheck::Directory,
            Some("" | "0") => RecipientCheck::Off,
            Some("2") => RecipientCheck::RecipientsThenDirectory,
            Some("3") => RecipientCheck::Recipients,
            Some(_) => RecipientCheck::Directory,
        }
    }
}

/// Keeps the value of `r`, or records its error and gives `None`.
fn take<T>(errors: &mut Vec<ControlError>, r: Result<T, ControlError>) -> Option<T> {
    r.map_err(|e| errors.push(e)).ok()
}

impl SmtpSettings {
    /// Reads every SMTP control file and variable, reporting all problems at once.
    /// `cpus_arg` (`serve --cpus`) decides the default queue count `domainqueue` is
    /// checked against.
    pub fn load(paths: &Paths, cpus_arg: Option<&str>) -> Result<SmtpSettings, Vec<ControlError>> {
        let mut errors = Vec::new();
        let c = &paths.control;
        let me = take(&mut errors, c.string("me"))
            .flatten()
            .unwrap_or_else(system_hostname);
        let greeting = take(&mut errors, c.string("smtpgreeting"))
            .flatten()
            .unwrap_or_else(|| format!("{me} ESMTP"));
        let mut hosts = take(&mut errors, c.list("rcpthosts")).unwrap_or_default();
        hosts.extend(take(&mut errors, c.list_or_cdb("morercpthosts")).unwrap_or_default());
        let limits = Limits::load(c, &mut errors);
        let dnsbl_zones = load_dnsbl_zones(c, &mut errors);
        let (spf, spf_local) = load_spf(c, &mut errors);
        let client_checks = ClientChecks::load(c, &mut errors);
        let smtproutes = load_smtproutes(c, &mut errors);
        let rules = load_tcp_rules(&paths.tcp_rules(), &mut errors);
        let turn = match scheduler::turn::TurnConfig::load(c) {
            Ok(t) => Arc::new(t),
            Err(mut e) => {
                errors.append(&mut e);
                Default::default()
            }
        };
        let (policy, msgproc) = load_policy(c, &mut errors);
        // Layout errors are reported by `serve` and `config check` apart.
        let layout = paths.layout(cpus_arg).ok().map(|mut l| {
            l.adopt_existing();
            l
        });
        let domain_queues = match &policy {
            Some(p) => match scheduler::domainqueue::DomainQueues::load(p, layout.as_ref()) {
                Ok(d) => Arc::new(d),
                Err(mut e) => {
                    errors.append(&mut e);
                    Default::default()
                }
            },
            None => Default::default(),
        };
        let Some(policy) = policy.filter(|_| errors.is_empty()) else {
            return Err(errors);
        };
        Ok(SmtpSettings {
            me,
            greeting,
            rcpthosts: DomainList::new(hosts),
            databytes: limits.databytes,
            timeout: Duration::from_secs(limits.timeout),
            stress_timeout: Duration::from_secs(
                limits.stress_timeout.clamp(1, limits.timeout.max(1)),
            ),
            min_data_rate: limits.min_data_rate.max(1),
            max_recipients: if limits.max_recipients == 0 {
                100
            } else {
                limits.max_recipients
            },
            max_per_ip: limits.max_per_ip,
            max_connections: limits.max_connections,
            relay_everyone: std::env::var_os("RELAYCLIENT").is_some(),
            rules,
            check_recipient: RecipientCheck::from_var(
                std::env::var("CHECKRECIPIENT").ok().as_deref(),
            ),
            qmail_ext: qmail_ext(),
            max_auth_failures: limits.max_auth_failures,
            check_relay: std::env::var("CHECKRELAY").map_or(true, |v| v.trim() != "0"),
            skip_dnsbl: std::env::var_os("SKIPDNSBL").is_some(),
            masquerade: std::env::var_os("MASQUERADE").is_some(),
            rates: limits.rates,
            dnsbl_zones,
            spf,
            policy,
            turn,
            msgproc,
            domain_queues,
            smtproutes: Arc::new(smtproutes),
            client_checks,
            spf_local: Arc::new(spf_local),
        })
    }
}

/// The numeric settings, as read (defaults applied, not yet clamped).
struct Limits {
    databytes: u64,
    timeout: u64,
    stress_timeout: u64,
    min_data_rate: u64,
    max_auth_failures: u32,
    max_recipients: usize,
    max_per_ip: u32,
    max_connections: u32,
    rates: Rates,
}

impl Limits {
    fn load(c: &ControlDir, errors: &mut Vec<ControlError>) -> Limits {
        let databytes =
            take(errors, var_or_control(c, "DATABYTES", "databytes", 0u64)).unwrap_or(0);
        let timeout = take(errors, c.number("timeoutsmtpd", 1200u64)).unwrap_or(1200);
        let max_auth_failures = take(errors, env_number("MAX_AUTH_FAILURES", 3u32)).unwrap_or(3);
        let stress_timeout = take(errors, c.number("timeoutstress", 10u64)).unwrap_or(10);
        let min_data_rate = take(errors, c.number("mindatarate", 500u64)).unwrap_or(500);
        let max_recipients = take(
            errors,
            var_or_control(c, "MAXRECIPIENTS", "maxrecipients", 100usize),
        )
        .unwrap_or(100);
        let max_per_ip =
            take(errors, var_or_control(c, "MAXPERIP", "maxperip", 20u32)).unwrap_or(20);
        let max_connections = take(
            errors,
            var_or_control(c, "MAXDAEMONS", "maxdaemons", 1000u32),
        )
        .unwrap_or(1000);
        let mut rate =
            |var: &str, file: &str| take(errors, var_or_control(c, var, file, 0u32)).unwrap_or(0);
        let rates = Rates {
            rcpt_per_ip: rate("RCPTRATE", "rcptrate"),
            msg_per_ip: rate("MSGRATE", "msgrate"),
            rcpt_per_user: rate("AUTHRCPTRATE", "authrcptrate"),
            msg_per_user: rate("AUTHMSGRATE", "authmsgrate"),
        };
        Limits {
            databytes,
            timeout,
            stress_timeout,
            min_data_rate,
            max_auth_failures,
            max_recipients,
            max_per_ip,
            max_connections,
            rates,
        }
    }
}

/// `dnsbllist` (or the file `DNSBLLIST` names): the zones, lower case, no final dot.
fn load_dnsbl_zones(c: &ControlDir, errors: &mut Vec<ControlError>) -> Vec<String> {
    let dnsbl_file = std::env::var("DNSBLLIST")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "dnsbllist".into());
    take(errors, c.list(&dnsbl_file))
        .unwrap_or_default()
        .iter()
        .map(|z| z.trim_end_matches('.').to_ascii_lowercase())
        .collect()
}

/// `spfbehavior` and the local SPF texts (`spfrules`, `spfguess`, `spfexp`).
fn load_spf(
    c: &ControlDir,
    errors: &mut Vec<ControlError>,
) -> (policy::spf::SpfBehavior, policy::spf::SpfLocal) {
    let spf = policy::spf::SpfBehavior::new(
        take(
            errors,
            var_or_control(c, "SPFBEHAVIOR", "spfbehavior", 0u64),
        )
        .unwrap_or(0),
    );
    let mut spf_text = |var: &str, file: &str| match std::env::var(var) {
        Ok(v) => Some(v).filter(|v| !v.trim().is_empty()),
        Err(_) => take(errors, c.string(file)).flatten(),
    };
    let spf_local = policy::spf::SpfLocal {
        rules: spf_text("SPFRULES", "spfrules"),
        guess: spf_text("SPFGUESS", "spfguess"),
        exp: spf_text("SPFEXP", "spfexp"),
    };
    if let Some(g) = spf_local
        .guess
        .as_deref()
        .filter(|g| !policy::spf::is_spf1(g))
    {
        errors.push(ControlError {
            path: c.file("spfguess"),
            line: Some(1),
            problem: format!("`{g}` is not an SPF record (it must start with v=spf1)"),
        });
    }
    (spf, spf_local)
}

/// `smtproutes`, read with the rest so that one reload covers it.
fn load_smtproutes(c: &ControlDir, errors: &mut Vec<ControlError>) -> delivery::routes::SmtpRoutes {
    match delivery::routes::SmtpRoutes::load(&c.file("smtproutes")) {
        Ok(r) => r,
        Err(errs) => {
            errors.extend(errs.into_iter().map(|e| ControlError {
                path: PathBuf::from(e.file),
                line: (e.line > 0).then_some(e.line),
                problem: e.reason.to_string(),
            }));
            Default::default()
        }
    }
}

/// `tcp.smtp`: no file means no rules.
fn load_tcp_rules(path: &Path, errors: &mut Vec<ControlError>) -> TcpRules {
    match std::fs::read_to_string(path) {
        Ok(text) => match TcpRules::parse(&text, path) {
            Ok(r) => r,
            Err(mut e) => {
                errors.append(&mut e);
                TcpRules::default()
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => TcpRules::default(),
        Err(e) => {
            errors.push(ControlError {
                path: path.to_path_buf(),
                line: None,
                problem: format!("cannot read: {e}"),
            });
            TcpRules::default()
        }
    }
}

/// The access policy (`None` when it has errors) and the queue-time message rules.
fn load_policy(
    c: &ControlDir,
    errors: &mut Vec<ControlError>,
) -> (Option<Arc<policy::Policy>>, Arc<msgproc::QueueRules>) {
    let env = |name: &str| std::env::var(name).ok();
    let policy = match policy::Policy::load_with_sql(c.path(), &env, &sql_list_rows) {
        Ok(p) => Some(Arc::new(p)),
        Err(errs) => {
            errors.extend(errs.into_iter().map(|e| ControlError {
                path: e.file.clone(),
                line: e.line,
                problem: e.kind.to_string(),
            }));
            None
        }
    };
    let msgproc = match msgproc::QueueRules::load(c.path(), &env) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            errors.push(ControlError {
                path: c.path().to_path_buf(),
                line: None,
                problem: e.to_string(),
            });
            Default::default()
        }
    };
    (policy, msgproc)
}

/// The rows of the table a `.sql` list variant names, within `MYSQL_TIMEOUT` seconds
/// (IndiMail's variable, default 30).
fn sql_list_rows(_path: &Path, text: &str) -> Result<Vec<String>, String> {
    let secs = std::env::var("MYSQL_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(30u64);
    lookup::sqllist::SqlList::parse(text)?.fetch_blocking(std::time::Duration::from_secs(secs))
}

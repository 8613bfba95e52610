//! Where state lives and the typed configuration read from it.
//!
//! Everything lives under one home directory:
//!
//! | path | what | override |
//! |---|---|---|
//! | `<home>` | `--home`, else `INDIMAIL_HOME`, else `/var/indimail` (root) or `$HOME/.indimail` | |
//! | `<home>/control/` | qmail-style control files | `CONTROLDIR` (absolute, or relative to home) |
//! | `<home>/queue/queue<N>` | queue N | `QUEUE_BASE` (or control `queue_base`), `QUEUE_START`, `QUEUE_COUNT`; `QUEUEDIR` = one queue, verbatim |
//! | `<home>/tcp/tcp.smtp` | access rules by client IP | |
//! | `<home>/mail/` | mailboxes of virtual users | `BASE_PATH` |
//!
//! Control files read here, with their defaults:
//!
//! | file | meaning | default |
//! |---|---|---|
//! | `me` | this host's name | the system host name |
//! | `smtpgreeting` | text of the 220 greeting | `<me> ESMTP` |
//! | `rcpthosts`, `morercpthosts` (or `morercpthosts.cdb`) | domains we accept mail for | none (only relay clients may send) |
//! | `databytes` | maximum message size, 0 = unlimited | 0 |
//! | `timeoutsmtpd` | seconds an SMTP client has for each whole command line (and DATA, see `mindatarate`) before it is dropped with `421 4.4.2` | 1200 |
//! | `timeoutstress` | the same while the shard is under stress (¾ of `maxdaemons` in use), as Postfix's stress-dependent `smtpd_timeout` | 10 |
//! | `mindatarate` | bytes per second a DATA/BDAT transfer must keep on average: each byte extends the deadline by 1/rate s (Postfix's `smtpd_min_data_rate`) | 500 |
//! | `maxrecipients` | recipients per message (`MAXRECIPIENTS`) | 100 |
//! | `maxperip` | connections per client IP, server-wide (clients are placed on their address's home shard) (`MAXPERIP`) | 20 |
//! | `maxdaemons` | connections for the whole server, split evenly over the shards (`MAXDAEMONS`) | 1000 |
//! | `rcptrate`, `msgrate` | RCPTs / messages per minute per client IP (IPv6: per /64), server-wide (`RCPTRATE`, `MSGRATE`); over it: `451 4.7.0` | 0 = unlimited |
//! | `authrcptrate`, `authmsgrate` | the same per authenticated user (`AUTHRCPTRATE`, `AUTHMSGRATE`) | 0 = unlimited |
//! | `dnsbllist` | DNSBL zones, one per line (`DNSBLLIST` names another file; `SKIPDNSBL` in the environment or a tcp.smtp rule skips) | none |
//! | `spfbehavior` | SPF level 0-6 (`SPFBEHAVIOR`), see `policy::spf` | 0 (off) |
//! | `listeners` | lines `SERVICE ADDR:PORT`; services `smtp`, `submission`, `smtps`, `odmr`, `pop3`, `pop3s`, `imap-proxy`, `imaps-proxy`, `pop3-proxy`, `pop3s-proxy`, `poppass`, `poppasss` | `smtp 127.0.0.1:2525` |
//! | `servercert.pem` | TLS certificate + key (`CERTDIR`, `SERVERCERT` override) | a self-signed demo certificate |
//! | `cpus` | CPU list for shards (`0-3,6`; `--cpus` and `INDIMAIL_SHARDS` override, see `queue-layout`) | one shard per online CPU |
//! | `shardsched` | how each shard's own jobs on its blocking pool (the `syncfs` its Maildir deliveries share) are scheduled: `batch` (`SCHED_BATCH`: a wake-up does not preempt the shard) or `normal` (the kernel's default), see `shard::Scheduling` | `batch` |
//! | `shutdowntimeout` | seconds SIGTERM waits for SMTP transactions in flight before closing them (unanswered ones are not accepted) | 5 |
//! | `user` | user `serve` drops to when started as root (`INDIMAIL_USER`), see `privs` | `indimail` if it exists |
//! | `etrnhosts` | domains whose mail is held for ETRN/ATRN (`.domain` = subdomains) | none |
//! | `atrnaccess` | `user@domain:dom1,dom2` — who may turn which domains with ATRN | none |

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use control::ControlError;
use smtp_server::service::{read_listeners, Service};

pub use control::env::system_hostname;
pub use queue_layout::Paths;
pub use queue_layout::QueueSpec;
pub use smtp_server::service::DEFAULT_SMTP_LISTENER;
pub use smtp_server::settings::SmtpSettings;

/// Configuration of `indimail serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Locations.
    pub paths: Paths,
    /// Listeners per service, in `control/listeners` / command-line order.
    pub listeners: Vec<(Service, SocketAddr)>,
    /// `serve --cpus` (overrides `control/cpus`; see `queue-layout`).
    pub cpus_arg: Option<String>,
    /// SMTP settings.
    pub smtp: SmtpSettings,
    /// `shutdowntimeout`: how long SIGTERM waits for sessions in flight.
    pub shutdown_timeout: Duration,
    /// `shardsched`: how the shards' own pool jobs are scheduled.
    pub scheduling: shard::Scheduling,
}

impl ServeConfig {
    /// Reads every control file, reporting all problems at once.
    /// `overrides` are the listeners given on the command line; when any is
    /// given, `control/listeners` is not read. `cpus_arg` (`serve --cpus`)
    /// decides the default queue count `domainqueue` is checked against.
    pub fn load(
        paths: Paths,
        overrides: &[(Service, SocketAddr)],
        cpus_arg: Option<String>,
    ) -> Result<ServeConfig, Vec<ControlError>> {
        let mut errors = Vec::new();
        let c = &paths.control;
        let shutdown_timeout = c.number("shutdowntimeout", 5u64).unwrap_or_else(|e| {
            errors.push(e);
            5
        });
        let scheduling = match c.string("shardsched") {
            Ok(None) => shard::Scheduling::default(),
            Ok(Some(v)) => shard::Scheduling::parse(&v).unwrap_or_else(|| {
                errors.push(ControlError {
                    path: c.file("shardsched"),
                    line: Some(1),
                    problem: format!("{v:?} is not batch or normal"),
                });
                shard::Scheduling::default()
            }),
            Err(e) => {
                errors.push(e);
                shard::Scheduling::default()
            }
        };
        // The user to drop to must exist (used when started as root).
        match c.string("user") {
            Ok(Some(user)) => {
                let problem = match crate::privs::lookup_user(&user) {
                    Ok(Some(_)) => None,
                    Ok(None) => Some(format!("no user named {user}")),
                    Err(e) => Some(e.to_string()),
                };
                errors.extend(problem.map(|problem| ControlError {
                    path: c.file("user"),
                    line: Some(1),
                    problem,
                }));
            }
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
        let smtp = SmtpSettings::load(&paths, cpus_arg.as_deref()).map_err(|e| errors.extend(e));
        let listeners = if overrides.is_empty() {
            read_listeners(c).map_err(|e| errors.extend(e))
        } else {
            Ok(overrides.to_vec())
        };
        match (smtp, listeners) {
            (Ok(smtp), Ok(listeners)) if errors.is_empty() => Ok(ServeConfig {
                shutdown_timeout: Duration::from_secs(shutdown_timeout),
                scheduling,
                smtp,
                paths,
                listeners,
                cpus_arg,
            }),
            _ => Err(errors),
        }
    }
}

/// Creates what a first `serve` on an empty home needs: the directories and
/// default control files (never overwriting an operator's file). Returns
/// the paths it created.
pub fn prepare_home(paths: &Paths) -> std::io::Result<Vec<PathBuf>> {
    let mut made = Vec::new();
    // The home holds the user store and the admin users: not for every local user to read.
    if !paths.home.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(HOME_MODE)
            .create(&paths.home)?;
        made.push(paths.home.clone());
    }
    for d in [
        paths.control.path().to_path_buf(),
        paths.home.join("tcp"),
        paths.home.join("queue"),
    ] {
        if !d.exists() {
            std::fs::create_dir_all(&d)?;
            made.push(d);
        }
    }
    let c = &paths.control;
    let me = system_hostname();
    let defaults: [(&str, String); 4] = [
        ("me", format!("{me}\n")),
        (
            "rcpthosts",
            format!("# domains this server accepts mail for, one per line; .domain = subdomains\n{me}\nlocalhost\n"),
        ),
        (
            "listeners",
            format!("# service address:port, one per line (overridden by --smtp)\nsmtp {DEFAULT_SMTP_LISTENER}\n"),
        ),
        ("databytes", "# maximum message size in bytes, 0 = unlimited\n0\n".to_string()),
    ];
    for (name, content) in defaults {
        if c.create_default(name, &content)? {
            made.push(c.file(name));
        }
    }
    // A demo certificate so STARTTLS and SMTPS work out of the box; an
    // operator replaces servercert.pem with a real one (reloaded live).
    let certs = tls::CertPaths::from_env(c.path());
    if !certs.exists() {
        if let Some(dir) = certs.cert.parent() {
            std::fs::create_dir_all(dir)?;
            match tls::create_self_signed(dir, &me) {
                Ok(made_cert) => {
                    control::log!("created {made_cert}");
                    made.push(made_cert.path.clone());
                }
                Err(e) => control::log!("warning: cannot create a demo certificate: {e}"),
            }
        }
    }
    let rules = paths.tcp_rules();
    if !rules.exists() {
        std::fs::write(
            &rules,
            "# address:allow|deny[,VAR=value...]  (most specific match wins)\n127.:allow,RELAYCLIENT=\"\"\n::1:allow,RELAYCLIENT=\"\"\n:allow\n",
        )?;
        made.push(rules);
    }
    make_durable(&made)?;
    tighten_secrets(paths);
    Ok(made)
}

/// Mode of the home directory `init` creates (and tightens to).
pub const HOME_MODE: u32 = 0o750;

/// Tightens the home and the secret files in it that were found looser than they should be
/// (made by an older release, restored from a backup, copied by hand). A failure is a
/// warning: a file that is not ours to change must not stop the server.
fn tighten_secrets(paths: &Paths) {
    use lookup::fsmode::{restrict_mode, SECRET_FILE_MODE};
    let db = paths.home.join("db").join("indimail.sqlite");
    let mut secrets = vec![
        paths.control.path().join(admin_api::adminauth::USERS_FILE),
        PathBuf::from(format!("{}-wal", db.display())),
        PathBuf::from(format!("{}-shm", db.display())),
        db,
    ];
    // TLS keys, only where `init` writes them (the control directory): a key elsewhere may
    // be shared with other software on purpose (a group-readable key).
    let certs = tls::CertPaths::from_env(paths.control.path());
    let key = certs
        .key
        .clone()
        .or_else(|| certs.cert.parent().map(|d| d.join("serverkey.pem")));
    secrets.extend(
        std::iter::once(certs.cert)
            .chain(key)
            .filter(|p| p.parent() == Some(paths.control.path())),
    );
    let fix = |p: &Path, mode: u32| match restrict_mode(p, mode) {
        Ok(true) => control::log!("{}: mode tightened to {mode:o}", p.display()),
        Ok(false) => {}
        Err(e) => control::log!(
            "warning: {}: cannot tighten mode to {mode:o}: {e}",
            p.display()
        ),
    };
    fix(&paths.home, HOME_MODE);
    for p in &secrets {
        fix(p, SECRET_FILE_MODE);
    }
}

/// Makes freshly created files and directories durable: each one's data
/// and the directory entry naming it (on ext4 without a journal a new name
/// survives a power cut only once its directory is fsynced; an `init`
/// followed by a power cut once left an empty tcp.smtp, and trusted clients
/// lost relaying).
pub fn make_durable(made: &[PathBuf]) -> std::io::Result<()> {
    let mut dirs = std::collections::BTreeSet::new();
    for p in made {
        std::fs::File::open(p)?.sync_all()?;
        if let Some(parent) = p.parent() {
            dirs.insert(parent.to_path_buf());
        }
    }
    for d in dirs {
        std::fs::File::open(&d)?.sync_all()?;
    }
    Ok(())
}

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
//! | `shutdowntimeout` | seconds SIGTERM waits for SMTP transactions in flight before closing them (unanswered ones are not accepted) | 5 |
//! | `user` | user `serve` drops to when started as root (`INDIMAIL_USER`), see `privs` | `indimail` if it exists |
//! | `etrnhosts` | domains whose mail is held for ETRN/ATRN (`.domain` = subdomains) | none |
//! | `atrnaccess` | `user@domain:dom1,dom2` — who may turn which domains with ATRN | none |

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::tcprules::TcpRules;
use control::{ControlError, DomainList};

pub use control::env::{env_number, qmail_ext, system_hostname, var_or_control};
pub use control::Paths;
pub use queue_layout::QueueSpec;

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
    /// `timeoutstress`: the deadline while the shard is under stress.
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
    pub check_recipient: crate::rcptcheck::RecipientCheck,
    /// `QMAIL_EXT`: CHECKRECIPIENT accepts `user-ext@domain` of existing
    /// users (see [`qmail_ext`]).
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
    pub spf_local: std::sync::Arc<policy::spf::SpfLocal>,
    /// IndiMail's access controls (badmailfrom, badrcptto, accesslist,
    /// hostaccess, envrules, bodycheck, badip, ...), see the `policy` crate.
    pub policy: std::sync::Arc<policy::Policy>,
    /// `etrnhosts` and `atrnaccess`: ETRN / ATRN (see [`scheduler::turn`]).
    pub turn: std::sync::Arc<scheduler::turn::TurnConfig>,
    /// `greetdelay`, `REQPTR`, tarpitting, `MAX_RCPT_ERRCOUNT`, `PENALTY`
    /// (see [`crate::clientchecks`]).
    pub client_checks: crate::clientchecks::ClientChecks,
    /// `smtproutes`, read with the rest so that one reload covers it
    /// (remote delivery's table; see `delivery::routes`).
    pub smtproutes: std::sync::Arc<delivery::routes::SmtpRoutes>,
    /// Queue-time message processing: `removeheaders`, `envheaders`,
    /// `logheaders`, `quarantine`, `extraqueue`, `NULLQUEUE` (see `msgproc`).
    pub msgproc: std::sync::Arc<msgproc::QueueRules>,
    /// `domainqueue`: the queue a recipient domain's mail goes to, checked
    /// against the queues served (see [`scheduler::domainqueue`]).
    pub domain_queues: std::sync::Arc<scheduler::domainqueue::DomainQueues>,
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

/// Configuration of `indimail serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Locations.
    pub paths: Paths,
    /// Listeners per service, in `control/listeners` / command-line order.
    pub listeners: Vec<(crate::smtp::Service, SocketAddr)>,
    /// `serve --cpus` (overrides `control/cpus`; see `queue-layout`).
    pub cpus_arg: Option<String>,
    /// SMTP settings.
    pub smtp: SmtpSettings,
    /// `shutdowntimeout`: how long SIGTERM waits for sessions in flight.
    pub shutdown_timeout: Duration,
}

/// Default listener for a fresh home: loopback, unprivileged.
pub const DEFAULT_SMTP_LISTENER: &str = "127.0.0.1:2525";

impl ServeConfig {
    /// Reads every control file, reporting all problems at once.
    /// `overrides` are the listeners given on the command line; when any is
    /// given, `control/listeners` is not read. `cpus_arg` (`serve --cpus`)
    /// decides the default queue count `domainqueue` is checked against.
    pub fn load(
        paths: Paths,
        overrides: &[(crate::smtp::Service, SocketAddr)],
        cpus_arg: Option<String>,
    ) -> Result<ServeConfig, Vec<ControlError>> {
        let mut errors = Vec::new();
        let c = &paths.control;
        fn take<T>(errors: &mut Vec<ControlError>, r: Result<T, ControlError>) -> Option<T> {
            r.map_err(|e| errors.push(e)).ok()
        }

        let me = take(&mut errors, c.string("me"))
            .flatten()
            .unwrap_or_else(system_hostname);
        let greeting = take(&mut errors, c.string("smtpgreeting"))
            .flatten()
            .unwrap_or_else(|| format!("{me} ESMTP"));
        let mut hosts = take(&mut errors, c.list("rcpthosts")).unwrap_or_default();
        hosts.extend(take(&mut errors, c.list_or_cdb("morercpthosts")).unwrap_or_default());
        let databytes = take(
            &mut errors,
            var_or_control(c, "DATABYTES", "databytes", 0u64),
        )
        .unwrap_or(0);
        let timeout = take(&mut errors, c.number("timeoutsmtpd", 1200u64)).unwrap_or(1200);
        let max_auth_failures =
            take(&mut errors, env_number("MAX_AUTH_FAILURES", 3u32)).unwrap_or(3);
        let stress_timeout = take(&mut errors, c.number("timeoutstress", 10u64)).unwrap_or(10);
        let min_data_rate = take(&mut errors, c.number("mindatarate", 500u64)).unwrap_or(500);
        let shutdown_timeout = take(&mut errors, c.number("shutdowntimeout", 5u64)).unwrap_or(5);
        // The user to drop to must exist (used when started as root).
        if let Some(user) = take(&mut errors, c.string("user")).flatten() {
            match crate::privs::lookup_user(&user) {
                Ok(Some(_)) => {}
                Ok(None) => errors.push(ControlError {
                    path: c.file("user"),
                    line: Some(1),
                    problem: format!("no user named {user}"),
                }),
                Err(e) => errors.push(ControlError {
                    path: c.file("user"),
                    line: Some(1),
                    problem: e,
                }),
            }
        }
        let max_recipients = take(
            &mut errors,
            var_or_control(c, "MAXRECIPIENTS", "maxrecipients", 100usize),
        )
        .unwrap_or(100);
        let max_per_ip = take(
            &mut errors,
            var_or_control(c, "MAXPERIP", "maxperip", 20u32),
        )
        .unwrap_or(20);
        let max_connections = take(
            &mut errors,
            var_or_control(c, "MAXDAEMONS", "maxdaemons", 1000u32),
        )
        .unwrap_or(1000);
        let mut rate = |var: &str, file: &str| {
            take(&mut errors, var_or_control(c, var, file, 0u32)).unwrap_or(0)
        };
        let rates = Rates {
            rcpt_per_ip: rate("RCPTRATE", "rcptrate"),
            msg_per_ip: rate("MSGRATE", "msgrate"),
            rcpt_per_user: rate("AUTHRCPTRATE", "authrcptrate"),
            msg_per_user: rate("AUTHMSGRATE", "authmsgrate"),
        };
        let dnsbl_file = std::env::var("DNSBLLIST")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| "dnsbllist".into());
        let dnsbl_zones = take(&mut errors, c.list(&dnsbl_file))
            .unwrap_or_default()
            .iter()
            .map(|z| z.trim_end_matches('.').to_ascii_lowercase())
            .collect();
        let spf = policy::spf::SpfBehavior::new(
            take(
                &mut errors,
                var_or_control(c, "SPFBEHAVIOR", "spfbehavior", 0u64),
            )
            .unwrap_or(0),
        );
        let client_checks = crate::clientchecks::ClientChecks::load(c, &mut errors);
        let mut spf_text = |var: &str, file: &str| match std::env::var(var) {
            Ok(v) => Some(v).filter(|v| !v.trim().is_empty()),
            Err(_) => take(&mut errors, c.string(file)).flatten(),
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
        let smtproutes = match delivery::routes::SmtpRoutes::load(&c.file("smtproutes")) {
            Ok(r) => r,
            Err(errs) => {
                errors.extend(errs.into_iter().map(|e| ControlError {
                    path: PathBuf::from(e.file),
                    line: (e.line > 0).then_some(e.line),
                    problem: e.reason,
                }));
                Default::default()
            }
        };
        use crate::smtp::Service;
        let mut listeners = Vec::new();
        if overrides.is_empty() {
            match c.lines("listeners") {
                Ok(None) => {
                    listeners.push((Service::Smtp, DEFAULT_SMTP_LISTENER.parse().expect("valid")))
                }
                Ok(Some(lines)) => {
                    for (line, text) in lines {
                        let mut words = text.split_whitespace();
                        let (service, addr) = (words.next().unwrap_or(""), words.next());
                        let svc = Service::from_name(service);
                        let problem = match (svc, addr.map(str::parse::<SocketAddr>)) {
                            (Some(svc), Some(Ok(a))) => {
                                listeners.push((svc, a));
                                None
                            }
                            (Some(_), _) => {
                                Some(format!("`{text}`: expected `{service} ADDRESS:PORT`"))
                            }
                            (None, _) => Some(format!(
                                "`{service}`: unknown service (expected one of {})",
                                Service::ALL.map(|s| s.name()).join(", ")
                            )),
                        };
                        if let Some(problem) = problem {
                            errors.push(ControlError {
                                path: c.file("listeners"),
                                line: Some(line),
                                problem,
                            });
                        }
                    }
                }
                Err(e) => errors.push(e),
            }
        } else {
            listeners.extend_from_slice(overrides);
        }

        let rules_path = paths.tcp_rules();
        let rules = match std::fs::read_to_string(&rules_path) {
            Ok(text) => match TcpRules::parse(&text, &rules_path) {
                Ok(r) => r,
                Err(mut e) => {
                    errors.append(&mut e);
                    TcpRules::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => TcpRules::default(),
            Err(e) => {
                errors.push(ControlError {
                    path: rules_path,
                    line: None,
                    problem: format!("cannot read: {e}"),
                });
                TcpRules::default()
            }
        };

        let turn = match scheduler::turn::TurnConfig::load(c) {
            Ok(t) => std::sync::Arc::new(t),
            Err(mut e) => {
                errors.append(&mut e);
                Default::default()
            }
        };
        let env = |name: &str| std::env::var(name).ok();
        let policy = match policy::Policy::load_with_sql(c.path(), &env, &sql_list_rows) {
            Ok(p) => Some(std::sync::Arc::new(p)),
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
            Ok(r) => std::sync::Arc::new(r),
            Err(e) => {
                errors.push(ControlError {
                    path: c.path().to_path_buf(),
                    line: None,
                    problem: e.to_string(),
                });
                Default::default()
            }
        };
        // Layout errors are reported by `serve` and `config check` apart.
        let layout = paths.layout(cpus_arg.as_deref()).ok().map(|mut l| {
            l.adopt_existing();
            l
        });
        let domain_queues = match &policy {
            Some(p) => match scheduler::domainqueue::DomainQueues::load(p, layout.as_ref()) {
                Ok(d) => std::sync::Arc::new(d),
                Err(mut e) => {
                    errors.append(&mut e);
                    Default::default()
                }
            },
            None => Default::default(),
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let policy = policy.expect("no errors means the policy loaded");
        Ok(ServeConfig {
            shutdown_timeout: Duration::from_secs(shutdown_timeout),
            smtp: SmtpSettings {
                me,
                greeting,
                rcpthosts: DomainList::new(hosts),
                databytes,
                timeout: Duration::from_secs(timeout),
                stress_timeout: Duration::from_secs(stress_timeout.clamp(1, timeout.max(1))),
                min_data_rate: min_data_rate.max(1),
                max_recipients: if max_recipients == 0 {
                    100
                } else {
                    max_recipients
                },
                max_per_ip,
                max_connections,
                relay_everyone: std::env::var_os("RELAYCLIENT").is_some(),
                rules,
                check_recipient: crate::rcptcheck::RecipientCheck::from_var(
                    std::env::var("CHECKRECIPIENT").ok().as_deref(),
                ),
                qmail_ext: qmail_ext(),
                max_auth_failures,
                check_relay: std::env::var("CHECKRELAY").map_or(true, |v| v.trim() != "0"),
                skip_dnsbl: std::env::var_os("SKIPDNSBL").is_some(),
                masquerade: std::env::var_os("MASQUERADE").is_some(),
                rates,
                dnsbl_zones,
                spf,
                policy,
                turn,
                msgproc,
                domain_queues,
                smtproutes: std::sync::Arc::new(smtproutes),
                client_checks,
                spf_local: std::sync::Arc::new(spf_local),
            },
            paths,
            listeners,
            cpus_arg,
        })
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

/// The rows of the table a `.sql` list variant names, within `MYSQL_TIMEOUT` seconds
/// (IndiMail's variable, default 30).
fn sql_list_rows(_path: &Path, text: &str) -> Result<Vec<String>, String> {
    let secs = std::env::var("MYSQL_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(30u64);
    lookup::sqllist::SqlList::parse(text)?.fetch_blocking(std::time::Duration::from_secs(secs))
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

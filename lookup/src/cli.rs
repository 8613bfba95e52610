//! The admin command line: `indimail domain|user|alias|hostcntrl|cluster|atrn|checkpassword ...`
//! (clap-derive, for the `indimail` binary to flatten into its own parser) and IndiMail's
//! program names (`vadddomain`, `vadduser`, ...) with their main getopt options
//! ([`run_as_program`]).

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

mod dbinfo;

pub use dbinfo::DbinfoArgs;

use crate::{
    Admin, DirectoryConfig, DomainChange, DomainInfo, DomainOptions, HashMethod, Limits,
    LookupError, PasswordOptions, Quota, ScramOptions, User, UserChange, UserFlags, UserOptions,
};

/// Directory subcommands of the `indimail` binary.
#[derive(Debug, Clone, Subcommand)]
pub enum DirectoryCommand {
    /// Virtual domains (vadddomain, vdeldomain, vdominfo, vaddaliasdomain).
    #[command(subcommand)]
    Domain(DomainCommand),
    /// Mailboxes (vadduser, vdeluser, vpasswd, vmoduser, vuserinfo, vsetuserquota).
    #[command(subcommand)]
    User(UserCommand),
    /// Aliases kept in the valias table (valias).
    #[command(subcommand)]
    Alias(AliasCommand),
    /// Cluster placement: hostcntrl, host_table and smtp_port rows.
    #[command(subcommand)]
    Hostcntrl(HostCommand),
    /// The hosts of a multi-host installation and which one holds each user (host_table,
    /// smtp_port and hostcntrl together; vhostid, vsmtp and hostcntrl in one place).
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Domains a user may turn with ATRN (atrn_map rows; vatrn).
    #[command(subcommand)]
    Atrn(AtrnCommand),
    /// The checkpassword interface: read `user\0password\0timestamp\0` on fd 3.
    Checkpassword(CheckpasswordArgs),
    /// POP/IMAP-before-SMTP relay rows (clearopensmtp).
    #[command(subcommand)]
    Relay(RelayCommand),
    /// Each domain's database server: the MCD file (control/mcdinfo) and the dbinfo table
    /// (dbinfo).
    Dbinfo(DbinfoArgs),
}

/// `indimail relay ...`
#[derive(Debug, Clone, Subcommand)]
pub enum RelayCommand {
    /// Delete relay rows older than the relay window (clearopensmtp; run from cron).
    Clear {
        /// Age in minutes; default RELAY_CLEAR_MINUTES, else 60 (the window smtpd honours).
        #[arg(long)]
        minutes: Option<u64>,
    },
}

/// `indimail domain limits` (vlimit): every value is kept as given and checked in one place
/// for both command lines.
#[derive(Debug, Clone, Args, Default)]
pub struct LimitsArgs {
    /// Domain name.
    pub domain: String,
    /// Show the limits (the default when nothing is set) (-s).
    #[arg(long)]
    pub show: bool,
    /// Delete the domain's limits: the defaults apply again (-d / -D).
    #[arg(long, conflicts_with = "show")]
    pub delete: bool,
    /// Domain expiry: -1 (never), Unix seconds or YYYY-MM-DD[ HH:MM[:SS]] UTC (-e).
    #[arg(long, value_name = "WHEN", allow_hyphen_values = true)]
    pub domain_expiry: Option<String>,
    /// Password expiry, as --domain-expiry (-t).
    #[arg(long, value_name = "WHEN", allow_hyphen_values = true)]
    pub passwd_expiry: Option<String>,
    /// Domain disk quota: bytes[K|M|G], 0 or NOQUOTA for none (-Q).
    #[arg(long, value_name = "QUOTA")]
    pub disk_quota: Option<String>,
    /// Domain message count quota, 0 for none (-M).
    #[arg(long, value_name = "N")]
    pub max_msgcount: Option<String>,
    /// Default quota of new users: bytes[K|M|G], 0 for the hard quota (-q).
    #[arg(long, value_name = "QUOTA")]
    pub default_quota: Option<String>,
    /// Default message count quota of new users (-m).
    #[arg(long, value_name = "N")]
    pub default_maxmsgcount: Option<String>,
    /// Maximum mailboxes, -1 unlimited (-P).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub max_pop_accounts: Option<String>,
    /// Maximum aliases, -1 unlimited (-A).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub max_aliases: Option<String>,
    /// Maximum forwards, -1 unlimited (-F).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub max_forwards: Option<String>,
    /// Maximum autoresponders, -1 unlimited (-R).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub max_autoresponders: Option<String>,
    /// Maximum mailing lists, -1 unlimited (-L).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub max_mailinglists: Option<String>,
    /// Services denied to the whole domain, replacing the current set (-g): letters
    /// u dialup, d password changing, p POP, w webmail, i IMAP, r relay, s SMTP; x none.
    #[arg(long, value_name = "LETTERS")]
    pub flags: Option<String>,
    /// What non-postmaster admins may not do to accounts (-p): letters c create,
    /// m modify, d delete, a all; x none.
    #[arg(long, value_name = "LETTERS")]
    pub perm_account: Option<String>,
    /// ... to aliases (-a).
    #[arg(long, value_name = "LETTERS")]
    pub perm_alias: Option<String>,
    /// ... to forwards (-f).
    #[arg(long, value_name = "LETTERS")]
    pub perm_forward: Option<String>,
    /// ... to autoresponders (-r).
    #[arg(long, value_name = "LETTERS")]
    pub perm_autoresponder: Option<String>,
    /// ... to mailing lists (-l).
    #[arg(long, value_name = "LETTERS")]
    pub perm_maillist: Option<String>,
    /// ... to quotas (-x).
    #[arg(long, value_name = "LETTERS")]
    pub perm_quota: Option<String>,
    /// ... to the default quota (-z).
    #[arg(long, value_name = "LETTERS")]
    pub perm_defaultquota: Option<String>,
}

/// `indimail domain ...`
#[derive(Debug, Clone, Subcommand)]
pub enum DomainCommand {
    /// Add a virtual domain.
    Add {
        /// Domain name.
        domain: String,
        /// Users per directory level before hashing (vadddomain -l).
        #[arg(long)]
        users_per_level: Option<u64>,
        /// Mailbox base for this domain (vadddomain -B).
        #[arg(long)]
        base_path: Option<PathBuf>,
        /// Password of postmaster@DOMAIN (always created); a random one,
        /// printed once, when not given.
        #[arg(long)]
        postmaster_password: Option<String>,
    },
    /// Delete a domain, its users and their mailboxes.
    Del {
        /// Domain name.
        domain: String,
    },
    /// List virtual domains.
    List,
    /// Show a domain.
    Info {
        /// Domain name.
        domain: String,
    },
    /// Make ALIAS an alias domain of DOMAIN (vaddaliasdomain).
    AddAlias {
        /// The new alias domain.
        alias: String,
        /// The existing real domain.
        domain: String,
    },
    /// Show, set or delete the domain's limits (vlimit).
    Limits(Box<LimitsArgs>),
    /// Rename a domain: its users, homes, rows and control-file lines (vrenamedomain).
    Rename {
        /// Current name.
        old: String,
        /// New name.
        new: String,
    },
    /// Change a domain's settings, or show them (vmoddomain).
    Mod {
        /// Domain name.
        domain: String,
        /// 1: the domain's limits are in force, 0: not (-l).
        #[arg(long, value_name = "0|1")]
        limits: Option<String>,
        /// What to do with mail for unknown users: bounce-no-mailbox, delete,
        /// /path/to/Maildir, user@domain or domain:ip:port (-h).
        #[arg(long)]
        handler: Option<String>,
    },
}

/// Password options shared by `user add`, `user passwd` and `user mod`.
#[derive(Debug, Clone, Args, Default)]
pub struct PasswordArgs {
    /// Hash method: DES, MD5, SHA-256, SHA-512, YESCRYPT or 0-4 (-h).
    #[arg(long = "hash")]
    pub hash: Option<String>,
    /// Store the password string verbatim, already encrypted (-e).
    #[arg(long)]
    pub encrypted: bool,
    /// Keep the clear text for CRAM-MD5 as {CRAM}clear,crypt (-C).
    #[arg(long)]
    pub cram: bool,
    /// Also store a SCRAM secret for SMTP AUTH with this mechanism; only SCRAM-SHA-256 (-m).
    /// Without it, a password change clears any SCRAM secret.
    #[arg(short = 'm', long = "scram", value_name = "MECHANISM")]
    pub scram: Option<String>,
    /// SCRAM salt (its bytes; -S). Random when absent.
    #[arg(long = "scram-salt", value_name = "SALT", requires = "scram")]
    pub scram_salt: Option<String>,
    /// SCRAM iteration count (-I). Default 4096.
    #[arg(long = "scram-iterations", value_name = "N", requires = "scram")]
    pub scram_iterations: Option<u32>,
}

/// `indimail user ...`
#[derive(Debug, Clone, Subcommand)]
pub enum UserCommand {
    /// Add a mailbox (creates its Maildir).
    Add {
        /// user@domain
        email: String,
        /// Password.
        #[arg(long)]
        password: String,
        /// Quota: NOQUOTA, bytes[K|M|G] or bytes,count.
        #[arg(long)]
        quota: Option<String>,
        /// Full name.
        #[arg(long)]
        gecos: Option<String>,
        /// Create inactive.
        #[arg(long)]
        inactive: bool,
        /// Mailbox base.
        #[arg(long)]
        base_path: Option<PathBuf>,
        /// Password hashing options.
        #[command(flatten)]
        pw: PasswordArgs,
    },
    /// Delete a mailbox and its home directory.
    Del {
        /// user@domain
        email: String,
    },
    /// Change a password.
    Passwd {
        /// user@domain
        email: String,
        /// New password.
        #[arg(long)]
        password: String,
        /// Password hashing options.
        #[command(flatten)]
        pw: PasswordArgs,
    },
    /// Modify a mailbox.
    Mod {
        /// user@domain
        email: String,
        /// New full name.
        #[arg(long)]
        gecos: Option<String>,
        /// New quota.
        #[arg(long)]
        quota: Option<String>,
        /// Move between active and inactive.
        #[arg(long)]
        toggle_active: bool,
        /// Set a flag (no-pop, no-imap, no-relay, bounce-mail, admin, ...); repeatable.
        #[arg(long = "set")]
        set: Vec<String>,
        /// Clear a flag; repeatable.
        #[arg(long = "clear")]
        clear: Vec<String>,
        /// Clear all flags first.
        #[arg(long)]
        reset_flags: bool,
        /// New password.
        #[arg(long)]
        password: Option<String>,
        /// Password hashing options.
        #[command(flatten)]
        pw: PasswordArgs,
        /// Vacation reply (vmoduser -l): FILE installs its text as `.vacation.msg` in the
        /// home, `+` reads the text from standard input, `-` removes it.
        #[arg(long, value_name = "FILE|+|-")]
        vacation: Option<String>,
    },
    /// Show a mailbox (prints `dir: PATH`).
    Info {
        /// user@domain
        email: String,
    },
    /// List mailboxes, of one domain or all.
    List {
        /// Domain (all when absent).
        domain: Option<String>,
    },
    /// Set a quota (vsetuserquota).
    Quota {
        /// user@domain
        email: String,
        /// NOQUOTA, bytes[K|M|G] or bytes,count.
        quota: String,
    },
    /// Rename a mailbox, keeping password, flags and mail (vrenameuser).
    Rename {
        /// Current user@domain.
        old: String,
        /// New user@domain (the domain must exist).
        new: String,
    },
    /// Delete users who have not logged in for DAYS days (vdeloldusers). Lists them
    /// unless --yes is given.
    Expire {
        /// Only this domain (-d).
        #[arg(long)]
        domain: Option<String>,
        /// Days without a login (-a).
        #[arg(long, default_value_t = DEFAULT_EXPIRE_DAYS)]
        days: u64,
        /// Really delete them (-y).
        #[arg(long)]
        yes: bool,
    },
}

/// vdeloldusers' default age.
pub const DEFAULT_EXPIRE_DAYS: u64 = 60;

/// `indimail alias ...`
#[derive(Debug, Clone, Subcommand)]
pub enum AliasCommand {
    /// Add an alias line (an address, `&address`, `|program` or a Maildir path).
    Add {
        /// user@domain
        email: String,
        /// The line.
        line: String,
    },
    /// Delete one line, or all lines of the address.
    Del {
        /// user@domain
        email: String,
        /// The line (all when absent).
        line: Option<String>,
    },
    /// List the lines of an address or a domain.
    List {
        /// user@domain or domain
        target: String,
    },
}

/// `indimail hostcntrl ...`
#[derive(Debug, Clone, Subcommand)]
pub enum HostCommand {
    /// Place a user (or `*@domain`) on a host id.
    Add {
        /// user@domain or *@domain
        email: String,
        /// Host id.
        host: String,
    },
    /// Move a user to another host id.
    Mod {
        /// user@domain or *@domain
        email: String,
        /// Host id.
        host: String,
    },
    /// Remove a placement.
    Del {
        /// user@domain or *@domain
        email: String,
    },
    /// List placements.
    List {
        /// Domain (all when absent).
        domain: Option<String>,
    },
    /// Map a host id to its IP address (host_table; vhostid -i).
    SetHost {
        /// Host id.
        host: String,
        /// IP address.
        ip: IpAddr,
    },
    /// Remove a host id (vhostid -d).
    DelHost {
        /// Host id.
        host: String,
    },
    /// Remove the SMTP port row of a host for a domain (vsmtp -d).
    DelPort {
        /// Domain.
        domain: String,
        /// Host id.
        host: String,
        /// Sending host (`*` = any).
        #[arg(long, default_value = "*")]
        src_host: String,
    },
    /// Set the SMTP port of a host for a domain (vsmtp).
    SetPort {
        /// Domain.
        domain: String,
        /// Host id.
        host: String,
        /// Port.
        port: u16,
        /// Sending host (`*` = any).
        #[arg(long, default_value = "*")]
        src_host: String,
    },
}

/// `indimail cluster ...`
///
/// Every change bumps the directory's change counter: hosts sharing the directory see it
/// within their change poll (one second) plus one query, without a restart.
#[derive(Debug, Clone, Subcommand)]
pub enum ClusterCommand {
    /// Register a host (or change its address): its host_table row (vhostid -i), and with
    /// `--smtp-port` the port its SMTP server takes mail on for each `--domain` (vsmtp -i).
    AddHost {
        /// Host id (the host's `control/hostid`).
        host: String,
        /// The address relays and proxies connect to.
        ip: IpAddr,
        /// A domain the host holds users of (repeatable).
        #[arg(long = "domain")]
        domains: Vec<String>,
        /// SMTP port of the host for those domains (default 25 when no row exists).
        #[arg(long, requires = "domains")]
        smtp_port: Option<u16>,
        /// Sending host the port applies to (`*` = any).
        #[arg(long, default_value = "*")]
        src_host: String,
    },
    /// Remove a host: its smtp_port and host_table rows. Refused while users are placed on
    /// it, unless `--force`.
    DelHost {
        /// Host id.
        host: String,
        /// Remove even with users placed on it (their mail defers until they are moved).
        #[arg(long)]
        force: bool,
    },
    /// List hosts: address, user count and SMTP ports.
    Hosts,
    /// Place a user (or `*@domain`, the domain default) on a registered host: new mail and
    /// new logins go there (hostcntrl -i / -m).
    Move {
        /// user@domain or *@domain
        email: String,
        /// Host id (must be registered with add-host).
        host: String,
    },
    /// Where mail and logins for a user go: `domain:ip:port host`, uncached.
    Where {
        /// user@domain
        email: String,
    },
}

/// `indimail atrn ...` (IndiMail's vatrn)
#[derive(Debug, Clone, Subcommand)]
pub enum AtrnCommand {
    /// Let a user turn a domain with ATRN (vatrn -i).
    Add {
        /// user@domain
        email: String,
        /// The domain whose mail the user may receive by ATRN.
        domain: String,
    },
    /// Remove one domain of a user, or all (vatrn -d).
    Del {
        /// user@domain
        email: String,
        /// The domain (all when absent).
        domain: Option<String>,
    },
    /// Replace one domain of a user by another (vatrn -u old -i new).
    Mod {
        /// user@domain
        email: String,
        /// The domain to replace.
        old: String,
        /// The new domain.
        new: String,
    },
    /// List mappings, of one user or all (vatrn -s).
    List {
        /// user@domain (all when absent).
        email: Option<String>,
    },
}

/// `indimail checkpassword [PROGRAM ARGS...]`
#[derive(Debug, Clone, Args)]
pub struct CheckpasswordArgs {
    /// Program to exec after a successful check.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub program: Vec<String>,
}

/// A standalone parser for [`DirectoryCommand`] (tests, and binaries without other commands).
#[derive(Debug, Parser)]
#[command(name = "indimail")]
pub struct DirectoryCli {
    /// The command.
    #[command(subcommand)]
    pub command: DirectoryCommand,
}

/// Why a command failed; each maps to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The directory refused or failed.
    #[error("{0}")]
    Lookup(#[from] LookupError),
    /// Bad command line.
    #[error("usage: {0}")]
    Usage(String),
    /// Writing the output failed.
    #[error("output: {0}")]
    Output(#[from] std::io::Error),
    /// Exit with this code, nothing to print (checkpassword).
    #[error("exit {0}")]
    Exit(i32),
}

impl CliError {
    /// Exit code: 111 temporary, 2 usage, 1 otherwise (or the carried code).
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Lookup(e) if e.is_temporary() => 111,
            CliError::Lookup(_) | CliError::Output(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Exit(c) => *c,
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Output)
}

fn parse_quota(s: &str) -> Result<Quota, CliError> {
    Ok(Quota::parse(s)?)
}

fn parse_hash(s: &Option<String>) -> Result<Option<HashMethod>, CliError> {
    s.as_deref()
        .map(HashMethod::parse)
        .transpose()
        .map_err(CliError::from)
}

fn pw_opts(a: &PasswordArgs) -> Result<PasswordOptions, CliError> {
    Ok(PasswordOptions {
        hash: parse_hash(&a.hash)?,
        encrypted: a.encrypted,
        cram: a.cram,
        scram: scram_opts(a)?,
    })
}

/// `-m MECHANISM [-S salt] [-I iterations]`.
fn scram_opts(a: &PasswordArgs) -> Result<Option<ScramOptions>, CliError> {
    match a.scram.as_deref() {
        None => Ok(None),
        Some(m) if m.eq_ignore_ascii_case("SCRAM-SHA-256") => Ok(Some(ScramOptions {
            salt: a.scram_salt.clone(),
            iterations: a.scram_iterations,
        })),
        Some(m) => Err(CliError::Usage(format!(
            "SCRAM mechanism {m} not supported (only SCRAM-SHA-256)"
        ))),
    }
}

fn flags_of(names: &[String]) -> Result<u32, CliError> {
    names.iter().try_fold(0u32, |acc, n| {
        UserFlags::by_name(n)
            .map(|b| acc | b)
            .ok_or_else(|| CliError::Usage(format!("unknown flag {n}")))
    })
}

/// Print a user as `key: value` lines (the `dir:` line is relied on by tests and scripts).
pub fn print_user(out: &mut dyn Write, u: &User) -> std::io::Result<()> {
    writeln!(out, "name: {}", u.email())?;
    writeln!(out, "passwd: {}", u.passwd)?;
    if let Some(s) = &u.scram {
        writeln!(out, "scram: {s}")?;
    }
    writeln!(out, "uid: {}", u.uid)?;
    writeln!(out, "gid: {}", u.flags.0)?;
    writeln!(out, "flags: {}", u.flags)?;
    writeln!(out, "gecos: {}", u.gecos)?;
    writeln!(out, "dir: {}", u.dir.display())?;
    writeln!(out, "quota: {}", u.quota)?;
    writeln!(out, "active: {}", if u.active { "yes" } else { "no" })
}

fn print_domain(out: &mut dyn Write, d: &DomainInfo) -> std::io::Result<()> {
    writeln!(out, "domain: {}", d.name)?;
    writeln!(out, "dir: {}", d.dir.display())?;
    writeln!(out, "base path: {}", d.base_path.display())?;
    writeln!(out, "users: {}", d.users)?;
    writeln!(out, "users per level: {}", d.users_per_level)?;
    writeln!(out, "aliases: {}", d.aliases.join(" "))
}

async fn run_cluster(
    admin: &Admin,
    cmd: ClusterCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match cmd {
        ClusterCommand::AddHost {
            host,
            ip,
            domains,
            smtp_port,
            src_host,
        } => {
            admin.host_set(&host, ip).await?;
            writeln!(out, "host {host} is {ip}")?;
            if let Some(port) = smtp_port {
                for d in &domains {
                    admin.smtp_port_set(d, &host, &src_host, port).await?;
                    writeln!(out, "{} on {host}: port {port}", d.to_ascii_lowercase())?;
                }
            }
        }
        ClusterCommand::DelHost { host, force } => {
            admin.cluster_host_del(&host, force).await?;
            writeln!(out, "removed host {host}")?;
        }
        ClusterCommand::Hosts => {
            for h in admin.cluster_hosts().await? {
                let ip = if h.ip.is_empty() { "-" } else { &h.ip };
                let ports: Vec<String> = h
                    .ports
                    .iter()
                    .map(|(d, src, p)| format!("{d}:{src}:{p}"))
                    .collect();
                writeln!(
                    out,
                    "{} {ip} users={} smtp={}",
                    h.host,
                    h.users,
                    if ports.is_empty() {
                        "-".to_string()
                    } else {
                        ports.join(",")
                    }
                )?;
            }
        }
        ClusterCommand::Move { email, host } => match admin.cluster_move(&email, &host).await? {
            Some(old) if old == host => writeln!(out, "{email} is on {host} already")?,
            Some(old) => writeln!(out, "moved {email} from {old} to {host}")?,
            None => writeln!(out, "placed {email} on {host}")?,
        },
        ClusterCommand::Where { email } => match admin.mailstore_of(&email).await? {
            Some(m) => writeln!(out, "{m} {}", m.host_id)?,
            None => writeln!(out, "{email}: not placed (local to every host)")?,
        },
    }
    Ok(())
}

/// Run a directory command against the home `home`, writing results to `out`.
pub fn run(cmd: DirectoryCommand, home: &Path, out: &mut dyn Write) -> Result<(), CliError> {
    if let DirectoryCommand::Checkpassword(a) = &cmd {
        return match crate::checkpassword::run(home, &a.program) {
            0 => Ok(()),
            c => Err(CliError::Exit(c)),
        };
    }
    if let DirectoryCommand::Dbinfo(a) = &cmd {
        dbinfo::plan(a)?;
    }
    let cfg = DirectoryConfig::from_home(home)?;
    runtime()?.block_on(async {
        let admin = Admin::open(cfg).await?;
        let r = run_admin(&admin, cmd, out).await;
        admin.close().await;
        r
    })
}

async fn run_admin(
    admin: &Admin,
    cmd: DirectoryCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match cmd {
        DirectoryCommand::Domain(c) => match c {
            DomainCommand::Add {
                domain,
                users_per_level,
                base_path,
                postmaster_password,
            } => {
                let info = admin
                    .domain_add(
                        &domain,
                        &DomainOptions {
                            users_per_level,
                            base_path,
                        },
                    )
                    .await?;
                // vadddomain: every domain gets its postmaster mailbox
                // (RFC 5321 4.5.1); without a password given, a random one
                // the operator is shown once.
                let generated = postmaster_password.is_none();
                let pw = match postmaster_password {
                    Some(pw) => pw,
                    None => crate::password::random_salt(16)?,
                };
                let postmaster = format!("postmaster@{}", info.name);
                admin
                    .user_add(&postmaster, &pw, &UserOptions::default())
                    .await?;
                writeln!(out, "added domain {}", info.name)?;
                if generated {
                    writeln!(out, "{postmaster} password: {pw}")?;
                }
            }
            DomainCommand::Del { domain } => {
                admin.domain_del(&domain).await?;
                writeln!(out, "deleted domain {}", domain.to_ascii_lowercase())?;
            }
            DomainCommand::List => {
                for d in admin.domain_list().await? {
                    writeln!(out, "{d}")?;
                }
            }
            DomainCommand::Info { domain } => {
                print_domain(out, &admin.domain_info(&domain).await?)?
            }
            DomainCommand::AddAlias { alias, domain } => {
                admin.alias_domain_add(&alias, &domain).await?;
                writeln!(out, "added alias domain {alias} -> {domain}")?;
            }
            DomainCommand::Limits(a) => run_limits(admin, *a, out).await?,
            DomainCommand::Rename { old, new } => {
                let info = admin.domain_rename(&old, &new).await?;
                writeln!(
                    out,
                    "renamed domain {} to {}",
                    old.to_ascii_lowercase(),
                    info.name
                )?;
            }
            DomainCommand::Mod {
                domain,
                limits,
                handler,
            } => {
                let limits = match limits.as_deref() {
                    None => None,
                    Some("1") => Some(true),
                    Some("0") => Some(false),
                    Some(v) => {
                        return Err(CliError::Usage(format!(
                            "limits: expected 0 or 1, got {v:?}"
                        )))
                    }
                };
                let s = admin
                    .domain_mod(&domain, &DomainChange { limits, handler })
                    .await?;
                writeln!(out, "domain: {}", s.name)?;
                writeln!(out, "limits: {}", if s.limits { "on" } else { "off" })?;
                writeln!(out, "handler: {}", s.handler)?;
            }
        },
        DirectoryCommand::User(c) => match c {
            UserCommand::Add {
                email,
                password,
                quota,
                gecos,
                inactive,
                base_path,
                pw,
            } => {
                let opts = UserOptions {
                    quota: quota.as_deref().map(parse_quota).transpose()?,
                    gecos,
                    hash: parse_hash(&pw.hash)?,
                    encrypted: pw.encrypted,
                    cram: pw.cram,
                    scram: scram_opts(&pw)?,
                    inactive,
                    base_path,
                };
                let u = admin.user_add(&email, &password, &opts).await?;
                writeln!(out, "added user {}", u.email())?;
                writeln!(out, "dir: {}", u.dir.display())?;
            }
            UserCommand::Del { email } => {
                admin.user_del(&email).await?;
                writeln!(out, "deleted user {email}")?;
            }
            UserCommand::Passwd {
                email,
                password,
                pw,
            } => {
                admin.user_passwd(&email, &password, pw_opts(&pw)?).await?;
                writeln!(out, "password changed for {email}")?;
            }
            UserCommand::Mod {
                email,
                gecos,
                quota,
                toggle_active,
                set,
                clear,
                reset_flags,
                password,
                pw,
                vacation,
            } => {
                let change = UserChange {
                    gecos,
                    quota: quota.as_deref().map(parse_quota).transpose()?,
                    set_flags: flags_of(&set)?,
                    clear_flags: flags_of(&clear)?,
                    reset_flags,
                    toggle_active,
                    password: match password {
                        Some(p) => Some((p, pw_opts(&pw)?)),
                        None => None,
                    },
                };
                let u = admin.user_mod(&email, &change).await?;
                if let Some(v) = vacation {
                    let text = match v.as_str() {
                        "-" => None,
                        "+" => {
                            let mut t = Vec::new();
                            std::io::Read::read_to_end(&mut std::io::stdin(), &mut t)
                                .map_err(|e| CliError::Usage(format!("vacation text: {e}")))?;
                            Some(t)
                        }
                        file => Some(std::fs::read(file).map_err(|e| {
                            CliError::Usage(format!("vacation message {file}: {e}"))
                        })?),
                    };
                    crate::admin::set_vacation(&u.dir, text.as_deref())?;
                    let what = if text.is_some() { "set" } else { "removed" };
                    writeln!(out, "vacation reply {what} for {email}")?;
                }
                print_user(out, &u)?;
            }
            UserCommand::Info { email } => print_user(out, &admin.user_info(&email).await?)?,
            UserCommand::List { domain } => list_users(admin, domain.as_deref(), out).await?,
            UserCommand::Quota { email, quota } => {
                admin.set_quota(&email, parse_quota(&quota)?).await?;
                writeln!(out, "quota of {email} set to {quota}")?;
            }
            UserCommand::Rename { old, new } => {
                let u = admin.user_rename(&old, &new).await?;
                writeln!(out, "renamed user {old} to {}", u.email())?;
                writeln!(out, "dir: {}", u.dir.display())?;
            }
            UserCommand::Expire { domain, days, yes } => {
                let age = i64::try_from(days.saturating_mul(86_400)).unwrap_or(i64::MAX);
                let before = crate::unix_now().saturating_sub(age);
                let stale = admin.stale_users(domain.as_deref(), before).await?;
                for s in &stale {
                    if yes {
                        admin.user_del(&s.email).await?;
                        writeln!(
                            out,
                            "deleted {} (last login {})",
                            s.email,
                            format_time(s.last)
                        )?;
                    } else {
                        writeln!(
                            out,
                            "would delete {} (last login {})",
                            s.email,
                            format_time(s.last)
                        )?;
                    }
                }
                if !yes && !stale.is_empty() {
                    writeln!(
                        out,
                        "{} users not deleted: give --yes (-y) to delete them",
                        stale.len()
                    )?;
                }
            }
        },
        DirectoryCommand::Alias(c) => match c {
            AliasCommand::Add { email, line } => {
                admin.alias_add(&email, &line).await?;
                writeln!(out, "added alias {email} -> {line}")?;
            }
            AliasCommand::Del { email, line } => {
                admin.alias_del(&email, line.as_deref()).await?;
                writeln!(out, "deleted alias {email}")?;
            }
            AliasCommand::List { target } => {
                for (a, l) in admin.alias_list(&target).await? {
                    writeln!(out, "{a} -> {l}")?;
                }
            }
        },
        DirectoryCommand::Hostcntrl(c) => match c {
            HostCommand::Add { email, host } => {
                admin.hostcntrl_add(&email, &host).await?;
                writeln!(out, "placed {email} on {host}")?;
            }
            HostCommand::Mod { email, host } => {
                admin.hostcntrl_mod(&email, &host).await?;
                writeln!(out, "moved {email} to {host}")?;
            }
            HostCommand::Del { email } => {
                admin.hostcntrl_del(&email).await?;
                writeln!(out, "removed {email}")?;
            }
            HostCommand::List { domain } => {
                for h in admin.hostcntrl_list(domain.as_deref()).await? {
                    writeln!(out, "{}@{} {}", h.user, h.domain, h.host)?;
                }
            }
            HostCommand::SetHost { host, ip } => {
                admin.host_set(&host, ip).await?;
                writeln!(out, "host {host} is {ip}")?;
            }
            HostCommand::DelHost { host } => {
                admin.host_del(&host).await?;
                writeln!(out, "removed host {host}")?;
            }
            HostCommand::DelPort {
                domain,
                host,
                src_host,
            } => {
                admin.smtp_port_del(&domain, &host, &src_host).await?;
                writeln!(out, "{domain} on {host}: port removed")?;
            }
            HostCommand::SetPort {
                domain,
                host,
                port,
                src_host,
            } => {
                admin.smtp_port_set(&domain, &host, &src_host, port).await?;
                writeln!(out, "{domain} on {host}: port {port}")?;
            }
        },
        DirectoryCommand::Cluster(c) => run_cluster(admin, c, out).await?,
        DirectoryCommand::Atrn(c) => match c {
            AtrnCommand::Add { email, domain } => {
                admin.atrn_add(&email, &domain).await?;
                writeln!(out, "{email} may turn {}", domain.to_ascii_lowercase())?;
            }
            AtrnCommand::Del { email, domain } => {
                admin.atrn_del(&email, domain.as_deref()).await?;
                writeln!(out, "removed ATRN map of {email}")?;
            }
            AtrnCommand::Mod { email, old, new } => {
                admin.atrn_update(&email, &old, &new).await?;
                writeln!(
                    out,
                    "{email} may turn {} instead of {old}",
                    new.to_ascii_lowercase()
                )?;
            }
            AtrnCommand::List { email } => {
                for (who, domain) in admin.atrn_list(email.as_deref()).await? {
                    writeln!(out, "{who} {domain}")?;
                }
            }
        },
        DirectoryCommand::Relay(RelayCommand::Clear { minutes }) => {
            let window = match minutes {
                Some(m) => m.saturating_mul(60),
                None => admin.config().relay_window.as_secs(),
            };
            let before =
                crate::unix_now().saturating_sub(i64::try_from(window).unwrap_or(i64::MAX));
            let n = admin.relay_clear(before).await?;
            writeln!(
                out,
                "cleared {n} relay entries older than {} minutes",
                window / 60
            )?;
        }
        DirectoryCommand::Dbinfo(a) => dbinfo::run(admin, a, out).await?,
        DirectoryCommand::Checkpassword(_) => {
            return Err(CliError::Usage("checkpassword is run by run()".into()))
        }
    }
    Ok(())
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `YYYY-MM-DD HH:MM:SS` UTC.
pub fn format_time(t: i64) -> String {
    let (y, m, d) = civil_from_days(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// An expiry: `-1`/`never`, Unix seconds, or `YYYY-MM-DD[ HH:MM[:SS]]` (UTC).
fn parse_expiry(what: &str, v: &str) -> Result<i64, CliError> {
    let bad = || {
        CliError::Usage(format!(
            "{what}: expected -1, Unix seconds or YYYY-MM-DD[ HH:MM[:SS]], got {v:?}"
        ))
    };
    let v = v.trim();
    if v == "-1" || v.eq_ignore_ascii_case("never") {
        return Ok(-1);
    }
    if let Ok(n) = v.parse::<i64>() {
        return if n >= 0 { Ok(n) } else { Err(bad()) };
    }
    let (date, time) = v.split_once([' ', 'T']).unwrap_or((v, "00:00:00"));
    let num = |s: &str, lo: i64, hi: i64| -> Result<i64, CliError> {
        s.parse::<i64>()
            .ok()
            .filter(|n| (lo..=hi).contains(n))
            .ok_or_else(bad)
    };
    let dp: Vec<&str> = date.split('-').collect();
    let tp: Vec<&str> = time.split(':').collect();
    if dp.len() != 3 || !(2..=3).contains(&tp.len()) {
        return Err(bad());
    }
    let (y, m, d) = (
        num(dp[0], 1970, 9999)?,
        num(dp[1], 1, 12)?,
        num(dp[2], 1, 31)?,
    );
    let secs = num(tp[0], 0, 23)? * 3600
        + num(tp[1], 0, 59)? * 60
        + tp.get(2).map(|s| num(s, 0, 60)).transpose()?.unwrap_or(0);
    Ok(days_from_civil(y, m, d) * 86_400 + secs)
}

/// A count: `-1`/`unlimited` or a non-negative number.
fn parse_count(what: &str, v: &str) -> Result<i64, CliError> {
    if v == "-1" || v.eq_ignore_ascii_case("unlimited") {
        return Ok(-1);
    }
    v.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| CliError::Usage(format!("{what}: expected -1 or a count, got {v:?}")))
}

/// A size in bytes: `bytes[K|M|G]`, `0` or `NOQUOTA` (none).
fn parse_size(what: &str, v: &str) -> Result<i64, CliError> {
    if v == "0" {
        return Ok(0);
    }
    match Quota::parse(v) {
        Ok(Quota::Unlimited) => Ok(0),
        Ok(Quota::Limit { bytes, .. }) => {
            i64::try_from(bytes).map_err(|_| CliError::Usage(format!("{what}: {v} is too large")))
        }
        Err(_) => Err(CliError::Usage(format!(
            "{what}: expected bytes[K|M|G] or NOQUOTA, got {v:?}"
        ))),
    }
}

/// vlimit -g letters and the columns they set.
const LIMIT_FLAGS: [(char, &str); 7] = [
    ('u', "no-dialup"),
    ('d', "no-passwd-change"),
    ('p', "no-pop"),
    ('w', "no-webmail"),
    ('i', "no-imap"),
    ('r', "no-relay"),
    ('s', "no-smtp"),
];

/// The `disable_*` columns in [`LIMIT_FLAGS`] order.
fn flag_slots(l: &mut Limits) -> [&mut bool; 7] {
    [
        &mut l.disable_dialup,
        &mut l.disable_passwordchanging,
        &mut l.disable_pop,
        &mut l.disable_webmail,
        &mut l.disable_imap,
        &mut l.disable_relay,
        &mut l.disable_smtp,
    ]
}

/// Permission letters: c create 1, m modify 2, d delete 4, a all 7; x none.
fn parse_perm(what: &str, v: &str) -> Result<i64, CliError> {
    v.chars().try_fold(0i64, |acc, c| match c {
        'c' => Ok(acc | 1),
        'm' => Ok(acc | 2),
        'd' => Ok(acc | 4),
        'a' => Ok(acc | 7),
        'x' => Ok(acc),
        _ => Err(CliError::Usage(format!(
            "{what}: unknown permission letter {c:?} (c, m, d, a or x)"
        ))),
    })
}

fn perm_names(p: i64) -> String {
    let n: Vec<&str> = [(1, "create"), (2, "modify"), (4, "delete")]
        .iter()
        .filter(|(b, _)| p & b != 0)
        .map(|(_, n)| *n)
        .collect();
    if n.is_empty() {
        "none".into()
    } else {
        format!("deny {}", n.join(","))
    }
}

/// Apply the set options of `a` to `l`; whether any was given.
fn apply_limits(a: &LimitsArgs, l: &mut Limits) -> Result<bool, CliError> {
    type Parse = fn(&str, &str) -> Result<i64, CliError>;
    let nonneg: Parse = |w, v| parse_count(w, v).map(|n| n.max(0));
    let fields: [(&Option<String>, &str, Parse, &mut i64); 18] = [
        (
            &a.domain_expiry,
            "domain expiry",
            parse_expiry,
            &mut l.domain_expiry,
        ),
        (
            &a.passwd_expiry,
            "password expiry",
            parse_expiry,
            &mut l.passwd_expiry,
        ),
        (&a.disk_quota, "disk quota", parse_size, &mut l.diskquota),
        (&a.max_msgcount, "max msgcount", nonneg, &mut l.maxmsgcount),
        (
            &a.default_quota,
            "default quota",
            parse_size,
            &mut l.defaultquota,
        ),
        (
            &a.default_maxmsgcount,
            "default maxmsgcount",
            nonneg,
            &mut l.defaultmaxmsgcount,
        ),
        (
            &a.max_pop_accounts,
            "max pop accounts",
            parse_count,
            &mut l.maxpopaccounts,
        ),
        (
            &a.max_aliases,
            "max aliases",
            parse_count,
            &mut l.maxaliases,
        ),
        (
            &a.max_forwards,
            "max forwards",
            parse_count,
            &mut l.maxforwards,
        ),
        (
            &a.max_autoresponders,
            "max autoresponders",
            parse_count,
            &mut l.maxautoresponders,
        ),
        (
            &a.max_mailinglists,
            "max mailing lists",
            parse_count,
            &mut l.maxmailinglists,
        ),
        (
            &a.perm_account,
            "account permissions",
            parse_perm,
            &mut l.perm_account,
        ),
        (
            &a.perm_alias,
            "alias permissions",
            parse_perm,
            &mut l.perm_alias,
        ),
        (
            &a.perm_forward,
            "forward permissions",
            parse_perm,
            &mut l.perm_forward,
        ),
        (
            &a.perm_autoresponder,
            "autoresponder permissions",
            parse_perm,
            &mut l.perm_autoresponder,
        ),
        (
            &a.perm_maillist,
            "mailing list permissions",
            parse_perm,
            &mut l.perm_maillist,
        ),
        (
            &a.perm_quota,
            "quota permissions",
            parse_perm,
            &mut l.perm_quota,
        ),
        (
            &a.perm_defaultquota,
            "default quota permissions",
            parse_perm,
            &mut l.perm_defaultquota,
        ),
    ];
    let mut any = false;
    for (v, what, parse, slot) in fields {
        if let Some(v) = v {
            *slot = parse(what, v)?;
            any = true;
        }
    }
    if let Some(v) = &a.flags {
        let mut on = [false; 7];
        for c in v.chars() {
            match LIMIT_FLAGS.iter().position(|(f, _)| *f == c) {
                Some(i) => on[i] = true,
                None if c == 'x' => on = [false; 7],
                None => {
                    return Err(CliError::Usage(format!(
                        "flags: unknown letter {c:?} (u d p w i r s, or x)"
                    )))
                }
            }
        }
        for (slot, v) in flag_slots(l).into_iter().zip(on) {
            *slot = v;
        }
        any = true;
    }
    Ok(any)
}

/// vlimit -s: one `key: value` line per limit.
fn print_limits(out: &mut dyn Write, l: &Limits, stored: bool) -> std::io::Result<()> {
    let when = |t: i64| {
        if t < 0 {
            "never".to_string()
        } else {
            format!("{} ({t})", format_time(t))
        }
    };
    let count = |n: i64| {
        if n < 0 {
            "unlimited".to_string()
        } else {
            n.to_string()
        }
    };
    let size = |n: i64| {
        if n <= 0 {
            "none".to_string()
        } else {
            n.to_string()
        }
    };
    writeln!(out, "domain: {}", l.domain)?;
    writeln!(
        out,
        "source: {}",
        if stored { "vlimits" } else { "defaults" }
    )?;
    writeln!(out, "domain expiry: {}", when(l.domain_expiry))?;
    writeln!(out, "password expiry: {}", when(l.passwd_expiry))?;
    writeln!(out, "max pop accounts: {}", count(l.maxpopaccounts))?;
    writeln!(out, "max aliases: {}", count(l.maxaliases))?;
    writeln!(out, "max forwards: {}", count(l.maxforwards))?;
    writeln!(out, "max autoresponders: {}", count(l.maxautoresponders))?;
    writeln!(out, "max mailing lists: {}", count(l.maxmailinglists))?;
    writeln!(out, "disk quota: {}", size(l.diskquota))?;
    writeln!(out, "max msgcount: {}", size(l.maxmsgcount))?;
    writeln!(out, "default quota: {}", size(l.defaultquota))?;
    writeln!(out, "default maxmsgcount: {}", size(l.defaultmaxmsgcount))?;
    let values = [
        l.disable_dialup,
        l.disable_passwordchanging,
        l.disable_pop,
        l.disable_webmail,
        l.disable_imap,
        l.disable_relay,
        l.disable_smtp,
    ];
    let on: Vec<&str> = values
        .into_iter()
        .zip(LIMIT_FLAGS)
        .filter(|(v, _)| *v)
        .map(|(_, (_, n))| n)
        .collect();
    writeln!(
        out,
        "flags: {}",
        if on.is_empty() {
            "none".to_string()
        } else {
            on.join(",")
        }
    )?;
    for (what, p) in [
        ("account", l.perm_account),
        ("alias", l.perm_alias),
        ("forward", l.perm_forward),
        ("autoresponder", l.perm_autoresponder),
        ("maillist", l.perm_maillist),
        ("quota", l.perm_quota),
        ("defaultquota", l.perm_defaultquota),
    ] {
        writeln!(out, "perm {what}: {}", perm_names(p))?;
    }
    Ok(())
}

async fn run_limits(admin: &Admin, a: LimitsArgs, out: &mut dyn Write) -> Result<(), CliError> {
    if a.delete {
        admin.limits_del(&a.domain).await?;
        writeln!(out, "limits of {} deleted", a.domain.to_ascii_lowercase())?;
        return Ok(());
    }
    let stored = admin.limits_get(&a.domain).await?;
    let had = stored.is_some();
    let mut l = stored.unwrap_or_else(|| Limits::defaults(&a.domain.to_ascii_lowercase()));
    if apply_limits(&a, &mut l)? {
        admin.limits_set(&l).await?;
        writeln!(out, "limits of {} set", l.domain)?;
        if a.show {
            print_limits(out, &l, true)?;
        }
    } else {
        print_limits(out, &l, had)?;
    }
    Ok(())
}

/// Page size of streamed listings.
const LIST_PAGE: u32 = 1000;
/// Listings longer than this show progress on stderr.
const PROGRESS_EVERY: u64 = 10_000;

async fn list_users(
    admin: &Admin,
    domain: Option<&str>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let mut after: Option<(String, String)> = None;
    let mut n = 0u64;
    loop {
        let page = admin
            .user_page(
                domain,
                after.as_ref().map(|(d, u)| (d.as_str(), u.as_str())),
                LIST_PAGE,
            )
            .await?;
        for u in &page {
            writeln!(
                out,
                "{} {} {}{}",
                u.email(),
                u.dir.display(),
                u.quota,
                if u.active { "" } else { " inactive" }
            )?;
            n += 1;
            if n.is_multiple_of(PROGRESS_EVERY) {
                eprint!("\rlisted {n} users");
            }
        }
        out.flush()?;
        match page.last() {
            Some(u) if page.len() == LIST_PAGE as usize => {
                after = Some((u.domain.clone(), u.name.clone()))
            }
            _ => break,
        }
    }
    if n >= PROGRESS_EVERY {
        eprintln!("\rlisted {n} users");
    }
    Ok(())
}

/// A minimal POSIX getopt: `spec` lists option letters, a `:` after one means it takes a
/// value. Returns the options in order and the operands.
/// Options in order (letter, value) and operands.
type Parsed = (Vec<(char, String)>, Vec<String>);

fn getopt(args: &[String], spec: &str) -> Result<Parsed, CliError> {
    let mut opts = Vec::new();
    let mut rest = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            rest.extend(args[i + 1..].iter().cloned());
            break;
        }
        if !a.starts_with('-') || a.len() == 1 {
            rest.push(a.clone());
            i += 1;
            continue;
        }
        let chars: Vec<char> = a[1..].chars().collect();
        let mut j = 0;
        while j < chars.len() {
            let c = chars[j];
            let Some(pos) = spec.find(c) else {
                return Err(CliError::Usage(format!("unknown option -{c}")));
            };
            if spec[pos + c.len_utf8()..].starts_with(':') {
                let val: String = chars[j + 1..].iter().collect();
                let val = if !val.is_empty() {
                    val
                } else {
                    i += 1;
                    args.get(i)
                        .cloned()
                        .ok_or_else(|| CliError::Usage(format!("option -{c} needs a value")))?
                };
                opts.push((c, val));
                break;
            }
            opts.push((c, String::new()));
            j += 1;
        }
        i += 1;
    }
    Ok((opts, rest))
}

fn operand(rest: &[String], i: usize, what: &str) -> Result<String, CliError> {
    rest.get(i)
        .cloned()
        .ok_or_else(|| CliError::Usage(format!("missing {what}")))
}

/// vmoduser's flag letters.
const VMODUSER_FLAGS: [(char, u32); 13] = [
    ('d', UserFlags::NO_PASSWD_CHNG),
    ('p', UserFlags::NO_POP),
    ('w', UserFlags::NO_WEBMAIL),
    ('i', UserFlags::NO_IMAP),
    ('b', UserFlags::BOUNCE_MAIL),
    ('r', UserFlags::NO_RELAY),
    ('u', UserFlags::NO_DIALUP),
    ('a', UserFlags::QA_ADMIN),
    ('s', UserFlags::NO_SMTP),
    ('0', UserFlags::V_USER0),
    ('1', UserFlags::V_USER1),
    ('2', UserFlags::V_USER2),
    ('3', UserFlags::V_USER3),
];

fn program_command(name: &str, args: &[String]) -> Result<DirectoryCommand, CliError> {
    let pw_from = |opts: &[(char, String)]| -> Result<PasswordArgs, CliError> {
        let last = |l: char| opts.iter().rfind(|(c, _)| *c == l).map(|(_, v)| v.clone());
        Ok(PasswordArgs {
            hash: last('h'),
            encrypted: opts.iter().any(|(c, _)| *c == 'e'),
            cram: opts.iter().any(|(c, _)| *c == 'C'),
            scram: last('m'),
            scram_salt: last('S'),
            scram_iterations: last('I')
                .map(|v| {
                    v.parse()
                        .map_err(|_| CliError::Usage(format!("bad -I {v}")))
                })
                .transpose()?,
        })
    };
    let val = |opts: &[(char, String)], c: char| -> Option<String> {
        opts.iter().rfind(|(o, _)| *o == c).map(|(_, v)| v.clone())
    };
    Ok(match name {
        "vadddomain" => {
            let (o, r) = getopt(args, "l:B:q:h:eC")?;
            DirectoryCommand::Domain(DomainCommand::Add {
                domain: operand(&r, 0, "domain")?,
                users_per_level: val(&o, 'l')
                    .map(|v| {
                        v.parse()
                            .map_err(|_| CliError::Usage(format!("bad -l {v}")))
                    })
                    .transpose()?,
                base_path: val(&o, 'B').map(PathBuf::from),
                postmaster_password: r.get(1).cloned(),
            })
        }
        "vdeldomain" => {
            let (_, r) = getopt(args, "cT")?;
            DirectoryCommand::Domain(DomainCommand::Del {
                domain: operand(&r, 0, "domain")?,
            })
        }
        "vdominfo" => {
            let (_, r) = getopt(args, "anugdbtlp")?;
            match r.first() {
                Some(d) => DirectoryCommand::Domain(DomainCommand::Info { domain: d.clone() }),
                None => DirectoryCommand::Domain(DomainCommand::List),
            }
        }
        "vaddaliasdomain" => {
            let (_, r) = getopt(args, "")?;
            DirectoryCommand::Domain(DomainCommand::AddAlias {
                alias: operand(&r, 0, "new alias domain")?,
                domain: operand(&r, 1, "existing domain")?,
            })
        }
        "vadduser" => {
            let (o, r) = getopt(args, "q:c:h:eCiB:dbr:lm:S:I:")?;
            DirectoryCommand::User(UserCommand::Add {
                email: operand(&r, 0, "address")?,
                password: operand(&r, 1, "password")?,
                quota: val(&o, 'q'),
                gecos: val(&o, 'c'),
                inactive: o.iter().any(|(c, _)| *c == 'i'),
                base_path: val(&o, 'B').map(PathBuf::from),
                pw: pw_from(&o)?,
            })
        }
        "vdeluser" => {
            let (_, r) = getopt(args, "")?;
            DirectoryCommand::User(UserCommand::Del {
                email: operand(&r, 0, "address")?,
            })
        }
        "vpasswd" => {
            let (o, r) = getopt(args, "r:h:eCm:S:I:")?;
            DirectoryCommand::User(UserCommand::Passwd {
                email: operand(&r, 0, "address")?,
                password: operand(&r, 1, "password")?,
                pw: pw_from(&o)?,
            })
        }
        "vmoduser" => {
            let (o, r) = getopt(args, "nq:c:P:h:eCxtdpwibruas0123m:S:I:l:")?;
            let mut set = Vec::new();
            for (c, _) in &o {
                if let Some((_, bit)) = VMODUSER_FLAGS.iter().find(|(f, _)| f == c) {
                    if let Some((n, _)) = UserFlags::NAMES.iter().find(|(_, b)| b == bit) {
                        set.push((*n).to_string());
                    }
                }
            }
            DirectoryCommand::User(UserCommand::Mod {
                email: operand(&r, 0, "address")?,
                gecos: val(&o, 'c'),
                quota: val(&o, 'q'),
                toggle_active: o.iter().any(|(c, _)| *c == 'n'),
                set,
                clear: Vec::new(),
                reset_flags: o.iter().any(|(c, _)| *c == 'x'),
                password: val(&o, 'P'),
                pw: pw_from(&o)?,
                vacation: val(&o, 'l'),
            })
        }
        "vuserinfo" => {
            let (_, r) = getopt(args, "anpugcdqlm")?;
            DirectoryCommand::User(UserCommand::Info {
                email: operand(&r, 0, "address")?,
            })
        }
        "vsetuserquota" => {
            let (_, r) = getopt(args, "")?;
            DirectoryCommand::User(UserCommand::Quota {
                email: operand(&r, 0, "address")?,
                quota: operand(&r, 1, "quota")?,
            })
        }
        "valias" => {
            let (o, r) = getopt(args, "sSd:i:u:m")?;
            let target = operand(&r, 0, "address or domain")?;
            if let Some(line) = val(&o, 'i') {
                DirectoryCommand::Alias(AliasCommand::Add {
                    email: target,
                    line,
                })
            } else if let Some(line) = val(&o, 'd') {
                DirectoryCommand::Alias(AliasCommand::Del {
                    email: target,
                    line: Some(line),
                })
            } else {
                DirectoryCommand::Alias(AliasCommand::List { target })
            }
        }
        "hostcntrl" => {
            let (o, r) = getopt(args, "lsdi:m:")?;
            if o.iter().any(|(c, _)| *c == 'l' || *c == 's') {
                DirectoryCommand::Hostcntrl(HostCommand::List {
                    domain: r.first().map(|t| match t.rsplit_once('@') {
                        Some((_, d)) => d.to_string(),
                        None => t.clone(),
                    }),
                })
            } else if let Some(host) = val(&o, 'i') {
                DirectoryCommand::Hostcntrl(HostCommand::Add {
                    email: operand(&r, 0, "address")?,
                    host,
                })
            } else if let Some(host) = val(&o, 'm') {
                DirectoryCommand::Hostcntrl(HostCommand::Mod {
                    email: operand(&r, 0, "address")?,
                    host,
                })
            } else if o.iter().any(|(c, _)| *c == 'd') {
                DirectoryCommand::Hostcntrl(HostCommand::Del {
                    email: operand(&r, 0, "address")?,
                })
            } else {
                return Err(CliError::Usage(
                    "hostcntrl -l|-s [dom] | -i id addr | -m id addr | -d addr".into(),
                ));
            }
        }
        "dbinfo" => DirectoryCommand::Dbinfo(dbinfo::parse_program(args)?),
        "vhostid" => {
            let (o, r) = getopt(args, "Ssd:i:u:")?;
            let ip = |v: String| {
                v.parse::<IpAddr>()
                    .map_err(|_| CliError::Usage(format!("not an IP address: {v}")))
            };
            if let Some(host) = val(&o, 'd') {
                DirectoryCommand::Hostcntrl(HostCommand::DelHost { host })
            } else if let Some(v) = val(&o, 'i').or_else(|| val(&o, 'u')) {
                DirectoryCommand::Hostcntrl(HostCommand::SetHost {
                    host: operand(&r, 0, "host id")?,
                    ip: ip(v)?,
                })
            } else if o.iter().any(|(c, _)| *c == 's' || *c == 'S') {
                DirectoryCommand::Cluster(ClusterCommand::Hosts)
            } else {
                return Err(CliError::Usage(
                    "vhostid -s | -d id | -i ip id | -u ip id".into(),
                ));
            }
        }
        "vsmtp" => {
            let (o, r) = getopt(args, "sdi:u:m:")?;
            if o.iter().any(|(c, _)| *c == 's') {
                DirectoryCommand::Cluster(ClusterCommand::Hosts)
            } else {
                let target = operand(&r, 0, "hostid@domain")?;
                let Some((host, domain)) = target.rsplit_once('@') else {
                    return Err(CliError::Usage(format!("expected hostid@domain: {target}")));
                };
                let (host, domain) = (host.to_string(), domain.to_string());
                let src_host = val(&o, 'm').unwrap_or_else(|| "*".into());
                if o.iter().any(|(c, _)| *c == 'd') {
                    DirectoryCommand::Hostcntrl(HostCommand::DelPort {
                        domain,
                        host,
                        src_host,
                    })
                } else if let Some(p) = val(&o, 'i').or_else(|| val(&o, 'u')) {
                    DirectoryCommand::Hostcntrl(HostCommand::SetPort {
                        domain,
                        host,
                        port: p
                            .parse()
                            .map_err(|_| CliError::Usage(format!("not a port: {p}")))?,
                        src_host,
                    })
                } else {
                    return Err(CliError::Usage(
                        "vsmtp -s | -d -m mta hostid@dom | -i port -m mta hostid@dom".into(),
                    ));
                }
            }
        }
        "vatrn" => {
            let (o, r) = getopt(args, "vsd:i:u:")?;
            let email = r.first().cloned();
            match (val(&o, 'u'), val(&o, 'i'), val(&o, 'd')) {
                (Some(old), Some(new), _) => DirectoryCommand::Atrn(AtrnCommand::Mod {
                    email: operand(&r, 0, "address")?,
                    old,
                    new,
                }),
                (None, Some(domain), _) => DirectoryCommand::Atrn(AtrnCommand::Add {
                    email: operand(&r, 0, "address")?,
                    domain,
                }),
                (None, None, Some(domain)) => DirectoryCommand::Atrn(AtrnCommand::Del {
                    email: operand(&r, 0, "address")?,
                    domain: Some(domain),
                }),
                (None, None, None) if o.iter().any(|(c, _)| *c == 's') => {
                    DirectoryCommand::Atrn(AtrnCommand::List { email })
                }
                _ => {
                    return Err(CliError::Usage(
                        "vatrn -i domain addr | -d domain addr | -u old -i new addr | -s [addr]"
                            .into(),
                    ))
                }
            }
        }
        "vlimit" => {
            let (o, r) = getopt(args, "vsdDe:t:Q:M:q:m:P:A:F:R:L:g:p:a:f:r:l:x:z:")?;
            let has = |l: char| o.iter().any(|(c, _)| *c == l);
            DirectoryCommand::Domain(DomainCommand::Limits(Box::new(LimitsArgs {
                domain: operand(&r, 0, "domain")?,
                show: has('s'),
                delete: has('d') || has('D'),
                domain_expiry: val(&o, 'e'),
                passwd_expiry: val(&o, 't'),
                disk_quota: val(&o, 'Q'),
                max_msgcount: val(&o, 'M'),
                default_quota: val(&o, 'q'),
                default_maxmsgcount: val(&o, 'm'),
                max_pop_accounts: val(&o, 'P'),
                max_aliases: val(&o, 'A'),
                max_forwards: val(&o, 'F'),
                max_autoresponders: val(&o, 'R'),
                max_mailinglists: val(&o, 'L'),
                flags: val(&o, 'g'),
                perm_account: val(&o, 'p'),
                perm_alias: val(&o, 'a'),
                perm_forward: val(&o, 'f'),
                perm_autoresponder: val(&o, 'r'),
                perm_maillist: val(&o, 'l'),
                perm_quota: val(&o, 'x'),
                perm_defaultquota: val(&o, 'z'),
            })))
        }
        "vrenameuser" => {
            let (_, r) = getopt(args, "v")?;
            DirectoryCommand::User(UserCommand::Rename {
                old: operand(&r, 0, "old address")?,
                new: operand(&r, 1, "new address")?,
            })
        }
        "vrenamedomain" => {
            let (_, r) = getopt(args, "v")?;
            DirectoryCommand::Domain(DomainCommand::Rename {
                old: operand(&r, 0, "old domain")?,
                new: operand(&r, 1, "new domain")?,
            })
        }
        "vmoddomain" => {
            let (o, r) = getopt(args, "vl:h:")?;
            DirectoryCommand::Domain(DomainCommand::Mod {
                domain: operand(&r, 0, "domain")?,
                limits: val(&o, 'l'),
                handler: val(&o, 'h'),
            })
        }
        "vdeloldusers" => {
            // --yes as well as -y: the flag guards a mass delete, accept the spelling
            // the `indimail user expire` help shows.
            let args: Vec<String> = args
                .iter()
                .map(|a| if a == "--yes" { "-y".into() } else { a.clone() })
                .collect();
            let (o, _) = getopt(&args, "vd:a:y")?;
            DirectoryCommand::User(UserCommand::Expire {
                domain: val(&o, 'd'),
                days: match val(&o, 'a') {
                    Some(v) => v
                        .parse()
                        .map_err(|_| CliError::Usage(format!("bad -a {v}: days expected")))?,
                    None => DEFAULT_EXPIRE_DAYS,
                },
                yes: o.iter().any(|(c, _)| *c == 'y'),
            })
        }
        "clearopensmtp" => {
            let (_, r) = getopt(args, "v")?;
            if let Some(extra) = r.first() {
                return Err(CliError::Usage(format!(
                    "clearopensmtp takes no operand: {extra}"
                )));
            }
            DirectoryCommand::Relay(RelayCommand::Clear { minutes: None })
        }
        other => return Err(CliError::Usage(format!("unknown program {other}"))),
    })
}

/// IndiMail program names this crate implements.
pub const PROGRAMS: [&str; 23] = [
    "vadddomain",
    "vdeldomain",
    "vdominfo",
    "vaddaliasdomain",
    "vadduser",
    "vdeluser",
    "vpasswd",
    "vmoduser",
    "vuserinfo",
    "vsetuserquota",
    "valias",
    "hostcntrl",
    "vhostid",
    "vsmtp",
    "vatrn",
    "checkpassword",
    "vlimit",
    "vrenameuser",
    "vrenamedomain",
    "vmoddomain",
    "vdeloldusers",
    "clearopensmtp",
    "dbinfo",
];

/// Run as the IndiMail program named by `argv0`'s basename (`vadddomain`, `vadduser`, ...)
/// with `args` (without argv0). `None` when the name is not one of [`PROGRAMS`]; otherwise
/// the exit code, with errors printed to stderr as `<program>: <problem>`.
pub fn run_as_program(
    argv0: &str,
    args: &[String],
    home: &Path,
    out: &mut dyn Write,
) -> Option<i32> {
    let name = Path::new(argv0).file_name()?.to_str()?;
    if !PROGRAMS.contains(&name) {
        return None;
    }
    let cmd = if name == "checkpassword" {
        Ok(DirectoryCommand::Checkpassword(CheckpasswordArgs {
            program: args.to_vec(),
        }))
    } else {
        program_command(name, args)
    };
    let r = cmd.and_then(|c| run(c, home, out));
    Some(match r {
        Ok(()) => 0,
        Err(CliError::Exit(c)) => c,
        Err(e) => {
            eprintln!("{name}: {e}");
            match e {
                // IndiMail's dbinfo exits 100 on a bad command line.
                CliError::Usage(_) if name == "dbinfo" => 100,
                e => e.exit_code(),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn getopt_clusters_and_values() {
        let (o, r) = getopt(&s(&["-eq", "5M", "-cJohn", "a@b", "pw"]), "q:c:e").unwrap();
        assert_eq!(
            o,
            vec![
                ('e', String::new()),
                ('q', "5M".into()),
                ('c', "John".into())
            ]
        );
        assert_eq!(r, s(&["a@b", "pw"]));
        assert!(getopt(&s(&["-z"]), "q:").is_err());
        assert!(getopt(&s(&["-q"]), "q:").is_err());
    }

    #[test]
    fn vatrn_options() {
        let c = program_command("vatrn", &s(&["-i", "node.example", "a@b.c"])).unwrap();
        assert!(
            matches!(c, DirectoryCommand::Atrn(AtrnCommand::Add { ref email, ref domain })
            if email == "a@b.c" && domain == "node.example")
        );
        let c = program_command("vatrn", &s(&["-d", "node.example", "a@b.c"])).unwrap();
        assert!(matches!(
            c,
            DirectoryCommand::Atrn(AtrnCommand::Del {
                domain: Some(_),
                ..
            })
        ));
        let c = program_command(
            "vatrn",
            &s(&["-u", "old.example", "-i", "new.example", "a@b.c"]),
        )
        .unwrap();
        assert!(
            matches!(c, DirectoryCommand::Atrn(AtrnCommand::Mod { ref old, ref new, .. })
            if old == "old.example" && new == "new.example")
        );
        let c = program_command("vatrn", &s(&["-s"])).unwrap();
        assert!(matches!(
            c,
            DirectoryCommand::Atrn(AtrnCommand::List { email: None })
        ));
        assert!(program_command("vatrn", &s(&["a@b.c"])).is_err());
        assert!(program_command("vatrn", &s(&["-i", "node.example"])).is_err());
    }

    #[test]
    fn program_names_map_to_commands() {
        let c = program_command("vadduser", &s(&["-q", "1M", "a@b.c", "pw"])).unwrap();
        assert!(
            matches!(c, DirectoryCommand::User(UserCommand::Add { ref quota, .. }) if quota.as_deref() == Some("1M"))
        );
        let c = program_command("vmoduser", &s(&["-p", "-r", "a@b.c"])).unwrap();
        let DirectoryCommand::User(UserCommand::Mod { set, .. }) = c else {
            panic!()
        };
        assert_eq!(set, s(&["no-pop", "no-relay"]));
        assert!(program_command("vadduser", &s(&["a@b.c"])).is_err());
    }

    #[test]
    fn scram_options() {
        let c = program_command(
            "vpasswd",
            &s(&[
                "-m",
                "SCRAM-SHA-256",
                "-I",
                "8192",
                "-S",
                "salty",
                "a@b.c",
                "pw",
            ]),
        )
        .unwrap();
        let DirectoryCommand::User(UserCommand::Passwd { pw, .. }) = c else {
            panic!()
        };
        assert_eq!(
            pw_opts(&pw).unwrap().scram,
            Some(ScramOptions {
                salt: Some("salty".into()),
                iterations: Some(8192)
            })
        );
        let c = program_command("vadduser", &s(&["-m", "SCRAM-SHA-1", "a@b.c", "pw"])).unwrap();
        let DirectoryCommand::User(UserCommand::Add { pw, .. }) = c else {
            panic!()
        };
        assert!(matches!(pw_opts(&pw), Err(CliError::Usage(_))));
        assert!(program_command("vpasswd", &s(&["-I", "many", "a@b.c", "pw"])).is_err());
        let c = DirectoryCli::try_parse_from([
            "indimail",
            "user",
            "add",
            "a@b.c",
            "--password",
            "x",
            "-m",
            "SCRAM-SHA-256",
        ])
        .unwrap();
        let DirectoryCommand::User(UserCommand::Add { pw, .. }) = c.command else {
            panic!()
        };
        assert_eq!(pw_opts(&pw).unwrap().scram, Some(ScramOptions::default()));
        // Salt and iterations only with a mechanism.
        assert!(DirectoryCli::try_parse_from([
            "indimail",
            "user",
            "passwd",
            "a@b.c",
            "--password",
            "x",
            "--scram-salt",
            "s",
        ])
        .is_err());
    }

    #[test]
    fn expiry_forms() {
        assert_eq!(parse_expiry("e", "1970-01-01").unwrap(), 0);
        assert_eq!(parse_expiry("e", "never").unwrap(), -1);
        assert_eq!(parse_expiry("e", "86400").unwrap(), 86_400);
        let t = parse_expiry("e", "2000-02-29 12:30").unwrap();
        assert_eq!(t, 951_827_400);
        assert_eq!(format_time(t), "2000-02-29 12:30:00");
        assert_eq!(format_time(1_893_542_400), "2030-01-02 00:00:00");
        for bad in [
            "-5",
            "2030-00-01",
            "2030-01-01 24:00",
            "tomorrow",
            "2030-01",
        ] {
            assert!(parse_expiry("e", bad).is_err(), "{bad}");
        }
        assert_eq!(parse_perm("p", "cd").unwrap(), 5);
        assert_eq!(parse_perm("p", "a").unwrap(), 7);
        assert!(parse_perm("p", "q").is_err());
        assert_eq!(parse_size("q", "1K").unwrap(), 1024);
        assert_eq!(parse_size("q", "NOQUOTA").unwrap(), 0);
    }

    #[test]
    fn clap_parses() {
        let c = DirectoryCli::try_parse_from([
            "indimail",
            "user",
            "add",
            "a@b.c",
            "--password",
            "x",
            "--hash",
            "SHA-512",
        ])
        .unwrap();
        assert!(matches!(
            c.command,
            DirectoryCommand::User(UserCommand::Add { .. })
        ));
        use clap::CommandFactory;
        DirectoryCli::command().debug_assert();
    }
}

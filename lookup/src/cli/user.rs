//! `indimail user ...` and the mailbox programs (vadduser, vdeluser, vpasswd, vmoduser,
//! vuserinfo, vsetuserquota, vrenameuser, vdeloldusers).

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::dates::format_time;
use super::getopt::{getopt, operand, opt_value, unknown_program};
use super::{CliError, DirectoryCommand};
use crate::{
    Admin, HashMethod, PasswordOptions, Quota, ScramOptions, User, UserChange, UserFlags,
    UserOptions,
};

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

pub(super) fn parse_quota(s: &str) -> Result<Quota, CliError> {
    Ok(Quota::parse(s)?)
}

pub(super) fn parse_hash(s: &Option<String>) -> Result<Option<HashMethod>, CliError> {
    s.as_deref()
        .map(HashMethod::parse)
        .transpose()
        .map_err(CliError::from)
}

pub(super) fn pw_opts(a: &PasswordArgs) -> Result<PasswordOptions, CliError> {
    Ok(PasswordOptions {
        hash: parse_hash(&a.hash)?,
        encrypted: a.encrypted,
        cram: a.cram,
        scram: scram_opts(a)?,
    })
}

/// `-m MECHANISM [-S salt] [-I iterations]`.
pub(super) fn scram_opts(a: &PasswordArgs) -> Result<Option<ScramOptions>, CliError> {
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

pub(super) fn flags_of(names: &[String]) -> Result<u32, CliError> {
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

/// Page size of streamed listings.
pub(super) const LIST_PAGE: u32 = 1000;

/// Listings longer than this show progress on stderr.
pub(super) const PROGRESS_EVERY: u64 = 10_000;

pub(super) async fn list_users(
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

/// Run a `user` command.
pub(super) async fn run_user(
    admin: &Admin,
    c: UserCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match c {
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
                let text =
                    match v.as_str() {
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
    }
    Ok(())
}

/// vmoduser's flag letters.
pub(super) const VMODUSER_FLAGS: [(char, u32); 13] = [
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

/// The password options shared by vadduser, vpasswd and vmoduser (`-h -e -C -m -S -I`).
pub(super) fn password_args(opts: &[(char, String)]) -> Result<PasswordArgs, CliError> {
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
}

/// The mailbox programs (vadduser, vdeluser, vpasswd, vmoduser, vuserinfo, vsetuserquota,
/// vrenameuser, vdeloldusers) as commands.
pub(super) fn user_program(name: &str, args: &[String]) -> Result<DirectoryCommand, CliError> {
    Ok(match name {
        "vadduser" => {
            let (o, r) = getopt(args, "q:c:h:eCiB:dbr:lm:S:I:")?;
            DirectoryCommand::User(UserCommand::Add {
                email: operand(&r, 0, "address")?,
                password: operand(&r, 1, "password")?,
                quota: opt_value(&o, 'q'),
                gecos: opt_value(&o, 'c'),
                inactive: o.iter().any(|(c, _)| *c == 'i'),
                base_path: opt_value(&o, 'B').map(PathBuf::from),
                pw: password_args(&o)?,
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
                pw: password_args(&o)?,
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
                gecos: opt_value(&o, 'c'),
                quota: opt_value(&o, 'q'),
                toggle_active: o.iter().any(|(c, _)| *c == 'n'),
                set,
                clear: Vec::new(),
                reset_flags: o.iter().any(|(c, _)| *c == 'x'),
                password: opt_value(&o, 'P'),
                pw: password_args(&o)?,
                vacation: opt_value(&o, 'l'),
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
        "vrenameuser" => {
            let (_, r) = getopt(args, "v")?;
            DirectoryCommand::User(UserCommand::Rename {
                old: operand(&r, 0, "old address")?,
                new: operand(&r, 1, "new address")?,
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
                domain: opt_value(&o, 'd'),
                days: match opt_value(&o, 'a') {
                    Some(v) => v
                        .parse()
                        .map_err(|_| CliError::Usage(format!("bad -a {v}: days expected")))?,
                    None => DEFAULT_EXPIRE_DAYS,
                },
                yes: o.iter().any(|(c, _)| *c == 'y'),
            })
        }
        other => return Err(unknown_program(other)),
    })
}

//! `indimail domain ...` and the domain programs (vadddomain, vdeldomain, vdominfo,
//! vaddaliasdomain, vrenamedomain, vmoddomain).

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;

use super::getopt::{getopt, operand, opt_value, unknown_program};
use super::limits::{run_limits, LimitsArgs};
use super::{CliError, DirectoryCommand};
use crate::{Admin, DomainChange, DomainInfo, DomainOptions, UserOptions};

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

pub(super) fn print_domain(out: &mut dyn Write, d: &DomainInfo) -> std::io::Result<()> {
    writeln!(out, "domain: {}", d.name)?;
    writeln!(out, "dir: {}", d.dir.display())?;
    writeln!(out, "base path: {}", d.base_path.display())?;
    writeln!(out, "users: {}", d.users)?;
    writeln!(out, "users per level: {}", d.users_per_level)?;
    writeln!(out, "aliases: {}", d.aliases.join(" "))
}

/// Run a `domain` command.
pub(super) async fn run_domain(
    admin: &Admin,
    c: DomainCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match c {
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
        DomainCommand::Info { domain } => print_domain(out, &admin.domain_info(&domain).await?)?,
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
    }
    Ok(())
}

/// The domain programs (vadddomain, vdeldomain, vdominfo, vaddaliasdomain, vrenamedomain,
/// vmoddomain) as commands.
pub(super) fn domain_program(name: &str, args: &[String]) -> Result<DirectoryCommand, CliError> {
    Ok(match name {
        "vadddomain" => {
            let (o, r) = getopt(args, "l:B:q:h:eC")?;
            DirectoryCommand::Domain(DomainCommand::Add {
                domain: operand(&r, 0, "domain")?,
                users_per_level: opt_value(&o, 'l')
                    .map(|v| {
                        v.parse()
                            .map_err(|_| CliError::Usage(format!("bad -l {v}")))
                    })
                    .transpose()?,
                base_path: opt_value(&o, 'B').map(PathBuf::from),
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
                limits: opt_value(&o, 'l'),
                handler: opt_value(&o, 'h'),
            })
        }
        other => return Err(unknown_program(other)),
    })
}

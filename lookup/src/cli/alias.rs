//! `indimail alias ...` and valias: aliases kept in the valias table.

use std::io::Write;

use clap::Subcommand;

use super::getopt::{getopt, operand, opt_value, unknown_program};
use super::{CliError, DirectoryCommand};
use crate::Admin;

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

/// Run an `alias` command.
pub(super) async fn run_alias(
    admin: &Admin,
    c: AliasCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match c {
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
    }
    Ok(())
}

/// valias as a command.
pub(super) fn alias_program(name: &str, args: &[String]) -> Result<DirectoryCommand, CliError> {
    Ok(match name {
        "valias" => {
            let (o, r) = getopt(args, "sSd:i:u:m")?;
            let target = operand(&r, 0, "address or domain")?;
            if let Some(line) = opt_value(&o, 'i') {
                DirectoryCommand::Alias(AliasCommand::Add {
                    email: target,
                    line,
                })
            } else if let Some(line) = opt_value(&o, 'd') {
                DirectoryCommand::Alias(AliasCommand::Del {
                    email: target,
                    line: Some(line),
                })
            } else {
                DirectoryCommand::Alias(AliasCommand::List { target })
            }
        }
        other => return Err(unknown_program(other)),
    })
}

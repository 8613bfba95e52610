//! `indimail atrn ...` and vatrn: the domains a user may turn with ATRN (atrn_map).

use std::io::Write;

use clap::Subcommand;

use super::getopt::{getopt, operand, opt_value, unknown_program};
use super::{CliError, DirectoryCommand};
use crate::Admin;

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

/// Run an `atrn` command.
pub(super) async fn run_atrn(
    admin: &Admin,
    c: AtrnCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match c {
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
    }
    Ok(())
}

/// vatrn as a command.
pub(super) fn atrn_program(name: &str, args: &[String]) -> Result<DirectoryCommand, CliError> {
    Ok(match name {
        "vatrn" => {
            let (o, r) = getopt(args, "vsd:i:u:")?;
            let email = r.first().cloned();
            match (opt_value(&o, 'u'), opt_value(&o, 'i'), opt_value(&o, 'd')) {
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
        other => return Err(unknown_program(other)),
    })
}

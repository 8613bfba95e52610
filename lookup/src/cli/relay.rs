//! `indimail relay clear` and clearopensmtp: POP/IMAP-before-SMTP relay rows.

use std::io::Write;

use clap::Subcommand;

use super::getopt::{getopt, unknown_program};
use super::{CliError, DirectoryCommand};
use crate::Admin;

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

/// Run a `relay` command.
pub(super) async fn run_relay(
    admin: &Admin,
    c: RelayCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let RelayCommand::Clear { minutes } = c;
    let window = match minutes {
        Some(m) => m.saturating_mul(60),
        None => admin.config().relay_window.as_secs(),
    };
    let before = crate::unix_now().saturating_sub(i64::try_from(window).unwrap_or(i64::MAX));
    let n = admin.relay_clear(before).await?;
    writeln!(
        out,
        "cleared {n} relay entries older than {} minutes",
        window / 60
    )?;
    Ok(())
}

/// clearopensmtp as a command.
pub(super) fn relay_program(name: &str, args: &[String]) -> Result<DirectoryCommand, CliError> {
    Ok(match name {
        "clearopensmtp" => {
            let (_, r) = getopt(args, "v")?;
            if let Some(extra) = r.first() {
                return Err(CliError::Usage(format!(
                    "clearopensmtp takes no operand: {extra}"
                )));
            }
            DirectoryCommand::Relay(RelayCommand::Clear { minutes: None })
        }
        other => return Err(unknown_program(other)),
    })
}

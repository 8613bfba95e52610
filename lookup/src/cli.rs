//! The admin command line: `indimail domain|user|alias|hostcntrl|cluster|atrn|relay|dbinfo|
//! checkpassword ...` (clap-derive, for the `indimail` binary to flatten into its own parser)
//! and IndiMail's program names (`vadddomain`, `vadduser`, ...) with their main getopt options
//! ([`run_as_program`]).
//!
//! One file per command family, each holding its clap command, its runner and its program
//! names' parser: `domain`, `limits` (vlimit), `user`, `alias`, `hostcntrl` (with `cluster`),
//! `atrn`, `relay`, `dbinfo`. `programs` maps IndiMail's names to those parsers, `getopt`
//! reads their command lines and `dates` their dates. This file holds what they share: the
//! top command, the errors and their exit codes, and [`run`].

use std::io::Write;
use std::path::Path;

use clap::{Args, Parser, Subcommand};

mod alias;
mod atrn;
mod dates;
mod dbinfo;
mod domain;
mod getopt;
mod hostcntrl;
mod limits;
mod programs;
mod relay;
mod user;

pub use alias::AliasCommand;
pub use atrn::AtrnCommand;
pub use dates::format_time;
pub use dbinfo::DbinfoArgs;
pub use domain::DomainCommand;
pub use hostcntrl::{ClusterCommand, HostCommand};
pub use limits::LimitsArgs;
pub use programs::{run_as_program, PROGRAMS};
pub use relay::RelayCommand;
pub use user::{print_user, PasswordArgs, UserCommand, DEFAULT_EXPIRE_DAYS};

use crate::{Admin, DirectoryConfig, LookupError};

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
        DirectoryCommand::Domain(c) => domain::run_domain(admin, c, out).await,
        DirectoryCommand::User(c) => user::run_user(admin, c, out).await,
        DirectoryCommand::Alias(c) => alias::run_alias(admin, c, out).await,
        DirectoryCommand::Hostcntrl(c) => hostcntrl::run_hostcntrl(admin, c, out).await,
        DirectoryCommand::Cluster(c) => hostcntrl::run_cluster(admin, c, out).await,
        DirectoryCommand::Atrn(c) => atrn::run_atrn(admin, c, out).await,
        DirectoryCommand::Relay(c) => relay::run_relay(admin, c, out).await,
        DirectoryCommand::Dbinfo(a) => dbinfo::run(admin, a, out).await,
        DirectoryCommand::Checkpassword(_) => {
            Err(CliError::Usage("checkpassword is run by run()".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::dates::parse_expiry;
    use super::getopt::getopt;
    use super::limits::{parse_perm, parse_size};
    use super::programs::program_command;
    use super::user::pw_opts;
    use super::*;
    use crate::ScramOptions;

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

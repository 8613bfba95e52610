//! IndiMail's program names (`vadddomain`, `vadduser`, ...): each name's getopt options
//! become the [`DirectoryCommand`] the `indimail` subcommands run.

use std::io::Write;
use std::path::Path;

use super::{alias, atrn, dbinfo, domain, hostcntrl, limits, relay, user};
use super::{run, CheckpasswordArgs, CliError, DirectoryCommand};

/// Turns a program's arguments into its command.
type ProgramParser = fn(&str, &[String]) -> Result<DirectoryCommand, CliError>;

fn dbinfo_program(_: &str, args: &[String]) -> Result<DirectoryCommand, CliError> {
    Ok(DirectoryCommand::Dbinfo(dbinfo::parse_program(args)?))
}

/// Each program name and its parser (checkpassword is run as it is).
const PARSERS: [(&str, ProgramParser); 22] = [
    ("vadddomain", domain::domain_program),
    ("vdeldomain", domain::domain_program),
    ("vdominfo", domain::domain_program),
    ("vaddaliasdomain", domain::domain_program),
    ("vrenamedomain", domain::domain_program),
    ("vmoddomain", domain::domain_program),
    ("vlimit", limits::limits_program),
    ("vadduser", user::user_program),
    ("vdeluser", user::user_program),
    ("vpasswd", user::user_program),
    ("vmoduser", user::user_program),
    ("vuserinfo", user::user_program),
    ("vsetuserquota", user::user_program),
    ("vrenameuser", user::user_program),
    ("vdeloldusers", user::user_program),
    ("valias", alias::alias_program),
    ("hostcntrl", hostcntrl::host_program),
    ("vhostid", hostcntrl::host_program),
    ("vsmtp", hostcntrl::host_program),
    ("vatrn", atrn::atrn_program),
    ("clearopensmtp", relay::relay_program),
    ("dbinfo", dbinfo_program),
];

/// The command IndiMail's program `name` asks for with `args`.
pub(super) fn program_command(name: &str, args: &[String]) -> Result<DirectoryCommand, CliError> {
    match PARSERS.iter().find(|(n, _)| *n == name) {
        Some((_, parse)) => parse(name, args),
        None => Err(super::getopt::unknown_program(name)),
    }
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

    #[test]
    fn every_program_has_a_parser() {
        for name in PROGRAMS.iter().filter(|n| **n != "checkpassword") {
            assert!(PARSERS.iter().any(|(n, _)| n == name), "{name}");
        }
        assert_eq!(PARSERS.len() + 1, PROGRAMS.len());
    }
}

//! `indimail dbinfo` and the program name `dbinfo`: IndiMail's flags, one parser for both.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Parser};

use super::CliError;
use crate::mcdinfo::McdRecord;
use crate::Admin;
use crate::McdChange;

/// `dbinfo -i|-u|-r|-s ... [MCD file]`: the MCD file (default `control/mcdinfo`) and its
/// `dbinfo` table rows.
#[derive(Debug, Clone, Args, Default)]
pub struct DbinfoArgs {
    /// Insert a record (needs -d -m -S -p -D -U -P).
    #[arg(short = 'i')]
    pub insert: bool,
    /// Update a record (needs -d -m; changes what is given).
    #[arg(short = 'u')]
    pub update: bool,
    /// Remove a record (needs -d -m).
    #[arg(short = 'r')]
    pub remove: bool,
    /// Show the records (optionally of -d and -m).
    #[arg(short = 's')]
    pub show: bool,
    /// Edit with $EDITOR (IndiMail's interactive mode; not supported here).
    #[arg(short = 'e')]
    pub edit: bool,
    /// One line per record with -s.
    #[arg(short = 'l')]
    pub rows: bool,
    /// Verbose (accepted).
    #[arg(short = 'v')]
    pub verbose: bool,
    /// Domain.
    #[arg(short = 'd', value_name = "DOMAIN")]
    pub domain: Option<String>,
    /// The domain is clustered (distributed over several mailstores).
    #[arg(short = 'c')]
    pub clustered: bool,
    /// Database server.
    #[arg(short = 'S', value_name = "SERVER")]
    pub server: Option<String>,
    /// Database port.
    #[arg(short = 'p', value_name = "PORT")]
    pub port: Option<String>,
    /// use_ssl: 0 or 1.
    #[arg(short = 'o', value_name = "0|1")]
    pub use_ssl: Option<String>,
    /// Database name.
    #[arg(short = 'D', value_name = "DATABASE")]
    pub database: Option<String>,
    /// Database user.
    #[arg(short = 'U', value_name = "USER")]
    pub user: Option<String>,
    /// Database password.
    #[arg(short = 'P', value_name = "PASSWORD")]
    pub password: Option<String>,
    /// Mailstore host the record is for.
    #[arg(short = 'm', value_name = "MDAHOST")]
    pub mdahost: Option<String>,
    /// The MCD file (default: control/mcdinfo, or MCDFILE).
    pub file: Option<PathBuf>,
}

/// The program name's parser (`dbinfo -i ...`).
#[derive(Debug, Parser)]
#[command(name = "dbinfo", disable_help_flag = true)]
struct DbinfoProgram {
    #[command(flatten)]
    args: DbinfoArgs,
}

const USAGE: &str = "dbinfo -i -S server -p port -o use_ssl -D database -U user -P password [-c] -d domain -m mdahost [file] \
| -u -S server [-p -o -D -U -P] [-c] -d domain -m mdahost [file] | -r -d domain -m mdahost [file] \
| -s [-l] [-d domain] [-m mdahost] [file]";

/// Parse the program name's arguments.
pub(super) fn parse_program(args: &[String]) -> Result<DbinfoArgs, CliError> {
    let argv = std::iter::once("dbinfo".to_string()).chain(args.iter().cloned());
    DbinfoProgram::try_parse_from(argv)
        .map(|p| p.args)
        .map_err(|e| CliError::Usage(format!("{}; {USAGE}", first_line(&e.to_string()))))
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s).trim_start_matches("error: ")
}

fn need(v: &Option<String>, flag: &str, what: &str) -> Result<String, CliError> {
    v.clone()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| CliError::Usage(format!("dbinfo needs {flag} {what}; {USAGE}")))
}

fn port(v: &str) -> Result<u16, CliError> {
    v.parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| CliError::Usage(format!("-p: not a port: {v}")))
}

fn flag(v: &str) -> Result<bool, CliError> {
    match v {
        "0" => Ok(false),
        "1" => Err(CliError::Usage(
            "-o 1: this build connects to MySQL without TLS; use -o 0".into(),
        )),
        o => Err(CliError::Usage(format!(
            "-o: use_ssl must be 0 or 1, got {o}"
        ))),
    }
}

/// What a valid `dbinfo` command line asks for.
#[derive(Debug)]
pub(super) enum DbinfoOp {
    Show {
        domain: Option<String>,
        mdahost: Option<String>,
        rows: bool,
    },
    Insert(McdRecord),
    Update {
        domain: String,
        mdahost: String,
        change: McdChange,
    },
    Remove {
        domain: String,
        mdahost: String,
    },
}

/// Check the command line (before any database is opened: a bad line is a usage error
/// whether or not the database answers).
pub(super) fn plan(a: &DbinfoArgs) -> Result<DbinfoOp, CliError> {
    let modes = [a.insert, a.update, a.remove, a.show, a.edit];
    if modes.iter().filter(|m| **m).count() != 1 {
        return Err(CliError::Usage(format!(
            "give one of -i -u -r -s -e; {USAGE}"
        )));
    }
    if a.edit {
        return Err(CliError::Usage(
            "-e (edit the MCD file with $EDITOR) is interactive and not supported: use -i, -u or -r"
                .into(),
        ));
    }
    if a.show {
        return Ok(DbinfoOp::Show {
            domain: a.domain.clone(),
            mdahost: a.mdahost.clone(),
            rows: a.rows,
        });
    }
    let domain = need(&a.domain, "-d", "domain")?;
    let mdahost = need(&a.mdahost, "-m", "mdahost")?;
    if a.remove {
        return Ok(DbinfoOp::Remove { domain, mdahost });
    }
    let use_ssl = a.use_ssl.as_deref().map(flag).transpose()?;
    if a.insert {
        return Ok(DbinfoOp::Insert(McdRecord {
            domain,
            distributed: a.clustered,
            server: need(&a.server, "-S", "server")?,
            mdahost,
            port: port(&need(&a.port, "-p", "port")?)?,
            use_ssl: use_ssl.unwrap_or(false),
            database: need(&a.database, "-D", "database")?,
            user: need(&a.user, "-U", "user")?,
            password: need(&a.password, "-P", "password")?,
        }));
    }
    Ok(DbinfoOp::Update {
        domain,
        mdahost,
        change: McdChange {
            distributed: a.clustered.then_some(true),
            server: Some(need(&a.server, "-S", "server")?),
            port: a.port.as_deref().map(port).transpose()?,
            use_ssl,
            database: a.database.clone(),
            user: a.user.clone(),
            password: a.password.clone(),
        },
    })
}

/// Run `dbinfo`.
pub(super) async fn run(admin: &Admin, a: DbinfoArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let op = plan(&a)?;
    let file: PathBuf = match &a.file {
        Some(f) => crate::config::mcd_path(&admin.config().control_dir, &f.to_string_lossy()),
        None => admin.config().mcdinfo.clone(),
    };
    match op {
        DbinfoOp::Show {
            domain,
            mdahost,
            rows,
        } => {
            let records = admin
                .dbinfo_show(&file, domain.as_deref(), mdahost.as_deref())
                .await?;
            out.write_all(format_records(&records, &file, rows).as_bytes())?;
        }
        DbinfoOp::Insert(rec) => admin.dbinfo_insert(&file, rec).await?,
        DbinfoOp::Update {
            domain,
            mdahost,
            change,
        } => {
            admin
                .dbinfo_update(&file, &domain, &mdahost, &change)
                .await?
        }
        DbinfoOp::Remove { domain, mdahost } => {
            admin.dbinfo_remove(&file, &domain, &mdahost).await?
        }
    }
    Ok(())
}

/// `dbinfo -s` in IndiMail's layout (without the live connection's lines: client and
/// server versions, protocol, `MySQL Stat`), or with `rows` its one-line-per-record form
/// (`-l`).
pub(super) fn format_records(records: &[McdRecord], file: &Path, rows: bool) -> String {
    let mut s = String::new();
    for (i, r) in records.iter().enumerate() {
        if rows {
            // IndiMail's -l line: the fields with the file's name before the password.
            let v = r.values();
            s.push_str(&format!(
                "DBINFO  {} {} {} \n",
                v[..8].join(" "),
                file.display(),
                v[8]
            ));
            continue;
        }
        s.push_str(&format!(
            "domain         {} - {}\nsqlserver[{:03}] {}\nmda host       {}\nTCP/IP Port    {}\n\
             Use SSL        {}\ndatabase       {}\nuser           {}\npassword       {}\n\
             DBINFO Method  DBINFO\n--------------------------\n",
            r.domain,
            if r.distributed {
                "Distributed"
            } else {
                "Non Distributed"
            },
            i + 1,
            r.server,
            r.mdahost,
            r.port,
            if r.use_ssl { "Yes" } else { "No" },
            r.database,
            r.user,
            r.password
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn indimail_flags_parse() {
        let a = parse_program(&s(&[
            "-i",
            "-S",
            "10.0.0.5",
            "-p",
            "3306",
            "-D",
            "indimail",
            "-U",
            "im",
            "-P",
            "pw",
            "-c",
            "-d",
            "example.com",
            "-m",
            "store1",
            "/tmp/mcd",
        ]))
        .unwrap();
        assert!(a.insert && a.clustered);
        assert_eq!(a.server.as_deref(), Some("10.0.0.5"));
        assert_eq!(a.file.as_deref(), Some(std::path::Path::new("/tmp/mcd")));
        let a = parse_program(&s(&["-sl"])).unwrap();
        assert!(a.show && a.rows && a.file.is_none());
        let e = parse_program(&s(&["-x"])).unwrap_err();
        assert!(e.to_string().contains("-x"), "{e}");
        assert!(
            parse_program(&s(&["-d"])).is_err(),
            "a flag missing its value"
        );
        let plan_of = |v: &[&str]| plan(&parse_program(&s(v)).unwrap());
        assert!(matches!(
            plan_of(&["-r", "-d", "a.example", "-m", "h"]),
            Ok(DbinfoOp::Remove { .. })
        ));
        for (bad, says) in [
            (&["-i", "-d", "a.example", "-m", "h"][..], "-S"),
            (&["-r", "-d", "a.example"][..], "-m"),
            (&["-e"][..], "not supported"),
            (&["-s", "-r"][..], "one of"),
            (
                &["-u", "-S", "s", "-p", "x", "-d", "a.example", "-m", "h"][..],
                "not a port",
            ),
        ] {
            let e = plan_of(bad).unwrap_err();
            assert!(
                matches!(e, CliError::Usage(_)) && e.to_string().contains(says),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn show_layouts() {
        let rec = McdRecord {
            domain: "example.com".into(),
            distributed: false,
            server: "10.0.0.5".into(),
            mdahost: "store1".into(),
            port: 3306,
            use_ssl: false,
            database: "indimail".into(),
            user: "im".into(),
            password: "pw".into(),
        };
        let f = Path::new("/h/control/mcdinfo");
        let long = format_records(std::slice::from_ref(&rec), f, false);
        assert!(long.starts_with(
            "domain         example.com - Non Distributed\nsqlserver[001] 10.0.0.5\nmda host       store1\n"
        ));
        assert!(long.ends_with("DBINFO Method  DBINFO\n--------------------------\n"));
        assert_eq!(
            format_records(&[rec], f, true),
            "DBINFO  example.com 0 10.0.0.5 store1 3306 0 indimail im /h/control/mcdinfo pw \n"
        );
    }
}

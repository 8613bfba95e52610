//! `indimail`: the one binary of indimail-rs.
//!
//! `indimail serve` runs the mail system; the other subcommands are the
//! tools. Invoked under an IndiMail/qmail program name (`qmail-queue`,
//! `sendmail`, ...) it behaves as that program.

mod cli;
mod config;
mod configcmd;
mod privs;
mod serve;

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use admin_api::{adminauth, adminclient, adminsrv, indisrvr};
use clap::{CommandFactory, Parser};
use operator_tools::{logsummary, manpages, qmailimport, queuelist, sendmail, svctool, tools};

use crate::cli::{
    Cli, Command, ConfigCommand, DkimCommand, LogCommand, QueueCommand, ServeArgs, ServiceCommand,
};

use crate::config::{Paths, ServeConfig};
use control::log;
use scheduler::inject;

/// mimalloc instead of glibc's malloc: each shard allocates and frees per
/// message on its own thread, where glibc's arenas cost ~8% of a relayed
/// message's CPU (loadtest/RESULTS.md, issue 23).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    init_tracing();
    if let Some(code) = run_as_program(&program_name()) {
        return code;
    }
    let cli = Cli::parse();
    let paths = Paths::resolve(cli.home.as_deref());
    run(cli.command, paths)
}

/// The name this binary was started under (the basename of argv[0]).
fn program_name() -> String {
    std::env::args()
        .next()
        .map(|a| {
            Path::new(&a)
                .file_name()
                .map_or(String::new(), |n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default()
}

/// Runs as the IndiMail/qmail program `name` (`qmail-queue`, `sendmail`, `vadduser`, ...);
/// `None` when `name` is `indimail` or no such program: the subcommands are parsed.
fn run_as_program(name: &str) -> Option<ExitCode> {
    let args = || -> Vec<String> { std::env::args().skip(1).collect() };
    let code = match name {
        "qmail-queue" => inject::qmail_queue_main(&Paths::resolve(None)),
        "qmail-nullqueue" => inject::qmail_nullqueue_main(),
        "sendmail" => sendmail::main(&Paths::resolve(None), &args()),
        "qmail-qread" => tools::qmail_qread(&Paths::resolve(None)),
        "qmail-qstat" => tools::qmail_qstat(&Paths::resolve(None)),
        "qmail-rm" => tools::qmail_rm(&Paths::resolve(None), &args()),
        "recipient-cdb" => tools::recipient_cdb(&Paths::resolve(None)),
        "adminclient" => adminclient::main(&args()),
        "indisrvr" => indisrvr::main(&Paths::resolve(None), &args()),
        "indimail" | "" => return None,
        other => {
            // vadddomain, vadduser, vuserinfo, ... (IndiMail's admin tools).
            let paths = Paths::resolve(None);
            let mut out = std::io::stdout().lock();
            lookup::cli::run_as_program(other, &args(), &paths.home, &mut out)?
        }
    };
    Some(exit(code))
}

/// Runs one subcommand of `indimail`.
fn run(command: Command, paths: Paths) -> ExitCode {
    match command {
        Command::Serve(args) => serve_command(paths, args),
        Command::Init => report("init", configcmd::init(&paths)),
        Command::Config { command } => match command {
            ConfigCommand::Check => exit(configcmd::config_check(&paths)),
            ConfigCommand::Show => exit(configcmd::config_show(&paths)),
        },
        Command::Queue { command } => queue_command(&paths, command),
        Command::Admin {
            host,
            user,
            password_file,
            ca,
            server_name,
            args,
        } => exit(adminsrv::client(&adminsrv::ClientArgs {
            host,
            user,
            password_file,
            ca,
            server_name,
            args,
        })),
        Command::RecipientCdb => exit(tools::recipient_cdb(&paths)),
        Command::Adminclient { args } => exit(adminclient::main(&args)),
        Command::Indisrvr { args } => exit(indisrvr::main(&paths, &args)),
        Command::AdminUsers { command } => exit(adminauth::users_main(&paths, command)),
        Command::InstallLinks { dir, force } => exit(tools::install_links(&dir, force)),
        Command::Man { out } => exit(manpages::main(&Cli::command(), &out)),
        Command::ImportQmailQueue {
            dir,
            control,
            dry_run,
        } => exit(qmailimport::main(&paths, &dir, control.as_deref(), dry_run)),
        Command::Service {
            command:
                ServiceCommand::Install {
                    dir,
                    daemontools,
                    user,
                    binary,
                    stop_timeout,
                    man_dir,
                },
        } => exit(svctool::install(
            &paths,
            &svctool::Options {
                dir,
                daemontools,
                user,
                binary,
                stop_timeout,
                man_dir,
                commands: Cli::command(),
            },
        )),
        Command::Log {
            command: LogCommand::Summary { file },
        } => exit(logsummary::main(&file)),
        Command::Dkim {
            command:
                DkimCommand::Keygen {
                    domain,
                    selector,
                    kind,
                    bits,
                },
        } => dkim_keygen(&paths, &domain, &selector, &kind, bits),
        Command::Sendmail { args } => exit(sendmail::main(&paths, &args)),
        Command::Tuning { args } => tuning(&paths, &args),
        Command::Directory(cmd) => directory(&paths, cmd),
    }
}

/// `indimail <what>`'s exit: 0, or the error on stderr and 111.
fn report<E: Into<anyhow::Error>>(what: &str, r: Result<(), E>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let e: anyhow::Error = e.into();
            eprintln!("indimail {what}: {e:#}");
            ExitCode::from(111)
        }
    }
}

/// `indimail serve`: the admin endpoints (threads of their own), then the shards.
fn serve_command(paths: Paths, args: ServeArgs) -> ExitCode {
    type Starter = fn(&Paths, SocketAddr) -> Result<SocketAddr, adminauth::AdminError>;
    let admins: [(&str, Option<SocketAddr>, Starter); 2] = [
        ("admin", args.admin, adminsrv::start),
        ("indisrvr", args.indisrvr, indisrvr::start),
    ];
    for (name, addr, start) in admins {
        let Some(addr) = addr else { continue };
        match start(&paths, addr) {
            Ok(a) => println!("{name} listening on {a}"),
            Err(e) => {
                eprintln!("indimail serve: {e}");
                return ExitCode::from(111);
            }
        }
    }
    use smtp_server::Service;
    let mut listeners: Vec<(Service, SocketAddr)> = Vec::new();
    for (svc, addrs) in [
        (Service::Smtp, args.smtp),
        (Service::Submission, args.submission),
        (Service::Smtps, args.smtps),
        (Service::Odmr, args.odmr),
        (Service::Pop3, args.pop3),
        (Service::Pop3s, args.pop3s),
        (Service::ImapProxy, args.imap_proxy),
        (Service::ImapsProxy, args.imaps_proxy),
        (Service::Pop3Proxy, args.pop3_proxy),
        (Service::Pop3sProxy, args.pop3s_proxy),
        (Service::Poppass, args.poppass),
        (Service::Poppasss, args.poppasss),
        (Service::Metrics, args.metrics),
    ] {
        listeners.extend(addrs.into_iter().map(|a| (svc, a)));
    }
    report(
        "serve",
        run_serve(paths, &listeners, args.cpus, args.driver),
    )
}

/// `indimail queue ...`.
fn queue_command(paths: &Paths, command: QueueCommand) -> ExitCode {
    match command {
        QueueCommand::Stat => report("queue stat", queuelist::queue_stat(paths)),
        QueueCommand::Inject => exit(inject::qmail_queue_main(paths)),
        QueueCommand::List { sel } => report("queue list", queuelist::queue_list(paths, &sel)),
        QueueCommand::Show { id, body } => exit(tools::show(paths, &id, body)),
        QueueCommand::Delete { sel, yes } => {
            exit(tools::change(paths, tools::Change::Delete, &sel, yes))
        }
        QueueCommand::Bounce { sel, yes } => {
            exit(tools::change(paths, tools::Change::Bounce, &sel, yes))
        }
        QueueCommand::Hold { sel } => exit(tools::change(paths, tools::Change::Hold, &sel, true)),
        QueueCommand::Release { sel } => {
            exit(tools::change(paths, tools::Change::Release, &sel, true))
        }
        QueueCommand::Flush { sel } => exit(tools::change(paths, tools::Change::Flush, &sel, true)),
        QueueCommand::Shape { by_sender, top } => exit(tools::shape(paths, by_sender, top)),
    }
}

/// `indimail dkim keygen`: a signing key and the TXT record to publish.
fn dkim_keygen(paths: &Paths, domain: &str, selector: &str, kind: &str, bits: u32) -> ExitCode {
    let kind = match kind {
        "rsa" if (2048..=4096).contains(&bits) => msgproc::dkim::KeyType::Rsa(bits),
        "rsa" => {
            eprintln!("indimail dkim keygen: --bits must be 2048-4096");
            return ExitCode::from(100);
        }
        "ed25519" => msgproc::dkim::KeyType::Ed25519,
        other => {
            eprintln!("indimail dkim keygen: unknown --type `{other}` (rsa or ed25519)");
            return ExitCode::from(100);
        }
    };
    match msgproc::dkim::keygen(paths.control.path(), domain, selector, kind) {
        Ok((path, record)) => {
            eprintln!("indimail dkim keygen: wrote {}", path.display());
            println!(
                "{selector}._domainkey.{} IN TXT \"{record}\"",
                domain.to_ascii_lowercase()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("indimail dkim keygen: {e}");
            ExitCode::from(111)
        }
    }
}

/// `indimail tuning ...`: execs `indimail-tuning` from beside this binary.
fn tuning(paths: &Paths, args: &[String]) -> ExitCode {
    // The tuning tool is its own program (nothing in the server
    // depends on it); it is installed beside this binary.
    let tool = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("indimail-tuning")))
        .filter(|p| p.exists());
    let Some(tool) = tool else {
        eprintln!("indimail tuning: indimail-tuning not found beside this binary (cargo build -p indimail-tuning)");
        return ExitCode::from(111);
    };
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(&tool);
    cmd.args(args).env("INDIMAIL_HOME", &paths.home);
    let err = cmd.exec();
    eprintln!("indimail tuning: cannot run {}: {err}", tool.display());
    ExitCode::from(111)
}

/// Users, domains, aliases and cluster placement (the lookup crate's commands).
fn directory(paths: &Paths, cmd: lookup::cli::DirectoryCommand) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match lookup::cli::run(cmd, &paths.home, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(lookup::cli::CliError::Exit(c)) => exit(c),
        Err(e) => {
            eprintln!("indimail: {e}");
            exit(e.exit_code())
        }
    }
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn run_serve(
    paths: Paths,
    smtp: &[(smtp_server::Service, SocketAddr)],
    cpus: Option<String>,
    driver: Option<String>,
) -> anyhow::Result<()> {
    // Refuse root with no user to drop to before creating anything.
    privs::decide(&paths)?;
    let made = config::prepare_home(&paths)?;
    for p in made {
        log!("created {}", p.display());
    }
    // --cpus is checked with the rest of the layout by `serve` (queue-layout).
    let cfg = ServeConfig::load(paths, smtp, cpus).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        anyhow::anyhow!("configuration errors:\n  {}", lines.join("\n  "))
    })?;
    let driver = match driver {
        Some(d) => d.parse().map_err(anyhow::Error::msg)?,
        None => shard::io::Driver::from_env().map_err(anyhow::Error::msg)?,
    };
    serve::serve(cfg, driver)
}

/// `INDIMAIL_TRACE=<filter>` (e.g. `info`, `indimail=debug,hickory_resolver=debug`) turns on
/// `tracing` output on stderr, beside the qmail-style log: spans for each SMTP session
/// (`smtp_session`: shard, service, client ip) and each delivery job (`local_delivery`,
/// `remote_delivery`: shard, message, domain, recipients), printed when they close with their
/// busy and idle time, plus the events of the libraries (DNS, TLS). Off by default: with no
/// subscriber the spans cost next to nothing.
fn init_tracing() {
    let Ok(filter) = std::env::var("INDIMAIL_TRACE") else {
        return;
    };
    if filter.trim().is_empty() {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

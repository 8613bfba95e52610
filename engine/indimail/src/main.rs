//! `indimail`: the one binary of indimail-rs.
//!
//! `indimail serve` runs the mail system; the other subcommands are the
//! tools. Invoked under an IndiMail/qmail program name (`qmail-queue`,
//! `sendmail`, ...) it behaves as that program.

mod adminauth;
mod adminclient;
mod adminsrv;
mod config;
mod indisrvr;
mod logsummary;
mod manpages;
mod privs;
mod progress;
mod qmailimport;
mod queuectl;
mod sendmail;
mod serve;
mod svctool;
mod tools;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Paths, ServeConfig};
use control::log;
use scheduler::{deliver, inject};

#[derive(Parser)]
#[command(
    name = "indimail",
    version,
    about = "IndiMail rebuilt in Rust: a thread-per-core io_uring MTA"
)]
struct Cli {
    /// Home directory holding control/, queue/ and the mailboxes
    /// (default: $INDIMAIL_HOME, else /var/indimail for root, ~/.indimail otherwise).
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mail system in the foreground until SIGTERM.
    Serve {
        /// SMTP listener ADDRESS:PORT (repeatable; any listener option
        /// replaces control/listeners).
        #[arg(long = "smtp", value_name = "ADDR:PORT")]
        smtp: Vec<SocketAddr>,
        /// Submission listener (AUTH required, port 587 style).
        #[arg(long = "submission", value_name = "ADDR:PORT")]
        submission: Vec<SocketAddr>,
        /// Implicit-TLS SMTP listener (port 465 style).
        #[arg(long = "smtps", value_name = "ADDR:PORT")]
        smtps: Vec<SocketAddr>,
        /// On-Demand Mail Relay listener (RFC 2645, port 366 style): AUTH, then ATRN.
        #[arg(long = "odmr", value_name = "ADDR:PORT")]
        odmr: Vec<SocketAddr>,
        /// POP3 server on the users' Maildirs (STLS offered).
        #[arg(long = "pop3", value_name = "ADDR:PORT")]
        pop3: Vec<SocketAddr>,
        /// POP3 server with implicit TLS.
        #[arg(long = "pop3s", value_name = "ADDR:PORT")]
        pop3s: Vec<SocketAddr>,
        /// IMAP proxy to each user's mailstore.
        #[arg(long = "imap-proxy", value_name = "ADDR:PORT")]
        imap_proxy: Vec<SocketAddr>,
        /// IMAP proxy with implicit TLS.
        #[arg(long = "imaps-proxy", value_name = "ADDR:PORT")]
        imaps_proxy: Vec<SocketAddr>,
        /// POP3 proxy to each user's mailstore.
        #[arg(long = "pop3-proxy", value_name = "ADDR:PORT")]
        pop3_proxy: Vec<SocketAddr>,
        /// POP3 proxy with implicit TLS.
        #[arg(long = "pop3s-proxy", value_name = "ADDR:PORT")]
        pop3s_proxy: Vec<SocketAddr>,
        /// Password changes by the users (poppassd protocol, port 106).
        #[arg(long = "poppass", value_name = "ADDR:PORT")]
        poppass: Vec<SocketAddr>,
        /// poppassd with implicit TLS.
        #[arg(long = "poppasss", value_name = "ADDR:PORT")]
        poppasss: Vec<SocketAddr>,
        /// Prometheus metrics (HTTP `GET /metrics`), summed over shards.
        #[arg(long = "metrics", value_name = "ADDR:PORT")]
        metrics: Vec<SocketAddr>,
        /// Remote administration endpoint (indisrvr's role): HTTP/JSON over TLS only,
        /// users and permissions in control/adminusers.
        #[arg(long = "admin", value_name = "ADDR:PORT")]
        admin: Option<SocketAddr>,
        /// IndiMail's indisrvr line protocol (for adminclient), TLS only, same users and
        /// permissions as --admin.
        #[arg(long = "indisrvr", value_name = "ADDR:PORT")]
        indisrvr: Option<SocketAddr>,
        /// CPUs to run shards on, e.g. `0-3,6` (overrides control/cpus).
        #[arg(long, value_name = "LIST")]
        cpus: Option<String>,
        /// I/O driver: `uring` (default; falls back to epoll when io_uring is
        /// unavailable) or `epoll`. Also $INDIMAIL_DRIVER.
        #[arg(long, value_name = "DRIVER")]
        driver: Option<String>,
    },
    /// Create a home directory with commented default control files, the
    /// queues and a demo certificate; never overwrites an existing file.
    Init,
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Queue tools.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Users, domains, aliases and cluster placement (vadddomain, vadduser, ...).
    #[command(flatten)]
    Directory(lookup::cli::DirectoryCommand),
    /// Run a directory or queue command on a remote host's admin endpoint (adminclient).
    Admin {
        /// The endpoint, HOST:PORT.
        #[arg(long)]
        host: String,
        /// Admin user (a line of the server's control/adminusers).
        #[arg(long)]
        user: String,
        /// File holding the password (first line).
        #[arg(long, value_name = "FILE")]
        password_file: PathBuf,
        /// PEM certificate(s) to trust (a private CA, or the server's self-signed
        /// certificate); default: the public roots.
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// Name to expect in the server's certificate (default: the host part).
        #[arg(long, value_name = "NAME")]
        server_name: Option<String>,
        /// The command, e.g. `user add ann@example.com --password ...`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
    /// IndiMail's adminclient: run a program on a remote indisrvr
    /// (-h host -p port -u user -P pass [-C cafile] -c "command args").
    #[command(disable_help_flag = true)]
    Adminclient {
        /// adminclient's own options.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// IndiMail's indisrvr alone, in the foreground (-i ip -p port [-n certfile]
    /// [-t timeoutdata] [-T timeoutconn]).
    #[command(disable_help_flag = true)]
    Indisrvr {
        /// indisrvr's own options.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Users of this host's admin endpoint (mgmtpass and vpriv): control/adminusers.
    AdminUsers {
        #[command(subcommand)]
        command: adminauth::UsersCommand,
    },
    /// Host and placement tools (topology, plan, check): runs `indimail-tuning`.
    #[command(disable_help_flag = true)]
    Tuning {
        /// Arguments for indimail-tuning.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Compile users/recipients into users/recipients.cdb (IndiMail's
    /// recipient-cdb) for the RECIPIENTS extension (CHECKRECIPIENT=2|3).
    RecipientCdb,
    /// Create symlinks DIR/<name> -> this binary for every program name it
    /// answers to (qmail-queue, sendmail, qmail-qread, vadduser, ...).
    InstallLinks {
        /// Where to create the links (e.g. /usr/local/bin).
        dir: PathBuf,
        /// Replace existing files of those names.
        #[arg(long)]
        force: bool,
    },
    /// Write the manual pages: one per command (section 8) and indimail-control(5).
    Man {
        /// Output directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Move the messages of a stopped qmail/IndiMail queue (DIR = a queue
    /// with mess/, or a queue base holding queue1, queue2, ...) into this
    /// home's queues; the server must be stopped. Safe to re-run.
    ImportQmailQueue {
        /// The qmail queue (e.g. /var/indimail/queue/queue1) or queue base.
        dir: PathBuf,
        /// The old control directory, for its virtualdomains (undoes the
        /// `<prepend>-` qmail added to local recipients).
        #[arg(long, value_name = "DIR")]
        control: Option<PathBuf>,
        /// Only count what would be imported; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Service files (the role of IndiMail's svctool).
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// Log tools (the role of qmailanalog).
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// DKIM tools (the role of IndiMail's dknewkey).
    Dkim {
        #[command(subcommand)]
        command: DkimCommand,
    },
    /// sendmail-compatible injection (-t, -f, -i, recipients).
    #[command(disable_help_flag = true)]
    Sendmail {
        /// sendmail options and recipients.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum DkimCommand {
    /// Make a signing key control/domainkeys/DOMAIN/SELECTOR (+ .pub) and
    /// print the DNS TXT record to publish at SELECTOR._domainkey.DOMAIN.
    Keygen {
        /// The signing domain.
        domain: String,
        /// Selector (= key file name); `default` is what signing uses
        /// unless DKIMSIGN names another.
        #[arg(long, default_value = "default")]
        selector: String,
        /// `rsa` (rsa-sha256) or `ed25519` (ed25519-sha256).
        #[arg(long = "type", default_value = "rsa")]
        kind: String,
        /// RSA key size (2048-4096).
        #[arg(long, default_value_t = 2048)]
        bits: u32,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate every control file and variable; report all problems with file and line.
    Check,
    /// Print the effective configuration (the role of qmail-showctl).
    Show,
}

#[derive(Subcommand)]
enum QueueCommand {
    /// List queued messages (works on a running or stopped server);
    /// --sender/--rcpt/--domain/ids narrow the list.
    List {
        #[command(flatten)]
        sel: tools::ListArgs,
    },
    /// Counts per queue: messages, recipients pending/done/failed, bytes (qmail-qstat).
    Stat,
    /// Queue one message: qmail-queue protocol (message on fd 0, envelope on fd 1).
    Inject,
    /// Envelope and headers of a message (--body: the whole message).
    Show {
        /// Message id, as `queue list` prints it (e.g. 1-1-32).
        id: String,
        /// Print the whole message, not only the headers.
        #[arg(long)]
        body: bool,
    },
    /// Remove messages (their pending recipients) without a bounce.
    Delete {
        #[command(flatten)]
        sel: tools::SelectArgs,
        /// Do not ask for confirmation (needed when not on a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Bounce messages (their pending recipients) to the sender now.
    Bounce {
        #[command(flatten)]
        sel: tools::SelectArgs,
        /// Do not ask for confirmation (needed when not on a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Put messages on hold: kept, not delivered, until released (durable).
    Hold {
        #[command(flatten)]
        sel: tools::SelectArgs,
    },
    /// Take messages off hold; they are tried at once.
    Release {
        #[command(flatten)]
        sel: tools::SelectArgs,
    },
    /// Retry deferred mail now (all, or the selected messages / --domain).
    Flush {
        #[command(flatten)]
        sel: tools::SelectArgs,
    },
    /// Pending recipients by destination domain and age (like Postfix qshape).
    Shape {
        /// Group by sender domain instead of recipient domain.
        #[arg(long)]
        by_sender: bool,
        /// Rows to print (the largest domains), 0 = all.
        #[arg(long, default_value_t = 0)]
        top: usize,
    },
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// Write a systemd unit (and with --daemontools a supervise `run`
    /// script) for `indimail serve` on this home into DIR.
    Install {
        /// Output directory (e.g. /etc/systemd/system).
        dir: PathBuf,
        /// Also write DIR/indimail/run and DIR/indimail/log/run (daemontools).
        #[arg(long)]
        daemontools: bool,
        /// User to run as (systemd User=, daemontools setuidgid).
        #[arg(long)]
        user: Option<String>,
        /// The binary to run (default: this one).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Seconds systemd waits after SIGTERM before killing.
        #[arg(long, default_value_t = 30)]
        stop_timeout: u64,
        /// Write the manual pages under DIR/man8 and DIR/man5 (default:
        /// <prefix>/share/man when the binary is <prefix>/bin/indimail).
        #[arg(long, value_name = "DIR")]
        man_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum LogCommand {
    /// Messages, recipients, bytes, deliveries by result and delivery
    /// latency percentiles from a log (the role of qmailanalog's zoverall).
    Summary {
        /// Log file (`-` = standard input).
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    init_tracing();
    let argv0 = std::env::args()
        .next()
        .map(|a| {
            Path::new(&a)
                .file_name()
                .map_or(String::new(), |n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    // IndiMail/qmail program names.
    match argv0.as_str() {
        "qmail-queue" => {
            let paths = Paths::resolve(None);
            return exit(inject::qmail_queue_main(&paths));
        }
        "qmail-nullqueue" => return exit(inject::qmail_nullqueue_main()),
        "sendmail" => {
            let paths = Paths::resolve(None);
            let args: Vec<String> = std::env::args().skip(1).collect();
            return exit(sendmail::main(&paths, &args));
        }
        "qmail-qread" => return exit(tools::qmail_qread(&Paths::resolve(None))),
        "qmail-qstat" => return exit(tools::qmail_qstat(&Paths::resolve(None))),
        "qmail-rm" => {
            let args: Vec<String> = std::env::args().skip(1).collect();
            return exit(tools::qmail_rm(&Paths::resolve(None), &args));
        }
        "recipient-cdb" => return exit(tools::recipient_cdb(&Paths::resolve(None))),
        "adminclient" => {
            let args: Vec<String> = std::env::args().skip(1).collect();
            return exit(adminclient::main(&args));
        }
        "indisrvr" => {
            let args: Vec<String> = std::env::args().skip(1).collect();
            return exit(indisrvr::main(&Paths::resolve(None), &args));
        }
        "indimail" | "" => {}
        other => {
            // vadddomain, vadduser, vuserinfo, ... (IndiMail's admin tools).
            let paths = Paths::resolve(None);
            let args: Vec<String> = std::env::args().skip(1).collect();
            let mut out = std::io::stdout().lock();
            if let Some(code) = lookup::cli::run_as_program(other, &args, &paths.home, &mut out) {
                return exit(code);
            }
        }
    }

    let cli = Cli::parse();
    let paths = Paths::resolve(cli.home.as_deref());
    match cli.command {
        Command::Serve {
            smtp,
            submission,
            smtps,
            odmr,
            pop3,
            pop3s,
            imap_proxy,
            imaps_proxy,
            pop3_proxy,
            pop3s_proxy,
            poppass,
            poppasss,
            metrics,
            admin,
            indisrvr,
            cpus,
            driver,
        } => {
            use smtp_server::Service;
            type Starter = fn(&Paths, SocketAddr) -> Result<SocketAddr, adminauth::AdminError>;
            let admins: [(&str, Option<SocketAddr>, Starter); 2] = [
                ("admin", admin, adminsrv::start),
                ("indisrvr", indisrvr, indisrvr::start),
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
            let mut listeners: Vec<(Service, SocketAddr)> = Vec::new();
            for (svc, addrs) in [
                (Service::Smtp, smtp),
                (Service::Submission, submission),
                (Service::Smtps, smtps),
                (Service::Odmr, odmr),
                (Service::Pop3, pop3),
                (Service::Pop3s, pop3s),
                (Service::ImapProxy, imap_proxy),
                (Service::ImapsProxy, imaps_proxy),
                (Service::Pop3Proxy, pop3_proxy),
                (Service::Pop3sProxy, pop3s_proxy),
                (Service::Poppass, poppass),
                (Service::Poppasss, poppasss),
                (Service::Metrics, metrics),
            ] {
                listeners.extend(addrs.into_iter().map(|a| (svc, a)));
            }
            match run_serve(paths, &listeners, cpus, driver) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("indimail serve: {e:#}");
                    ExitCode::from(111)
                }
            }
        }
        Command::Init => match init(&paths) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("indimail init: {e:#}");
                ExitCode::from(111)
            }
        },
        Command::Config { command } => match command {
            ConfigCommand::Check => exit(config_check(&paths)),
            ConfigCommand::Show => exit(config_show(&paths)),
        },
        Command::Queue { command } => match command {
            QueueCommand::Stat => match queue_stat(&paths) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("indimail queue stat: {e:#}");
                    ExitCode::from(111)
                }
            },
            QueueCommand::Inject => exit(inject::qmail_queue_main(&paths)),
            QueueCommand::List { sel } => match queue_list(&paths, &sel) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("indimail queue list: {e:#}");
                    ExitCode::from(111)
                }
            },
            QueueCommand::Show { id, body } => exit(tools::show(&paths, &id, body)),
            QueueCommand::Delete { sel, yes } => {
                exit(tools::change(&paths, tools::Change::Delete, &sel, yes))
            }
            QueueCommand::Bounce { sel, yes } => {
                exit(tools::change(&paths, tools::Change::Bounce, &sel, yes))
            }
            QueueCommand::Hold { sel } => {
                exit(tools::change(&paths, tools::Change::Hold, &sel, true))
            }
            QueueCommand::Release { sel } => {
                exit(tools::change(&paths, tools::Change::Release, &sel, true))
            }
            QueueCommand::Flush { sel } => {
                exit(tools::change(&paths, tools::Change::Flush, &sel, true))
            }
            QueueCommand::Shape { by_sender, top } => exit(tools::shape(&paths, by_sender, top)),
        },
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
        Command::Man { out } => exit(manpages::main(&out)),
        Command::ImportQmailQueue {
            dir,
            control,
            dry_run,
        } => exit(qmailimport::main(&paths, &dir, control.as_deref(), dry_run)),
        Command::Service { command } => match command {
            ServiceCommand::Install {
                dir,
                daemontools,
                user,
                binary,
                stop_timeout,
                man_dir,
            } => exit(svctool::install(
                &paths,
                &svctool::Options {
                    dir,
                    daemontools,
                    user,
                    binary,
                    stop_timeout,
                    man_dir,
                },
            )),
        },
        Command::Log { command } => match command {
            LogCommand::Summary { file } => exit(logsummary::main(&file)),
        },
        Command::Dkim {
            command:
                DkimCommand::Keygen {
                    domain,
                    selector,
                    kind,
                    bits,
                },
        } => {
            let kind = match kind.as_str() {
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
            match msgproc::dkim::keygen(paths.control.path(), &domain, &selector, kind) {
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
        Command::Sendmail { args } => exit(sendmail::main(&paths, &args)),
        Command::Tuning { args } => {
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
            cmd.args(&args).env("INDIMAIL_HOME", &paths.home);
            let err = cmd.exec();
            eprintln!("indimail tuning: cannot run {}: {err}", tool.display());
            ExitCode::from(111)
        }
        Command::Directory(cmd) => {
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
    privs::decide(&paths).map_err(anyhow::Error::msg)?;
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

fn queue_list(paths: &Paths, args: &tools::ListArgs) -> anyhow::Result<()> {
    let sel = args.selection().map_err(anyhow::Error::msg)?;
    let queues = paths
        .layout_with_existing()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .specs();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut total = 0usize;
    // A large queue takes a while to read: a bar on a terminal, a line
    // every few seconds otherwise (stderr; the list is on stdout).
    let bytes: u64 = queues
        .iter()
        .map(|q| queue_store::segment_bytes(&q.dir))
        .sum();
    let mut progress = progress::Progress::new("queue list: scanning (bytes)", bytes);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    use std::io::Write as _;
    for q in &queues {
        if !q.dir.exists() {
            continue;
        }
        // A queue that was never opened by a server has no log yet.
        let msgs = if q.dir.join("seg").is_dir() {
            queue_store::scan_with_progress(&q.dir, |n| progress.inc(n))?
        } else {
            Vec::new()
        };
        for m in msgs
            .iter()
            .filter(|m| sel.envelope_matches(m.id, &m.envelope))
        {
            writeln!(out, "{}", queue_store_line(q.number, m, now))?;
            total += 1;
        }
        if !sel.ids.is_empty() {
            // Drop files have no id yet.
            continue;
        }
        // Messages still in the drop directory are queued too: they are
        // durable and will be imported by the owning shard.
        let drops = inject::drop_dir(&q.dir);
        if let Ok(entries) = std::fs::read_dir(&drops) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("tmp.") || e.path().is_dir() {
                    continue;
                }
                if let Ok(d) = std::fs::read(e.path())
                    .map_err(|e| e.to_string())
                    .and_then(|b| inject::read_drop(&b))
                {
                    let env = queue_store::Envelope::new(
                        d.envelope.sender.clone(),
                        d.envelope.recipients.clone(),
                    );
                    let any = queue_store::MessageId {
                        queue: q.number,
                        segment: 0,
                        offset: 0,
                    };
                    if !sel.envelope_matches(any, &env) {
                        continue;
                    }
                    writeln!(
                        out,
                        "queue{} inject/{name} size={} from=<{}> to={} state=awaiting-import",
                        q.number,
                        d.body.len(),
                        d.envelope.sender,
                        d.envelope
                            .recipients
                            .iter()
                            .map(|r| format!("<{r}>"))
                            .collect::<Vec<_>>()
                            .join(",")
                    )?;
                    total += 1;
                }
            }
        }
        total += list_quarantined(&mut out, q)?;
    }
    out.flush()?;
    drop(out);
    progress.finish();
    eprintln!("{total} messages");
    Ok(())
}

/// Lists the messages recovery moved to `quarantine/` (their body could not
/// be read whole): they are never delivered or retried, and stay listed
/// until the operator removes them.
fn list_quarantined(out: &mut impl std::io::Write, q: &config::QueueSpec) -> anyhow::Result<usize> {
    let Ok(entries) = std::fs::read_dir(q.dir.join(queue_store::QUARANTINE_DIR)) else {
        return Ok(0);
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".env") else {
            continue;
        };
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or("")
                .to_string()
        };
        let to: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("recipient "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        writeln!(
            out,
            "queue{} quarantine/{id} from={} to={} state=quarantined reason={}",
            q.number,
            field("sender "),
            to.join(","),
            field("reason ")
        )?;
        n += 1;
    }
    Ok(n)
}

fn queue_store_line(queue: u32, m: &queue_store::QueuedMessage, now: u64) -> String {
    let rcpts: Vec<String> = m
        .envelope
        .recipients
        .iter()
        .zip(&m.recipients)
        .map(|(addr, st)| {
            let state = match st.state {
                queue_store::RecipientState::Pending => "pending",
                queue_store::RecipientState::Done => "done",
                queue_store::RecipientState::Failed => "failed",
            };
            format!("<{addr}>:{state}")
        })
        .collect();
    format!(
        "queue{queue} {} age={}s size={} from=<{}> to={}{}",
        m.id,
        now.saturating_sub(m.envelope.arrival),
        m.size,
        m.envelope.sender,
        rcpts.join(","),
        if m.held { " held" } else { "" }
    )
}

fn init(paths: &Paths) -> anyhow::Result<()> {
    let mut made = config::prepare_home(paths)?;
    for q in paths
        .layout(None)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .configured()
    {
        if !q.dir.exists() {
            std::fs::create_dir_all(&q.dir)?;
            config::make_durable(std::slice::from_ref(&q.dir))?;
            made.push(q.dir);
        }
    }
    if made.is_empty() {
        println!(
            "{}: nothing to create, everything is in place",
            paths.home.display()
        );
    }
    for p in made {
        println!("created {}", p.display());
    }
    Ok(())
}

/// Every configuration problem, as `file:line: problem` lines.
fn config_problems(paths: &Paths) -> (Option<ServeConfig>, Vec<String>) {
    let mut problems = Vec::new();
    let cfg = match ServeConfig::load(paths.clone(), &[], None) {
        Ok(c) => Some(c),
        Err(errs) => {
            problems.extend(errs.iter().map(|e| e.to_string()));
            None
        }
    };
    match paths.layout_with_existing() {
        Ok(layout) => {
            let queues = layout.specs();
            let me = config::system_hostname();
            let me = paths.control.string("me").ok().flatten().unwrap_or(me);
            if let Err(e) = deliver::DeliverySettings::load(&paths.control, &me, &queues) {
                problems.push(e);
            }
        }
        Err(e) => problems.extend(e.0.iter().map(|e| e.to_string())),
    }
    let certs = tls::CertPaths::from_env(paths.control.path());
    if certs.exists() {
        if let Err(e) = tls::CertStore::load(certs, tls::ServerOptions::default()) {
            problems.push(format!("TLS certificate: {e}"));
        }
    }
    if let Err(e) = shard::io::Driver::from_env() {
        problems.push(e);
    }
    (cfg, problems)
}

fn config_check(paths: &Paths) -> i32 {
    let (_, problems) = config_problems(paths);
    if problems.is_empty() {
        println!("{}: configuration ok", paths.control.path().display());
        0
    } else {
        for p in &problems {
            eprintln!("{p}");
        }
        eprintln!("{} problem(s)", problems.len());
        1
    }
}

fn config_show(paths: &Paths) -> i32 {
    let (cfg, problems) = config_problems(paths);
    println!("home: {}", paths.home.display());
    println!("control: {}", paths.control.path().display());
    if let Some(c) = cfg {
        let s = &c.smtp;
        println!("me: {}", s.me);
        println!("smtpgreeting: {}", s.greeting);
        println!("databytes: {}", s.databytes);
        println!("timeoutsmtpd: {}", s.timeout.as_secs());
        println!("maxrecipients: {}", s.max_recipients);
        println!("maxperip: {}", s.max_per_ip);
        println!("maxdaemons: {}", s.max_connections);
        println!("checkrecipient: {:?}", s.check_recipient);
        println!("qmail_ext (extension addresses): {}", s.qmail_ext);
        println!("relayclient (everyone): {}", s.relay_everyone);
        println!(
            "rcptrate: {} msgrate: {} authrcptrate: {} authmsgrate: {} (per minute, 0 = unlimited)",
            s.rates.rcpt_per_ip, s.rates.msg_per_ip, s.rates.rcpt_per_user, s.rates.msg_per_user
        );
        println!("dnsbllist: {}", s.dnsbl_zones.join(" "));
        println!("spfbehavior: {}", s.spf.0);
        println!("etrnhosts: {}", s.turn.held_domains().join(" "));
        println!("shutdowntimeout: {}", c.shutdown_timeout.as_secs());
        match privs::decide(paths) {
            Ok(privs::Decision::AsIs) => println!("user: (not root: runs as the invoking user)"),
            Ok(privs::Decision::Drop(u)) => {
                println!("user: {} (uid {} gid {})", u.name, u.uid, u.gid)
            }
            Ok(privs::Decision::StayRoot) => println!("user: root (INDIMAIL_ALLOW_ROOT)"),
            Err(e) => println!("user: {e}"),
        }
        for (svc, a) in &c.listeners {
            println!("listener: {} {a}", svc.name());
        }
    }
    // The same layout `serve` resolves (without its --cpus), strays included.
    if let Ok(l) = paths.layout_with_existing() {
        let cpus: Vec<String> = l
            .shard_cpus
            .iter()
            .map(|c| c.map_or("any".to_string(), |c| c.to_string()))
            .collect();
        let from = match l.shards_from {
            queue_layout::Source::Argument => "--cpus",
            queue_layout::Source::Environment => "INDIMAIL_SHARDS",
            queue_layout::Source::Control => "control/cpus",
            queue_layout::Source::Default => "all online",
        };
        println!(
            "shards: {} (cpus {}; from {from})",
            l.shards(),
            cpus.join(",")
        );
        if let Some(asked) = l.shards_asked {
            println!(
                "note: {} queues for {asked} cpus: {} shards run",
                l.count,
                l.shards()
            );
        }
        for q in &l.queues {
            println!(
                "queue{} {} -> shard {}{}",
                q.spec.number,
                q.spec.dir.display(),
                q.shard,
                if q.adopted {
                    " (adopted: outside QUEUE_START..QUEUE_COUNT)"
                } else {
                    ""
                }
            );
        }
    }
    let certs = tls::CertPaths::from_env(paths.control.path());
    println!(
        "tls certificate: {} ({})",
        certs.cert.display(),
        if certs.exists() {
            "present"
        } else {
            "missing: STARTTLS off"
        }
    );
    let mysql = paths.control.file("host.mysql");
    println!(
        "directory: {}",
        if mysql.exists() {
            format!("MySQL ({})", mysql.display())
        } else {
            format!(
                "embedded SQLite ({})",
                paths.home.join("db/indimail.sqlite").display()
            )
        }
    );
    for (file, role) in [
        ("host.master", "directory master (writes)"),
        ("host.cntrl", "clusterinfo database"),
    ] {
        let f = paths.control.file(file);
        if f.exists() {
            println!("{role}: MySQL ({})", f.display());
        }
    }
    for p in &problems {
        println!("problem: {p}");
    }
    i32::from(!problems.is_empty())
}

fn queue_stat(paths: &Paths) -> anyhow::Result<()> {
    let queues = paths
        .layout_with_existing()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .specs();
    let (mut tm, mut tp) = (0usize, 0usize);
    for q in &queues {
        let msgs = if q.dir.join("seg").is_dir() {
            queue_store::scan(&q.dir)?
        } else {
            Vec::new()
        };
        let (mut pending, mut done, mut failed, mut bytes) = (0, 0, 0, 0u64);
        let held = msgs.iter().filter(|m| m.held).count();
        for m in &msgs {
            bytes += m.size;
            for r in &m.recipients {
                match r.state {
                    queue_store::RecipientState::Pending => pending += 1,
                    queue_store::RecipientState::Done => done += 1,
                    queue_store::RecipientState::Failed => failed += 1,
                }
            }
        }
        let drops = std::fs::read_dir(inject::drop_dir(&q.dir))
            .map(|r| {
                r.flatten()
                    .filter(|e| {
                        !e.file_name().to_string_lossy().starts_with("tmp.") && e.path().is_file()
                    })
                    .count()
            })
            .unwrap_or(0);
        println!(
            "queue{}: messages {} recipients pending {pending} done {done} failed {failed} bytes {bytes} awaiting-import {drops} held {held}",
            q.number,
            msgs.len()
        );
        tm += msgs.len() + drops;
        tp += pending;
    }
    println!("total: messages {tm} recipients pending {tp}");
    Ok(())
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

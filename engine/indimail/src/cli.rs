//! The command line of `indimail`: every subcommand and option, as clap definitions. Only
//! the shape of the command line lives here; `main` dispatches each command to the module
//! or crate that does the work, and `indimail man` renders these definitions as pages.

use std::net::SocketAddr;
use std::path::PathBuf;

use admin_api::adminauth;
use clap::{Parser, Subcommand};

use operator_tools::tools;

#[derive(Parser)]
#[command(
    name = "indimail",
    version,
    about = "IndiMail rebuilt in Rust: a thread-per-core io_uring MTA"
)]
pub struct Cli {
    /// Home directory holding control/, queue/ and the mailboxes
    /// (default: $INDIMAIL_HOME, else /var/indimail for root, ~/.indimail otherwise).
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the mail system in the foreground until SIGTERM.
    Serve(ServeArgs),
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

/// `indimail serve`'s listeners and runtime options.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// SMTP listener ADDRESS:PORT (repeatable; any listener option
    /// replaces control/listeners).
    #[arg(long = "smtp", value_name = "ADDR:PORT")]
    pub smtp: Vec<SocketAddr>,
    /// Submission listener (AUTH required, port 587 style).
    #[arg(long = "submission", value_name = "ADDR:PORT")]
    pub submission: Vec<SocketAddr>,
    /// Implicit-TLS SMTP listener (port 465 style).
    #[arg(long = "smtps", value_name = "ADDR:PORT")]
    pub smtps: Vec<SocketAddr>,
    /// On-Demand Mail Relay listener (RFC 2645, port 366 style): AUTH, then ATRN.
    #[arg(long = "odmr", value_name = "ADDR:PORT")]
    pub odmr: Vec<SocketAddr>,
    /// POP3 server on the users' Maildirs (STLS offered).
    #[arg(long = "pop3", value_name = "ADDR:PORT")]
    pub pop3: Vec<SocketAddr>,
    /// POP3 server with implicit TLS.
    #[arg(long = "pop3s", value_name = "ADDR:PORT")]
    pub pop3s: Vec<SocketAddr>,
    /// IMAP proxy to each user's mailstore.
    #[arg(long = "imap-proxy", value_name = "ADDR:PORT")]
    pub imap_proxy: Vec<SocketAddr>,
    /// IMAP proxy with implicit TLS.
    #[arg(long = "imaps-proxy", value_name = "ADDR:PORT")]
    pub imaps_proxy: Vec<SocketAddr>,
    /// POP3 proxy to each user's mailstore.
    #[arg(long = "pop3-proxy", value_name = "ADDR:PORT")]
    pub pop3_proxy: Vec<SocketAddr>,
    /// POP3 proxy with implicit TLS.
    #[arg(long = "pop3s-proxy", value_name = "ADDR:PORT")]
    pub pop3s_proxy: Vec<SocketAddr>,
    /// Password changes by the users (poppassd protocol, port 106).
    #[arg(long = "poppass", value_name = "ADDR:PORT")]
    pub poppass: Vec<SocketAddr>,
    /// poppassd with implicit TLS.
    #[arg(long = "poppasss", value_name = "ADDR:PORT")]
    pub poppasss: Vec<SocketAddr>,
    /// Prometheus metrics (HTTP `GET /metrics`), summed over shards.
    #[arg(long = "metrics", value_name = "ADDR:PORT")]
    pub metrics: Vec<SocketAddr>,
    /// Remote administration endpoint (indisrvr's role): HTTP/JSON over TLS only,
    /// users and permissions in control/adminusers.
    #[arg(long = "admin", value_name = "ADDR:PORT")]
    pub admin: Option<SocketAddr>,
    /// IndiMail's indisrvr line protocol (for adminclient), TLS only, same users and
    /// permissions as --admin.
    #[arg(long = "indisrvr", value_name = "ADDR:PORT")]
    pub indisrvr: Option<SocketAddr>,
    /// CPUs to run shards on, e.g. `0-3,6` (overrides control/cpus).
    #[arg(long, value_name = "LIST")]
    pub cpus: Option<String>,
    /// I/O driver: `uring` (default; falls back to epoll when io_uring is
    /// unavailable) or `epoll`. Also $INDIMAIL_DRIVER.
    #[arg(long, value_name = "DRIVER")]
    pub driver: Option<String>,
}

#[derive(Subcommand)]
pub enum DkimCommand {
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
pub enum ConfigCommand {
    /// Validate every control file and variable; report all problems with file and line.
    Check,
    /// Print the effective configuration (the role of qmail-showctl).
    Show,
}

#[derive(Subcommand)]
pub enum QueueCommand {
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
pub enum ServiceCommand {
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
pub enum LogCommand {
    /// Messages, recipients, bytes, deliveries by result and delivery
    /// latency percentiles from a log (the role of qmailanalog's zoverall).
    Summary {
        /// Log file (`-` = standard input).
        file: PathBuf,
    },
}

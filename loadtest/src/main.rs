//! `indimail-loadtest`: `send` drives SMTP load at a loopback target, `sink` receives it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};
use indimail_loadtest::handshake::{self, TlsMode};
use indimail_loadtest::sink::{self, FailAt, SinkConfig, SinkCounters};
use indimail_loadtest::{send, target};

#[derive(Parser)]
#[command(
    name = "indimail-loadtest",
    version,
    about = "SMTP load generator and sink"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send SMTP load to a target and report throughput and latency.
    Send(SendArgs),
    /// Run an SMTP server that counts and discards what it receives.
    Sink(SinkArgs),
    /// Open and close sessions without mail (connect, [TLS], EHLO, QUIT) as fast as the
    /// server answers: connections or TLS handshakes per second.
    Handshake(HandshakeArgs),
}

#[derive(Args)]
struct HandshakeArgs {
    /// Server to load, HOST:PORT (loopback only unless --allow-remote-target).
    #[arg(long)]
    target: String,
    /// Allow a target outside 127.0.0.0/8 and ::1.
    #[arg(long)]
    allow_remote_target: bool,
    /// Concurrent sessions.
    #[arg(long, default_value_t = 20)]
    sessions: usize,
    /// Total sessions (default 1000 when --duration is not given).
    #[arg(long)]
    connections: Option<u64>,
    /// Run length in seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// STARTTLS after EHLO, then EHLO again.
    #[arg(long, conflicts_with = "tls_on_connect")]
    starttls: bool,
    /// TLS from the first byte (implicit TLS, port 465 style).
    #[arg(long)]
    tls_on_connect: bool,
    /// Let TLS sessions resume (default: a full handshake every time).
    #[arg(long)]
    tls_resume: bool,
    /// EHLO name.
    #[arg(long, default_value = "loadtest.example.org")]
    helo: String,
    /// Timeout of each read or write, seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct SendArgs {
    /// Server to load, HOST:PORT (loopback only unless --allow-remote-target).
    #[arg(long)]
    target: String,
    /// Allow a target outside 127.0.0.0/8 and ::1.
    #[arg(long)]
    allow_remote_target: bool,
    /// Concurrent sessions (closed loop), or the session pool for --rate.
    #[arg(long, default_value_t = 20)]
    sessions: usize,
    /// Open loop: messages per second on a fixed schedule (latency from scheduled time).
    #[arg(long)]
    rate: Option<f64>,
    /// Total messages (default 1000 when --duration is not given).
    #[arg(long)]
    messages: Option<u64>,
    /// Run length in seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Message size in bytes, headers included.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Recipients per message.
    #[arg(long, default_value_t = 1)]
    rcpts: usize,
    /// Recipient domain used by the default template.
    #[arg(long, default_value = "example.com")]
    rcpt_domain: String,
    /// Recipient template; {n} is replaced by a user number in 1..=--users.
    #[arg(long)]
    rcpt_template: Option<String>,
    /// Number of distinct recipients to spread messages over.
    #[arg(long, default_value_t = 1000)]
    users: u64,
    /// Envelope sender.
    #[arg(long, default_value = "loadtest@loadtest.example.org")]
    from: String,
    /// EHLO name.
    #[arg(long, default_value = "loadtest.example.org")]
    helo: String,
    /// Messages per connection (0 = unlimited).
    #[arg(long, default_value_t = 1)]
    per_session: u64,
    /// Send MAIL/RCPT/DATA in one write when the server offers PIPELINING.
    #[arg(long)]
    pipelining: bool,
    /// Use BDAT when the server offers CHUNKING.
    #[arg(long)]
    chunking: bool,
    /// Use STARTTLS (certificates are not verified; see the README).
    #[arg(long, conflicts_with = "tls_on_connect")]
    starttls: bool,
    /// TLS from the first byte (implicit TLS, port 465 style).
    #[arg(long)]
    tls_on_connect: bool,
    /// Let TLS sessions resume (default: a full handshake on every connection).
    #[arg(long)]
    tls_resume: bool,
    /// AUTH PLAIN credentials, user:pass.
    #[arg(long)]
    auth: Option<String>,
    /// Timeout of each read or write, seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Connect from this many loopback addresses, 127.1.0.1 upward, a new one per
    /// connection (0: the kernel's choice); needs a loopback IPv4 target.
    #[arg(long, default_value_t = 0)]
    source_addrs: u32,
    /// Append "<Message-ID> <reply>" for every accepted message to this file.
    #[arg(long)]
    accepted_log: Option<PathBuf>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct SinkArgs {
    /// Address to listen on, ADDR:PORT (port 0 picks one; the address is printed).
    #[arg(long)]
    listen: SocketAddr,
    /// Hostname in the greeting.
    #[arg(long, default_value = "sink.loadtest.invalid")]
    hostname: String,
    /// Delay before answering the end of data, milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Percentage of 4xx replies injected.
    #[arg(long, default_value_t = 0)]
    tempfail_percent: u8,
    /// Percentage of 5xx replies injected.
    #[arg(long, default_value_t = 0)]
    permfail_percent: u8,
    /// Where failures are injected.
    #[arg(long, value_enum, default_value_t = FailAt::Data)]
    fail_at: FailAt,
    /// Write accepted messages to this Maildir instead of discarding them.
    #[arg(long)]
    maildir: Option<PathBuf>,
    /// fsync Maildir files and new/ before answering.
    #[arg(long)]
    fsync: bool,
    /// Offer STARTTLS with a fresh self-signed certificate.
    #[arg(long)]
    tls: bool,
    /// With --tls: TLS from the first byte instead of STARTTLS (implicit TLS).
    #[arg(long, requires = "tls")]
    tls_on_connect: bool,
    /// Write the counts as JSON to this file (every 200 ms and at exit).
    #[arg(long)]
    stats: Option<PathBuf>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Send(args) => runtime.block_on(run_send(args)),
        Command::Sink(args) => runtime.block_on(run_sink(args)),
        Command::Handshake(args) => runtime.block_on(run_handshake(args)),
    }
}

/// The name for TLS SNI: the target's host, or `localhost` for an IP address.
fn server_name(target: &str) -> String {
    let host = target
        .rsplit_once(':')
        .map_or("localhost", |(h, _)| h.trim_matches(['[', ']']));
    if host.parse::<std::net::IpAddr>().is_ok() {
        "localhost".into()
    } else {
        host.to_string()
    }
}

fn seconds(s: f64, name: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(s)
        .with_context(|| format!("--{name} must be a non-negative number of seconds"))
}

async fn run_handshake(a: HandshakeArgs) -> Result<()> {
    let addr = target::resolve_target(&a.target, a.allow_remote_target)?;
    let duration = a.duration.map(|d| seconds(d, "duration")).transpose()?;
    let config = handshake::HandshakeConfig {
        target: addr,
        server_name: server_name(&a.target),
        sessions: a.sessions,
        connections: match (a.connections, duration) {
            (None, None) => Some(1000),
            (n, _) => n,
        },
        duration,
        tls: match (a.starttls, a.tls_on_connect) {
            (true, _) => TlsMode::Starttls,
            (_, true) => TlsMode::OnConnect,
            _ => TlsMode::None,
        },
        tls_resumption: a.tls_resume,
        helo: a.helo,
        timeout: seconds(a.timeout, "timeout")?,
        progress: !a.quiet,
    };
    let report = handshake::run(config).await?;
    print!("{}", report.summary_text());
    if let Some(path) = &a.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn run_send(a: SendArgs) -> Result<()> {
    let addr = target::resolve_target(&a.target, a.allow_remote_target)?;
    if a.source_addrs > 0 && !(addr.is_ipv4() && addr.ip().is_loopback()) {
        bail!("--source-addrs needs a loopback IPv4 target (127.0.0.0/8)");
    }
    if a.source_addrs > 0xfe_fffe {
        bail!(
            "--source-addrs: at most {} addresses in 127.1.0.1 ..",
            0xfe_fffe
        );
    }
    let auth = match &a.auth {
        None => None,
        Some(s) => match s.split_once(':') {
            Some((u, p)) => Some((u.to_string(), p.to_string())),
            None => bail!("--auth must be user:pass"),
        },
    };
    let duration = a.duration.map(|d| seconds(d, "duration")).transpose()?;
    let messages = match (a.messages, duration) {
        (None, None) => Some(1000),
        (m, _) => m,
    };
    let config = send::SendConfig {
        target: addr,
        server_name: server_name(&a.target),
        sessions: a.sessions,
        rate: a.rate,
        messages,
        duration,
        size: a.size,
        rcpts: a.rcpts,
        rcpt_template: a
            .rcpt_template
            .unwrap_or_else(|| format!("user{{n}}@{}", a.rcpt_domain)),
        users: a.users,
        from: a.from,
        helo: a.helo,
        per_session: a.per_session,
        pipelining: a.pipelining,
        chunking: a.chunking,
        starttls: a.starttls,
        tls_on_connect: a.tls_on_connect,
        tls_resumption: a.tls_resume,
        auth,
        timeout: seconds(a.timeout, "timeout")?,
        source_addrs: a.source_addrs,
        accepted_log: a.accepted_log,
        progress: !a.quiet,
    };
    let report = send::run(config).await?;
    print!("{}", report.summary_text());
    if let Some(path) = &a.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn run_sink(a: SinkArgs) -> Result<()> {
    if u16::from(a.tempfail_percent) + u16::from(a.permfail_percent) > 100 {
        bail!("--tempfail-percent plus --permfail-percent must not exceed 100");
    }
    if let Some(dir) = &a.maildir {
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
    }
    let tls = if a.tls {
        Some(indimail_loadtest::tls::server_config(&a.hostname)?)
    } else {
        None
    };
    let config = Arc::new(SinkConfig {
        hostname: a.hostname,
        delay: Duration::from_millis(a.delay_ms),
        tempfail_percent: a.tempfail_percent,
        permfail_percent: a.permfail_percent,
        fail_at: a.fail_at,
        maildir: a.maildir,
        fsync: a.fsync,
        tls,
        tls_on_connect: a.tls_on_connect,
        ..SinkConfig::default()
    });
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("binding {}", a.listen))?;
    // The harness waits for this line before sending.
    println!("listening on {}", listener.local_addr()?);
    let counters = Arc::new(SinkCounters::default());
    let server = tokio::spawn(sink::serve(listener, config, counters.clone()));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Often enough that a drain check reading the file (compare.sh) adds little to a
    // run's end-to-end time: 200 ms was up to a tenth of a 2,000-message relay run.
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                if let Some(path) = &a.stats {
                    write_stats(path, &counters.snapshot())?;
                }
            }
        }
    }
    server.abort();
    let stats = counters.snapshot();
    if let Some(path) = &a.stats {
        write_stats(path, &stats)?;
    }
    eprintln!(
        "sink: {} connections, {} messages, {} recipients, {} bytes, {} tempfails, {} permfails, {} protocol errors",
        stats.connections, stats.messages, stats.recipients, stats.bytes, stats.tempfails, stats.permfails, stats.protocol_errors
    );
    Ok(())
}

/// Written to a temporary name and renamed, so a reader never sees half a file.
fn write_stats(path: &std::path::Path, stats: &sink::SinkStats) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_string(stats)? + "\n")
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

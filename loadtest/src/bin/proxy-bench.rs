//! `proxy-bench`: the client side of `loadtest/proxy-cost.sh` (issue 6). Measures, against
//! one IMAP or POP3 server (the indimail proxy, or the Dovecot behind it):
//!
//! * `logins`: complete login sessions per second — connect, greeting, `LOGIN` (IMAP) or
//!   `USER`/`PASS` (POP3), `LOGOUT`/`QUIT`, close — from `--sessions` concurrent clients;
//! * `fetch`: bytes per second of `FETCH 1 BODY.PEEK[]` repeated on one logged-in IMAP
//!   session per client (message 1 of INBOX; make it large).
//!
//! Prints one JSON object on stdout. Plain TCP, loopback targets only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, ValueEnum};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Parser)]
#[command(name = "proxy-bench", about = "IMAP/POP3 login and FETCH throughput")]
struct Cli {
    /// What to measure.
    #[arg(value_enum)]
    mode: Mode,
    /// Server, HOST:PORT on loopback.
    #[arg(long)]
    target: SocketAddr,
    /// Protocol (`fetch` is IMAP only).
    #[arg(long, value_enum, default_value_t = Proto::Imap)]
    proto: Proto,
    /// Login name.
    #[arg(long)]
    user: String,
    /// Password.
    #[arg(long)]
    pass: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    sessions: usize,
    /// Run length in seconds (after a 1 s warm-up that is not counted).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Logins,
    Fetch,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Proto {
    Imap,
    Pop3,
}

struct Conn {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
    line: String,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Conn> {
        let s = TcpStream::connect(addr).await.context("connect")?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        let mut c = Conn {
            r: BufReader::with_capacity(256 * 1024, r),
            w,
            line: String::new(),
        };
        c.read_line().await?;
        if !(c.line.starts_with("* OK") || c.line.starts_with("+OK")) {
            bail!("greeting {:?}", c.line);
        }
        Ok(c)
    }

    async fn read_line(&mut self) -> Result<()> {
        self.line.clear();
        if self.r.read_line(&mut self.line).await? == 0 {
            bail!("connection closed");
        }
        Ok(())
    }

    async fn send(&mut self, s: &str) -> Result<()> {
        self.w.write_all(s.as_bytes()).await?;
        Ok(())
    }

    /// Reads up to the line tagged `tag`; it must be OK. Literals `{n}` are skipped; returns
    /// the literal bytes seen.
    async fn tagged(&mut self, tag: &str) -> Result<u64> {
        let mut literal = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            self.read_line().await?;
            if let Some(rest) = self.line.strip_prefix(tag) {
                if rest.starts_with(" OK") {
                    return Ok(literal);
                }
                bail!("{tag}{rest}");
            }
            let t = self.line.trim_end();
            if let Some(n) = t
                .strip_suffix('}')
                .and_then(|x| x.rsplit_once('{'))
                .and_then(|(_, n)| n.parse::<u64>().ok())
            {
                let mut left = n;
                while left > 0 {
                    let k = (left as usize).min(buf.len());
                    self.r.read_exact(&mut buf[..k]).await?;
                    left -= k as u64;
                }
                literal += n;
            }
        }
    }

    async fn pop_ok(&mut self) -> Result<()> {
        self.read_line().await?;
        if !self.line.starts_with("+OK") {
            bail!("{:?}", self.line);
        }
        Ok(())
    }
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

async fn login_session(cli: &Cli) -> Result<()> {
    let mut c = Conn::open(cli.target).await?;
    match cli.proto {
        Proto::Imap => {
            c.send(&format!(
                "a LOGIN {} {}\r\n",
                quote(&cli.user),
                quote(&cli.pass)
            ))
            .await?;
            c.tagged("a").await?;
            c.send("b LOGOUT\r\n").await?;
            c.tagged("b").await?;
        }
        Proto::Pop3 => {
            c.send(&format!("USER {}\r\n", cli.user)).await?;
            c.pop_ok().await?;
            c.send(&format!("PASS {}\r\n", cli.pass)).await?;
            c.pop_ok().await?;
            c.send("QUIT\r\n").await?;
            c.pop_ok().await?;
        }
    }
    Ok(())
}

struct Counters {
    done: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    lat_us: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
}

async fn client(cli: Arc<Cli>, n: Arc<Counters>, warm_end: Instant, end: Instant) -> Result<()> {
    let counting = || Instant::now() >= warm_end;
    match cli.mode {
        Mode::Logins => {
            while Instant::now() < end {
                let t = Instant::now();
                match login_session(&cli).await {
                    Ok(()) if counting() && Instant::now() <= end => {
                        n.done.fetch_add(1, Ordering::Relaxed);
                        let us = t.elapsed().as_micros() as u64;
                        let _ = n.lat_us.lock().unwrap().record(us.max(1));
                    }
                    Ok(()) => {}
                    Err(_) => {
                        n.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        Mode::Fetch => {
            if cli.proto != Proto::Imap {
                bail!("fetch is IMAP only");
            }
            let mut c = Conn::open(cli.target).await?;
            c.send(&format!(
                "a LOGIN {} {}\r\n",
                quote(&cli.user),
                quote(&cli.pass)
            ))
            .await?;
            c.tagged("a").await?;
            c.send("b SELECT INBOX\r\n").await?;
            c.tagged("b").await?;
            while Instant::now() < end {
                let t = Instant::now();
                c.send("f FETCH 1 BODY.PEEK[]\r\n").await?;
                let bytes = c.tagged("f").await?;
                if bytes == 0 {
                    bail!("FETCH returned no literal (is INBOX empty?)");
                }
                if counting() && Instant::now() <= end {
                    n.done.fetch_add(1, Ordering::Relaxed);
                    n.bytes.fetch_add(bytes, Ordering::Relaxed);
                    let us = t.elapsed().as_micros() as u64;
                    let _ = n.lat_us.lock().unwrap().record(us.max(1));
                }
            }
            c.send("z LOGOUT\r\n").await?;
        }
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let cli = Arc::new(Cli::parse());
    if !cli.target.ip().is_loopback() {
        bail!("--target must be a loopback address");
    }
    let n = Arc::new(Counters {
        done: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        lat_us: std::sync::Mutex::new(hdrhistogram::Histogram::new(3)?),
    });
    let start = Instant::now();
    let warm_end = start + Duration::from_secs(1);
    let end = warm_end + Duration::from_secs_f64(cli.duration);
    let mut tasks = Vec::new();
    for _ in 0..cli.sessions {
        tasks.push(tokio::spawn(client(
            Arc::clone(&cli),
            Arc::clone(&n),
            warm_end,
            end,
        )));
    }
    let mut failures = Vec::new();
    for t in tasks {
        if let Err(e) = t.await? {
            failures.push(e.to_string());
        }
    }
    if !failures.is_empty() {
        bail!("clients failed: {}", failures.join("; "));
    }
    let secs = cli.duration;
    let done = n.done.load(Ordering::Relaxed);
    let h = n.lat_us.lock().unwrap();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let out = serde_json::json!({
        "mode": match cli.mode { Mode::Logins => "logins", Mode::Fetch => "fetch" },
        "proto": match cli.proto { Proto::Imap => "imap", Proto::Pop3 => "pop3" },
        "sessions": cli.sessions,
        "seconds": secs,
        "count": done,
        "per_sec": done as f64 / secs,
        "bytes": n.bytes.load(Ordering::Relaxed),
        "mbytes_per_sec": n.bytes.load(Ordering::Relaxed) as f64 / secs / 1e6,
        "errors": n.errors.load(Ordering::Relaxed),
        "p50_ms": ms(0.5),
        "p99_ms": ms(0.99),
    });
    println!("{out}");
    Ok(())
}

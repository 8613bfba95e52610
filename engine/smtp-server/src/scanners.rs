//! The content scanners asked at the end of DATA, over their sockets on
//! the shard's runtime: `clamd` (INSTREAM; protocol in `msgproc::scan`).

use std::time::Duration;

use msgproc::scan::{frame, parse_reply, ScanResult, CHUNK, INSTREAM};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long clamd may take for one message, all told.
const CLAMD_TIMEOUT: Duration = Duration::from_secs(120);

/// Streams `message` to clamd at `socket` (a path, or `host:port`) and
/// returns its verdict; a scanner that cannot be reached or answers
/// nothing gives [`ScanResult::Error`].
pub async fn clamd(socket: &str, message: &[u8]) -> ScanResult {
    let ask = async {
        if socket.starts_with('/') {
            let s = tokio::net::UnixStream::connect(socket).await?;
            instream(s, message).await
        } else {
            let s = tokio::net::TcpStream::connect(socket).await?;
            instream(s, message).await
        }
    };
    match tokio::time::timeout(CLAMD_TIMEOUT, ask).await {
        Ok(Ok(reply)) => parse_reply(&reply),
        Ok(Err(e)) => ScanResult::Error(format!("clamd {socket}: {e}")),
        Err(_) => ScanResult::Error(format!("clamd {socket}: timed out")),
    }
}

async fn instream<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    message: &[u8],
) -> std::io::Result<Vec<u8>> {
    s.write_all(INSTREAM).await?;
    for piece in message.chunks(CHUNK) {
        s.write_all(&frame(piece)).await?;
    }
    s.write_all(&frame(b"")).await?;
    s.flush().await?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        if reply.contains(&0) || reply.len() > 4096 {
            break;
        }
    }
    if reply.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "no answer",
        ));
    }
    Ok(reply)
}

/// How an external filter finished.
pub struct FilterRun {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    /// What it wrote on stdout (at most `cap` bytes are kept).
    pub output: Vec<u8>,
    /// It wrote more than `cap` bytes (the output is cut short).
    pub truncated: bool,
}

/// Runs `argv` with `input` on stdin, collecting stdout (up to `cap`
/// bytes; the rest is read and dropped). Runs on the blocking pool: fork,
/// exec and wait must not stall the shard. stderr is discarded.
pub async fn run_filter(
    argv: Vec<String>,
    input: std::sync::Arc<Vec<u8>>,
    cap: usize,
) -> std::io::Result<FilterRun> {
    let job = move || -> std::io::Result<FilterRun> {
        use std::io::{Read, Write};
        use std::process::{Command, Stdio};
        let (prog, args) = argv
            .split_first()
            .ok_or_else(|| std::io::Error::other("empty filter command"))?;
        let mut child = Command::new(prog)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdin = child.stdin.take();
        // Feed stdin on its own thread while stdout is drained here.
        let feeder = std::thread::spawn(move || {
            if let Some(mut w) = stdin {
                let _ = w.write_all(&input);
            }
        });
        let mut output = Vec::new();
        let mut truncated = false;
        if let Some(mut out) = child.stdout.take() {
            let mut chunk = [0u8; 16384];
            loop {
                match out.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        let room = cap.saturating_sub(output.len());
                        truncated |= n > room;
                        output.extend_from_slice(&chunk[..n.min(room)]);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
        }
        let status = child.wait()?;
        let _ = feeder.join();
        Ok(FilterRun {
            code: status.code(),
            output,
            truncated,
        })
    };
    match tokio::task::spawn_blocking(job).await {
        Ok(r) => r,
        Err(e) => Err(std::io::Error::other(format!("filter runner failed: {e}"))),
    }
}

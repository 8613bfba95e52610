//! The queue tools' way to a server: the control socket a running server answers on (its
//! thread, and each shard's channel), the flushes recorded for a stopped one, and the client
//! side that runs an [`Op`] against a running or a stopped server (see the parent module).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::*;

/// Why a queue command could not be carried to the queues, or the control socket not
/// served.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// A file, directory or socket failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file, directory or socket.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A live server already answers on the socket.
    #[error("{}: another server answers on this control socket", .0.display())]
    Busy(PathBuf),
    /// The socket's thread could not start, or a connection failed.
    #[error("{0}")]
    Connection(std::io::Error),
    /// A request longer than the socket accepts.
    #[error("request too long")]
    TooLong,
    /// The server closed before its answer's first line.
    #[error("short answer from the server")]
    ShortAnswer,
    /// The command cannot be put in wire form (a newline in a value).
    #[error("{0}")]
    Request(RequestError),
    /// The queue layout is wrong.
    #[error("{0}")]
    Layout(String),
    /// The queues of a stopped server cannot be opened.
    #[error("{0}; the server's control socket does not answer: is it starting or stopping?")]
    Open(scheduler::queues::OpenError),
}

fn io_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> CtlError + '_ {
    move |source| CtlError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A command for one shard, answered with its report.
pub struct CtlRequest {
    /// The command.
    pub op: Op,
    /// Where the shard answers.
    pub reply: oneshot::Sender<Report>,
}

/// Serves one shard's control channel until `stop`.
pub async fn serve_shard(
    mut rx: shard::MeshReceiver<CtlRequest>,
    queues: Rc<ShardQueues>,
    ctx: Rc<Ctx>,
    stop: shard::Shutdown,
) {
    loop {
        let req = tokio::select! {
            _ = stop.wait() => break,
            r = rx.recv() => r,
        };
        let Some(req) = req else { break };
        let queues = Rc::clone(&queues);
        let ctx = Rc::clone(&ctx);
        tokio::task::spawn_local(async move {
            let r = apply(queues.all(), &req.op, &ctx).await;
            let _ = req.reply.send(r);
        });
    }
}

/// The file a flush on a stopped server leaves for the owning shard.
fn flush_file(queue: &Path) -> PathBuf {
    queue.join("flush")
}

/// At shard start: applies the flushes recorded while the server was
/// stopped, then removes their files.
pub async fn apply_recorded_flushes(queues: &ShardQueues, ctx: &Ctx) {
    for (q, spec) in queues.all().iter().zip(&ctx.specs) {
        let path = flush_file(&spec.dir);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for req in text.split("\n\n").filter(|r| !r.trim().is_empty()) {
            match Op::decode(req) {
                Ok(op @ Op::Flush(_)) => {
                    let r = apply(std::slice::from_ref(q), &op, ctx).await;
                    log!(
                        "{} queue{} recorded flush applied: {} recipients",
                        ctx.who,
                        spec.number,
                        r.recipients
                    );
                }
                _ => log!(
                    "{} queue{} {}: bad flush request ignored",
                    ctx.who,
                    spec.number,
                    path.display()
                ),
            }
        }
        let _ = std::fs::remove_file(&path);
    }
}

/// The control socket's thread; stopped by [`ControlSocket::stop`].
pub struct ControlSocket {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
}

impl ControlSocket {
    /// Binds `path` (mode 0600; a stale socket of a dead server is
    /// replaced, a live one refuses) and serves it on a thread of its own.
    pub fn start(
        path: PathBuf,
        shards: Vec<shard::MeshSender<CtlRequest>>,
    ) -> Result<ControlSocket, CtlError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        }
        if UnixStream::connect(&path).is_ok() {
            return Err(CtlError::Busy(path));
        }
        let _ = std::fs::remove_file(&path);
        // SAFETY: umask(2) has no preconditions; restored right after bind.
        let old = unsafe { libc::umask(0o077) };
        let bound = UnixListener::bind(&path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener = bound.map_err(io_error(&path))?;
        listener.set_nonblocking(true).map_err(io_error(&path))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            if let Err(e) = answer(conn, &shards) {
                                log!("control: {e}");
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        Err(e) => {
                            log!("control: accept: {e}");
                            std::thread::sleep(Duration::from_millis(200));
                        }
                    }
                }
            })
            .map_err(CtlError::Connection)?;
        Ok(ControlSocket {
            stop,
            thread: Some(thread),
            path,
        })
    }

    /// Stops answering and removes the socket.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One control connection: read the request, ask every shard, answer.
fn answer(conn: UnixStream, shards: &[shard::MeshSender<CtlRequest>]) -> Result<(), CtlError> {
    conn.set_nonblocking(false).map_err(CtlError::Connection)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(CtlError::Connection)?;
    let mut reader = BufReader::new(conn.try_clone().map_err(CtlError::Connection)?);
    let mut text = String::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).map_err(CtlError::Connection)?;
        if n == 0 || line == "\n" {
            break;
        }
        if text.len() > 64 << 10 {
            return Err(CtlError::TooLong);
        }
        text.push_str(&line);
    }
    let mut conn = conn;
    let op = match Op::decode(&text) {
        Ok(op) => op,
        Err(e) => {
            let _ = conn.write_all(format!("error 0 0\nerror: {e}\n").as_bytes());
            return Ok(());
        }
    };
    let mut waiting = Vec::new();
    for s in shards {
        let (tx, rx) = oneshot::channel();
        let mut req = CtlRequest {
            op: op.clone(),
            reply: tx,
        };
        // The shard's channel is bounded: wait for room, a little.
        let mut tries = 0;
        loop {
            match s.try_send(req) {
                Ok(()) => {
                    waiting.push(rx);
                    break;
                }
                Err(shard::SendError::Full(r)) if tries < 500 => {
                    req = r;
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => break,
            }
        }
    }
    let mut report = Report::default();
    let asked = shards.len();
    let mut answered = 0;
    for rx in waiting {
        if let Ok(r) = rx.blocking_recv() {
            answered += 1;
            report.merge(r);
        }
    }
    if answered < asked {
        report
            .errors
            .push(format!("only {answered} of {asked} shards answered"));
    }
    conn.write_all(&report.render(&op))
        .map_err(CtlError::Connection)?;
    Ok(())
}

// ---------------------------------------------------------------- client side

/// The answer to a command: the header numbers and the text.
pub struct Answer {
    /// No error.
    pub ok: bool,
    /// Messages acted on.
    pub messages: usize,
    /// Text to print.
    pub text: Vec<u8>,
}

fn parse_answer(bytes: &[u8]) -> Result<Answer, CtlError> {
    let nl = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(CtlError::ShortAnswer)?;
    let head = String::from_utf8_lossy(&bytes[..nl]);
    let mut it = head.split(' ');
    let ok = it.next() == Some("ok");
    let messages = it.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    Ok(Answer {
        ok,
        messages,
        text: bytes[nl + 1..].to_vec(),
    })
}

/// Runs `op` on the running server (control socket) or, when none
/// answers, directly on the queue files.
pub fn execute(paths: &Paths, op: &Op) -> Result<Answer, CtlError> {
    let request = op.encode().map_err(CtlError::Request)?;
    let sock = socket_path(&paths.home);
    match UnixStream::connect(&sock) {
        Ok(mut conn) => {
            conn.write_all(request.as_bytes())
                .map_err(io_error(&sock))?;
            let mut buf = Vec::new();
            conn.read_to_end(&mut buf).map_err(io_error(&sock))?;
            parse_answer(&buf)
        }
        Err(_) => execute_stopped(paths, op),
    }
}

/// The stopped-server path: lock and open every queue, import waiting drop
/// files, apply.
fn execute_stopped(paths: &Paths, op: &Op) -> Result<Answer, CtlError> {
    // Strays too: a stopped server's tools act on all mail queued here.
    let specs = paths
        .layout_with_existing()
        .map_err(|e| CtlError::Layout(e.to_string()))?
        .specs();
    let specs: Vec<QueueSpec> = specs.into_iter().filter(|s| s.dir.exists()).collect();
    if specs.is_empty() {
        return parse_answer(&Report::default().render(op));
    }
    let me = paths
        .control
        .string("me")
        .ok()
        .flatten()
        .unwrap_or_else(::control::env::system_hostname);
    let ctx = Ctx {
        who: "tool".into(),
        control: paths.control.clone(),
        me,
        specs: specs.clone(),
    };
    let report = shard::io::run(shard::io::Driver::Epoll, async {
        let (queues, _) = ShardQueues::open(&specs).await.map_err(CtlError::Open)?;
        queues.import_drops(&specs, 0).await;
        let mut report = apply(queues.all(), op, &ctx).await;
        // Nothing retries while the server is stopped: a flush (and the
        // "tried at once" of a release) is recorded for the owning shard to
        // apply at start.
        let record = match op {
            Op::Flush(s) if report.recipients > 0 => Some(Op::Flush(s.clone())),
            Op::Release(s) if report.messages > 0 => Some(Op::Flush(s.clone())),
            _ => None,
        };
        if let Some(flush) = record {
            {
                let req = flush.encode().map_err(CtlError::Request)?;
                for spec in &specs {
                    let path = flush_file(&spec.dir);
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .map_err(io_error(&path))?;
                    f.write_all(req.as_bytes())
                        .and_then(|()| f.sync_all())
                        .map_err(io_error(&path))?;
                }
                report.lines.push(
                    "server not running: tried when it starts (recorded in <queue>/flush)".into(),
                );
            }
        }
        Ok::<Report, CtlError>(report)
    })?;
    parse_answer(&report.render(op))
}

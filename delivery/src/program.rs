//! Running a child program with the message on stdin and collecting its
//! combined stdout/stderr, as qmail-local does for `|program` lines and as
//! the `QMAILLOCAL`/`QMAILREMOTE` hooks need.
//!
//! The child runs on tokio's blocking pool (`spawn_blocking`): `fork`/`exec`
//! and `waitpid` are blocking calls, and a shard must keep serving its other
//! sessions while a filter runs.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

/// Most bytes of a program's output kept for the delivery report; the rest
/// is read and discarded so the program never blocks on a full pipe.
pub const OUTPUT_CAP: usize = 64 * 1024;

/// How a program finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramExit {
    /// Exit code, `None` when killed by a signal.
    pub code: Option<i32>,
    /// Signal number when killed by one.
    pub signal: Option<i32>,
    /// stdout and stderr interleaved, capped at [`OUTPUT_CAP`].
    pub output: Vec<u8>,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ProgramSpec {
    /// The executable (`/bin/sh` for dot-qmail lines).
    pub program: PathBuf,
    /// Arguments after argv\[0\].
    pub args: Vec<String>,
    /// Working directory (the user's home for qmail-local).
    pub cwd: Option<PathBuf>,
    /// Variables added to (or overriding) the inherited environment.
    pub env: Vec<(String, String)>,
}

/// Runs the program with `stdin` as its standard input. An `Err` is a
/// failure to start it (always temporary for the caller).
pub async fn run(spec: ProgramSpec, stdin: Arc<Vec<u8>>) -> std::io::Result<ProgramExit> {
    match tokio::task::spawn_blocking(move || run_blocking(spec, stdin)).await {
        Ok(r) => r,
        Err(e) => Err(std::io::Error::other(format!("program runner failed: {e}"))),
    }
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into the array on success.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn run_blocking(spec: ProgramSpec, stdin: Arc<Vec<u8>>) -> std::io::Result<ProgramExit> {
    use std::os::unix::process::ExitStatusExt;
    // One pipe for both stdout and stderr, so the report keeps the order the
    // program wrote in (qmail-local dups fd 2 onto fd 1 the same way).
    let (out_r, out_w) = pipe()?;
    let out_w2 = out_w.try_clone()?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(out_w2));
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    let mut child = cmd.spawn()?;
    // `cmd` still holds the write ends; drop it so EOF arrives when the child exits.
    drop(cmd);
    let child_stdin = child.stdin.take();
    // Feed stdin on its own thread: a program may write lots of output
    // before reading its input, and we must drain both at once.
    let feeder = std::thread::spawn(move || {
        if let Some(mut w) = child_stdin {
            // EPIPE is normal: a program need not read its input.
            let _ = w.write_all(&stdin);
        }
    });
    let mut reader = std::fs::File::from(out_r);
    let mut output = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                let room = OUTPUT_CAP.saturating_sub(output.len());
                output.extend_from_slice(&chunk[..n.min(room)]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let status = child.wait()?;
    let _ = feeder.join();
    Ok(ProgramExit {
        code: status.code(),
        signal: status.signal(),
        output,
    })
}

/// The output as report text: lossy UTF-8, trailing whitespace removed.
pub fn output_text(output: &[u8]) -> String {
    String::from_utf8_lossy(output).trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_with_stdin_env_and_merged_output() {
        shard::io::run(shard::io::Driver::Epoll, async {
            let spec = ProgramSpec {
                program: "/bin/sh".into(),
                args: vec![
                    "-c".into(),
                    "echo out; echo err >&2; wc -c; echo $FOO; exit 3".into(),
                ],
                cwd: Some("/".into()),
                env: vec![("FOO".into(), "bar".into())],
            };
            let r = run(spec, Arc::new(b"12345".to_vec())).await.unwrap();
            assert_eq!(r.code, Some(3));
            let text = output_text(&r.output);
            assert!(text.contains("out") && text.contains("err") && text.contains("bar"));
            assert!(text.contains('5'));
        });
    }

    #[test]
    fn missing_program_is_error() {
        shard::io::run(shard::io::Driver::Epoll, async {
            let spec = ProgramSpec {
                program: "/nonexistent/prog".into(),
                args: vec![],
                cwd: None,
                env: vec![],
            };
            assert!(run(spec, Arc::new(Vec::new())).await.is_err());
        });
    }

    #[test]
    fn large_stdin_not_read_does_not_hang() {
        shard::io::run(shard::io::Driver::Epoll, async {
            let spec = ProgramSpec {
                program: "/bin/sh".into(),
                args: vec!["-c".into(), "exit 0".into()],
                cwd: None,
                env: vec![],
            };
            let r = run(spec, Arc::new(vec![b'x'; 4 << 20])).await.unwrap();
            assert_eq!(r.code, Some(0));
        });
    }
}

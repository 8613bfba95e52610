//! Helpers shared by the integration tests: start the real binary as sink and as sender.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_indimail-loadtest");

/// A running `indimail-loadtest sink`, terminated (SIGTERM) on drop.
pub struct Sink {
    child: Option<Child>,
    pub port: u16,
    pub stats: PathBuf,
}

impl Sink {
    pub fn start(dir: &Path, extra: &[&str]) -> Sink {
        let stats = dir.join("sink-stats.json");
        let mut child = Command::new(BIN)
            .args(["sink", "--listen", "127.0.0.1:0", "--stats"])
            .arg(&stats)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sink");
        let stdout = child.stdout.take().expect("sink stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read sink banner");
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("sink banner {line:?}"));
        Sink {
            child: Some(child),
            port,
            stats,
        }
    }

    pub fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGTERM, wait, and return the final stats and the stderr summary.
    pub fn stop(mut self) -> (serde_json::Value, String) {
        let mut child = self.child.take().expect("sink running");
        terminate(&mut child);
        let out = child.wait_with_output().expect("wait sink");
        assert!(out.status.success(), "sink exit {:?}", out.status);
        let stats = std::fs::read_to_string(&self.stats).expect("stats file");
        (
            serde_json::from_str(&stats).expect("stats JSON"),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn terminate(child: &mut Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Runs `send` to completion; panics if it takes longer than a minute.
pub fn send(args: &[&str]) -> Output {
    let start = Instant::now();
    let out = Command::new(BIN)
        .arg("send")
        .arg("--quiet")
        .args(args)
        .output()
        .expect("run send");
    assert!(start.elapsed() < Duration::from_secs(60));
    out
}

/// Runs `send` with a JSON report and returns it.
pub fn send_report(dir: &Path, args: &[&str]) -> serde_json::Value {
    let json = dir.join("report.json");
    let _ = std::fs::remove_file(&json);
    let mut all: Vec<&str> = args.to_vec();
    let json_s = json.to_str().expect("utf-8 path").to_string();
    all.extend(["--json", &json_s]);
    let out = send(&all);
    assert!(
        out.status.success(),
        "send failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(&json).expect("report file"))
        .expect("report JSON")
}

/// A port that was free a moment ago (for peers that cannot be told to pick one).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind")
        .port()
}

/// Waits until something accepts connections on `port`.
pub fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listening on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

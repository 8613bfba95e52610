//! The generator against Postfix's own `smtp-sink`, a peer we did not write.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{free_port, send_report, wait_listening};

const SMTP_SINK: &str = "/usr/sbin/smtp-sink";

#[test]
fn postfix_smtp_sink_accepts_everything() {
    assert!(
        Path::new(SMTP_SINK).exists(),
        "{SMTP_SINK} is missing: install the Debian package `postfix` (apt-get install postfix)"
    );
    let port = free_port();
    let mut cmd = Command::new(SMTP_SINK);
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false);
    if is_root {
        // smtp-sink refuses to run as root without a user to switch to.
        cmd.args(["-u", "nobody"]);
    }
    let mut child = cmd
        .arg(format!("127.0.0.1:{port}"))
        .arg("128")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start smtp-sink");
    wait_listening(port);
    let dir = tempfile::tempdir().unwrap();
    let target = format!("127.0.0.1:{port}");
    let plain = send_report(
        dir.path(),
        &[
            "--target",
            &target,
            "--messages",
            "300",
            "--sessions",
            "6",
            "--rcpts",
            "2",
        ],
    );
    let piped = send_report(
        dir.path(),
        &[
            "--target",
            &target,
            "--messages",
            "500",
            "--sessions",
            "6",
            "--per-session",
            "0",
            "--pipelining",
            "--size",
            "50000",
        ],
    );
    let _ = child.kill();
    let _ = child.wait();
    for (name, report) in [
        ("one per connection", &plain),
        ("pipelined, reused", &piped),
    ] {
        assert_eq!(report["messages_failed"], 0, "{name}: {report}");
        assert!(
            report["errors"].as_object().unwrap().is_empty(),
            "{name}: {}",
            report["errors"]
        );
    }
    assert_eq!(plain["messages_accepted"], 300);
    assert_eq!(plain["recipients_accepted"], 600);
    assert_eq!(piped["messages_accepted"], 500);
    assert_eq!(piped["connections"], 6);
}

//! `--metrics`: Prometheus text, counters summed over shards.

mod common;

use common::*;
use std::io::{BufRead, Read, Write};
use std::process::{Command, Stdio};

#[test]
fn metrics_count_accepted_messages() {
    let h = tempfile::tempdir().unwrap();
    let home = h.path();
    let log = std::fs::File::create(home.join("serve.log")).unwrap();
    std::fs::create_dir_all(home).unwrap();
    let mut child = Command::new(bin())
        .args(["serve", "--home"])
        .arg(home)
        .args(["--smtp", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
        .env("INDIMAIL_NO_DELIVERY", "1")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut addrs = std::collections::HashMap::new();
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some((svc, a)) = line.split_once(" listening on ") {
            addrs.insert(svc.to_string(), a.parse::<std::net::SocketAddr>().unwrap());
        }
        if addrs.len() == 2 {
            break;
        }
    }
    let server = Server {
        child: Some(child),
        home: home.to_path_buf(),
        smtp: addrs["smtp"],
        driver: "uring".into(),
    };
    for _ in 0..3 {
        assert_eq!(
            send_message(
                server.smtp,
                "a@example.org",
                &["b@localhost"],
                b"x\r\n.\r\n"
            )
            .0,
            250
        );
    }
    let mut s = std::net::TcpStream::connect(addrs["metrics"]).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.0 200 OK"), "{text}");
    assert!(
        text.contains("\nindimail_smtp_messages_accepted_total 3\n"),
        "{text}"
    );
    assert!(
        text.contains("indimail_smtp_connections_total{shard=\"0\"}"),
        "{text}"
    );
}

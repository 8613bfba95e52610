//! Hostile SMTP clients (issue 20), end to end over real loopback sockets against
//! `indimail serve` on two shards: SMTP smuggling through BDAT, slow clients, postmaster,
//! NO_SMTP users, relay loops, TLS close_notify.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// A raw SMTP sink: a next hop that records every byte of every DATA body exactly as it
/// arrived on the wire (up to and including the `CRLF . CRLF` that ended it), so a test can
/// count what an outbound path really emitted. No extension is offered: no PIPELINING, no
/// STARTTLS, no CHUNKING.
struct RawSink {
    port: u16,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl RawSink {
    fn start() -> RawSink {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let b = bodies.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                let b = b.clone();
                std::thread::spawn(move || RawSink::session(s, b));
            }
        });
        RawSink { port, bodies }
    }

    fn session(s: TcpStream, bodies: Arc<Mutex<Vec<Vec<u8>>>>) {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let _ = w.write_all(b"220 sink.test ESMTP\r\n");
        let mut line = Vec::new();
        loop {
            line.clear();
            if r.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                return;
            }
            let cmd = String::from_utf8_lossy(&line).to_ascii_uppercase();
            if cmd.starts_with("DATA") {
                let _ = w.write_all(b"354 go\r\n");
                let mut body = Vec::new();
                let mut byte = [0u8; 1];
                while !body.ends_with(b"\r\n.\r\n") && body != b".\r\n" {
                    if r.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    body.push(byte[0]);
                }
                bodies.lock().unwrap().push(body);
                let _ = w.write_all(b"250 2.0.0 sunk\r\n");
            } else if cmd.starts_with("QUIT") {
                let _ = w.write_all(b"221 bye\r\n");
                return;
            } else {
                let _ = w.write_all(b"250 ok\r\n");
            }
        }
    }

    fn bodies(&self) -> Vec<Vec<u8>> {
        self.bodies.lock().unwrap().clone()
    }
}

/// Bare CRs (not followed by LF) and bare LFs (not preceded by CR) in `b`.
fn bare_cr_lf(b: &[u8]) -> usize {
    let mut n = 0;
    for (i, &c) in b.iter().enumerate() {
        if c == b'\r' && b.get(i + 1) != Some(&b'\n') {
            n += 1;
        }
        if c == b'\n' && (i == 0 || b[i - 1] != b'\r') {
            n += 1;
        }
    }
    n
}

fn routed_home(port: u16) -> tempfile::TempDir {
    let h = tempfile::tempdir().unwrap();
    let control = h.path().join("control");
    std::fs::create_dir_all(&control).unwrap();
    std::fs::write(
        control.join("smtproutes"),
        format!("remote.test:127.0.0.1:{port}\n"),
    )
    .unwrap();
    h
}

/// One BDAT transaction over a raw socket; returns the final reply.
fn bdat(c: &mut Client, rcpt: &str, chunks: &[&[u8]]) -> (u16, String) {
    assert_eq!(c.cmd("MAIL FROM:<smuggler@example.org>").0, 250);
    assert_eq!(c.cmd(&format!("RCPT TO:<{rcpt}>")).0, 250);
    let mut last = (0, String::new());
    for (i, ch) in chunks.iter().enumerate() {
        let tail = if i + 1 == chunks.len() { " LAST" } else { "" };
        c.send(format!("BDAT {}{tail}\r\n", ch.len()).as_bytes());
        c.send(ch);
        last = c.reply();
        if last.0 != 250 {
            break;
        }
    }
    last
}

fn inject(home: &Path, message: &[u8], envelope: &[u8]) {
    let (reader, mut writer) = std::io::pipe().unwrap();
    writer.write_all(envelope).unwrap();
    drop(writer);
    let mut child = Command::new(bin())
        .args(["queue", "inject", "--home"])
        .arg(home)
        .env_remove("QUEUEDIR")
        .stdin(Stdio::piped())
        .stdout(reader)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(message).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Item 1: SMTP smuggling through BDAT. A client's BDAT chunks carrying `\r.\r`, `\n.\n` or
/// `\r.\r\n` are refused (550 5.6.11) like the same bytes after DATA, and nothing of them
/// leaves; a clean BDAT message and a locally injected message with bare CRs are relayed to a
/// raw capture next hop, and the bytes that leave the server hold no bare CR or LF at all.
#[test]
fn bdat_smuggling_never_reaches_the_next_hop() {
    let sink = RawSink::start();
    let h = routed_home(sink.port);
    let s = Server::start_delivering(h.path(), "uring");
    let mut c = Client::connect(s.smtp);
    assert_eq!(c.reply().0, 220);
    let (code, ehlo) = c.cmd("EHLO smuggler.example");
    assert_eq!(code, 250);
    assert!(ehlo.contains("CHUNKING"), "{ehlo}");
    for body in [
        &b"Subject: a\r\n\r\nhi\r.\rMAIL FROM:<x@y>\r\n"[..],
        b"Subject: b\r\n\r\nhi\n.\nRCPT TO:<x@y>\r\n",
        b"Subject: c\r\n\r\nhi\r.\r\nDATA\r\n",
    ] {
        let (code, text) = bdat(&mut c, "victim@remote.test", &[body]);
        assert_eq!(code, 550, "{body:?}: {text}");
        assert!(text.contains("5.6.11"), "{text}");
    }
    // The same split across chunks: a CR ending one chunk and a dot starting the next.
    let (code, text) = bdat(
        &mut c,
        "victim@remote.test",
        &[b"Subject: d\r\n\r\nhi\r", b".\r", b"\nend\r\n"],
    );
    assert_eq!(code, 550, "{text}");
    // A clean message by BDAT, with a CR completed by the next chunk's LF.
    let (code, text) = bdat(
        &mut c,
        "ok@remote.test",
        &[b"Subject: clean\r\n\r\n.leading dot\r", b"\nend\r\n"],
    );
    assert_eq!(code, 250, "{text}");
    c.cmd("QUIT");
    // A local sender's message with bare CRs around a dot (the queue keeps it as given).
    inject(
        h.path(),
        b"Subject: local\n\nhi\r.\r\nafter\r.\rend\n",
        b"Flocal@example.org\0Tlocal@remote.test\0\0",
    );
    wait_until(60, "two messages at the sink", || sink.bodies().len() == 2);
    let bodies = sink.bodies();
    for b in &bodies {
        assert_eq!(bare_cr_lf(b), 0, "{:?}", String::from_utf8_lossy(b));
        // Exactly one end of data, at the very end.
        assert_eq!(
            b.windows(5).filter(|w| w == b"\r\n.\r\n").count(),
            1,
            "{:?}",
            String::from_utf8_lossy(b)
        );
    }
    let all: Vec<String> = bodies
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert!(
        all.iter()
            .any(|b| b.contains("\r\n..leading dot\r\nend\r\n")),
        "{all:?}"
    );
    assert!(
        all.iter()
            .any(|b| b.contains("hi\r\n..\r\nafter\r\n..\r\nend\r\n")),
        "{all:?}"
    );
    assert!(
        !all.iter()
            .any(|b| b.contains("x@y") || b.contains("victim")),
        "{all:?}"
    );
}

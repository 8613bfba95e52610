//! The protocol cores over real loopback TCP: a minimal blocking driver around `Session`
//! serves real clients (our `ClientSession`, swaks, Postfix's smtp-source) and keeps the
//! received messages in memory for checking. The external tools are skipped when not
//! installed.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use smtp_proto::client::{ClientConfig, ClientEvent, ClientSession, OutgoingMessage, RcptOutcome};
use smtp_proto::{dot_stuff, Decision, Event, Session, SessionConfig};

#[derive(Debug, Clone)]
struct Stored {
    from: String,
    to: Vec<String>,
    body: Vec<u8>,
}

type Inbox = Arc<Mutex<Vec<Stored>>>;

/// Starts a server on an ephemeral loopback port; one thread per connection.
fn start_server() -> (u16, Inbox) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let inbox: Inbox = Arc::default();
    let inbox2 = inbox.clone();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let inbox = inbox2.clone();
            thread::spawn(move || serve(conn, inbox));
        }
    });
    (port, inbox)
}

/// The blocking driver: read, feed, act, write — what the io_uring driver does with
/// completions instead of blocking calls.
fn serve(mut conn: TcpStream, inbox: Inbox) {
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut cfg = SessionConfig::new("mx.test");
    cfg.max_message_size = 10 << 20;
    let mut s = Session::new(Rc::new(cfg));
    s.greet();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut cur: Option<Vec<u8>> = None;
    loop {
        let (n, ev) = s.feed(&buf);
        let mut need_more = false;
        let mut close = false;
        match ev {
            Event::NeedMore => need_more = true,
            Event::Mail { .. } | Event::Rcpt { .. } => s.decide(Decision::Accept),
            Event::DataStart => cur = Some(Vec::new()),
            Event::Data(d) => cur.as_mut().unwrap().extend_from_slice(d),
            Event::MessageEnd => {
                let env = s.envelope();
                let stored = Stored {
                    from: env
                        .reverse_path
                        .as_ref()
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                    to: env.recipients.iter().map(|r| r.path.to_string()).collect(),
                    body: cur.take().unwrap(),
                };
                let mut inbox = inbox.lock().unwrap();
                inbox.push(stored);
                let id = inbox.len();
                drop(inbox);
                s.message_committed(Ok(format!("{id}")));
            }
            Event::StartTls
            | Event::Auth { .. }
            | Event::ScramLookup { .. }
            | Event::Etrn { .. }
            | Event::Atrn { .. }
            | Event::Turn => panic!("STARTTLS, AUTH, ETRN and ATRN are off here"),
            Event::MessageAborted => cur = None,
            Event::Close => close = true,
        }
        buf.drain(..n);
        if (need_more || close) && !s.output().is_empty() {
            if conn.write_all(s.output()).is_err() {
                return;
            }
            let l = s.output().len();
            s.consume_output(l);
        }
        if close {
            return;
        }
        if need_more {
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        }
    }
}

fn send_with_client(port: u16, messages: &[(OutgoingMessage, &[u8])]) -> Vec<ClientEvent> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut c = ClientSession::new(ClientConfig::new("client.test"));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut next = 0;
    let mut done = Vec::new();
    loop {
        let (n, ev) = c.feed(&buf).unwrap();
        buf.drain(..n);
        let flush = |c: &mut ClientSession, conn: &mut TcpStream| {
            conn.write_all(c.output()).unwrap();
            let l = c.output().len();
            c.consume_output(l);
        };
        match ev {
            ClientEvent::NeedReply => {
                flush(&mut c, &mut conn);
                let k = conn.read(&mut chunk).unwrap();
                assert!(k > 0, "server closed early");
                buf.extend_from_slice(&chunk[..k]);
            }
            ClientEvent::Ready => {
                if let Some((m, _)) = messages.get(next) {
                    c.send_mail(m.clone()).unwrap();
                } else {
                    c.quit().unwrap();
                }
            }
            ClientEvent::SendData => {
                flush(&mut c, &mut conn);
                let mut stuffed = Vec::new();
                dot_stuff(messages[next].1, &mut stuffed);
                conn.write_all(&stuffed).unwrap();
                c.data_sent().unwrap();
            }
            ev @ ClientEvent::TransactionDone { .. } => {
                next += 1;
                done.push(ev);
            }
            ClientEvent::StartTls => panic!("not offered"),
            ClientEvent::Closed => return done,
        }
    }
}

#[test]
fn client_core_to_server_core_over_tcp() {
    let (port, inbox) = start_server();
    let big: Vec<u8> = (0..20_000)
        .flat_map(|i| format!("{}line {i}\r\n", if i % 7 == 0 { "." } else { "" }).into_bytes())
        .collect();
    let m = |to: &[&str]| OutgoingMessage {
        from: "sender@client.test".into(),
        to: to.iter().map(|s| s.to_string()).collect(),
        size: None,
        eight_bit: false,
        smtputf8: false,
    };
    let done = send_with_client(
        port,
        &[
            (m(&["a@mx.test", "b@mx.test"]), &big[..]),
            (m(&["c@mx.test"]), b"short"),
        ],
    );
    assert_eq!(done.len(), 2);
    for ev in &done {
        let ClientEvent::TransactionDone { per_rcpt, .. } = ev else {
            panic!()
        };
        assert!(per_rcpt
            .iter()
            .all(|r| matches!(r.outcome, RcptOutcome::Delivered(_))));
    }
    let inbox = inbox.lock().unwrap();
    assert_eq!(inbox.len(), 2);
    assert_eq!(inbox[0].body, big);
    assert_eq!(inbox[0].to, vec!["a@mx.test", "b@mx.test"]);
    assert_eq!(inbox[1].body, b"short\r\n");
    assert_eq!(inbox[1].from, "sender@client.test");
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn swaks_pipelining() {
    if !have("swaks") {
        eprintln!("swaks not installed: skipped");
        return;
    }
    let (port, inbox) = start_server();
    for extra in [
        &["--pipeline"][..],
        &["--pipeline", "--body", "line one\n.dot line\n"][..],
    ] {
        let out = Command::new("swaks")
            .args([
                "--server",
                &format!("127.0.0.1:{port}"),
                "--from",
                "s@swaks.test",
            ])
            .args([
                "--to",
                "r1@mx.test,r2@mx.test",
                "--helo",
                "swaks.test",
                "--timeout",
                "20",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "swaks failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let inbox = inbox.lock().unwrap();
    assert_eq!(inbox.len(), 2);
    assert_eq!(inbox[0].to, vec!["r1@mx.test", "r2@mx.test"]);
    assert_eq!(inbox[0].from, "s@swaks.test");
    // swaks sent ".dot line" stuffed as "..dot line"; the server stored it unstuffed.
    let needle = b"\r\n\r\nline one\r\n.dot line\r\n";
    assert!(inbox[1].body.windows(needle.len()).any(|w| w == needle));
}

#[test]
fn postfix_smtp_source_many_sessions() {
    if !have("smtp-source") {
        eprintln!("smtp-source not installed: skipped");
        return;
    }
    let (port, inbox) = start_server();
    // 4 parallel sessions, 40 messages of 2 KB, 2 recipients each (-r), pipelined commands.
    let out = Command::new("smtp-source")
        .args([
            "-s",
            "4",
            "-m",
            "40",
            "-l",
            "2048",
            "-r",
            "2",
            "-f",
            "src@source.test",
        ])
        .args(["-t", "dst@mx.test", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inbox = inbox.lock().unwrap();
    assert_eq!(inbox.len(), 40);
    assert!(inbox
        .iter()
        .all(|m| m.to.len() == 2 && m.body.len() >= 2048));
}
